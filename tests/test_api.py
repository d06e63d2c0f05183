"""The one-call Python API, and its docstring examples."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import qama
import qama.api


def test_api_docstring_examples(tmp_path):
    globs = {"qama": qama, "getfixture": lambda name: tmp_path}
    result = doctest.testmod(qama.api, globs=globs, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 7 and result.failed == 0


def test_fit_save_reopen_search(tmp_path):
    rng = np.random.default_rng(1)
    docs = rng.standard_normal((600, 32)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    adapter = qama.fit(docs, out=tmp_path / "ad", steps=3, batch_size=128, progress=False)
    ids = [f"d{i}" for i in range(600)]
    qama.build_index(tmp_path / "idx", tmp_path / "ad", docs, ids, plan="2bit", keep_vectors=True)
    index = qama.open_index(tmp_path / "idx")  # the adapter comes from the path the index names
    hits = qama.search_index(index, docs[:5], k=2)
    assert [h[0][0] for h in hits] == ids[:5]
    np.testing.assert_array_equal(qama.encode(tmp_path / "ad", docs[:4], "2bit"), adapter.encode(docs[:4], "2bit"))
    with pytest.raises(ValueError, match="k must be positive"):
        qama.search_index(index, docs[:1], k=0)


def test_fit_with_pairs_turns_the_info_nce_term_on():
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((300, 32)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    titles = docs[:100] + 0.1 * rng.standard_normal((100, 32)).astype(np.float32)
    adapter = qama.fit(docs, pairs=(titles, docs[:100]), steps=2, batch_size=64, progress=False)
    assert adapter.metadata["training"]["w_nce"] == qama.train.NCE_WEIGHT_TITLES
    assert adapter.metadata["data"]["n_pairs"] == 100


def test_module_names_are_modules_and_old_api_names_warn(tmp_path):
    assert callable(qama.search.hamming_search) and qama.evaluate.Evaluator is not None
    rng = np.random.default_rng(3)
    docs = rng.standard_normal((50, 32)).astype(np.float32)
    adapter = qama.fit(docs, steps=1, batch_size=32, progress=False)
    index = qama.build_index(tmp_path / "idx", adapter, docs, [f"d{i}" for i in range(50)], plan="2bit")
    with pytest.warns(DeprecationWarning, match="qama.search_index"):
        assert qama.api.search(index, docs[:1], k=1)[0][0][0] == "d0"
