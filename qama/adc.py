"""Asymmetric scores from per-query lookup tables (ADC on qama's thermometer codes).

The asymmetric score of a code is ``Σ_j w_j · c[j, level_j]`` (``w``: the query's weights,
``c``: the encoder's centroids), divided, for a cosine, by ``sqrt(Σ_j n[j, level_j])`` (``n``:
the encoder's ``level_norms2``). A thermometer code sets bit ``r`` of value ``j`` iff
``level_j > r``, so with ``c[j, l] = c[j, 0] + Σ_{r<l} (c[j, r+1] - c[j, r])``

    score = Σ_j w_j c[j, 0]  +  Σ_{set bits g} w_{j(g)} (c[j(g), r(g)+1] - c[j(g), r(g)])

a constant plus a weighted sum over the set bits, and the squared length likewise (weights
``n[j, r+1] - n[j, r]``, query-independent). Grouping the bits by code byte gives one
256-entry table per byte: ``T[b, v]`` = the summed weights of the bits set in byte value ``v``
at byte ``b``. A code is then scored with ``code_size`` table look-ups, whatever the plan (a
byte may hold bits of several values, a value may span two bytes: each bit carries its own
weight). That is the product-quantisation ADC trick on qama's own codes. Exact: the same score
as unpacking the levels, up to float rounding (float32 tables, float32 sums).

* :func:`lut_scores` scores candidate rows (the rescoring step of the two-stage search);
  :func:`qama.search.asymmetric_scores` calls it.
* :func:`adc_search` is the asymmetric full scan: every row scored, top-``k`` by score (no
  Hamming stage), ties by ascending row id, with the same scores as :func:`lut_scores`: faiss's
  4-bit fast scan over the codes' nibbles (:class:`FastScanCodes`) picks candidates by an 8-bit
  approximation of the score, the tables score them exactly (or every row exactly, ``exact=True``).
* :func:`doc_lengths` is the per-document reconstruction length the full scan divides by
  (computed once per corpus; an index keeps it in memory).

Only codes produced by :func:`qama.codes.pack` (thermometer bits) are scored as their levels;
padding bits (zero) and aligned rows' extra bytes are never read.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from qama._segments import RowSegments
from qama._validate import check_k
from qama.codes import Plan, unpack

__all__ = [
    "bit_weights",
    "query_bit_weights",
    "byte_tables",
    "lut_scores",
    "doc_lengths",
    "adc_search",
    "FastScanCodes",
    "asymmetric_scores_reference",
]

#: Memory for the lookup tables of one chunk of queries in the full scan (80 KB per query at 78 bytes).
TABLE_BYTES = 32 * 2**20
#: Memory for the blocks' candidate lists of one chunk of queries in the full scan.
CANDIDATE_BYTES = 64 * 2**20


def bit_weights(table: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Per-bit increments of a ``(n_values, 4)`` level table: ``(base, steps)``.

    ``base`` ``(n_values,)`` is the level-0 entry of each value, ``steps`` ``(code_size * 8,)``
    the increment bit ``g`` adds when set (``table[j, r+1] - table[j, r]`` for its value ``j``
    and rank ``r``; 0 for padding bits), float64.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (plan.n_values, 4):
        raise ValueError(f"expected a ({plan.n_values}, 4) level table for plan {plan.name!r}, got {table.shape}")
    steps = np.zeros(plan.code_size * 8)
    v, r = plan._bit_value, plan._bit_rank
    steps[: plan.n_bits] = table[v, r + 1] - table[v, r]
    return table[:, 0].copy(), steps


def query_bit_weights(weights: np.ndarray, encoder) -> tuple[np.ndarray, np.ndarray]:
    """``(nq, n_values)`` query weights -> ``(const (nq,), bit weights (nq, code_size * 8))`` float64
    such that the unnormalised score of a code is ``const + Σ_{set bits} bit_weight``."""
    plan = encoder.plan
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != plan.n_values:
        raise ValueError(f"expected query weights of shape (nq, {plan.n_values}), got {weights.shape}")
    base, steps = bit_weights(np.asarray(encoder.centroids, dtype=np.float32), plan)
    bw = np.zeros((len(weights), plan.code_size * 8))
    bw[:, : plan.n_bits] = weights[:, plan._bit_value] * steps[: plan.n_bits]
    return weights @ base, bw


def _norm_weights(encoder) -> tuple[float, np.ndarray] | None:
    """``(const, bit weights (code_size * 8,))`` of the squared reconstruction length, or ``None``."""
    norms2 = getattr(encoder, "level_norms2", None)
    if norms2 is None:
        return None
    base, steps = bit_weights(np.asarray(norms2, dtype=np.float32), encoder.plan)
    return float(base.sum()), steps


@nb.njit(inline="always")
def _fill_tables(bw: np.ndarray, out: np.ndarray) -> None:
    """``out[b, v]`` = Σ of ``bw[8 b + 7 - p]`` over the set bits ``p`` of ``v`` (MSB-first packing)."""
    cs = out.shape[0]
    for b in range(cs):
        out[b, 0] = 0.0
        for p in range(8):  # v in [2^p, 2^(p+1)): its highest set bit p plus the lower bits v - 2^p
            w = bw[8 * b + 7 - p]
            for v in range(1 << p, 2 << p):
                out[b, v] = out[b, v - (1 << p)] + w


@nb.njit(cache=True)
def _tables_kernel(bw: np.ndarray) -> np.ndarray:
    nq = bw.shape[0]
    cs = bw.shape[1] // 8
    out = np.empty((nq, cs, 256), np.float32)
    acc = np.empty((cs, 256), np.float64)
    for q in range(nq):
        _fill_tables(bw[q], acc)
        for b in range(cs):
            for v in range(256):
                out[q, b, v] = np.float32(acc[b, v])
    return out


def byte_tables(bit_w: np.ndarray) -> np.ndarray:
    """``(nq, code_size * 8)`` bit weights -> ``(nq, code_size, 256)`` float32 per-byte tables."""
    bit_w = np.ascontiguousarray(np.atleast_2d(bit_w), dtype=np.float64)
    return _tables_kernel(bit_w)


@nb.njit(inline="always")
def _row_sum(t: np.ndarray, codes: np.ndarray, r: np.int64, cs: int) -> np.float32:
    """Σ_b t[b, codes[r, b]] in float32, four partial sums (the same order everywhere)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    b = 0
    while b + 4 <= cs:
        s0 += t[b, codes[r, b]]
        s1 += t[b + 1, codes[r, b + 1]]
        s2 += t[b + 2, codes[r, b + 2]]
        s3 += t[b + 3, codes[r, b + 3]]
        b += 4
    while b < cs:
        s0 += t[b, codes[r, b]]
        b += 1
    return (s0 + s1) + (s2 + s3)


@nb.njit(inline="always")
def _finish(s: np.float32, const: np.float32, length: np.float32) -> np.float32:
    return (s + const) / length


@nb.njit(inline="always")
def _length(nt: np.ndarray, nconst: np.float32, codes: np.ndarray, r: np.int64, cs: int) -> np.float32:
    return np.float32(max(np.sqrt(max(_row_sum(nt, codes, r, cs) + nconst, np.float32(0.0))), np.float32(1e-12)))


@nb.njit(parallel=True, fastmath=False, boundscheck=False, cache=True)
def _score_candidates(bw, const, codes, cand, nbw, nconst, use_norm, nchunks):
    nq, m = cand.shape
    cs = bw.shape[1] // 8
    out = np.empty((nq, m), np.float32)
    acc = np.empty((cs, 256), np.float64)
    nt = np.ones((cs, 256), np.float32)
    if use_norm:
        _fill_tables(nbw, acc)
        for b in range(cs):
            for v in range(256):
                nt[b, v] = np.float32(acc[b, v])
    for c in nb.prange(nchunks):
        t64 = np.empty((cs, 256), np.float64)
        t = np.empty((cs, 256), np.float32)
        for q in range(c * nq // nchunks, (c + 1) * nq // nchunks):
            _fill_tables(bw[q], t64)
            for b in range(cs):
                for v in range(256):
                    t[b, v] = np.float32(t64[b, v])
            cq = np.float32(const[q])
            for i in range(m):
                r = cand[q, i]
                if r < 0:
                    out[q, i] = -np.inf
                    continue
                length = _length(nt, np.float32(nconst), codes, r, cs) if use_norm else np.float32(1.0)
                out[q, i] = _finish(_row_sum(t, codes, r, cs), cq, length)
    return out


def _check(codes: np.ndarray, plan: Plan) -> np.ndarray:
    codes = np.asarray(codes)
    return _check_rows(codes, plan)


def _check_rows(codes: Any, plan: Plan) -> Any:
    """``codes`` (an array or :class:`~qama._segments.RowSegments`) if they are uint8 rows of at least
    ``code_size`` bytes, else ``ValueError``."""
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] < plan.code_size:
        raise ValueError(
            f"expected uint8 codes of shape (n, >= {plan.code_size}) for plan {plan.name!r}, "
            f"got {codes.dtype} {codes.shape}"
        )
    return codes


def lut_scores(weights: np.ndarray, codes: np.ndarray, candidates: np.ndarray, encoder) -> np.ndarray:
    """Asymmetric scores of candidate rows from per-query byte tables (the contract of
    :func:`qama.search.asymmetric_scores`): ``(nq, m)`` float32, ``-inf`` where the candidate is -1.

    Only the candidates' rows of ``codes`` are read (a memory map stays on disk otherwise)."""
    plan = encoder.plan
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2:
        raise ValueError(f"candidates must be (nq, m), got {candidates.shape}")
    nq, m = candidates.shape
    codes = _check(codes, plan)
    if len(codes) == 0 or nq == 0 or m == 0:
        return np.full((nq, m), -np.inf, dtype=np.float32)
    if candidates.size and candidates.max() >= len(codes):
        raise IndexError(f"candidate row {candidates.max()} is out of range for {len(codes)} codes")
    const, bw = query_bit_weights(weights, encoder)
    if len(const) != nq:
        raise ValueError(f"{len(const)} query weights for {nq} rows of candidates")
    norm = _norm_weights(encoder)
    nconst, nbw = norm if norm is not None else (1.0, np.zeros(plan.code_size * 8))
    nchunks = min(nq, 4 * nb.get_num_threads())
    return _score_candidates(bw, const, codes, candidates, nbw, nconst, norm is not None, nchunks)


@nb.njit(parallel=True, boundscheck=False, cache=True)
def _lengths_kernel(codes, nbw, nconst):
    n = codes.shape[0]
    cs = nbw.shape[0] // 8
    acc = np.empty((cs, 256), np.float64)
    _fill_tables(nbw, acc)
    nt = np.empty((cs, 256), np.float32)
    for b in range(cs):
        for v in range(256):
            nt[b, v] = np.float32(acc[b, v])
    out = np.empty(n, np.float32)
    for r in nb.prange(n):
        out[r] = _length(nt, np.float32(nconst), codes, r, cs)
    return out


def doc_lengths(codes: np.ndarray, encoder) -> np.ndarray | None:
    """``(n,)`` float32 length of each row's reconstruction (what the cosine divides by; the same
    float32 value :func:`lut_scores` computes), or ``None`` when the encoder has no ``level_norms2``."""
    codes = _check(codes, encoder.plan)
    norm = _norm_weights(encoder)
    if norm is None:
        return None
    return _lengths_kernel(codes, norm[1], norm[0])


# ---------------------------------------------------------------------------------- full scan
@nb.njit(inline="always")
def _sift_min(ks: np.ndarray, ki: np.ndarray, s: np.float32, i: np.int64) -> None:
    """Put (s, i) at the root of a min-heap of the kept (score, id) — the root is the worst kept:
    lowest score, and among equal scores the highest id — and sift it down."""
    k = ks.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and (ks[child + 1] < ks[child] or (ks[child + 1] == ks[child] and ki[child + 1] > ki[child])):
            child += 1
        if ks[child] < s or (ks[child] == s and ki[child] > i):
            ks[pos] = ks[child]
            ki[pos] = ki[child]
            pos = child
        else:
            break
    ks[pos] = s
    ki[pos] = i


@nb.njit(parallel=True, boundscheck=False, cache=True)
def _scan_blocks(tables, const, codes, lengths, use_len, k, block):
    nq, cs, _ = tables.shape
    n = codes.shape[0]
    nblocks = (n + block - 1) // block
    best_s = np.full((nblocks, nq, k), -np.inf, np.float32)
    best_i = np.full((nblocks, nq, k), -1, np.int64)
    for blk in nb.prange(nblocks):
        lo = blk * block
        hi = min(n, lo + block)
        for q in range(nq):
            t = tables[q]
            cq = np.float32(const[q])
            ks, ki = best_s[blk, q], best_i[blk, q]
            for r in range(lo, hi):
                length = lengths[r] if use_len else np.float32(1.0)
                s = _finish(_row_sum(t, codes, r, cs), cq, length)
                if s > ks[0]:  # rows come in ascending id: a tie never displaces an earlier row
                    _sift_min(ks, ki, s, r)
    return best_s, best_i


def _merge(best_s: np.ndarray, best_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks' ``(nblocks, nq, k)`` lists -> ``(nq, k)`` by descending score, ties by ascending id."""
    nq = best_s.shape[1]
    s = best_s.transpose(1, 0, 2).reshape(nq, -1)
    i = best_i.transpose(1, 0, 2).reshape(nq, -1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), -s.astype(np.float64)), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


class FastScanCodes:
    """The codes in the layout of faiss's 4-bit fast scan (``IndexPQFastScan``), for the first pass
    of :func:`adc_search`.

    A code of ``code_size`` bytes is read as ``2 * code_size`` nibbles, each a 4-bit "sub-quantizer"
    whose 16 centroids are the 16 bit patterns: the inner product of the query's bit weights with a
    nibble's bits is exactly its part of the asymmetric score, so faiss's fast scan (per-nibble
    tables quantised to 8 bits, 32 codes per SIMD shuffle) ranks the rows by an approximation of
    the score that differs from it by the tables' rounding. A second copy of the codes
    (``code_size`` bytes per row, in blocks of 32 rows), built once per corpus.
    """

    def __init__(self, codes: np.ndarray | RowSegments, plan: Plan) -> None:
        import faiss

        codes = _check_rows(codes if isinstance(codes, RowSegments) else np.asarray(codes), plan)
        cs = plan.code_size
        self.n, self.code_size = len(codes), cs
        pq = faiss.IndexPQ(8 * cs, 2 * cs, 4, faiss.METRIC_INNER_PRODUCT)
        c = np.arange(16)
        patterns = np.stack([(c >> (3 - i)) & 1 for i in range(4)], axis=1).astype(np.float32)  # MSB first
        faiss.copy_array_to_vector(np.tile(patterns, (2 * cs, 1)).ravel(), pq.pq.centroids)
        pq.is_trained = True
        rows = np.empty((self.n, cs), dtype=np.uint8)
        parts = codes.parts if isinstance(codes, RowSegments) else [codes]
        for start, part in zip(np.cumsum([0, *map(len, parts)]).tolist(), parts, strict=False):
            rows[start : start + len(part)] = part[:, :cs]  # segment by segment
        swapped = ((rows & 0x0F) << 4) | (rows >> 4)  # faiss puts sub-quantizer 2b in the low nibble of byte b
        faiss.copy_array_to_vector(swapped.ravel(), pq.codes)
        pq.ntotal = self.n
        del rows, swapped
        self.index = faiss.IndexPQFastScan(pq)  # type: ignore[arg-type]  # faiss's stubs miss this overload
        self.index.orig_codes = None  # type: ignore[attr-defined]  # the packed copy is all the default scan reads; pq goes away
        del pq

    def candidates(self, bit_w: np.ndarray, m: int) -> np.ndarray:
        """``(nq, m)`` int64 rows with the highest approximate scores for ``(nq, code_size * 8)``
        bit weights (-1 where the corpus has fewer rows)."""
        _, ids = self.index.search(np.ascontiguousarray(bit_w, dtype=np.float32), m)
        return ids


#: First pass of :func:`adc_search`: rows kept per result for the exact scores (``rerank * k``, at least
#: :data:`MIN_CANDIDATES`).
RERANK = 10
MIN_CANDIDATES = 100


def adc_search(
    codes: np.ndarray | RowSegments,
    encoder,
    queries: np.ndarray,
    k: int,
    lengths: np.ndarray | None = None,
    fast: FastScanCodes | None = None,
    rerank: int = RERANK,
    exact: bool = False,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric full scan: the top-``k`` rows of ``codes`` by asymmetric score for ``(nq, d)``
    float ``queries``, every row scored (no Hamming stage).

    Returns ``(nq, k)`` float32 scores (descending) and int64 row ids, ties by ascending id;
    missing slots (fewer than ``k`` rows) hold score ``-inf`` and id ``-1``. The scores are those of
    :func:`lut_scores`.

    By default in two passes: faiss's 4-bit fast scan (:class:`FastScanCodes`: ``fast``, built here
    when not given; an index keeps it) picks the ``max(rerank * k, MIN_CANDIDATES)`` rows of
    highest approximate score, which are scored exactly; the result is the exact scan's whenever
    its top ``k`` is among them. ``exact=True`` scores every row exactly (numba, rows split into
    ``block``-row blocks scanned in parallel; ``lengths``: :func:`doc_lengths` of ``codes`` if
    already computed, else computed here). ``codes`` may be a :class:`~qama._segments.RowSegments`
    (an index of several segments): the first pass reads the candidates' rows only, the exact scan
    concatenates the segments.
    """
    queries = np.asarray(queries, dtype=np.float32)
    k = check_k(k, len(queries))  # a positive int (not a float, a bool)
    if rerank < 1:
        raise ValueError(f"rerank must be at least 1, got {rerank}")
    plan = encoder.plan
    codes = _check_rows(codes if isinstance(codes, RowSegments) else np.asarray(codes), plan)
    nq, n = len(queries), len(codes)
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return out_s, out_i
    weights = encoder.query_weights(queries)
    const, bw = query_bit_weights(weights, encoder)
    if not exact:
        if fast is None:
            fast = FastScanCodes(codes, plan)
        elif fast.n != n or fast.code_size != plan.code_size:
            raise ValueError(
                f"fast-scan codes of {fast.n} rows x {fast.code_size} bytes for {n} codes of {plan.name!r}"
            )
        cand = fast.candidates(bw, min(n, max(rerank * k, MIN_CANDIDATES)))
        from qama.search import asymmetric_scores, top_by_score

        out_s, out_i = top_by_score(asymmetric_scores(weights, codes, cand, encoder), cand, k)  # candidate rows only
        # faiss's fast scan returns no row (-1) for a query whose tables are all zero: every row scores the
        # same (an all-zero query; a corpus whose every value is one level, e.g. of one row). Those queries
        # are scanned exactly.
        short = np.flatnonzero((cand < 0).any(axis=1))
        if len(short):
            out_s[short], out_i[short] = adc_search(codes, encoder, queries[short], k, lengths, exact=True, block=block)
        return out_s, out_i
    codes = np.asarray(codes)  # the exact scan reads one array
    use_len = getattr(encoder, "level_norms2", None) is not None
    if not use_len:
        lengths = np.ones(1, np.float32)
    elif lengths is None:
        lengths = doc_lengths(codes, encoder)
    elif len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} codes")
    kk = min(k, n)
    nblocks = -(-n // block)
    chunk = max(1, min(TABLE_BYTES // (plan.code_size * 256 * 4), CANDIDATE_BYTES // (nblocks * kk * 12)))
    for s in range(0, nq, chunk):
        tables = byte_tables(bw[s : s + chunk])
        best_s, best_i = _scan_blocks(tables, const[s : s + chunk], codes, lengths, use_len, kk, block)
        out_s[s : s + chunk, :kk], out_i[s : s + chunk, :kk] = _merge(best_s, best_i, kk)
    return out_s, out_i


def asymmetric_scores_reference(weights: np.ndarray, codes: np.ndarray, candidates: np.ndarray, encoder) -> np.ndarray:
    """The unpacking implementation (numpy; qama <= 0.x's ``asymmetric_scores``): levels of the
    candidate rows, centroids gathered, an einsum, divided by the reconstruction's length."""
    plan = encoder.plan
    nq, m = candidates.shape
    valid = candidates >= 0
    rows = np.where(valid, candidates, 0).reshape(-1)
    if len(codes) == 0:
        return np.full((nq, m), -np.inf, dtype=np.float32)
    levels = unpack(np.asarray(codes[rows]), plan).reshape(nq, m, plan.n_values)
    cent = np.asarray(encoder.centroids, dtype=np.float32)
    values = cent[np.arange(plan.n_values), levels]
    scores = np.einsum("qmv,qv->qm", values, np.asarray(weights, dtype=np.float32))
    norms2 = getattr(encoder, "level_norms2", None)
    if norms2 is not None:
        lengths = np.sqrt(np.asarray(norms2, dtype=np.float32)[np.arange(plan.n_values), levels].sum(axis=-1))
        scores = scores / np.maximum(lengths, 1e-12)
    return np.where(valid, scores, -np.inf).astype(np.float32)
