"""The 768-dimensional path end to end on synthetic data: train, save, load, index and search every plan
at every nested size 768/384/192/96 (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from qama.adapter import QamaAdapter
from qama.codes import make_plan
from qama.encoders import AdapterEncoder
from qama.index import QamaIndex
from qama.search import hamming_search
from qama.train import TrainConfig, fit

D = 768
NESTED = (96, 192, 384, 768)
PLANS = ("2bit", "1.5bit", "1bit", "0.5bit", "hybrid")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[QamaAdapter, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    docs = rng.normal(size=(300, D)).astype(np.float32) + 0.3
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[:20] + 0.05 * rng.normal(size=(20, D)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cfg = TrainConfig(steps=3, batch_size=64, nested_dims=NESTED, progress=False)
    out = tmp_path_factory.mktemp("ad768") / "adapter"
    fit(docs, cfg, out_dir=out)
    return QamaAdapter.load(out), docs, queries


def test_the_adapter_round_trips_at_768(trained):
    adapter, docs, _ = trained
    assert adapter.config.dim == D and adapter.config.nested_dims == NESTED
    for dims in NESTED:
        assert adapter.transform(docs[:3], dims).shape == (3, dims)


@pytest.mark.parametrize("plan_name", PLANS)
@pytest.mark.parametrize("dims", NESTED)
def test_index_and_search_every_plan_and_size(trained, tmp_path, plan_name, dims):
    adapter, docs, queries = trained
    plan = make_plan(plan_name, dims)
    if plan_name == "hybrid" and dims == 768:
        assert plan.code_size == 156  # 768 · 1.625 bits / 8: 156 MB per million vectors
    encoder = AdapterEncoder(adapter, plan, fit_emb=docs)
    ids = [f"d{i}" for i in range(len(docs))]
    index = QamaIndex.create(tmp_path / "ix", encoder, docs, ids, adapter_path=tmp_path / "unused")
    again = QamaIndex.open(tmp_path / "ix", encoder=AdapterEncoder.from_state(adapter, plan, encoder.state))
    assert len(again) == len(docs) and again.plan.spec() == plan.spec()
    _, rows = again.search(queries, k=5, oversample=0)
    _, ref = hamming_search(encoder.encode(docs), encoder.encode_queries(queries), 5)
    np.testing.assert_array_equal(rows, ref)
    scores, rescored = index.search(queries, k=5, oversample=4)
    assert rescored.shape == (len(queries), 5) and np.all(np.diff(scores, axis=1) <= 0)
