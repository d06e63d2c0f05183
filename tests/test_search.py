"""Exact Hamming search against the numpy reference, asymmetric scoring, two-stage search, funnel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qama.codes import make_plan, pack, prefix_plan, unpack
from qama.search import (
    MISSING_DISTANCE,
    Encoder,
    ThresholdEncoder,
    asymmetric_scores,
    exact_scores,
    float_search,
    funnel_search,
    hamming_search,
    hamming_search_reference,
    search_rescored,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"


def random_codes(n: int, width: int, seed: int, values: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, values, size=(n, width), dtype=np.uint8)


@pytest.mark.parametrize("width", [1, 3, 8, 78, 80])
@pytest.mark.parametrize("k", [1, 10, 50])
def test_hamming_search_matches_reference_exactly(width: int, k: int) -> None:
    # few distinct byte values -> many ties, also at the k-th place
    codes, queries = random_codes(700, width, 0, values=4), random_codes(33, width, 1, values=4)
    d, i = hamming_search(codes, queries, k)
    rd, ri = hamming_search_reference(codes, queries, k)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)  # ties broken by ascending id in both
    full = np.bitwise_count(codes[None] ^ queries[:, None]).sum(-1)
    np.testing.assert_array_equal(np.take_along_axis(full, i, 1), d)
    assert (np.diff(d, axis=1) >= 0).all()


def test_hamming_search_fewer_rows_than_k_and_empty() -> None:
    codes, q = random_codes(3, 8, 0), random_codes(2, 8, 1)
    d, i = hamming_search(codes, q, 5)
    assert (i[:, 3:] == -1).all() and (d[:, 3:] == MISSING_DISTANCE).all()
    assert sorted(i[0, :3]) == [0, 1, 2]
    rd, ri = hamming_search_reference(codes, q, 5)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)
    d, i = hamming_search(np.zeros((0, 8), np.uint8), q, 4)
    assert i.shape == (2, 4) and (i == -1).all() and (d == MISSING_DISTANCE).all()
    s, i = float_search(np.zeros((0, 4), np.float32), np.ones((1, 4), np.float32), 2)
    assert (i == -1).all() and np.isneginf(s).all()


@pytest.mark.parametrize("nq", [3, 40])  # faiss scores fewer than 20 queries one by one, more with BLAS
def test_float_search_breaks_ties_by_ascending_id_as_the_numpy_reference(nq: int) -> None:
    """Documents of one vector tie; faiss kept the last of the tied rows at the k-th place (k=10 of 5,000
    rows in 7 groups: rows 65, 59, 50, … where the reference has 11, 14, 16, …). Now ties by ascending
    id: the rows, and the scores, of a numpy lexsort over every row. Small integer values: the inner
    products are exact in float32, whichever kernel computes them."""
    rng = np.random.default_rng(5)
    base = rng.integers(-3, 4, size=(7, 16)).astype(np.float32)
    corpus = base[rng.integers(0, 7, 5000)]
    queries = rng.integers(-3, 4, size=(nq, 16)).astype(np.float32)
    full = queries @ corpus.T  # exact: integers
    for k in (1, 10, 700, 4999, 5000, 5003):  # 700: a tie group of ~700 rows at the k-th place
        s, i = float_search(corpus, queries, k)
        order = np.lexsort((np.broadcast_to(np.arange(5000), full.shape), -full), axis=1)[:, :k]
        kk = min(k, 5000)
        np.testing.assert_array_equal(i[:, :kk], order)
        np.testing.assert_array_equal(s[:, :kk], np.take_along_axis(full, order, 1))
        assert (i[:, kk:] == -1).all() and np.isneginf(s[:, kk:]).all()
    assert float_search(corpus, queries[:0], 3)[1].shape == (0, 3)


@pytest.mark.parametrize("k", [0, -1])
def test_k_must_be_positive(k: int) -> None:
    codes = random_codes(4, 8, 0)
    with pytest.raises(ValueError, match="k must be positive"):
        hamming_search(codes, codes, k)
    with pytest.raises(ValueError, match="k must be positive"):
        hamming_search_reference(codes, codes, k)
    with pytest.raises(ValueError, match="k must be positive"):
        float_search(codes.astype(np.float32), codes.astype(np.float32), k)


def test_k_may_be_a_numpy_integer_and_must_be_an_integer() -> None:
    """A numpy integer ``k`` (``np.int64(3)``, e.g. from an array) searches as ``3`` on every path; faiss
    takes only ``int`` (before: a SWIG ``TypeError`` from the faiss scan, ``IndexFlat_search`` and the
    two-stage search). A float or a bool ``k`` is refused with qama's message (before: ``adc_search``
    raised numpy's ``TypeError``)."""
    from qama.adc import adc_search

    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((50, 16), dtype=np.float32), rng.standard_normal((3, 16), dtype=np.float32)
    enc = ThresholdEncoder.fit(x, make_plan("8:2,8:1", 16))  # 4-byte codes: faiss's scan
    codes, qc = enc.encode(x), enc.encode_queries(q)
    k = np.int64(3)
    calls = [
        lambda k: hamming_search(codes, qc, k),
        lambda k: hamming_search_reference(codes, qc, k),
        lambda k: float_search(x, q, k),
        lambda k: search_rescored(codes, enc, q, k, 4),
        lambda k: search_rescored(codes, enc, q, k, np.int64(2)),
        lambda k: funnel_search(codes[:, :3], qc[:, :3], k, 4, "hamming", codes=codes, query_codes=qc),
        lambda k: adc_search(codes, enc, q, k),
    ]
    for call in calls:
        for got, want in zip(call(k), call(3), strict=True):
            np.testing.assert_array_equal(got, want)
        for bad in (1.5, True):
            with pytest.raises(ValueError, match="k must be an integer"):
                call(bad)


def test_hamming_search_refuses_mismatched_codes() -> None:
    with pytest.raises(ValueError, match="one code size"):
        hamming_search(random_codes(4, 8, 0), random_codes(1, 9, 0), 1)
    with pytest.raises(ValueError, match="one code size"):
        hamming_search(random_codes(4, 8, 0).astype(np.int8), random_codes(1, 8, 0), 1)


def test_hamming_search_on_memory_map(tmp_path: Path) -> None:
    codes = random_codes(500, 80, 3)
    np.save(tmp_path / "c.npy", codes)
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    q = random_codes(4, 80, 4)
    for a, b in zip(hamming_search(mm, q, 7), hamming_search_reference(codes, q, 7), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def corpus() -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("plan_name", ["2bit", "1.5bit", "1bit", "0.5bit", "hybrid"])
def test_threshold_encoder_satisfies_protocol_and_asymmetric_equals_dequantized_dot(
    corpus: np.ndarray, plan_name: str
) -> None:
    plan = make_plan(plan_name, 32)
    enc = ThresholdEncoder.fit(corpus, plan)
    assert isinstance(enc, Encoder)
    codes = enc.encode(corpus)
    assert codes.shape == (300, plan.code_size)
    # explicit dequantised vectors in embedding space: a 0.5-bit value stands for both dims of its pair
    levels = unpack(codes, plan)
    values = enc.centroids[np.arange(plan.n_values), levels]
    cols, start = [], 0
    for seg in plan.segments:
        block = values[:, start : start + seg.n_values]
        cols.append(np.repeat(block, 2, axis=1) if seg.bits == 0.5 else block)
        start += seg.n_values
    deq = np.concatenate(cols, axis=1)  # (n, 32)
    queries = corpus[:5] + 0.1
    cand = np.array([[0, 5, 299, -1], [7, 7, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0], [-1, -1, -1, 9]])
    got = asymmetric_scores(enc.query_weights(queries), np.pad(codes, ((0, 0), (0, 3))), cand, enc)
    expected = np.einsum("qmd,qd->qm", deq[np.maximum(cand, 0)], queries)
    np.testing.assert_allclose(got[cand >= 0], expected[cand >= 0], rtol=1e-5, atol=1e-6)
    assert np.isneginf(got[cand < 0]).all()


def test_exact_scores(corpus: np.ndarray) -> None:
    cand = np.array([[3, 1, -1]])
    got = exact_scores(corpus[:1], corpus, cand)
    np.testing.assert_allclose(got[0, :2], corpus[[3, 1]] @ corpus[0], rtol=1e-6)
    assert np.isneginf(got[0, 2])


def test_exact_scores_do_not_depend_on_the_layout_of_the_queries(corpus: np.ndarray) -> None:
    """The same query values, C-ordered, Fortran-ordered or a strided view, give the same float32 scores
    (before: einsum summed a non-contiguous query in another order, a last-bit difference: 2.4e-7 in the
    rescored scores of ``QamaIndex.search(np.asfortranarray(q), oversample=4)`` with stored vectors)."""
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    cand = rng.integers(-1, len(corpus), size=(64, 40))
    expected = exact_scores(queries, corpus, cand)
    wide = np.zeros((64, 64), np.float32)
    wide[:, ::2] = queries
    for layout in (np.asfortranarray(queries), wide[:, ::2], queries.astype(np.float64)):
        np.testing.assert_array_equal(exact_scores(layout, corpus, cand), expected)
    enc = ThresholdEncoder.fit(corpus, make_plan("2bit", 32))
    codes = enc.encode(corpus)
    got = search_rescored(codes, enc, np.asfortranarray(queries), 10, 4, vectors=corpus)
    for a, b in zip(got, search_rescored(codes, enc, queries, 10, 4, vectors=corpus), strict=True):
        np.testing.assert_array_equal(a, b)


def test_exact_scores_of_no_queries_and_in_blocks_of_queries(corpus: np.ndarray, monkeypatch) -> None:
    """A batch of no queries is scored (before: ``cannot reshape array of size 0 into shape (0,40,newaxis)``,
    also from ``QamaIndex.search`` with stored vectors and ``qama search --queries`` of an empty ``.npy``);
    the candidates' rows are gathered a block of queries at a time (before: ``(nq, m, d)`` floats at once,
    614 MB for 10,000 queries x 40 candidates x 384 dimensions), with the same scores."""
    import tracemalloc

    import qama.search as S

    assert exact_scores(corpus[:0], corpus, np.zeros((0, 40), np.int64)).shape == (0, 40)
    enc = ThresholdEncoder.fit(corpus, make_plan("2bit", 32))
    s, i = search_rescored(enc.encode(corpus), enc, corpus[:0], 10, oversample=4, vectors=corpus)
    assert s.shape == i.shape == (0, 10)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((500, 32)).astype(np.float32)
    cand = rng.integers(-1, len(corpus), size=(500, 40))
    expected = np.where(cand >= 0, np.einsum("qmd,qd->qm", corpus[np.maximum(cand, 0)], queries), -np.inf)
    monkeypatch.setattr(S, "SCORE_BLOCK_VALUES", 1 << 14)  # 16,384 floats: 12 queries a block
    tracemalloc.start()
    try:
        got = exact_scores(queries, corpus, cand)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert peak < 500 * 40 * 32 * 4 / 4, peak  # a quarter of the (nq, m, d) floats (2.56 MB)


@pytest.mark.parametrize("oversample", [0, 1, 4])
def test_search_rescored_holds_the_candidates_of_a_block_of_queries_at_a_time(
    corpus: np.ndarray, monkeypatch, oversample: int
) -> None:
    """Every query's ``oversample × k`` candidates (rows, distances, scores and the sort's keys) were held
    at once: 10^8 for 1,000,000 queries at k=10, oversample 10 (a few GB, for a result of 10^7 slots).
    Now a block of queries at a time, with the same result."""
    import qama.search as S

    enc = ThresholdEncoder.fit(corpus, make_plan("hybrid", 32))
    codes, queries = enc.encode(corpus), np.concatenate([corpus[:70], corpus[:70] + 0.1]).astype(np.float32)
    expected = search_rescored(codes, enc, queries, 10, oversample, vectors=corpus)
    seen: list[int] = []

    def candidates(qc: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(qc) * m)
        return hamming_search(codes, qc, m)

    monkeypatch.setattr(S, "CANDIDATE_BLOCK", 200, raising=False)
    got = search_rescored(codes, enc, queries, 10, oversample, vectors=corpus, candidates=candidates)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    assert len(seen) > 1 and max(seen) <= 200, seen


def _funnel_inputs(corpus: np.ndarray, queries: np.ndarray):
    """``(encoder, codes, query codes, prefix codes, prefix query codes)``: hybrid at 32 dims, a prefix of 8."""
    enc = ThresholdEncoder.fit(corpus, make_plan("hybrid", 32))
    codes, qc = enc.encode(corpus), enc.encode_queries(queries)
    _, nbytes = prefix_plan(enc.plan, 8)
    return enc, codes, qc, np.ascontiguousarray(codes[:, :nbytes]), np.ascontiguousarray(qc[:, :nbytes])


def test_funnel_search_in_blocks_of_queries_equals_one_block(corpus: np.ndarray, monkeypatch) -> None:
    """The funnel's first stage searched every query's prefix codes for each block of queries."""
    import qama.search as S

    queries = np.concatenate([corpus[:70], corpus[:70] + 0.1]).astype(np.float32)
    enc, codes, _, pc, pq = _funnel_inputs(corpus, queries)
    args = (pc, pq, 10, 4, "asymmetric")
    expected = funnel_search(*args, codes=codes, encoder=enc, queries=queries)
    monkeypatch.setattr(S, "CANDIDATE_BLOCK", 200)
    got = funnel_search(*args, codes=codes, encoder=enc, queries=queries)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


def test_search_rescored_large_oversample_equals_full_rescoring(corpus: np.ndarray) -> None:
    enc = ThresholdEncoder.fit(corpus, make_plan("2bit", 32))
    codes = enc.encode(corpus)
    q = corpus[:8]
    # oversample covering the whole corpus -> rescoring ranks every document
    s, i = search_rescored(codes, enc, q, 10, oversample=30, vectors=corpus)
    fs, fi = float_search(corpus, q, 10)
    np.testing.assert_array_equal(i, fi)
    np.testing.assert_allclose(s, fs, rtol=1e-5)
    s, i = search_rescored(codes, enc, q, 10, oversample=30)
    all_ids = np.tile(np.arange(300), (8, 1))
    full = asymmetric_scores(enc.query_weights(q), codes, all_ids, enc)
    ref = np.lexsort((all_ids, -full.astype(np.float64)), axis=-1)[:, :10]
    np.testing.assert_array_equal(i, ref)
    # aligned corpus rows give identical answers
    s2, i2 = search_rescored(pack(unpack(codes, enc.plan), enc.plan, align=8), enc, q, 10, oversample=30)
    np.testing.assert_array_equal(i2, i)
    with pytest.raises(ValueError, match="oversample"):
        search_rescored(codes, enc, q, 10, oversample=-1)


def test_search_rescored_k_beyond_corpus(corpus: np.ndarray) -> None:
    enc = ThresholdEncoder.fit(corpus, make_plan("1bit", 32))
    codes = enc.encode(corpus[:3])
    s, i = search_rescored(codes, enc, corpus[:2], 5, oversample=4)
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all() and (i[:, :3] >= 0).all()


def test_funnel_search(corpus: np.ndarray) -> None:
    q = corpus[:6]
    enc, codes, qc, pc, pq = _funnel_inputs(corpus, q)
    # with every document a candidate, hamming rerank equals full Hamming search
    s, i = funnel_search(pc, pq, 10, 30, "hamming", codes=codes, query_codes=qc)
    d, ri = hamming_search(codes, qc, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(-s, d)
    s, i = funnel_search(pc, pq, 10, 30, "asymmetric", codes=codes, encoder=enc, queries=q)
    s2, i2 = search_rescored(codes, enc, q, 10, oversample=30)
    np.testing.assert_array_equal(i, i2)
    with pytest.raises(ValueError, match="rerank"):
        funnel_search(pc, pq, 10, 2, "bogus", codes=codes)


def test_funnel_search_hamming_rerank_of_no_queries_no_rows_and_aligned_rows(corpus: np.ndarray) -> None:
    """``rerank="hamming"`` answers a batch of no queries, an empty corpus, and full codes in aligned rows
    (zero bytes to a multiple of 8) with code-size query codes, as ``"asymmetric"`` does (before:
    ``cannot reshape array of size 0 into shape (0,20,newaxis)``, ``index 0 is out of bounds for axis 0
    with size 0`` and ``operands could not be broadcast together with shapes (6,20,8) (6,1,7)``)."""
    q = corpus[:6]
    enc, codes, qc, pc, pq = _funnel_inputs(corpus, q)
    s, i = funnel_search(pc, pq[:0], 5, 4, "hamming", codes=codes, query_codes=qc[:0])
    assert s.shape == i.shape == (0, 5)
    s, i = funnel_search(pc[:0], pq, 5, 4, "hamming", codes=codes[:0], query_codes=qc)
    assert (i == -1).all() and np.isneginf(s).all() and i.shape == (6, 5)
    aligned = np.pad(codes, ((0, 0), (0, enc.plan.row_size(8) - enc.plan.code_size)))
    assert aligned.shape[1] == 8 and qc.shape[1] == 7
    expected = funnel_search(pc, pq, 5, 4, "hamming", codes=codes, query_codes=qc)
    for a, b in zip(funnel_search(pc, pq, 5, 4, "hamming", codes=aligned, query_codes=qc), expected, strict=True):
        np.testing.assert_array_equal(a, b)
    # the reference: the 20 first candidates of the prefix by (distance, row), reranked by full distance, row
    dp, df = hamming_search_reference(pc, pq, 300), hamming_search_reference(codes, qc, 300)
    for r in range(6):
        cand = dp[1][r, :20]
        full = dict(zip(df[1][r].tolist(), df[0][r].tolist(), strict=True))
        ref = sorted(cand.tolist(), key=lambda row: (full[row], row))[:5]
        np.testing.assert_array_equal(expected[1][r], ref)
        np.testing.assert_array_equal(-expected[0][r], [full[row] for row in ref])


@pytest.mark.parametrize("rerank", ["hamming", "asymmetric"])
def test_funnel_search_refuses_oversample_below_one(corpus: np.ndarray, rerank: str) -> None:
    """``oversample=0`` reranked nothing: ``rerank="asymmetric"`` returned the prefix's negated Hamming
    distances as if they were the full codes' scores, ``"hamming"`` said ``k must be positive, got 0``
    (``-1``: ``got -5``)."""
    q = corpus[:6]
    enc, codes, qc, pc, pq = _funnel_inputs(corpus, q)
    full = dict(codes=codes, query_codes=qc, encoder=enc, queries=q)
    for oversample in (0, -1):
        with pytest.raises(ValueError, match=rf"^oversample must be >= 1, got {oversample}$"):
            funnel_search(pc, pq, 5, oversample, rerank, **full)
    with pytest.raises(ValueError, match=r"^oversample must be at most 1000, got 1000000 "):
        funnel_search(pc, pq, 5, 10**6, rerank, **full)
    # k beyond the corpus at any factor: every document, the rest padded
    s, i = funnel_search(pc, pq, 400, 1000, rerank, **full)
    assert sorted(i[0, :300].tolist()) == list(range(300))
    assert (i[:, 300:] == -1).all() and np.isneginf(s[:, 300:]).all()


def test_rescoring_on_scifact_recovers_quality() -> None:
    from qama.data import load_dataset
    from qama.embeddings import load_embeddings
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import rescore_rows

    data, emb = SHARED / "datasets" / "scifact", SHARED / "embeddings" / "all-MiniLM-L6-v2" / "scifact"
    if not (emb / "corpus.npy").is_file() or not (data / "corpus.jsonl").is_file():
        pytest.skip(f"shared SciFact data not found at {SHARED}")
    ds = load_dataset(data)
    corpus, queries = load_embeddings(emb, ds)
    ev = Evaluator(ds)
    enc = ThresholdEncoder.fit(corpus, make_plan("2bit", 384), sign_1bit=True)
    rows = rescore_rows(enc, corpus, queries[ev.rows], ev, oversamples=(4,), vectors=True)
    ndcg = {(r.format, r.rescore): r.metrics["ndcg@10"] for r in rows}
    assert ndcg[("qama", None)] < ndcg[("qama", 4)]  # asymmetric rescoring beats symmetric Hamming
    assert ndcg[("qama", 4)] >= 0.995 * 0.6492
    assert ndcg[("qama+fp32", 4)] >= 0.995 * 0.6492


@pytest.mark.parametrize(("n", "k", "block"), [(1000, 10, 256), (300, 7, 64), (5, 10, 4), (777, 50, 1000)])
def test_batch_kernel_matches_reference_exactly_with_ties(n: int, k: int, block: int) -> None:
    """The blocked numba kernel (batches of aligned codes): distances and ids equal to the reference,
    ties by ascending id, missing slots -1, across block boundaries."""
    from qama._kernels import knn_hamming_words

    rng = np.random.default_rng(n)
    codes = rng.integers(0, 4, (n, 16), dtype=np.uint8)  # few distinct values: many ties
    queries = rng.integers(0, 4, (40, 16), dtype=np.uint8)
    d, i = knn_hamming_words(queries, codes, min(k, n), block=block)
    ref_d, ref_i = hamming_search_reference(codes, queries, min(k, n))
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)
    full_d, full_i = hamming_search(codes, queries, k)  # 40 queries: the kernel path
    np.testing.assert_array_equal(full_d[:, : min(k, n)], ref_d)
    assert (full_i[:, n:] == -1).all() and (full_d[:, n:] == MISSING_DISTANCE).all()


def test_batch_kernel_in_query_chunks(monkeypatch) -> None:
    """A tight memory bound splits the queries into chunks: same exact answer."""
    import qama._kernels as kernels

    monkeypatch.setattr(kernels, "CANDIDATE_BYTES", 2000)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 4, (700, 16), dtype=np.uint8)
    queries = rng.integers(0, 4, (37, 16), dtype=np.uint8)
    d, i = kernels.knn_hamming_words(queries, codes, 9, block=64)
    ref_d, ref_i = hamming_search_reference(codes, queries, 9)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)


def test_adapter_asymmetric_score_is_the_cosine_of_the_reconstruction() -> None:
    """Query · reconstructed document / its length, the reconstruction built by hand from the
    level means (pairs of a 0.5-bit segment along their level axis)."""
    from qama.adapter import AdapterConfig, QamaAdapter
    from qama.codes import unpack
    from qama.search import AdapterEncoder, asymmetric_scores

    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 16)).astype(np.float32) + 0.3  # off-centre, as real embeddings are
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.init_linear(x)
    adapter.calibrate(x)
    enc = AdapterEncoder(adapter, "hybrid", fit_emb=x)
    codes, q = enc.encode(x), x[:3]
    levels = unpack(codes, enc.plan)
    rec = np.zeros((len(x), 16))
    for j, (a, b) in enumerate(enc._dims):
        c = enc.centroids[j, levels[:, j]]
        if b < 0:
            rec[:, a] = c
        else:  # a merged pair: c along the pair's axis
            rec[:, a], rec[:, b] = c * enc.pair_axes[j, 0], c * enc.pair_axes[j, 1]
    zq = adapter.transform(q, 16)
    expected = (zq / np.linalg.norm(zq, axis=1, keepdims=True)) @ (rec / np.linalg.norm(rec, axis=1, keepdims=True)).T
    cand = np.tile(np.arange(len(x)), (3, 1))
    got = asymmetric_scores(enc.query_weights(q), codes, cand, enc)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the state rebuilds the same encoder without the corpus
    again = AdapterEncoder(adapter, "hybrid", state=enc.state)
    assert again.checksum == enc.checksum
    np.testing.assert_allclose(asymmetric_scores(again.query_weights(q), codes, cand, again), got, rtol=1e-6)


@pytest.mark.parametrize(("n", "k", "nchunks"), [(1000, 10, 0), (300, 7, 3), (5, 10, 2), (777, 50, 1), (64, 3, 64)])
def test_row_kernel_matches_reference_exactly_with_ties(n: int, k: int, nchunks: int) -> None:
    """The few-queries kernel (rows split into ranges scanned in parallel): the reference's answer."""
    from qama._kernels import knn_hamming_rows

    rng = np.random.default_rng(n + 1)
    codes = rng.integers(0, 4, (n, 16), dtype=np.uint8)
    for nq in (1, 3):
        queries = rng.integers(0, 4, (nq, 16), dtype=np.uint8)
        d, i = knn_hamming_rows(queries, codes, min(k, n), nchunks)
        ref_d, ref_i = hamming_search_reference(codes, queries, min(k, n))
        np.testing.assert_array_equal(d, ref_d)
        np.testing.assert_array_equal(i, ref_i)
        full_d, full_i = hamming_search(codes, queries, k)  # few queries on aligned rows
        np.testing.assert_array_equal(full_d[:, : min(k, n)], ref_d)
        np.testing.assert_array_equal(full_i[:, : min(k, n)], ref_i)
        assert (full_i[:, n:] == -1).all()
