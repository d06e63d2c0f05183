"""Query calibration: queries coded by quantiles of query-like embeddings, kept by every store."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qama.adapter import AdapterConfig, QamaAdapter
from qama.backends import open_backend
from qama.cli import main
from qama.codes import hamming_distances, make_plan, pack
from qama.encoders import fit_encoder
from qama.index import QamaIndex
from qama.quantize import Quantizer, plan_values, quantile_thresholds
from qama.search import AdapterEncoder, ThresholdEncoder, hamming_search
from tests.conftest import collection_name, require_milvus

D = 32
RNG = np.random.default_rng(3)
DOCS = RNG.normal(size=(400, D)).astype(np.float32)
QUERIES = (RNG.normal(size=(60, D)) + 0.7).astype(np.float32)  # shifted: queries sit apart from documents


@pytest.mark.parametrize("plan_name", ["2bit", "1.5bit", "1bit", "0.5bit", "hybrid"])
def test_query_levels_are_quantiles_of_the_sample(plan_name):
    plan = make_plan(plan_name, D)
    encoder = ThresholdEncoder.fit(DOCS, plan, query_sample=QUERIES)
    values = plan_values(QUERIES, plan)
    expected_thr = quantile_thresholds(values, plan.value_levels)
    np.testing.assert_array_equal(encoder.quantizer.query_thresholds, expected_thr)
    levels = (values[:, :, None] > expected_thr[None]).sum(axis=2)
    np.testing.assert_array_equal(encoder.encode_queries(QUERIES), pack(levels, plan))
    # documents keep the documents' thresholds
    np.testing.assert_array_equal(encoder.encode(DOCS), ThresholdEncoder.fit(DOCS, plan).encode(DOCS))
    # the sample's own levels are balanced: each level holds its share of the sample
    counts = np.stack([(levels == lv).mean(axis=0) for lv in range(4)])
    for j, n_levels in enumerate(plan.value_levels):
        np.testing.assert_allclose(counts[:n_levels, j], 1 / n_levels, atol=0.02)


def test_without_a_sample_queries_use_the_document_thresholds_and_the_old_checksum():
    plan = make_plan("hybrid", D)
    encoder = ThresholdEncoder.fit(DOCS, plan)
    np.testing.assert_array_equal(encoder.encode_queries(QUERIES), encoder.encode(QUERIES))
    q = encoder.quantizer
    h = hashlib.sha256(plan.spec().encode())
    h.update(q.thresholds.astype(np.float32).tobytes())
    h.update(q.centroids.astype(np.float32).tobytes())
    assert encoder.checksum == h.hexdigest()  # indexes built before query calibration still open
    encoder.calibrate_queries(QUERIES)
    assert encoder.checksum != h.hexdigest()


def test_bad_query_samples():
    plan = make_plan("2bit", D)
    q = Quantizer.fit(plan_values(DOCS, plan), plan)
    with pytest.raises(ValueError, match=r"a query sample needs values of shape \(n >= 2, 32\), got \(1, 32\)"):
        q.calibrate_queries(plan_values(QUERIES[:1], plan))
    bad = plan_values(QUERIES, plan)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="the query sample contains NaN or inf values"):
        q.calibrate_queries(bad)
    with pytest.raises(ValueError, match=r"needs query thresholds \(32, 3\), got \(31, 3\)"):
        Quantizer(plan, q.thresholds, q.centroids, q.thresholds[:-1])


def test_state_round_trip():
    plan = make_plan("hybrid", D)
    encoder = ThresholdEncoder.fit(DOCS, plan, query_sample=QUERIES)
    again = ThresholdEncoder.from_state(plan, encoder.state)
    assert again.checksum == encoder.checksum
    np.testing.assert_array_equal(again.encode_queries(QUERIES), encoder.encode_queries(QUERIES))


def test_index_keeps_and_uses_the_query_thresholds(tmp_path):
    plan = make_plan("hybrid", D)
    encoder = ThresholdEncoder.fit(DOCS, plan, query_sample=QUERIES)
    ids = [f"d{i}" for i in range(len(DOCS))]
    QamaIndex.create(tmp_path / "ix", encoder, DOCS, ids)
    index = QamaIndex.open(tmp_path / "ix")
    np.testing.assert_array_equal(index.encoder.quantizer.query_thresholds, encoder.quantizer.query_thresholds)
    scores, rows = index.search(QUERIES, k=5, oversample=0)
    dist, ref = hamming_search(encoder.encode(DOCS), encoder.encode_queries(QUERIES), 5)
    np.testing.assert_array_equal(rows, ref)
    np.testing.assert_array_equal(-scores, dist)


def _adapter() -> QamaAdapter:
    adapter = QamaAdapter(AdapterConfig(dim=D))
    adapter.init_linear(DOCS)
    adapter.calibrate(DOCS)
    return adapter


def test_adapter_query_thresholds_saved_and_used(tmp_path):
    adapter = _adapter()
    before = adapter.encode(QUERIES, "hybrid", queries=True)
    np.testing.assert_array_equal(before, adapter.encode(QUERIES, "hybrid"))  # not calibrated: the same
    adapter.calibrate_queries(QUERIES)
    assert bool(adapter.query_calibrated)
    z = adapter.transform(QUERIES)
    np.testing.assert_allclose(adapter.qthr_2bit.numpy(), np.quantile(z, [0.25, 0.5, 0.75], axis=0).T, rtol=1e-5)
    coded = adapter.encode(QUERIES, "hybrid", queries=True)
    assert not np.array_equal(coded, before)
    adapter.save(tmp_path / "ad")
    loaded = QamaAdapter.load(tmp_path / "ad")
    np.testing.assert_array_equal(loaded.encode(QUERIES, "hybrid", queries=True), coded)
    encoder = AdapterEncoder(loaded, "hybrid", fit_emb=DOCS)
    np.testing.assert_array_equal(encoder.encode_queries(QUERIES), coded)
    np.testing.assert_array_equal(AdapterEncoder(loaded, "hybrid", state=encoder.state).encode_queries(QUERIES), coded)


def test_adapter_saved_before_query_thresholds_still_loads(tmp_path):
    adapter = _adapter()
    adapter.save(tmp_path / "old")
    weights = tmp_path / "old" / "model.safetensors"
    new_keys = ("qthr_", "query_calibrated")
    tensors = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(new_keys)}
    save_file(tensors, str(weights))
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    loaded = QamaAdapter.load(tmp_path / "old")
    assert not bool(loaded.query_calibrated)
    np.testing.assert_array_equal(loaded.encode(QUERIES, "2bit", queries=True), adapter.encode(QUERIES, "2bit"))
    torch.testing.assert_close(loaded.thr_2bit, adapter.thr_2bit)


def test_milvus_collection_keeps_the_query_thresholds(request):
    require_milvus()
    uri = request.getfixturevalue("milvus_uri")
    encoder = ThresholdEncoder.fit(DOCS, make_plan("hybrid", D), query_sample=QUERIES)
    name = collection_name()
    ids = [f"d{i}" for i in range(len(DOCS))]
    with open_backend(uri, "milvus", encoder, create=True, collection=name, dim=D) as store:
        store.add(DOCS, ids)
    with open_backend(uri, "milvus", collection=name) as store:
        np.testing.assert_array_equal(store.encoder.quantizer.query_thresholds, encoder.quantizer.query_thresholds)
        _, got = store.search(QUERIES[:5], k=3, oversample=0)
    dist = hamming_distances(encoder.encode_queries(QUERIES[:5]), encoder.encode(DOCS))
    for row, hits in zip(dist, got, strict=True):
        assert sorted(row[[int(h[1:]) for h in hits]]) == sorted(np.sort(row)[:3])


def test_cli_index_with_a_query_sample_file(tmp_path, tiny):
    emb = tiny.parent / "tiny-emb"
    sample = tmp_path / "sample.npy"
    np.save(sample, np.load(emb / "queries.npy"))
    args = ["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--plan", "2bit"]
    assert main([*args, "--query-sample", str(sample), "--out", str(tmp_path / "ix")]) == 0
    index = QamaIndex.open(tmp_path / "ix")
    expected = quantile_thresholds(plan_values(np.load(sample), index.plan), index.plan.value_levels)
    np.testing.assert_array_equal(index.encoder.quantizer.query_thresholds, expected)
    assert main([*args, "--query-sample", "none", "--out", str(tmp_path / "ix2")]) == 0
    assert QamaIndex.open(tmp_path / "ix2").encoder.quantizer.query_thresholds is None
    assert main([*args, "--query-sample", "nosuchsplit", "--out", str(tmp_path / "ix3")]) == 2


def test_a_query_sample_neither_file_nor_split_is_refused_before_the_queries_are_read(tmp_path, tiny, capsys):
    """``qama index --query-sample sampel.txt`` (a mistyped file) was taken for a split name: every query of the
    dataset was embedded (or its queries.npy read) first, and only then was the split found missing."""
    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / "corpus.npy").write_bytes((tiny.parent / "tiny-emb" / "corpus.npy").read_bytes())  # no queries.npy
    args = ["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--plan", "2bit"]
    assert main([*args, "--query-sample", "sampel.txt", "--out", str(tmp_path / "ix")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qama: error: query sample 'sampel.txt' is neither a file nor a split of tiny (")
    assert not (tmp_path / "ix").exists()


def test_cli_eval_prints_the_breakdown(tmp_path, tiny, capsys):
    emb = tiny.parent / "tiny-emb"
    common = ["--dataset", str(tiny), "--embeddings", str(emb)]
    train = ["-q", "train", *common, "--steps", "2", "--train-batch-size", "16", "--nested-dims", "8", "16"]
    assert main([*train, "--query-sample", "test", "--out", str(tmp_path / "ad")]) == 0
    assert bool(QamaAdapter.load(tmp_path / "ad").query_calibrated)
    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    argv = ["-q", "eval", *common, "--adapter", str(tmp_path / "ad"), "--plans", "2bit", "--query-sample", "test"]
    assert main([*argv, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "Where the adapter's codes lose" in printed and "threshold-qcal" in printed
    result = json.loads(out_json.read_text())
    rows = {(r["format"], r["plan"], r["dims"], r["rescore"]): r["ndcg@10"] for r in result["rows"]}
    b = [x for x in result["breakdown"] if (x["plan"], x["dims"]) == ("2bit", 16)][0]
    code = rows[("qama", "2bit", 16, None)]
    assert b["quantisation"] == pytest.approx(code / rows[("qama", None, 16, None)])
    assert b["transform"] == pytest.approx(rows[("qama", None, 16, None)] / rows[("fp32", None, 16, None)])
    assert b["query_side"] == pytest.approx(code / rows[("qama", "2bit", 16, 4)])
    assert b["untrained"] == pytest.approx(code / rows[("threshold-qcal", "2bit", 16, None)])


def _clustered(n: int = 800, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Documents in 40 clusters and a pseudo-query (a noisy copy, like a title) for each."""
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(40, d))[rng.integers(0, 40, n)] + 0.5 * rng.normal(size=(n, d))
    docs = (docs / np.linalg.norm(docs, axis=1, keepdims=True)).astype(np.float32)
    titles = docs + 0.15 * rng.normal(size=docs.shape)
    return docs, (titles / np.linalg.norm(titles, axis=1, keepdims=True)).astype(np.float32)


def test_the_check_catches_a_training_that_loses_and_keeps_untrained_codes(tmp_path, caplog):
    from qama.api import build_index
    from qama.train import TrainConfig, fit

    docs, titles = _clustered()
    # a learning rate 1000x the default wrecks the codes: the check must see it on the held-out titles
    cfg = TrainConfig(steps=60, lr=0.3, batch_size=64, nested_dims=(16, 32), w_nce=1.0, progress=False)
    with caplog.at_level(logging.INFO, logger="qama.check"):
        adapter = fit(docs, cfg, pairs=(titles, docs), out_dir=tmp_path / "ad")
    check = QamaAdapter.load(tmp_path / "ad").metadata["check"]
    summary = [r for r in caplog.records if r.getMessage().startswith("never-worse check:")]
    assert len(summary) == 1 and summary[0].levelno == logging.WARNING
    assert f"training lost at {', '.join(check['lost'])}, served by untrained codes there" in summary[0].getMessage()
    assert check["held_out_pairs"] == 160  # 20% of the 800 pairs, never seen by the fit
    lost = {(r["plan"], r["dims"]) for r in check["results"] if r["lost"]}
    assert ("2bit", 32) in lost and set(check["lost"]) == {f"{p}@{d}" for p, d in lost}
    for r in check["results"]:
        assert r["lost"] == (r["adapter"] < r["untrained"] - 0.02 and r["adapter"] - r["untrained"] < -3 * r["stderr"])
    served = fit_encoder(docs, "2bit", adapter, dim=32, query_sample=titles)
    assert isinstance(served, ThresholdEncoder)
    np.testing.assert_array_equal(served.encode(docs), ThresholdEncoder.fit(docs, make_plan("2bit", 32)).encode(docs))
    kept = [r for r in check["results"] if not r["lost"]]
    if kept:
        assert isinstance(fit_encoder(docs, kept[0]["plan"], adapter, dim=kept[0]["dims"]), AdapterEncoder)
    index = build_index(tmp_path / "ix", tmp_path / "ad", docs, [f"d{i}" for i in range(len(docs))], plan="2bit")
    assert index.manifest["encoder"]["kind"] == "thresholds"  # searchable without the adapter
    from qama.api import encode

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qama.api"):  # a batch has no corpus to fit thresholds on
        np.testing.assert_array_equal(encode(adapter, docs[:5], "2bit", 32), adapter.encode(docs[:5], "2bit", 32))
    assert [r.getMessage() for r in caplog.records] == [
        "2bit at 32 dims: the adapter's check found untrained codes better; these are the adapter's codes "
        "(build_index or qama.encoders.fit_encoder on the corpus serve untrained ones)"
    ]


def test_known_item_gains_reference():
    from qama.check import known_item_gains

    codes = np.array([[0b0000], [0b0001], [0b0011], [0b0001]], dtype=np.uint8)
    queries = np.array([[0b0001], [0b0011]], dtype=np.uint8)
    # query 0 -> row 1: distance 0, tied with row 3: expected rank 1.5; query 1 -> row 0: distance 2,
    # rows 1, 2, 3 are closer: rank 4
    gains = known_item_gains(codes, queries, np.array([1, 0]))
    np.testing.assert_allclose(gains, [1 / np.log2(2.5), 1 / np.log2(5)])


def test_auto_falls_back_when_the_titles_model_cannot_be_loaded(tmp_path, tiny, monkeypatch):
    """Precomputed embeddings of a model not on this machine (e.g. a 768-dim model): --query-sample auto
    and --pseudo-queries auto go without titles instead of failing; 'titles' says why it cannot."""
    import qama.embeddings

    def unavailable(name, *args, **kwargs):
        raise OSError(f"{name} is not a local folder and the hub cannot be reached")

    monkeypatch.setattr(qama.embeddings, "load_model", unavailable)
    emb = tiny.parent / "tiny-emb"
    (emb / "meta.json").write_text(json.dumps({"model": "org/unavailable", "dimension": 16}))
    args = ["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--plan", "2bit"]
    assert main([*args, "--out", str(tmp_path / "ix")]) == 0
    assert QamaIndex.open(tmp_path / "ix").encoder.quantizer.query_thresholds is None
    assert main([*args, "--query-sample", "titles", "--out", str(tmp_path / "ix2")]) == 2


def _fake_model(monkeypatch, vectors) -> list[list[str]]:
    """Stand in for the model in :mod:`qama.embeddings`: ``vectors(texts, call)`` embeds the ``call``-th
    batch of texts (0-based); returns the list of the texts embedded, a list a call."""
    import qama.embeddings

    seen: list[list[str]] = []

    class Model:
        max_seq_length = 128

    def encode(model, texts, batch_size=64, progress=True):
        seen.append(list(texts))
        return vectors(texts, len(seen) - 1)

    monkeypatch.setattr(qama.embeddings, "load_model", lambda name, device=None: Model())
    monkeypatch.setattr(qama.embeddings, "encode", encode)
    return seen


def test_a_query_sample_of_a_beir_queries_jsonl_embeds_its_query_texts(tmp_path, tiny, monkeypatch):
    """``--query-sample queries.jsonl`` (the BEIR file of queries): the texts of its records are embedded (before:
    each line of JSON, ``{"_id": "q0", "text": "query 0"}``, was embedded as a query text, silently)."""
    emb = tiny.parent / "tiny-emb"
    vectors = np.random.default_rng(3).normal(size=(6, 16)).astype(np.float32)
    seen = _fake_model(monkeypatch, lambda texts, call: vectors[: len(texts)])
    args = ["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--plan", "2bit"]
    sample = tiny / "queries.jsonl"
    assert main([*args, "--query-sample", str(sample), "--out", str(tmp_path / "ix")]) == 0
    assert seen == [[f"query {i}" for i in range(6)]]
    index = QamaIndex.open(tmp_path / "ix")
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = quantile_thresholds(plan_values(normed, index.plan), index.plan.value_levels)
    np.testing.assert_array_equal(index.encoder.quantizer.query_thresholds, expected)


def test_sentence_sample_draws_one_sentence_of_five_words_from_each_document():
    from qama.data import Dataset, sentence_sample

    texts = [
        "Short one. This sentence has exactly five words! And this one has six words here?",
        "too short. tiny",  # no sentence of five words: no sample
        "A title without a stop The first sentence runs on. Second sentence of the text here.",
        "",
    ]
    ds = Dataset("t", [f"d{i}" for i in range(4)], texts, [""] * 4, [], [], {})
    allowed = [
        {"This sentence has exactly five words!", "And this one has six words here?"},
        set(),
        {"A title without a stop The first sentence runs on.", "Second sentence of the text here."},
        set(),
    ]
    got = sentence_sample(ds)
    assert len(got) == 2
    assert got == sentence_sample(ds)  # same dataset and seed, same sentences
    assert all(any(s in a for a in allowed) for s in got)
    assert len({s for s in got if s in allowed[0]}) == 1 and len({s for s in got if s in allowed[2]}) == 1
    assert len(sentence_sample(ds, max_docs=1)) == 1
    seen = {s for seed in range(20) for s in sentence_sample(ds, seed=seed)}
    assert seen == allowed[0] | allowed[2]  # every eligible sentence can be drawn


def test_sentences_of_chinese_text_end_at_ideographic_stops_and_count_ten_characters():
    from qama.data import Dataset, _sentences, sentence_sample

    text = "深度学习模型需要大量的训练数据。今天天气好。你知道这个方法为什么有效吗？真的！"
    assert list(_sentences(text)) == ["深度学习模型需要大量的训练数据。", "你知道这个方法为什么有效吗？"]
    ds = Dataset("zh", ["d0", "d1"], [text, "量化后的向量可以用汉明距离检索"], ["", ""], [], [], {})
    seen = {s for seed in range(20) for s in sentence_sample(ds, seed=seed)}
    assert seen == {*_sentences(text), "量化后的向量可以用汉明距离检索"}  # a text with no stop is one sentence
    assert len(sentence_sample(ds)) == 2


def test_sentences_of_japanese_text_keep_their_closing_brackets_and_need_ten_characters():
    from qama.data import _sentences

    text = (
        "東京は日本の首都です。"  # 10 characters: long enough
        "大阪は大きな町です．"  # 9 (full-width stop): too short
        "はい。この論文では新しい手法を提案する！"
        "「量子化は本当に有効なのか？」と彼は聞いた。"  # the sentence ends after 」
        "ｶﾀｶﾅﾃﾞｶｲﾀﾌﾞﾝﾃﾞｽ｡"  # half-width katakana and stop
        "『彼は「本当に有効なのか？」』次の文はここにあります。"  # two closers: the sentence ends after both
    )
    assert list(_sentences(text)) == [
        "東京は日本の首都です。",
        "この論文では新しい手法を提案する！",
        "「量子化は本当に有効なのか？」",
        "ｶﾀｶﾅﾃﾞｶｲﾀﾌﾞﾝﾃﾞｽ｡",
        "『彼は「本当に有効なのか？」』",
        "次の文はここにあります。",
    ]


def test_sentences_of_a_mixed_document_by_words_or_by_characters():
    from qama.data import _sentences

    text = (
        "This sentence has five words. 这是一个中文句子的例子。 Too short here. "
        "यह एक हिंदी वाक्य है। هل هذه جملة عربية طويلة؟ 이것은 다섯 단어로 된 문장입니다 정말. "
        "使用 BERT 模型。The model is 3.5 times faster!"  # 4 Han characters and 3 words: too short
    )
    assert list(_sentences(text)) == [
        "This sentence has five words.",
        "这是一个中文句子的例子。",
        "यह एक हिंदी वाक्य है।",
        "هل هذه جملة عربية طويلة؟",
        "이것은 다섯 단어로 된 문장입니다 정말.",  # Korean: by its spaces, not its syllables
        "The model is 3.5 times faster!",
    ]


def test_text_of_only_short_fragments_gives_no_sentence():
    from qama.data import Dataset, _sentences, sentence_sample

    texts = ["短句。はい。OK. 是的！Yes no.", "「本当か？」と聞いた。", "一二三四五六七八九", "ภาษาไทย", ""]
    assert [list(_sentences(t)) for t in texts] == [[]] * len(texts)
    ds = Dataset("t", [f"d{i}" for i in range(len(texts))], texts, [""] * len(texts), [], [], {})
    assert sentence_sample(ds) == []


def _old_sentence_sample(texts: list[str], seed: int = 0) -> list[str]:
    """sentence_sample as of 3fac3e9: split after . ! ? and whitespace, five whitespace words."""
    import re

    rng = np.random.default_rng(seed)
    out = []
    for r in rng.permutation(len(texts)).tolist():
        sentences = [t for t in re.split(r"(?<=[.!?])\s+", texts[r]) if len(t.split(None, 4)) >= 5]
        if sentences:
            out.append(sentences[int(rng.integers(len(sentences)))].strip())
            if len(out) == 2000:
                break
    return out


def test_sentence_sample_of_english_text_is_what_it_was(tmp_path):
    """English corpora draw the sentences they drew before other scripts were read (3fac3e9): the measured
    figures of benchmarks/RESULTS_training.md were made with them."""
    from qama.data import Dataset, load_dataset, sentence_sample

    texts = [
        'Value 3.5 is e.g.x fine.  Two  spaces\nand a newline here! "Quoted sentence ends here." Next one!',
        "Is it? Yes it is, is it not?\tTabs count as spaces here too. U.S. law is a thing here.",
        "One two three four five",
        "no sentence at all",
    ]
    ds = Dataset("t", [f"d{i}" for i in range(len(texts))], texts, [""] * len(texts), [], [], {})
    for seed in range(10):
        assert sentence_sample(ds, seed=seed) == _old_sentence_sample(texts, seed)
    cranfield = load_dataset("cranfield", cache_dir=tmp_path)
    got = sentence_sample(cranfield)
    assert got == _old_sentence_sample(cranfield.doc_texts) and len(got) == 1398
    assert hashlib.sha256("\n".join(got).encode()).hexdigest().startswith("1ea8bdfa7d1d6b6b")


def test_sentence_sample_of_scifact_is_what_it_was():
    """The sentences that benchmarks/RESULTS_training.md measured SciFact's query sample with (seed 0)."""
    from qama.data import load_dataset, sentence_sample
    from tests.conftest import SHARED

    data = SHARED / "datasets" / "scifact"
    if not (data / "corpus.jsonl").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED}")
    got = sentence_sample(load_dataset(data))
    assert len(got) == 2000
    assert hashlib.sha256("\n".join(got).encode()).hexdigest().startswith("8f33ec9c007fcd5d")


@pytest.mark.parametrize(
    "text",
    ["A short one here, ok. " * 50_000, "这是一个很长的中文句子。" * 50_000, "word " * 200_000, "模" * 500_000],
    ids=["sentences", "chinese-sentences", "one-long-sentence", "no-stop"],
)
def test_sentence_sample_of_a_huge_document_holds_neither_all_its_sentences_nor_all_its_words(text):
    import tracemalloc

    from qama.data import Dataset, sentence_sample

    ds = Dataset("t", ["d"], [text], [""], [], [], {})
    tracemalloc.start()
    try:
        got = sentence_sample(ds)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == 1
    assert peak < 2 * len(text)  # a list of all its sentences or words would take several times the text


def test_sentence_terminators_and_spaceless_scripts_are_what_their_comments_say():
    """Each extra sentence end is a Unicode Sentence_Terminal; each character counted as a word-ish unit
    belongs to Han, Hiragana, Katakana, Thai, Lao, Tibetan, Myanmar or Khmer (or is a mark they share, such
    as ー, or unassigned)."""
    regex = pytest.importorskip("regex")
    from qama.data import _SPACELESS, _TERMINATORS

    assert all(regex.fullmatch(r"\p{Sentence_Terminal}", c) for c in _TERMINATORS)
    scripts = (
        r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Tibetan}\p{Myanmar}\p{Khmer}"
        r"\p{Common}\p{Inherited}\p{Cn}]"
    )
    counted = [chr(c) for c in range(0x110000) if _SPACELESS.fullmatch(chr(c))]
    assert all(regex.fullmatch(scripts, c) for c in counted)


def test_quality_targets_refuses_to_compose_saved_runs_of_different_splits(tmp_path):
    """benchmarks/quality_targets.py --load titled the table by the split of the last file read: a train
    file and a test file made one table of both, which replaced the test queries' section."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_targets.py"
    cells = [("qama", None, 384, None), ("qama", "hybrid", 384, 4)]
    cells += [(f, p, d, None) for f in ("qama", "threshold", "threshold-qcal") for p, d in [("2bit", 384),
              ("hybrid", 384), ("1.5bit", 384), ("1bit", 384), ("2bit", 192), ("2bit", 96)]]  # fmt: skip
    ret = {"|".join(map(str, k)): 0.9 for k in cells}
    item = {"seed": 0, "ret": ret, "seconds": 1.0, "check": {"results": [], "lost": []}}
    (tmp_path / "train.json").write_text(json.dumps([{**item, "name": "scifact", "split": "train"}]))
    (tmp_path / "test.json").write_text(json.dumps([{**item, "name": "cranfield"}]))  # before --split: test
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\n## Quality on every dataset (issue 12)\n\nthe test queries' table\n")
    argv = [sys.executable, str(script), "--out", str(out), "--load"]
    done = subprocess.run([*argv, str(tmp_path / "train.json"), str(tmp_path / "test.json")], capture_output=True)
    assert done.returncode == 2 and b"different splits (train, test)" in done.stderr
    assert out.read_text().endswith("the test queries' table\n")
    done = subprocess.run([*argv, str(tmp_path / "train.json")], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert "the test queries' table\n\n## Quality on every dataset (issue 12): train queries\n" in out.read_text()


def test_quality_targets_saves_again_what_it_loaded_from_files_older_than_run_records(tmp_path):
    """benchmarks/quality_targets.py --load OLD --save NEW (files merged into one) raised IndexError where
    the old files had no ``run`` record."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_targets.py"
    items = [{"name": n, "seed": 0, "ret": {"qama|None|384|None": 0.9}, "seconds": 1.0} for n in ("a", "b")]
    for item in items:
        (tmp_path / f"{item['name']}.json").write_text(json.dumps([item]))
    merged = tmp_path / "merged.json"
    argv = [sys.executable, str(script), "--save", str(merged), "--load", str(tmp_path / "a.json")]
    done = subprocess.run([*argv, str(tmp_path / "b.json")], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert [(x["name"], x["split"], x["ret"], x.get("run")) for x in json.loads(merged.read_text())] == [
        (n, "test", {"qama|None|384|None": 0.9}, None) for n in ("a", "b")
    ]


def _untitled_two_sentence_corpus(small, monkeypatch):
    """The small dataset without titles, each document two sentences, its embeddings' model named
    ``org/model`` (meta.json), and a fake model that embeds texts as rows of ``sample``: ``(root, emb, sample,
    texts_seen)``, ``texts_seen`` the batches the fake model embedded."""
    import json

    root, emb = small
    docs = [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines()]
    for i, doc in enumerate(docs):
        doc["text"] = f"Document number {i} begins here. It then says one more thing about {i}."
    (root / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (emb / "meta.json").write_text(json.dumps({"model": "org/model"}))
    sample = np.random.default_rng(5).normal(size=(len(docs), 32)).astype(np.float32) + 0.5
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    texts_seen = _fake_model(monkeypatch, lambda texts, call: sample[: len(texts)])
    return root, emb, sample, texts_seen


def test_cli_auto_codes_untrained_queries_by_sentences_when_no_document_has_a_title(tmp_path, small, monkeypatch):
    """A corpus without titles: --query-sample auto calibrates untrained codes on sentences of the documents
    (embedded once, with the model the embeddings' meta.json names), and leaves an adapter's queries alone."""
    root, emb, sample, texts_seen = _untitled_two_sentence_corpus(small, monkeypatch)
    args = ["-q", "index", "--dataset", str(root), "--embeddings", str(emb), "--plan", "2bit"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "ix")]) == 0
    assert len(texts_seen) == 1 and len(texts_seen[0]) == len(sample)
    assert all(t.startswith("Document number") or t.startswith("It then says") for t in texts_seen[0])
    index = QamaIndex.open(tmp_path / "ix")
    expected = quantile_thresholds(plan_values(sample, index.plan), index.plan.value_levels)
    np.testing.assert_array_equal(index.encoder.quantizer.query_thresholds, expected)
    assert main([*args, "--query-sample", "sentences", "--out", str(tmp_path / "ix2")]) == 0
    np.testing.assert_array_equal(QamaIndex.open(tmp_path / "ix2").encoder.quantizer.query_thresholds, expected)
    assert len(texts_seen) == 1  # the second time from the cache
    (emb / "meta.json").unlink()  # the embeddings' model unknown: auto does not mix in texts of a guessed model
    assert main([*args, "--out", str(tmp_path / "ix3")]) == 0
    assert QamaIndex.open(tmp_path / "ix3").encoder.quantizer.query_thresholds is None
    assert main([*args, "--query-sample", "sentences", "--out", str(tmp_path / "ix4")]) == 0  # asked for: used
    assert QamaIndex.open(tmp_path / "ix4").encoder.quantizer.query_thresholds is not None
    from qama.data import load_dataset
    from qama.embeddings import EmbeddingError, query_sample

    short = load_dataset(root)
    short.doc_texts = ["too short."] * len(short.doc_texts)
    corpus = np.load(emb / "corpus.npy")
    message = (
        "^query sample 'sentences': ds: fewer than 2 documents have a sentence of five words, "
        "or of ten characters of a script without spaces$"
    )
    with pytest.raises(EmbeddingError, match=message):
        query_sample(short, corpus, None, "sentences", cache_dir=tmp_path / "cache")
    got = query_sample(short, corpus, None, "auto", cache_dir=tmp_path / "cache", sentences_fallback=True)
    assert got == (None, "none (no titles, and no sentences to use)")


@pytest.mark.parametrize("with_titles", [True, False])
def test_cli_index_of_a_jsonl_corpus_calibrates_queries_on_its_titles_or_sentences(tmp_path, monkeypatch, with_titles):
    """`qama index --corpus FILE.jsonl` (no --dataset): auto codes the queries of untrained codes by the
    corpus's titles, else by its sentences; a split name has no queries to take."""
    import json

    rng = np.random.default_rng(1)
    docs = [
        {"_id": f"d{i}", "text": f"Document {i} opens with this sentence. Then it adds a second one here."}
        | ({"title": f"title {i}"} if with_titles else {})
        for i in range(50)
    ]
    corpus_file = tmp_path / "mine.jsonl"
    corpus_file.write_text("".join(json.dumps(d) + "\n" for d in docs))
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts_seen = _fake_model(monkeypatch, lambda texts, call: np.roll(vectors, min(call, 1), axis=1)[: len(texts)])
    args = ["-q", "index", "--corpus", str(corpus_file), "--plan", "2bit", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(tmp_path / "ix")]) == 0
    assert texts_seen[0] == [f"{d.get('title', '')} {d['text']}".strip() for d in docs]  # the corpus
    if with_titles:
        assert texts_seen[1] == [f"title {i}" for i in range(50)]
    else:
        assert len(texts_seen[1]) == 50 and all(t.endswith("sentence.") or t.endswith("here.") for t in texts_seen[1])
    index = QamaIndex.open(tmp_path / "ix")
    expected = quantile_thresholds(plan_values(np.roll(vectors, 1, axis=1), index.plan), index.plan.value_levels)
    np.testing.assert_array_equal(index.encoder.quantizer.query_thresholds, expected)
    assert main([*args, "--query-sample", "train", "--out", str(tmp_path / "ix2")]) == 2


@pytest.mark.parametrize("source", ["titles", "sentences", "queries.txt"])
def test_cli_index_refuses_a_query_sample_whose_dimension_is_not_the_corpus(tmp_path, monkeypatch, capsys, source):
    """`qama index --corpus F.jsonl --embeddings X.npy` with no meta.json beside X.npy: the titles or sentences
    are embedded with --model on a guess; when they have more dimensions than the corpus, another model made
    the corpus, and its queries must not be coded by the first dimensions of the sample."""
    import json

    text = "has one sentence of words."
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"Document {i} {text}"} for i in range(20)]
    corpus_file = tmp_path / "mine.jsonl"
    corpus_file.write_text("".join(json.dumps(d) + "\n" for d in docs))
    np.save(tmp_path / "corpus.npy", np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))
    vectors = np.random.default_rng(1).normal(size=(20, 16)).astype(np.float32)
    _fake_model(monkeypatch, lambda texts, call: vectors[: len(texts)])
    args = ["-q", "index", "--corpus", str(corpus_file), "--embeddings", str(tmp_path / "corpus.npy"), "--plan", "1bit"]
    if source == "queries.txt":  # a query log, embedded with --model too
        (tmp_path / source).write_text("what is document 1\nwhat is document 2\n")
        source = str(tmp_path / source)
    args += ["--query-sample", source, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "ix")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    what = {"titles": "20 document titles", "sentences": "20 sentences of the documents"}.get(source)
    what = what or f"2 queries from {source}"
    model = "sentence-transformers/all-MiniLM-L6-v2"
    assert err == f"qama: error: query sample '{source}': {what} embedded with {model} have 16 dimensions, the corpus 8"
    assert not (tmp_path / "ix").exists()


def test_quality_targets_compares_the_adapter_with_untrained_codes_query_by_query(tmp_path):
    """benchmarks/quality_targets.py's paired column: the adapter's per-query retention averaged over the
    seeds, minus the untrained codes', in points ± its standard error; "—" where a row has no figures."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_targets.py"
    cells = [("qama", None, 384, None), ("qama", "hybrid", 384, 4)]
    cells += [(f, p, d, None) for f in ("qama", "threshold", "threshold-qcal") for p, d in [("2bit", 384),
              ("hybrid", 384), ("1.5bit", 384), ("1bit", 384), ("2bit", 192), ("2bit", 96)]]  # fmt: skip
    ret = {"|".join(map(str, k)): 0.9 for k in cells}
    untrained = {"threshold-qcal|2bit|384": [0.7, 0.7, 0.9, 0.7], "threshold-qcal|2bit|192": [0.5, 0.5, 0.5, 0.5]}
    seeds = [
        {"qama|2bit|384": [0.9, 0.8, 1.0, 0.7], "qama|2bit|192": [0.7, 0.3, 0.5, 0.5]},
        {"qama|2bit|384": [0.7, 0.8, 1.0, 0.9], "qama|2bit|192": [0.7, 0.3, 0.5, 0.5]},
    ]
    items = [
        {
            "name": "d",
            "seed": s,
            "ret": ret,
            "per_query": {**untrained, **pq},
            "seconds": 1.0,
            "check": {"results": [], "lost": []},
        }
        for s, pq in enumerate(seeds)
    ]
    (tmp_path / "d.json").write_text(json.dumps(items))
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n")
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--load", str(tmp_path / "d.json")], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    assert "| row | target | d | d − untrained |" in table
    assert "| 2-bit 384 | ≥ 99.0 | **90.0 (90.0–90.0) [90.0]** | +10.0 ± 0.0 (better) |" in table
    assert "| 2-bit 192 | ≥ 97.0 | **90.0 (90.0–90.0) [90.0]** | +0.0 ± 8.2 |" in table
    assert "| 1-bit 384 | ≥ 95.0 | **90.0 (90.0–90.0) [90.0]** | — |" in table
    assert "| adapter FP32 output, 384 | ≥ 99.5 | **90.0 (90.0–90.0)** | — |" in table


def test_a_query_log_longer_than_the_sample_cap_is_sampled_not_embedded_whole(tmp_path, monkeypatch):
    """A query log of more lines than ``SAMPLE_TEXTS_MAX``: a draw of that many (in file order) is embedded,
    and the description says so (before: every line, uncached: hours for a log of a million queries)."""
    import qama.embeddings as E

    log = tmp_path / "log.txt"
    log.write_text("".join(f"query {i}\n" for i in range(30)))
    corpus = np.ones((4, 16), dtype=np.float32)
    seen = _fake_model(monkeypatch, lambda texts, call: np.random.default_rng(call).normal(size=(len(texts), 16)))
    monkeypatch.setattr(E, "SAMPLE_TEXTS_MAX", 10)
    emb, what = E.query_sample(None, corpus, None, str(log))
    (texts,) = seen
    order = [int(t.split()[1]) for t in texts]
    assert len(set(texts)) == 10 and order == sorted(order) and emb.shape == (10, 16)
    assert what == f"10 of the 30 queries from {log} (drawn at random)"
    monkeypatch.setattr(E, "SAMPLE_TEXTS_MAX", 30)  # a log within the cap: every line
    assert E.query_sample(None, corpus, None, str(log))[1] == f"30 queries from {log}" and len(seen[1]) == 30


def test_each_line_of_the_check_gives_the_difference_its_standard_error_and_the_verdict(tmp_path, caplog):
    """Each plan and size of the never-worse check says the difference, its standard error and the rule it
    is judged by, and who serves it: a user sees why a plan where the adapter is behind is still kept
    (before: only the two means, and an arrow on lost ones)."""
    from qama.train import TrainConfig, fit

    docs, titles = _clustered()
    cfg = TrainConfig(steps=60, lr=0.3, batch_size=64, nested_dims=(16, 32), w_nce=1.0, progress=False)
    with caplog.at_level(logging.INFO, logger="qama.check"):
        adapter = fit(docs, cfg, pairs=(titles, docs))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("check ")]
    expected = []
    for r in adapter.metadata["check"]["results"]:
        rule = "behind by more than 0.02 and 3 standard errors"
        verdict = (
            f"lost ({rule}): untrained codes serve it" if r["lost"] else f"the adapter serves it (lost only if {rule})"
        )
        expected.append(
            f"check {r['plan']}@{r['dims']} on 160 held-out pseudo-queries: adapter {r['adapter']:.4f}, untrained "
            f"{r['untrained']:.4f}, difference {r['adapter'] - r['untrained']:+.4f} ± {r['stderr']:.4f}; {verdict}"
        )
    assert lines == expected and any(r["lost"] for r in adapter.metadata["check"]["results"])


def test_uses_query_sample_is_false_only_where_the_adapter_serves_with_its_own_query_thresholds():
    """``qama index`` makes no query sample (embeds no titles) only where :func:`fit_encoder` would not use
    it: a plan and size the adapter serves itself, with the query thresholds it was fitted with. A plan its
    check lost is served by untrained codes, whose queries the sample codes."""
    from types import SimpleNamespace

    from qama.encoders import uses_query_sample

    def adapter(calibrated: bool):
        lost = {"check": {"lost": ["2bit@16"]}}
        return SimpleNamespace(metadata=lost, query_calibrated=calibrated, plan=lambda p, d: make_plan(p, d or 16))

    assert uses_query_sample(None, "2bit")
    assert not uses_query_sample(adapter(True), "1bit")
    assert uses_query_sample(adapter(True), "2bit")  # lost: untrained codes serve it
    assert uses_query_sample(adapter(True), "1bit", replace_query_thresholds=True)
    assert uses_query_sample(adapter(False), "1bit")


def test_cli_eval_of_an_adapter_on_a_corpus_without_titles_compares_with_untrained_codes_as_index_codes_them(
    tmp_path, small, monkeypatch
):
    """`qama eval --adapter` on a corpus without titles: the untrained rows (threshold-qcal, what the breakdown
    compares with) code their queries by the documents' sentences, as `qama index` without an adapter does, while
    the adapter's queries keep its own thresholds (before: no threshold-qcal rows, and the breakdown compared with
    the threshold baseline, whose queries take the documents' thresholds)."""
    from qama.data import load_dataset
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import adapter_rows, calibrated_threshold_rows
    from qama.train import TrainConfig, fit

    root, emb, sample, texts_seen = _untitled_two_sentence_corpus(small, monkeypatch)
    corpus, queries = np.load(emb / "corpus.npy"), np.load(emb / "queries.npy")
    adapter = fit(
        corpus, TrainConfig(steps=3, batch_size=64, progress=False, checkpoint_every=0), out_dir=tmp_path / "ad"
    )
    args = ["-q", "eval", "--dataset", str(root), "--embeddings", str(emb), "--adapter", str(tmp_path / "ad")]
    assert (
        main([*args, "--plans", "2bit", "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "e.json")])
        == 0
    )
    assert len(texts_seen) == 1 and all(t.startswith(("Document number", "It then says")) for t in texts_seen[0])
    saved = json.loads((tmp_path / "e.json").read_text())
    got = {(r["format"], r["plan"], r["dims"], r["rescore"]): r["ndcg@10"] for r in saved["rows"]}
    ev = Evaluator(load_dataset(root))
    judged = queries[ev.rows]
    for r in calibrated_threshold_rows(corpus, judged, ev, sample[: len(texts_seen[0])], [32, 16, 8], ["2bit"]):
        assert got[("threshold-qcal", "2bit", r.dims, None)] == r.metrics["ndcg@10"]
    for r in adapter_rows(adapter, corpus, judged, ev, ["2bit"], (4,)):
        assert got[("qama", r.plan, r.dims, r.rescore)] == r.metrics["ndcg@10"]
    (b32,) = [b for b in saved["breakdown"] if b["dims"] == 32]
    assert b32["untrained"] == got[("qama", "2bit", 32, None)] / got[("threshold-qcal", "2bit", 32, None)]


def test_a_corpus_with_one_title_is_indexed_and_titles_are_refused_by_name(tmp_path, monkeypatch, capsys):
    """``qama index --corpus`` of one titled document: ``auto`` goes on without a query sample (before:
    `a query sample needs values of shape (n >= 2, 336), got (1, 336)`, and no index); ``titles`` says why."""
    _fake_model(monkeypatch, lambda texts, call: np.random.default_rng(call).normal(size=(len(texts), 16)))
    corpus = tmp_path / "one.jsonl"
    corpus.write_text('{"_id": "a", "title": "Wings", "text": "Lift on swept wings."}\n')
    args = ["-q", "index", "--corpus", str(corpus), "--plan", "2bit", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "ix")]) == 0
    assert QamaIndex.open(tmp_path / "ix").encoder.quantizer.query_thresholds is None
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "ix2"), "--query-sample", "titles"]) == 2
    assert capsys.readouterr().err == (
        "qama: error: query sample 'titles': 1 document of one has a title; a query sample needs at least 2\n"
    )


def test_index_and_train_of_a_dataset_read_no_query_unless_a_split_is_named(tmp_path, tiny, monkeypatch, capsys):
    """``qama index`` / ``qama train --dataset`` code and fit the documents only: no query is embedded and no
    ``queries.npy`` read (before: every query of the dataset was embedded, hours for a large BEIR dataset, and
    precomputed embeddings without ``queries.npy`` were refused); ``--query-sample SPLIT`` still reads them."""
    seen = _fake_model(monkeypatch, lambda texts, call: np.random.default_rng(call).normal(size=(len(texts), 16)))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["-q", "index", "--dataset", str(tiny), "--plan", "2bit", *cache, "--out", str(tmp_path / "ix")]) == 0
    train = ["-q", "train", "--dataset", str(tiny), "--steps", "2", "--train-batch-size", "8"]
    assert main([*train, "--nested-dims", "8", "16", *cache, "--out", str(tmp_path / "ad")]) == 0
    embedded = {t for batch in seen for t in batch}
    assert "text of document 0" in " ".join(embedded) and not any(t.startswith("query ") for t in embedded)
    emb = tiny.parent / "tiny-emb"
    (emb / "queries.npy").unlink()
    precomputed = ["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--plan", "2bit"]
    assert main([*precomputed, "--query-sample", "none", "--out", str(tmp_path / "ix2")]) == 0
    assert len(QamaIndex.open(tmp_path / "ix2").ids) == 40
    capsys.readouterr()
    assert main([*precomputed, "--query-sample", "test", "--out", str(tmp_path / "ix3")]) == 2
    assert capsys.readouterr().err == f"qama: error: {emb / 'queries.npy'}: file not found\n"


def test_quiet_embeds_a_dataset_without_progress_bars(tmp_path, tiny, monkeypatch):
    """``qama -q eval/index/train --dataset`` embedded the corpus and the queries with a progress bar on stderr
    (sentence-transformers' ``Batches: …``): ``-q`` left it on; without ``-q`` it is shown."""
    import qama.embeddings

    bars: list[bool] = []

    def encode(model, texts, batch_size=64, progress=True):
        bars.append(progress)
        return np.random.default_rng(len(bars)).normal(size=(len(texts), 16))

    _fake_model(monkeypatch, lambda texts, call: None)
    monkeypatch.setattr(qama.embeddings, "encode", encode)
    args = ["eval", "--dataset", str(tiny), "--dims", "16", "--query-sample", "none"]
    assert main(["-q", *args, "--cache-dir", str(tmp_path / "a")]) == 0
    assert bars == [False, False]  # the corpus, the queries
    assert main([*args, "--cache-dir", str(tmp_path / "b")]) == 0
    assert bars == [False, False, True, True]
    from qama.config import DatasetSpec, experiment_config
    from qama.evaluation.study import _load

    monkeypatch.setenv("QAMA_CACHE", str(tmp_path / "c"))  # qama report -q (run_report(progress=False)) likewise
    _load(experiment_config(datasets=[DatasetSpec(str(tiny))], model="org/m"), DatasetSpec(str(tiny)), progress=False)
    assert len(bars) > 5 and not any(bars[4:])  # the corpus, the queries (and the titles)
