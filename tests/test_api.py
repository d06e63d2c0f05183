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


def test_names_in_the_api_examples_exist_after_import_qama() -> None:
    """Every ``qama.…`` name the API's examples use, skipped ones too, is there after a plain ``import qama``
    in a new interpreter (before: ``qama.evaluation.tables.to_markdown`` was an ``AttributeError``, since
    ``qama.evaluation`` imports none of its modules)."""
    import re
    import subprocess
    import sys

    lines = [line.strip()[4:] for line in (qama.api.__doc__ or "").splitlines() if line.strip().startswith(">>> ")]
    for name in ("evaluate_dataset", "embed"):
        lines += [line.strip()[4:] for line in getattr(qama.api, name).__doc__.splitlines() if ">>> " in line]
    names = sorted({m for line in lines for m in re.findall(r"\bqama(?:\.\w+)+", line) if "import" not in line})
    imports = [line.split("#")[0].strip() for line in lines if line.startswith("from ")]
    assert "qama.evaluate_dataset" in names and "qama.embed" in names
    code = "import qama\n" + "\n".join(imports) + "\n" + "\n".join(names)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


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
    assert callable(qama.search.hamming_search) and qama.evaluation.metrics.Evaluator is not None
    rng = np.random.default_rng(3)
    docs = rng.standard_normal((50, 32)).astype(np.float32)
    adapter = qama.fit(docs, steps=1, batch_size=32, progress=False)
    index = qama.build_index(tmp_path / "idx", adapter, docs, [f"d{i}" for i in range(50)], plan="2bit")
    with pytest.warns(DeprecationWarning, match="qama.search_index"):
        assert qama.api.search(index, docs[:1], k=1)[0][0][0] == "d0"


def test_load_adapter_checks_model_and_plans_before_any_work(tmp_path):
    rng = np.random.default_rng(4)
    docs = rng.standard_normal((200, 32)).astype(np.float32)
    qama.fit(docs, out=tmp_path / "ad", steps=1, batch_size=64, progress=False, model_name="org/model-a")
    assert qama.api.load_adapter(None) is None and qama.api.load_adapter("") is None
    adapter = qama.api.load_adapter(tmp_path / "ad", "model-a", ["2bit"])  # org/name and name are one model
    assert adapter is not None and adapter.dim == 32
    assert qama.api.load_adapter(tmp_path / "ad", None) is not None  # an unknown model is not checked
    with pytest.raises(ValueError, match="trained on embeddings of org/model-a, these are of org/model-b"):
        qama.api.load_adapter(tmp_path / "ad", "org/model-b")
    with pytest.raises(ValueError, match=r"^--plans: '64:2' fits none of the sizes of .*ad \(8, 16, 32\)"):
        qama.api.load_adapter(tmp_path / "ad", None, ["64:2"])


def test_index_corpus_and_search_store(tmp_path, caplog):
    rng = np.random.default_rng(5)
    docs = rng.standard_normal((120, 32)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    ids, titles = [f"d{i}" for i in range(120)], [f"title {i}" for i in range(120)]
    # no adapter: untrained thresholds; shard 1/2 adds the second half only
    n = qama.api.index_corpus(tmp_path / "ix", docs, ids, titles, "2bit", shard="1/2", model="org/m", progress=False)
    assert n == 60
    np.save(tmp_path / "q.npy", docs[60:62])
    hits = qama.api.search_store(tmp_path / "ix", npy=tmp_path / "q.npy", k=3, verify=True)
    assert [h["query"] for h in hits] == ["0", "1"]
    assert [h["hits"][0]["id"] for h in hits] == ["d60", "d61"] and hits[0]["hits"][0]["title"] == "title 60"
    with caplog.at_level("WARNING"):
        assert len(qama.api.search_store(tmp_path / "ix", npy=tmp_path / "q.npy", k=500)[0]["hits"]) == 60
    assert "k=500 is larger than the index (60 documents)" in caplog.text
    with pytest.raises(ValueError, match="embedded with org/m; queries embedded with --model other/x"):
        qama.api.search_store(tmp_path / "ix", ["a query"], model="other/x")
    # an adapter: the store records the adapter's model; empty titles are not stored
    adapter = qama.fit(docs, steps=1, batch_size=64, progress=False, model_name="org/adapted")
    qama.api.index_corpus(tmp_path / "ix2", docs, ids, [""] * 120, "2bit", adapter, progress=False)
    index = qama.open_index(tmp_path / "ix2", adapter)
    assert index.manifest["meta"]["model"] == "org/adapted" and len(index) == 120
    hits = qama.api.search_store(tmp_path / "ix2", npy=tmp_path / "q.npy", k=1, adapter=adapter)
    assert hits[0]["hits"][0]["title"] is None
    assert qama.api.index_corpus(tmp_path / "ix3", docs, ids, None, "2bit", shard="0/200", progress=False) == 0
    with pytest.raises(ValueError, match="ix3: the index is empty"):
        qama.api.search_store(tmp_path / "ix3", npy=tmp_path / "q.npy")


def test_eval_json_is_what_qama_eval_writes():
    from qama.evaluation.rows import Row
    from qama.evaluation.tables import eval_json

    rows = [Row("fp32", None, 32, 32.0, 128, metrics={"ndcg@10": 0.5})]
    out = eval_json(rows, "tiny", "test")
    assert list(out) == ["dataset", "split", "rows", "breakdown"]
    assert out["rows"] == [rows[0].to_dict()] and out["breakdown"] == []


def test_evaluate_dataset_checks_the_embeddings_against_the_dataset(small):
    """Embeddings whose rows are not the dataset's were scored silently (queries of another dataset:
    nDCG@10 0.027; a corpus of 200 of the 300 documents: 1.0) or failed with a bare ``IndexError``."""
    root, emb = small
    corpus, queries = np.load(emb / "corpus.npy"), np.load(emb / "queries.npy")
    nan_corpus = corpus.copy()
    nan_corpus[3, 0] = np.nan
    cases = [
        (corpus, np.concatenate([queries[5:], queries]), "query embeddings: 55 rows, but the dataset has 30"),
        (corpus, queries[:20], "query embeddings: 20 rows, but the dataset has 30"),
        (corpus[:200], queries, "corpus embeddings: 200 rows, but the dataset has 300"),
        (np.concatenate([corpus, corpus]), queries, "corpus embeddings: 600 rows, but the dataset has 300"),
        (corpus, queries[:, :16], "query embeddings: dimension 16, expected 32"),
        (nan_corpus, queries, r"corpus embeddings: row 3 has NaN or inf values \(1 rows\)"),
        (corpus.astype(np.int64), queries, "corpus embeddings: expected floating-point values, got dtype int64"),
    ]
    for c, q, message in cases:
        with pytest.raises(qama.embeddings.EmbeddingError, match=f"^{message}$"):
            qama.evaluate_dataset(root, c, q)
    rows = qama.evaluate_dataset(root, corpus.astype(np.float64), queries, dims=[32])
    assert rows[0].format == "fp32" and rows[0].metrics["ndcg@10"] == 1.0


def test_evaluate_dataset_options_are_lists(small):
    """``plans="hybrid"`` was read as its characters (``--plans: cannot read plan 'h'``), ``rescore=4`` and
    ``dims=384`` were ``TypeError: 'int' object is not iterable``, ``dims="32"`` ``--dims must be an integer,
    got '3'``; refused before the dataset is read."""
    root, _ = small
    cases = [
        ({"plans": "hybrid"}, r"^plans must be a list of plans, not one str \('hybrid'\)$"),
        ({"rescore": 4}, r"^rescore must be a list of factors, not one int \(4\)$"),
        ({"dims": 32}, r"^dims must be a list of sizes, not one int \(32\)$"),
        ({"dims": "32"}, r"^dims must be a list of sizes, not one str \('32'\)$"),
    ]
    for options, message in cases:
        with pytest.raises(TypeError, match=message):
            qama.evaluate_dataset(root / "missing", np.zeros((1, 32)), np.zeros((1, 32)), **options)


@pytest.mark.parametrize("order", [("0/2", "1/2"), ("1/2", "0/2")])
def test_index_corpus_shards_agree_on_titles_that_one_part_lacks(tmp_path, order):
    """Whether titles are stored was decided on each shard's part: a part whose titles were all empty
    made (or met) an index without titles, and the other part failed with ``titles must be given for
    every document or for none``."""
    rng = np.random.default_rng(6)
    docs = rng.standard_normal((100, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    ids, titles = [f"d{i}" for i in range(100)], [""] * 50 + [f"title {i}" for i in range(50, 100)]
    counts = [qama.api.index_corpus(tmp_path / "ix", docs, ids, titles, "2bit", shard=s, progress=False) for s in order]
    assert counts == [50, 100]
    index = qama.open_index(tmp_path / "ix")
    assert sorted(index.ids.to_list()) == sorted(ids)
    assert {index.ids[r]: index.titles[r] for r in range(100)} == dict(zip(ids, titles, strict=True))


def test_add_to_store_follows_whether_the_store_keeps_titles(tmp_path, caplog):
    """Documents added to an index folder take its choice: untitled ones beside titled ones get ``""``,
    and titles added to an index that keeps none are dropped with a warning."""
    rng = np.random.default_rng(7)
    docs = rng.standard_normal((40, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(40)]
    qama.api.index_corpus(tmp_path / "t", docs[:20], ids[:20], [f"t{i}" for i in range(20)], "2bit", progress=False)
    assert qama.api.add_to_store(tmp_path / "t", docs[20:], ids[20:], [""] * 20, progress=False) == 40
    index = qama.open_index(tmp_path / "t")
    assert [index.titles[r] for r in (0, 19, 20, 39)] == ["t0", "t19", "", ""]
    qama.api.index_corpus(tmp_path / "u", docs[:20], ids[:20], None, "2bit", progress=False)
    with caplog.at_level("WARNING"):
        assert qama.api.add_to_store(tmp_path / "u", docs[20:], ids[20:], ids[20:], progress=False) == 40
    assert "this index keeps no titles; the titles of the added documents are not stored" in caplog.text
    assert qama.open_index(tmp_path / "u").titles is None


def test_encode_warns_of_a_lost_plan_once_not_at_every_batch(caplog: pytest.LogCaptureFixture) -> None:
    # qama.encode is called a batch at a time: the warning that the adapter's check found untrained
    # codes better at this plan and size was logged at every call
    from qama.adapter import AdapterConfig, QamaAdapter

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    adapter = QamaAdapter(AdapterConfig(dim=32), {"check": {"lost": ["2bit@32"]}})
    adapter.calibrate(x)
    with caplog.at_level("WARNING", logger="qama.api"):
        for i in range(0, 64, 16):
            np.testing.assert_array_equal(
                qama.api.encode(adapter, x[i : i + 16], "2bit"), adapter.encode(x[i : i + 16], "2bit")
            )
        qama.api.encode(adapter, x[:4], "1bit")  # not lost: no warning
    assert [r.getMessage() for r in caplog.records] == [
        "2bit at 32 dims: the adapter's check found untrained codes better; these are the adapter's codes "
        "(build_index or qama.encoders.fit_encoder on the corpus serve untrained ones)"
    ]
