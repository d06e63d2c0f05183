"""The training commands end to end on tiny data: train, eval --adapter, ablate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qama.cli import main
from qama.train import NCE_WEIGHT_LABELLED, NCE_WEIGHT_TITLES


def _train(root: Path, emb: Path, out: Path, *extra: str) -> int:
    """``qama train`` on the small dataset (2 steps, batches of 64 unless ``extra`` says otherwise)."""
    args = ["-q", "train", "--dataset", str(root), "--embeddings", str(emb), "--out", str(out)]
    return main([*args, *(extra or ("--steps", "2", "--train-batch-size", "64"))])


def test_train_then_eval_with_the_adapter(small, tmp_path):
    root, emb = small
    common = ["--dataset", str(root), "--embeddings", str(emb)]
    assert _train(root, emb, tmp_path / "ad", "--steps", "5", "--train-batch-size", "64") == 0
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["adapter"]["dim"] == 32 and config["adapter"]["nested_dims"] == [8, 16, 32]
    assert config["adapter"]["drop_mean_direction"] is True
    kept_args = ("--steps", "2", "--train-batch-size", "64", "--keep-mean-direction")
    assert _train(root, emb, tmp_path / "kept", *kept_args) == 0
    kept = json.loads((tmp_path / "kept" / "config.json").read_text())
    assert kept["adapter"]["drop_mean_direction"] is False and kept["training"]["drop_mean_direction"] is False
    out = tmp_path / "t.json"
    args = ["-q", "eval", *common, "--adapter", str(tmp_path / "ad"), "--dims", "32", "--plans", "2bit", "hybrid"]
    assert main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    qama = [(r["plan"], r["dims"], r["rescore"]) for r in rows if r["format"] == "qama"]
    # every nested size (32, 16, 8): the FP32 output, then each plan symmetric and rescored 4x
    for dims in (32, 16, 8):
        assert (None, dims, None) in qama
        assert ("2bit", dims, None) in qama and ("2bit", dims, 4) in qama
    assert ("hybrid", 32, None) in qama
    by = {(r["format"], r["plan"], r["dims"], r["rescore"]): r for r in rows}
    assert by[("qama", "hybrid", 32, None)]["bytes_per_vector"] == 7  # 8*3 + 8*2 + 8 + 4 = 52 bits
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)


def test_eval_refuses_an_adapter_of_another_dimension(small, tmp_path, capsys):
    root, emb = small
    _train(root, emb, tmp_path / "ad")
    np.save(emb / "corpus.npy", np.eye(300, 16, dtype=np.float32) + 0.01)
    np.save(emb / "queries.npy", np.ones((30, 16), np.float32))
    rc = main(["-q", "eval", "--dataset", str(root), "--embeddings", str(emb), "--adapter", str(tmp_path / "ad")])
    err = capsys.readouterr().err
    assert rc == 2 and "corpus embeddings have dimension 16, but the adapter was trained for 32" in err


def test_eval_of_an_adapter_no_hybrid_plan_fits_measures_the_plans_that_fit(small, tmp_path, capsys):
    """A 100-dimensional model nests as 50/100, where hybrid fits no size: ``qama train`` fits its adapter
    without hybrid, and ``qama eval`` without --plans refused it (`--plans: 'hybrid' fits none of …`)."""
    root, emb = small
    rng = np.random.default_rng(1)
    for name, n in (("corpus.npy", 300), ("queries.npy", 30)):
        x = rng.normal(size=(n, 100)).astype(np.float32)
        np.save(emb / name, x / np.linalg.norm(x, axis=1, keepdims=True))
    assert _train(root, emb, tmp_path / "ad") == 0
    common = ["-q", "eval", "--dataset", str(root), "--embeddings", str(emb), "--adapter", str(tmp_path / "ad")]
    assert main([*common, "--json", str(tmp_path / "e.json")]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert sorted({r["plan"] for r in rows if r["format"] == "qama" and r["plan"]}) == [
        "0.5bit",
        "1.5bit",
        "1bit",
        "2bit",
    ]
    capsys.readouterr()
    assert main([*common, "--plans", "hybrid"]) == 2  # asked for: refused, with the reason
    assert capsys.readouterr().err.startswith("qama: error: --plans: 'hybrid' fits none of the sizes of ")


def test_train_with_pairs_feeds_the_qrels_to_info_nce(small, tmp_path):
    root, emb = small
    assert _train(root, emb, tmp_path / "ad", "--steps", "2", "--train-batch-size", "64", "--pairs", "test") == 0
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["data"]["n_pairs"] == 30 and config["training"]["w_nce"] == NCE_WEIGHT_LABELLED
    assert config["training"]["data_description"] == "ds corpus embeddings, 30 'test' qrels pairs (labels)"
    assert (
        _train(
            root,
            emb,
            tmp_path / "w",
            "--steps",
            "2",
            "--train-batch-size",
            "64",
            "--pairs",
            "test",
            "--nce-weight",
            "0.3",
        )
        == 0
    )
    assert json.loads((tmp_path / "w" / "config.json").read_text())["training"]["w_nce"] == 0.3


def test_train_embeds_the_titles_once(small, tmp_path, monkeypatch):
    """The titles feed both the InfoNCE pairs and the query sample of ``qama train``: the model is loaded
    once and the titles encoded once (#13: they were embedded for each, the model loaded twice)."""
    import qama.embeddings

    root, emb = small
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    for i, doc in enumerate(docs):
        doc["title"] = f"title {i}" if i % 2 == 0 else ""
    (root / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (emb / "meta.json").write_text(json.dumps({"model": "org/model"}))  # titles in auto mode: the same model
    corpus = np.load(emb / "corpus.npy")
    calls = {"load_model": 0, "encode": 0}

    class Model:
        max_seq_length = 128

    def load_model(name, device=None):
        calls["load_model"] += 1
        return Model()

    def encode(model, texts, batch_size=64, progress=True):
        calls["encode"] += 1
        return corpus[: len(texts)]

    monkeypatch.setattr(qama.embeddings, "load_model", load_model)
    monkeypatch.setattr(qama.embeddings, "encode", encode)
    extra = ("--steps", "2", "--train-batch-size", "64", "--cache-dir", str(tmp_path / "cache"))
    assert _train(root, emb, tmp_path / "ad", *extra) == 0
    assert calls == {"load_model": 1, "encode": 1}
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["data"]["n_pairs"] == 150 and config["data"]["n_query_sample"] == 150  # both used the titles


def test_train_with_title_pseudo_queries(small, tmp_path, monkeypatch, capsys):
    """--pseudo-queries titles pairs each titled document with its title's embedding (embedded with
    --model); precomputed embeddings whose meta.json names another model are refused (skipped by auto)."""
    import qama.embeddings

    root, emb = small
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    for i, doc in enumerate(docs):
        doc["title"] = f"title {i}" if i % 2 == 0 else ""
    (root / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    seen = {}

    def fake_embed_titles(dataset, model_name, cache_dir, batch_size, progress):
        seen["model"] = model_name
        rows = np.array([i for i, t in enumerate(dataset.titles) if t])
        return rows, np.load(emb / "corpus.npy")[rows]

    monkeypatch.setattr(qama.embeddings, "embed_titles", fake_embed_titles)
    extra = ("--steps", "2", "--train-batch-size", "64", "--pseudo-queries", "titles", "--model", "my/model")
    assert _train(root, emb, tmp_path / "ad", *extra) == 0
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert seen["model"] == "my/model"
    assert config["data"]["n_pairs"] == 150 and config["training"]["w_nce"] == NCE_WEIGHT_TITLES
    assert config["training"]["data_description"] == "ds corpus embeddings, 150 title pseudo-queries (no labels)"
    # auto (the default) uses titles only where the embeddings' model is known to be --model
    assert _train(root, emb, tmp_path / "auto", *extra[:4]) == 0
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["data"]["n_pairs"] == 0  # no meta.json
    (emb / "meta.json").write_text(json.dumps({"model": "hub-org/model"}))
    assert _train(root, emb, tmp_path / "auto2", *extra[:4], "--model", "my/model") == 0
    assert json.loads((tmp_path / "auto2" / "config.json").read_text())["data"]["n_pairs"] == 150
    (emb / "meta.json").write_text(json.dumps({"model": "sentence-transformers/other-model"}))
    capsys.readouterr()
    # a --model that contradicts meta.json is refused with the reason, before any work (#17)
    for args in (extra, (*extra[:4], "--model", "my/model")):
        assert _train(root, emb, tmp_path / "refused", *args) == 2
        err = capsys.readouterr().err
        assert "meta.json: the embeddings are of sentence-transformers/other-model, but --model is my/model" in err
        assert not (tmp_path / "refused").exists()
    # without --model, the model of meta.json embeds the titles and is recorded in the adapter
    assert _train(root, emb, tmp_path / "other", *extra[:4]) == 0
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    assert seen["model"] == "sentence-transformers/other-model" and config["data"]["n_pairs"] == 150
    assert config["adapter"]["model_name"] == "sentence-transformers/other-model"


def test_train_with_pairs_of_a_missing_split(small, tmp_path, capsys):
    root, emb = small
    rc = _train(root, emb, tmp_path / "ad", "--steps", "2", "--train-batch-size", "64", "--pairs", "train")
    assert rc == 2 and "split 'train' does not exist (found: test)" in capsys.readouterr().err
    assert not (tmp_path / "ad").exists()


def test_train_too_few_vectors_for_a_batch(small, tmp_path, capsys):
    root, emb = small
    rc = _train(root, emb, tmp_path / "ad", "--train-batch-size", "1000")
    message = "300 vectors are fewer than one batch (1000); lower batch_size (qama train --train-batch-size)"
    assert rc == 2 and capsys.readouterr().err == f"qama: error: embeddings: {message} or give more vectors\n"


def test_index_then_search(small, tmp_path, capsys):
    root, emb = small
    common = ["--dataset", str(root), "--embeddings", str(emb)]
    assert _train(root, emb, tmp_path / "ad") == 0
    assert main(["-q", "index", *common, "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "idx")]) == 0
    q = np.load(emb / "corpus.npy")[:3]
    np.save(tmp_path / "q.npy", q)
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "search",
                "--index",
                str(tmp_path / "idx"),
                "--queries",
                str(tmp_path / "q.npy"),
                "-k",
                "2",
                "--oversample",
                "4",
                "--json",
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert [h["hits"][0]["id"] for h in hits] == ["d0", "d1", "d2"]  # each document finds itself
    assert all(len(h["hits"]) == 2 for h in hits)
    # the asymmetric full scan (adapter codes: cosine scores) finds them too
    args = ["-q", "search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "2"]
    assert main([*args, "--mode", "adc", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["hits"][0]["id"] for h in hits] == ["d0", "d1", "d2"]
    assert all(len(h["hits"]) == 2 and -1.01 <= h["hits"][0]["score"] <= 1.01 for h in hits)
    # options that this search or store would ignore, silently, are refused (before: ignored)
    for extra, message in [
        (["--mode", "adc", "--oversample", "8"], "--oversample: options of the Hamming search's rescoring"),
        (["--mode", "adc", "--rescore", "vectors"], "--rescore: options of the Hamming search's rescoring"),
        (["--collection", "c", "--nprobe", "4"], "--collection, --nprobe: options of a Milvus collection"),
    ]:
        assert main([*args, *extra]) == 2
        assert capsys.readouterr().err.startswith(f"qama: error: {message}")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-k", "0"], "qama: error: k must be positive, got 0"),
        (["  "], "qama: error: a query is empty"),
    ],
)
def test_search_bad_requests(small, tmp_path, capsys, extra, message):
    root, emb = small
    main(["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--out", str(tmp_path / "idx")])
    args = ["-q", "search", "--index", str(tmp_path / "idx")]
    if extra != ["  "]:
        np.save(tmp_path / "q.npy", np.load(emb / "corpus.npy")[:1])
        args += ["--queries", str(tmp_path / "q.npy")]
    capsys.readouterr()
    assert main(args + extra) == 2
    assert capsys.readouterr().err.strip() == message


def test_search_k_beyond_the_index_returns_everything(small, tmp_path, capsys, caplog):
    root, emb = small
    main(["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--out", str(tmp_path / "idx")])
    np.save(tmp_path / "q.npy", np.load(emb / "corpus.npy")[:1])
    capsys.readouterr()
    assert (
        main(["search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "-k", "500", "--json"])
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)[0]["hits"]) == 300
    assert "k=500 is larger than the index (300 documents)" in caplog.text


def test_search_an_empty_index(small, tmp_path, capsys):
    from qama.codes import make_plan
    from qama.index import QamaIndex
    from qama.search import ThresholdEncoder

    root, emb = small
    corpus = np.load(emb / "corpus.npy")
    QamaIndex.create(tmp_path / "idx", ThresholdEncoder.fit(corpus, make_plan("2bit", 32)), corpus[:0], [])
    np.save(tmp_path / "q.npy", corpus[:1])
    rc = main(["-q", "search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy")])
    assert rc == 2 and "the index is empty" in capsys.readouterr().err


def test_ablate_prints_every_ablation(small, tmp_path, capsys):
    root, emb = small
    args = [
        "-q",
        "ablate",
        "--dataset",
        str(root),
        "--embeddings",
        str(emb),
        "--steps",
        "2",
        "--train-batch-size",
        "64",
        "--only",
        "full",
        "no_orthogonality",
        "--json",
        str(tmp_path / "a.json"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| full |" in out and "| no_orthogonality |" in out and "2bit@32" in out
    saved = json.loads((tmp_path / "a.json").read_text())["ablations"]
    assert set(saved) == {"full", "no_orthogonality"} and set(saved["full"]) >= {"2bit@32", "hybrid@16"}
    # --json -: the JSON alone (before: after the table, unreadable as JSON)
    assert main([*args[:-1], "-"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dataset": "ds", "ablations": saved}


def test_flags_old_names_and_json_forms(capsys, tmp_path):
    from qama.backends import store_target
    from qama.cli import build_parser

    args = build_parser().parse_args(["eval", "--dataset", "x", "--rescore", "2", "8"])
    assert args.oversample == [2, 8]
    assert "--rescore is deprecated here, use --oversample" in capsys.readouterr().err
    assert str(build_parser().parse_args(["search", "--json"]).json) == "-"  # a bare --json prints
    assert build_parser().parse_args(["search"]).json is None
    assert store_target(None, tmp_path, None, {})[1] == "faiss"
    milvus = store_target("http://h:19530", None, None, {"collection": "c"})
    assert milvus == ("http://h:19530", "milvus", {"collection": "c"})
    with pytest.raises(ValueError, match="^give --index"):
        store_target(None, None, None, {}, "--index")
    with pytest.raises(ValueError, match="needs --uri"):
        store_target(None, tmp_path, "milvus", {})


def test_search_queries_npy_are_normalised_as_the_documents_are(small, tmp_path, capsys):
    """``--queries`` embeddings are L2-normalised like every embedding the command line reads (the indexed
    documents among them): a query's scale must not change its code (before: a query scaled by 0.1 was
    coded on other levels and missed its own document; one of all zeros was searched)."""
    root, emb = small
    main(["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--out", str(tmp_path / "idx")])
    corpus = np.load(emb / "corpus.npy")
    args = ["-q", "search", "--index", str(tmp_path / "idx"), "-k", "3", "--oversample", "0", "--json"]
    results = []
    for scale in (1.0, 0.1, 10.0):
        np.save(tmp_path / "q.npy", corpus[:3] * scale)
        capsys.readouterr()
        assert main([*args, "--queries", str(tmp_path / "q.npy")]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[1] == results[0] and results[2] == results[0]
    assert [h["hits"][0]["id"] for h in results[0]] == ["d0", "d1", "d2"]
    np.save(tmp_path / "q.npy", np.zeros((2, 32), np.float32))
    assert main([*args, "--queries", str(tmp_path / "q.npy")]) == 2
    assert capsys.readouterr().err == f"qama: error: {tmp_path / 'q.npy'}: row 0 is all zeros\n"


def test_search_refuses_query_texts_and_queries_npy_together(small, tmp_path, capsys):
    """Texts beside ``--queries FILE.npy`` were silently left unsearched."""
    root, emb = small
    main(["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--out", str(tmp_path / "idx")])
    np.save(tmp_path / "q.npy", np.load(emb / "corpus.npy")[:1])
    capsys.readouterr()
    rc = main(["-q", "search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"), "my query"])
    assert rc == 2
    assert capsys.readouterr().err == "qama: error: give query texts or --queries FILE.npy, not both\n"


def test_index_overwrite_of_a_milvus_collection_is_refused_before_any_work(small, tmp_path, capsys):
    """``--overwrite`` went only to index folders: a collection was upserted into, its old documents kept."""
    root, emb = small
    uri = str(tmp_path / "m.db")
    argv = ["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--backend", "milvus", "--uri", uri]
    assert main([*argv, "--overwrite"]) == 2
    assert capsys.readouterr().err == (
        f"qama: error: {uri}: --overwrite replaces an index folder; documents are upserted into a Milvus "
        "collection by id, so drop the collection in Milvus to start anew\n"
    )
    assert not (tmp_path / "m.db").exists()


def test_train_and_index_a_plain_jsonl_corpus_embedding_it_once(tmp_path, monkeypatch, capsys):
    """A user's own corpus is a JSONL file, not a BEIR folder: `qama train --corpus F.jsonl` fits an adapter on
    it (titles, where some documents have them, as pseudo-queries), and `qama index --corpus F.jsonl` with that
    adapter finds each document by its own embedding; the corpus is embedded once, then read from the cache
    (before: `qama train` required --dataset, a folder with qrels; `index --corpus` embedded it anew each run)."""
    import qama.embeddings
    from qama.index import QamaIndex

    rng = np.random.default_rng(0)
    docs = [
        {"id": f"d{i}", "text": f"document {i} says something"} | ({"title": f"t{i}"} if i % 2 else {})
        for i in range(200)
    ]
    corpus_file = tmp_path / "mine.jsonl"
    corpus_file.write_text("".join(json.dumps(d) + "\n" for d in docs))
    vectors = rng.normal(size=(200, 32)).astype(np.float32)
    embedded: list[list[str]] = []

    class Model:
        max_seq_length = 128

    def encode(model, texts, batch_size=64, progress=True):
        embedded.append(list(texts))
        if texts[0].startswith("t"):  # the titles: near their documents
            return vectors[1::2][: len(texts)] + 0.1
        return vectors[: len(texts)]

    monkeypatch.setattr(qama.embeddings, "load_model", lambda name, device=None: Model())
    monkeypatch.setattr(qama.embeddings, "encode", encode)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    train = ["-q", "train", "--corpus", str(corpus_file), *cache, "--steps", "2", "--train-batch-size", "64"]
    assert main([*train, "--out", str(tmp_path / "ad")]) == 0
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["adapter"]["dim"] == 32 and config["data"]["n_pairs"] == 100  # the 100 titled documents
    assert embedded[0] == [f"{d.get('title', '')} {d['text']}".strip() for d in docs]
    assert embedded[1] == [f"t{i}" for i in range(1, 200, 2)] and len(embedded) == 2
    index = ["-q", "index", "--corpus", str(corpus_file), *cache, "--adapter", str(tmp_path / "ad"), "--plan", "2bit"]
    assert main([*index, "--keep-vectors", "--out", str(tmp_path / "ix")]) == 0
    assert len(embedded) == 2  # the corpus and the titles, from the cache
    ix = QamaIndex.open_with_adapter(tmp_path / "ix")
    _, rows = ix.search(vectors[:20] / np.linalg.norm(vectors[:20], axis=1, keepdims=True), 1, oversample=20)
    assert [ix.ids[int(r)] for r in rows[:, 0]] == [f"d{i}" for i in range(20)]
    # precomputed embeddings: a .npy file, one row per line; --pairs needs judgments a plain corpus has not
    np.save(tmp_path / "mine.npy", vectors)
    npy = ["-q", "train", "--corpus", str(corpus_file), "--embeddings", str(tmp_path / "mine.npy"), *cache]
    assert main([*npy, "--steps", "2", "--train-batch-size", "64", "--out", str(tmp_path / "ad2")]) == 0
    assert (tmp_path / "ad2" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main([*npy, "--pairs", "train", "--out", str(tmp_path / "ad3")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "qama: error: --pairs takes a qrels split of --dataset; a --corpus file has no judgments"
    assert main(["-q", "train", "--out", str(tmp_path / "ad4")]) == 2
    assert capsys.readouterr().err.strip() == "qama: error: give either --dataset or --corpus"
    assert not (tmp_path / "ad3").exists() and not (tmp_path / "ad4").exists()
    # embeddings without a meta.json: their model is unknown, so no titles; --model names it, and they are used
    assert json.loads((tmp_path / "ad2" / "config.json").read_text())["data"]["n_pairs"] == 0
    assert (
        main(
            [*npy, "--model", "fake/model", "--steps", "2", "--train-batch-size", "64", "--out", str(tmp_path / "ad5")]
        )
        == 0
    )
    assert json.loads((tmp_path / "ad5" / "config.json").read_text())["data"]["n_pairs"] == 100
    # an adapter fitted with query thresholds keeps them (auto): no query sample is made for the index
    monkeypatch.setattr(qama.embeddings, "query_sample", lambda *a, **k: pytest.fail("a query sample was made"))
    assert main([*index, "--out", str(tmp_path / "ix2")]) == 0
    ix1, ix2 = (QamaIndex.open_with_adapter(tmp_path / name).encoder.quantizer for name in ("ix", "ix2"))
    assert ix2.query_thresholds is not None
    np.testing.assert_array_equal(ix2.query_thresholds, ix1.query_thresholds)


def test_index_add_appends_documents_with_the_index_own_encoder(tmp_path, monkeypatch, capsys, caplog):
    """Documents that come later: `qama index --add --corpus NEW.jsonl --out IX` codes them with the index's
    own encoder (nothing refitted) and appends them, titled or not beside the others; each is then found by
    its own embedding (before: refused, `an index already exists here`, and `--shard` refitted the encoder on
    the new documents alone, so the index refused it: `the encoder given … is not the one this index was
    built with`). Embeddings of another model, a second add of the same ids, and --overwrite are refused."""
    from qama.index import QamaIndex

    rng = np.random.default_rng(0)

    def corpus(name: str, n: int, start: int, titled: bool, model: str = "org/model") -> tuple[Path, Path]:
        docs = [
            {"id": f"d{i}", "text": f"text {i}"} | ({"title": f"title {i}"} if titled else {})
            for i in range(start, start + n)
        ]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "emb.npy", rng.normal(size=(n, 32)).astype(np.float32))
        (tmp_path / name / "meta.json").write_text(json.dumps({"model": model}))
        return tmp_path / f"{name}.jsonl", tmp_path / name / "emb.npy"

    def run(*args: str) -> int:  # --add codes with the index's own plan and settings: it takes none of these
        settings = [] if "--add" in args else ["--query-sample", "none", "--plan", "2bit", "--keep-vectors"]
        return main(["-q", "index", *settings, *args])

    first, later, other = (
        corpus("first", 300, 0, False),
        corpus("later", 40, 300, True),
        corpus("x", 5, 900, True, "org/b"),
    )
    ix = tmp_path / "ix"
    assert run("--corpus", str(first[0]), "--embeddings", str(first[1]), "--out", str(ix)) == 0
    before = json.loads((ix / "manifest.json").read_text())["encoder"]
    assert run("--add", "--corpus", str(later[0]), "--embeddings", str(later[1]), "--out", str(ix)) == 0
    index = QamaIndex.open(ix)
    assert len(index) == 340 and json.loads((ix / "manifest.json").read_text())["encoder"] == before
    new = np.load(later[1])
    _, rows = index.search(new / np.linalg.norm(new, axis=1, keepdims=True), 1)
    assert [index.ids[int(r)] for r in rows[:, 0]] == [f"d{i}" for i in range(300, 340)]
    assert index.titles is None  # the index keeps no titles (the first documents had none): said, not stored
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [f"{ix}: this index keeps no titles; the titles of the added documents are not stored"]
    capsys.readouterr()
    for args, message in [
        (["--corpus", str(later[0]), "--embeddings", str(later[1])], "40 document id(s) already in the index"),
        (
            ["--corpus", str(other[0]), "--embeddings", str(other[1])],
            f"{ix}: the documents there were embedded with org/model, these with org/b",
        ),
        (["--corpus", str(other[0]), "--embeddings", str(other[1]), "--overwrite"], "--add adds documents to an index"),
        (
            ["--corpus", str(later[0]), "--embeddings", str(later[1]), "--plan", "hybrid", "--query-sample", "titles"],
            "--add adds documents to an index, coded by its own encoder and plan; it takes no --plan, --query-sample\n",
        ),
    ]:
        assert run("--add", *args, "--out", str(ix)) == 2
        assert capsys.readouterr().err.startswith(f"qama: error: {message}")
    assert len(QamaIndex.open(ix)) == 340
    # an index with titles takes documents without any: stored with empty titles
    assert run("--corpus", str(later[0]), "--embeddings", str(later[1]), "--out", str(tmp_path / "ix2")) == 0
    extra = corpus("extra", 3, 500, False)
    assert run("--add", "--corpus", str(extra[0]), "--embeddings", str(extra[1]), "--out", str(tmp_path / "ix2")) == 0
    index = QamaIndex.open(tmp_path / "ix2")
    assert [index.title(r) for r in range(len(index))] == [f"title {i}" for i in range(300, 340)] + ["", "", ""]


def test_quiet_silences_the_hugging_face_progress_bars(tmp_path, monkeypatch):
    """``-q`` (only warnings and errors) also turns off the bars of the Hugging Face libraries, such as
    "Loading weights" of a model (HF_HUB_DISABLE_PROGRESS_BARS); a value the user set is kept."""
    import os

    args = ["search", "--index", str(tmp_path / "none"), "x"]
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert main(args) == 2 and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert main(["-q", *args]) == 2 and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert main(["-q", *args]) == 2 and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_python_dash_m_qama_runs_the_command_line():
    """``python -m qama`` is the ``qama`` command (before: `No module named qama.__main__`)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "qama", "search", "-k", "0", "x"], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (2, "qama: error: k must be positive, got 0\n")


def test_search_text_escapes_control_characters_of_ids_and_titles():
    """``qama search`` prints a line a hit: a newline in a title or id broke the line, and a title holding a
    terminal escape sequence (``\\x1b[2J``: clear the screen) reached the terminal as it was."""
    from qama.backends import hits_text

    results = [{"query": "q\n2", "hits": [{"id": "a\tb", "title": "x\ny\x1b[2J Ü 日本", "score": 1.0}]}]
    assert hits_text(results) == "query: q\\n2\n   1.    1.0000  a\\tb  x\\ny\\x1b[2J Ü 日本\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give query text or --queries FILE.npy"),
        (["  "], "a query is empty"),
        (["text", "--queries", "q.npy"], "give query texts or --queries FILE.npy, not both"),
    ],
)
def test_search_without_a_query_is_refused_before_the_index_is_opened(tmp_path, capsys, extra, message):
    """``qama search --index DIR`` with no query (or an empty one) opened and verified the index first (its
    warning that k is larger than the index came before the error; here: no index at all)."""
    assert main(["-q", "search", "--index", str(tmp_path / "nowhere"), *extra]) == 2
    assert capsys.readouterr().err == f"qama: error: {message}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--dataset", "a", "--dataset", "b"],
        ["train", "--dataset", "a", "--embeddings", "e", "--embeddings", "f", "--out", "x"],
        ["train", "--dataset", "a", "--out", "x", "--out", "y"],
        ["index", "--corpus", "a.jsonl", "--corpus", "b.jsonl", "--out", "x"],
        ["search", "--index", "a", "--index", "b", "text"],
        ["search", "--index", "a", "--adapter", "x", "--adapter", "y", "text"],
        ["eval", "--dataset", "a", "--model", "m", "--model", "n"],
        ["report", "--model", "m", "--model", "n"],
    ],
)
def test_an_option_that_names_one_thing_given_twice_is_refused(argv, capsys):
    """``qama eval --dataset a --dataset b`` (as ``qama report`` takes them) evaluated b alone, silently; a second
    ``--out``, ``--embeddings``, ``--corpus`` or ``--index`` replaced the first likewise."""
    flag = next(a for i, a in enumerate(argv) if a.startswith("--") and a in argv[i + 1 :])
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    message = f"qama {argv[0]}: error: {flag} is given twice; this command takes one\n"
    assert exit_.value.code == 2 and capsys.readouterr().err.endswith(message)


def test_search_rescoring_with_vectors_an_index_without_them_names_the_option(small, tmp_path, capsys):
    """The error named only the Python argument (`rebuild it with keep_vectors=True`), not ``--keep-vectors``."""
    root, emb = small
    main(["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--out", str(tmp_path / "idx")])
    np.save(tmp_path / "q.npy", np.load(emb / "corpus.npy")[:1])
    args = ["-q", "search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy")]
    capsys.readouterr()
    assert main([*args, "--rescore", "vectors"]) == 2
    message = "this index keeps no vectors; rebuild it with qama index --keep-vectors (keep_vectors=True in Python)"
    assert capsys.readouterr().err == f"qama: error: {tmp_path / 'idx'}: {message}\n"


def test_index_and_train_of_a_beir_folder_need_no_judgments(tiny, tmp_path):
    """``qama index`` / ``qama train --dataset`` judge nothing: a BEIR folder without ``qrels/test.tsv`` (only a
    train split, or no qrels at all) is indexed and trained on (before: `qrels/test.tsv: split 'test' does not
    exist`, and ``--split``, whose help said `qrels split to evaluate`, had to name one for nothing)."""
    import shutil

    shutil.rmtree(tiny / "qrels")
    data = ["--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb"), "--query-sample", "none"]
    assert main(["-q", "index", *data, "--plan", "2bit", "--out", str(tmp_path / "ix")]) == 0
    train = ["--steps", "2", "--train-batch-size", "8", "--nested-dims", "8", "16", "--out", str(tmp_path / "ad")]
    assert main(["-q", "train", *data, *train]) == 0
    assert (tmp_path / "ad" / "model.safetensors").is_file()


def test_ablate_only_an_unknown_ablation_is_refused_before_any_work(tmp_path, capsys):
    """``qama ablate --only bogus`` loaded (or embedded) the dataset and then said `unknown ablation 'bogus'`."""
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--dataset", str(tmp_path / "nowhere"), "--only", "full", "bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "qama ablate: error: argument --only: invalid choice: 'bogus' (choose from" in err


def test_version(capsys):
    """``qama --version`` said `the following arguments are required: command`."""
    import qama

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"qama {qama.__version__}\n"


def test_search_json_help_says_a_bare_json_prints_not_that_json_is_the_default():
    """``qama search --help`` read `(-: print them, in place of the text output) (default: -)`: as if the JSON
    were printed by default, when the hits are, and ``-`` is what a bare ``--json`` means."""
    from qama.cli import build_parser

    search = build_parser()._subparsers._group_actions[0].choices["search"]  # type: ignore[union-attr]
    (action,) = [a for a in search._actions if "--json" in a.option_strings]
    assert (
        action.help
        == "write the results as JSON to this file (-: print them, in place of the text output); a bare --json: -"
    )
    assert action.default is None and action.const == Path("-")
