"""One suite, both backends (faiss index folder, Milvus collection on a local milvus-lite server).

Every result is compared with the numpy reference :func:`qama.codes.hamming_distances`:
distances exactly, ids as sets within groups of equal distance (backends order ties differently).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from qama.backends import Backend, backend_kind, open_backend, parse_shard, shard_range
from qama.codes import hamming_distances, make_plan
from qama.index import IndexMismatchError
from qama.search import MISSING_DISTANCE, ThresholdEncoder, asymmetric_scores
from tests.conftest import collection_name, require_milvus

N, D = 300, 64  # hybrid at 64 dimensions: 104 bits, 13-byte codes (not a multiple of 8 bytes)


@pytest.fixture(scope="module")
def data() -> dict:
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(N, D)).astype(np.float32)
    emb[N // 2 :: 7] = emb[N // 2]  # duplicates: many exactly equal distances
    queries = np.concatenate([rng.normal(size=(6, D)), emb[[3, N // 2]]]).astype(np.float32)
    encoder = ThresholdEncoder.fit(emb, make_plan("hybrid", D))
    ids = [f"doc-{i}" for i in range(N)]
    return {"emb": emb, "queries": queries, "encoder": encoder, "ids": ids, "codes": encoder.encode(emb)}


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path, encoder, **options) -> Backend:
    if kind == "faiss":
        return open_backend(tmp_path / "index", "faiss", encoder, create=True, **options)
    require_milvus()
    uri = request.getfixturevalue("milvus_uri")
    return open_backend(uri, "milvus", encoder, create=True, collection=collection_name(), dim=D, **options)


@pytest.fixture(params=["faiss", "milvus"])
def make(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory of empty stores of the parametrized kind; all are closed after the test."""
    opened: list[Backend] = []

    def factory(encoder, **options) -> Backend:
        b = _open(request.param, request, tmp_path / str(len(opened)), encoder, **options)
        opened.append(b)
        return b

    factory.kind = request.param  # type: ignore[attr-defined]
    yield factory
    for b in opened:
        b.close()


def check_knn(dist: np.ndarray, ids: np.ndarray, ref: np.ndarray, id_to_row: dict[str, int]) -> None:
    """``dist``/``ids`` (nq, k) equal the exact top-k of the reference distance matrix ``ref`` (nq, n)."""
    k = dist.shape[1]
    for q in range(len(ref)):
        expected = np.sort(ref[q])[:k]
        n_real = len(expected)
        np.testing.assert_array_equal(dist[q, :n_real], expected, err_msg=f"query {q}: distances")
        assert np.all(dist[q, n_real:] == MISSING_DISTANCE) and all(i is None for i in ids[q, n_real:])
        rows = np.array([id_to_row[i] for i in ids[q, :n_real]])
        assert len(set(rows.tolist())) == n_real, f"query {q}: duplicate ids"
        np.testing.assert_array_equal(ref[q, rows], dist[q, :n_real], err_msg=f"query {q}: ids at wrong distance")
        for value in np.unique(expected):
            group, got = set(np.flatnonzero(ref[q] == value)), set(rows[dist[q, :n_real] == value])
            if value < expected[-1]:  # a tie group inside the top k: the same rows as the reference
                assert got == group, f"query {q}: rows at distance {value}"
            else:  # the last group may be cut by k: any of its rows
                assert got <= group, f"query {q}: rows at distance {value}"


def test_search_codes_equals_reference(make, data) -> None:
    b = make(data["encoder"])
    b.add(data["emb"], data["ids"], titles=[f"title {i}" for i in range(N)])
    assert b.count() == N
    qc = data["encoder"].encode(data["queries"])
    ref = hamming_distances(qc, data["codes"])
    id_to_row = {d: i for i, d in enumerate(data["ids"])}
    for k in (1, 10, 37):
        dist, ids = b.search_codes(qc, k)
        assert dist.shape == ids.shape == (len(qc), k) and dist.dtype == np.int32
        check_knn(dist, ids, ref, id_to_row)
    assert b.title("doc-7") == "title 7"


def test_an_empty_title_is_none(make, data) -> None:
    """An index folder returned ``""`` for an empty title (``qama search --json``: ``"title": ""``), a Milvus
    collection ``None`` (``null``); :meth:`Backend.title` says ``None`` when there is none."""
    b = make(data["encoder"])
    b.add(data["emb"][:3], data["ids"][:3], titles=["", "title 1", ""])
    assert [b.title(d) for d in data["ids"][:3]] == [None, "title 1", None]


def test_more_k_than_documents_and_empty(make, data) -> None:
    b = make(data["encoder"])
    qc = data["encoder"].encode(data["queries"][:2])
    dist, ids = b.search_codes(qc, 5)  # empty store
    assert np.all(dist == MISSING_DISTANCE) and all(i is None for i in ids.reshape(-1))
    b.add(data["emb"][:4], data["ids"][:4])
    dist, ids = b.search_codes(qc, 6)
    check_knn(dist, ids, hamming_distances(qc, data["codes"][:4]), {d: i for i, d in enumerate(data["ids"][:4])})
    with pytest.raises(ValueError, match="k must be positive"):
        b.search_codes(qc, 0)


def test_k_may_be_a_numpy_integer_and_must_be_an_integer_in_both_stores(make, data) -> None:
    """``Backend.search_codes(qc, np.int64(3))`` answers as ``k=3`` in both stores (before, a Milvus
    collection: pymilvus's ``ParamError: `limit` value 3 is illegal``), and a float ``k`` is refused with
    qama's message in both (before, Milvus: ``TypeError: 'float' object cannot be interpreted as an integer``)."""
    b = make(data["encoder"])
    b.add(data["emb"], data["ids"])
    qc, q = data["encoder"].encode(data["queries"]), data["queries"]
    for call in (lambda k: b.search_codes(qc, k), lambda k: b.search(q, k, oversample=2)):
        for got, want in zip(call(np.int64(3)), call(3), strict=True):
            np.testing.assert_array_equal(got, want)
        for bad in (2.0, True):
            with pytest.raises(ValueError, match="^k must be an integer, got "):
                call(bad)


def test_delete_then_search(make, data) -> None:
    b = make(data["encoder"])
    b.add(data["emb"][:100], data["ids"][:100])
    b.add(data["emb"][100:], data["ids"][100:])  # a second add appends
    gone = data["ids"][:50:3]
    assert b.delete(gone) == len(gone)
    assert b.count() == N - len(gone)
    with pytest.raises(KeyError, match="not in the"):
        b.delete(["doc-0"])
    keep = np.array([i not in set(gone) for i in data["ids"]])
    kept_ids = [d for d, m in zip(data["ids"], keep, strict=True) if m]
    qc = data["encoder"].encode(data["queries"])
    dist, ids = b.search_codes(qc, 15)
    check_knn(dist, ids, hamming_distances(qc, data["codes"][keep]), {d: i for i, d in enumerate(kept_ids)})


def test_one_string_is_never_taken_for_a_list_of_ids(make, data) -> None:
    """add(emb, "pqr") would store the ids "p", "q", "r" and delete("ab") remove "a" and "b": both stores refuse."""
    b = make(data["encoder"])
    b.add(data["emb"][:3], ["a", "b", "c"])
    with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one str \('pqr'\)"):
        b.add(data["emb"][3:6], "pqr")
    with pytest.raises(TypeError, match=r"titles must be a list of titles, not one str"):
        b.add(data["emb"][3:6], ["p", "q", "r"], titles="xyz")
    with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one str \('ab'\)"):
        b.delete("ab")
    assert b.count() == 3


def test_ids_and_titles_that_do_not_match_the_embeddings_are_refused_before_any_write(make, data) -> None:
    """Both stores check a whole add before writing (before, a Milvus collection stored 10 documents of
    12 ids and dropped the rest silently, kept one of 10 documents given one id, and upserted the
    first batches before an id count that fell short was noticed)."""
    b = make(data["encoder"])
    emb, ids = data["emb"], data["ids"]
    cases = [
        ((emb[:10], ids[:12]), r"^12 ids for 10 embeddings$"),
        ((emb[:20], ids[:10]), r"^10 ids for 20 embeddings$"),
        ((emb[:10], ["x"] * 10), r"^document ids must be unique$"),
        ((emb[:3], ids[:3], ["a", "b", "c", "d"]), r"^4 titles for 3 embeddings$"),
        ((emb[:3], ["a", 7, "c"]), r"^document ids must be strings$"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            b.add(*args)
        assert b.count() == 0, message


def test_milvus_checks_every_id_before_the_first_upsert(milvus_uri: str, data) -> None:  # noqa: F811
    """An id Milvus cannot store (empty, over 1,024 bytes) or a title over 65,535 bytes, past the first
    batch, is refused before any batch is upserted (before: the batches before it were written)."""
    with open_backend(
        milvus_uri, "milvus", data["encoder"], create=True, collection=collection_name("late"), dim=D, batch_size=8
    ) as b:
        for bad_ids, bad_titles, message in [
            (data["ids"][:19] + [""], None, r"^document ids must be non-empty strings of <= 1024 bytes: ''$"),
            (data["ids"][:19] + ["x" * 1025], None, r"^document ids must be non-empty strings of <= 1024 bytes"),
            (data["ids"][:20], [""] * 19 + ["t" * 65536], r"^title of 'doc-19' is longer than 65535 bytes$"),
        ]:
            with pytest.raises(ValueError, match=message):
                b.add(data["emb"][:20], bad_ids, bad_titles)
            assert b.count() == 0
            with pytest.raises(ValueError, match=message):
                b.add_codes(data["codes"][:20], bad_ids, bad_titles)
            assert b.count() == 0
        with pytest.raises(ValueError, match=r"^3 titles for 2 codes$"):
            b.add_codes(data["codes"][:2], data["ids"][:2], ["a", "b", "c"])
        with pytest.raises(ValueError, match=r"^2 ids for 3 codes$"):
            b.add_codes(data["codes"][:3], data["ids"][:2])


@pytest.mark.parametrize("keep_vectors", [False, True])
def test_rescored_search_equals_reference(make, data, keep_vectors: bool) -> None:
    """With every document a candidate, rescoring must give the exact top-k by score."""
    enc = data["encoder"]
    b = make(enc, keep_vectors=keep_vectors)
    b.add(data["emb"], data["ids"])
    q, k = data["queries"], 5
    rows = np.tile(np.arange(N), (len(q), 1))
    if keep_vectors:
        ref = q @ data["emb"].T
    else:
        ref = asymmetric_scores(enc.query_weights(q), data["codes"], rows, enc)
    scores, ids = b.search(q, k, oversample=N // k, rescore="vectors" if keep_vectors else "asymmetric")
    id_to_row = {d: i for i, d in enumerate(data["ids"])}
    for qi in range(len(q)):
        expected = np.sort(ref[qi])[::-1][:k]
        np.testing.assert_allclose(scores[qi], expected, rtol=1e-5, atol=1e-5)
        got = [id_to_row[i] for i in ids[qi]]
        np.testing.assert_allclose(ref[qi, got], scores[qi], rtol=1e-5, atol=1e-5)
    hamming_scores, _ = b.search(q, k, oversample=0)
    np.testing.assert_array_equal(-hamming_scores, np.sort(hamming_distances(enc.encode(q), data["codes"]))[:, :k])


def test_reopen_uses_the_stored_encoder(make, data, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    b = make(data["encoder"])
    b.add(data["emb"][:20], data["ids"][:20])
    if make.kind == "faiss":
        again = open_backend(b.path, "faiss")  # type: ignore[attr-defined]
    else:
        again = open_backend(b.uri, "milvus", collection=b.collection)  # type: ignore[attr-defined]
    try:
        assert again.encoder.checksum == data["encoder"].checksum and again.count() == 20
        other = ThresholdEncoder.fit(data["emb"][::2], make_plan("hybrid", D))
        with pytest.raises(IndexMismatchError, match="encoder"):
            uri = b.path if make.kind == "faiss" else b.uri  # type: ignore[attr-defined]
            open_backend(uri, make.kind, other, **({} if make.kind == "faiss" else {"collection": b.collection}))
    finally:
        again.close()


# ---------------------------------------------------------------------- Milvus only
def test_a_collection_milvus_refuses_to_create_is_a_one_line_error(milvus_uri: str, data) -> None:  # noqa: F811
    """milvus-lite serves only BIN_FLAT: ``qama index --backend milvus --index-type BIN_IVF_FLAT`` on it raised
    pymilvus's ``MilvusException`` (a traceback on the command line, whose contract is one line). Now a
    ``ValueError`` with the server's reason and what to do about the collection it left, which the next
    run refuses as before."""
    name = collection_name()
    options = dict(create=True, collection=name, index_type="BIN_IVF_FLAT", nlist=4, dim=D)
    reason = r"invalid index type: BIN_IVF_FLAT, local mode only support BIN_FLAT:"
    with pytest.raises(ValueError, match=rf"^collection '{name}': Milvus refused to create it \({reason}\); "):
        open_backend(milvus_uri, "milvus", data["encoder"], **options)
    with pytest.raises(FileExistsError, match=rf"^collection '{name}' exists and has no qama manifest "):
        open_backend(milvus_uri, "milvus", data["encoder"], **options)


def test_milvus_upsert_is_idempotent_and_code_size_is_checked(milvus_uri: str, data) -> None:  # noqa: F811
    enc = data["encoder"]
    idem = collection_name("idem")
    with open_backend(milvus_uri, "milvus", enc, create=True, collection=idem) as b:
        b.add(data["emb"][:50], data["ids"][:50])
        b.add(data["emb"][:80], data["ids"][:80])  # a re-run of an interrupted load
        assert b.count() == 80
    small = ThresholdEncoder.fit(data["emb"], make_plan("1bit", D))
    with pytest.raises(IndexMismatchError, match="13-byte codes"):
        open_backend(milvus_uri, "milvus", small, collection=idem)
    with pytest.raises(FileNotFoundError, match="no qama collection"):
        open_backend(milvus_uri, "milvus", enc, collection=collection_name("absent"))


def test_milvus_unreachable_is_a_clear_error() -> None:
    require_milvus()
    from qama.backends.milvus import MilvusUnavailableError, free_port

    start = time.monotonic()
    with pytest.raises(MilvusUnavailableError, match="cannot reach Milvus at http://127.0.0.1"):
        open_backend(f"http://127.0.0.1:{free_port()}", "milvus", timeout=2)
    assert time.monotonic() - start < 30


def test_retry_backs_off_on_transient_errors_only() -> None:
    require_milvus()
    from pymilvus.exceptions import MilvusException

    from qama.backends.milvus import _retry

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MilvusException(message="server unavailable")
        return "ok"

    assert _retry(flaky, "test", retries=3, backoff=0.01) == "ok" and len(calls) == 3
    calls.clear()

    def broken() -> str:
        calls.append(1)
        raise MilvusException(message="collection not found")

    with pytest.raises(MilvusException):
        _retry(broken, "test", retries=3, backoff=0.01)
    assert len(calls) == 1


# ---------------------------------------------------------------------- choosing and sharding
def test_backend_kind_and_shards() -> None:
    assert backend_kind("http://milvus:19530") == backend_kind("codes.db") == "milvus"
    assert backend_kind("./my-index") == "faiss" and backend_kind("x.db", "faiss") == "faiss"
    with pytest.raises(ValueError, match="unknown backend"):
        backend_kind("x", "qdrant")
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    for n_docs in (0, 1, 7, 100):
        parts = [shard_range(n_docs, i, 3) for i in range(3)]
        assert [r for p in parts for r in p] == list(range(n_docs))


def test_store_target_options_and_the_new_store_check(tmp_path: Path) -> None:
    from qama._validate import MAX_NPROBE, check_nprobe
    from qama.backends import check_new_store, store_target

    faiss = {"verify": True}
    assert store_target(None, tmp_path, None, {"nprobe": 8}, faiss=faiss) == (tmp_path, "faiss", {"verify": True})
    assert store_target("a.db", None, None, {"nprobe": 8}, faiss=faiss)[2] == {"nprobe": 8}
    assert check_nprobe(MAX_NPROBE) == MAX_NPROBE
    with pytest.raises(ValueError, match=rf"^--nprobe must be in 1\.\.{MAX_NPROBE}, got 0$"):
        check_nprobe(0)
    check_new_store(tmp_path / "new", "faiss")  # new and empty folders are fine, a Milvus URI is not checked here
    check_new_store(tmp_path, None)
    check_new_store("http://milvus:19530")
    msg = "^a.db: --overwrite replaces an index folder; documents are upserted into a Milvus collection by id, so"
    with pytest.raises(ValueError, match=msg):  # was ignored: the old collection's documents stayed searchable
        check_new_store("a.db", None, overwrite=True)
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(FileExistsError, match="the folder is not empty and holds no qama index"):
        check_new_store(tmp_path, "faiss", overwrite=True)


def test_milvus_collection_of_an_adapter_reopens_with_the_adapter(milvus_uri: str, data) -> None:  # noqa: F811
    from qama.adapter import AdapterConfig, QamaAdapter
    from qama.search import AdapterEncoder

    adapter = QamaAdapter(AdapterConfig(dim=D))
    adapter.init_linear(data["emb"])
    adapter.calibrate(data["emb"])
    enc = AdapterEncoder(adapter, "hybrid", fit_emb=data["emb"])
    adapted = collection_name("adapted")
    with open_backend(milvus_uri, "milvus", enc, create=True, collection=adapted) as b:
        b.add(data["emb"][:30], data["ids"][:30])
    with pytest.raises(IndexMismatchError, match="built with a trained adapter .*pass the adapter"):
        open_backend(milvus_uri, "milvus", collection=adapted)
    with open_backend(milvus_uri, "milvus", collection=adapted, adapter=adapter) as again:
        assert again.encoder.checksum == enc.checksum and again.count() == 30
        dist, ids = again.search_codes(enc.encode(data["emb"][:3]), 1)
        assert list(dist[:, 0]) == [0, 0, 0] and list(ids[:, 0]) == data["ids"][:3]


def test_the_tests_milvus_server_start_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A milvus-lite that aborts at start (seen under load) is started again; three failures name each."""
    from qama.backends.milvus import LocalMilvusServer, MilvusUnavailableError
    from tests.conftest import start_milvus_server

    outcomes = ["milvus-lite exited with status -6 at start", None]
    folders = iter(tmp_path / str(i) for i in range(10))

    def start(self: LocalMilvusServer, wait: float = 30.0) -> str:
        outcome = outcomes.pop(0) if outcomes else "milvus-lite exited with status -6 at start"
        if outcome:
            raise MilvusUnavailableError(outcome)
        return self.uri

    monkeypatch.setattr(LocalMilvusServer, "start", start)
    server = start_milvus_server(lambda: next(folders))
    assert server.db_file == tmp_path / "1" / "test.db"  # the second attempt, with its own database
    with pytest.raises(MilvusUnavailableError, match=r"in 3 attempts \(attempt 1: milvus-lite exited .*; attempt 3: "):
        start_milvus_server(lambda: next(folders))


def test_milvus_search_holds_each_candidate_document_once_across_blocks(
    milvus_uri: str,  # noqa: F811
    data,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A search of many queries runs in blocks of candidates; the ids of the candidates found are kept
    once each, at most the collection's documents (before: every block's candidates were appended
    again and the id map rebuilt from all of them: 29,134 ids for 300 documents and 2,000 queries,
    growing with the queries, and time quadratic in the blocks). The results are those of one block."""
    import qama.backends.milvus as qm
    import qama.search as qs

    made: list = []

    class Recorded(qm._FetchedRows):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(qm, "_FetchedRows", Recorded)
    q = np.random.default_rng(1).normal(size=(2000, D)).astype(np.float32)
    name = collection_name("blk")
    with open_backend(milvus_uri, "milvus", data["encoder"], create=True, collection=name, dim=D) as b:
        b.add(data["emb"], data["ids"])
        one_block = b.search(q, 5, oversample=4)
        monkeypatch.setattr(qs, "CANDIDATE_BLOCK", 200)  # 10 queries' candidates a block
        scores, ids = b.search(q, 5, oversample=4)
    assert len(made[-1].found) <= N
    assert len(set(made[-1].found)) == len(made[-1].found)
    np.testing.assert_array_equal(ids, one_block[1])
    np.testing.assert_array_equal(scores, one_block[0])
