"""A batched Hamming top-k kernel (numba) for codes whose rows are whole 64-bit words.

faiss's flat binary search pops one 64-bit word of one pair at a time. Here each block of ``B``
corpus rows is transposed once into word-major order, so that for one query the inner loop runs
over consecutive rows of one word: XOR + popcount on 8 rows at a time (AVX-512), which pays off
when many queries share the block (a batch). Chunks of consecutive blocks run in parallel; each
keeps, per query, the ``k`` best rows by (distance, row id) (a threshold and a buffer cut back to
its ``k`` best when full), and the chunks' lists are merged at the end, so ties are broken by
ascending row id exactly.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.typed import List

__all__ = ["knn_hamming_words", "knn_hamming_words_segments", "knn_hamming_rows"]

_NONE = np.int32(1 << 30)  # distance of an empty slot
CANDIDATE_BYTES = 64 * 2**20  # memory for the selection buffers of one query chunk
ROWS_PER_THREAD = 65536  # the row kernel splits a few queries' scan over threads from 2 x this many rows
#: Threads the row kernel splits one scan over by default. 1: a parallel region waits for every thread
#: to check in, which on a machine with more running jobs than cores cost 5-10 ms a query (measured,
#: 2 cores, load 6-8) against 3 ms for the whole 80 MB scan on one core; set 2 or more on a machine of
#: one's own (the split measured 2.6-4 ms at that load, see benchmarks/RESULTS_search.md).
SPLIT_THREADS = 1


@nb.njit(inline="always")
def _popcount64(x: np.uint64) -> np.uint64:
    x = x - ((x >> nb.uint64(1)) & nb.uint64(0x5555555555555555))
    x = (x & nb.uint64(0x3333333333333333)) + ((x >> nb.uint64(2)) & nb.uint64(0x3333333333333333))
    x = (x + (x >> nb.uint64(4))) & nb.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * nb.uint64(0x0101010101010101)) >> nb.uint64(56)


@nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
def _knn_blocks(q: np.ndarray, db: np.ndarray, k: int, block: int, nchunks: int) -> tuple[np.ndarray, np.ndarray]:
    nq, w = q.shape
    n = db.shape[0]
    nblocks = (n + block - 1) // block
    best_d = np.full((nchunks, nq, k), _NONE, np.int32)
    best_i = np.full((nchunks, nq, k), -1, np.int64)
    for c in nb.prange(nchunks):  # a chunk: consecutive blocks, one selection state per query
        buf_d, buf_i, cnt, thr, words, dist = _chunk_state(nq, k, w, block)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            lo = b * block
            _scan_block(q, db, lo, min(n, lo + block) - lo, lo, k, words, dist, buf_d, buf_i, cnt, thr)
        _flush(buf_d, buf_i, cnt, k, best_d[c], best_i[c])
    return best_d, best_i


@nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
def _knn_blocks_segments(q, dbs, block_part, block_lo, starts, k, block, nchunks):
    """:func:`_knn_blocks` over the blocks of several arrays (``dbs``, a typed list) in one parallel
    region: block ``b`` is rows ``block_lo[b]:`` of ``dbs[block_part[b]]``, ids from ``starts[part]``."""
    nq, w = q.shape
    nblocks = block_part.shape[0]
    best_d = np.full((nchunks, nq, k), _NONE, np.int32)
    best_i = np.full((nchunks, nq, k), -1, np.int64)
    for c in nb.prange(nchunks):
        buf_d, buf_i, cnt, thr, words, dist = _chunk_state(nq, k, w, block)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            db = dbs[block_part[b]]
            lo = block_lo[b]
            m = min(db.shape[0], lo + block) - lo
            _scan_block(q, db, lo, m, starts[block_part[b]] + lo, k, words, dist, buf_d, buf_i, cnt, thr)
        _flush(buf_d, buf_i, cnt, k, best_d[c], best_i[c])
    return best_d, best_i


@nb.njit(inline="always")
def _chunk_state(nq, k, w, block):
    """A chunk's selection state (per query: a buffer of ``2k`` (distance, id), its fill, its threshold)
    and its scratch (a block transposed to word-major order, the block's distances)."""
    return (
        np.empty((nq, 2 * k), np.int32),
        np.empty((nq, 2 * k), np.int64),
        np.zeros(nq, np.int64),
        np.full(nq, _NONE, np.int32),
        np.empty((w, block), np.uint64),
        np.empty(block, np.int32),
    )


@nb.njit(inline="always")
def _scan_block(q, db, lo, m, id0, k, words, dist, buf_d, buf_i, cnt, thr) -> None:
    """Rows ``lo:lo+m`` of ``db`` (ids ``id0 + j``), transposed word-major into ``words``, added to each
    query's selection (``buf_*``, ``cnt``, ``thr``: see :func:`_select`)."""
    nq, w = q.shape
    for j in range(m):  # (w, m): the block, word-major
        for t in range(w):
            words[t, j] = db[lo + j, t]
    for qi in range(nq):
        dist[:m] = 0
        for t in range(w):
            qt = q[qi, t]
            row = words[t]
            for j in range(m):
                dist[j] += np.int32(_popcount64(qt ^ row[j]))
        cnt[qi], thr[qi] = _select(dist[:m], id0, k, buf_d[qi], buf_i[qi], cnt[qi], thr[qi])


@nb.njit(inline="always")
def _flush(buf_d, buf_i, cnt, k, best_d, best_i) -> None:
    """Each query's selection cut to its ``k`` best, into ``best_*`` (``(nq, k)``)."""
    for qi in range(cnt.shape[0]):
        if cnt[qi] > k:
            _cut(buf_d[qi], buf_i[qi], cnt[qi], k)
            cnt[qi] = k
        best_d[qi, : cnt[qi]] = buf_d[qi, : cnt[qi]]
        best_i[qi, : cnt[qi]] = buf_i[qi, : cnt[qi]]


@nb.njit(inline="always")
def _select(dist: np.ndarray, lo: int, k: int, buf_d: np.ndarray, buf_i: np.ndarray, cnt: int, thr: np.int32):
    """Add the rows of ``dist`` (ids ``lo + j``, above every id seen so far) to a selection of the ``k``
    best rows by (distance, id): ``buf_*`` (``2 k`` slots) hold ``cnt`` entries, unordered, and rows
    must beat the threshold ``thr`` to be appended; a full buffer is cut back to its ``k`` best and
    the threshold becomes the ``k``-th distance (a later tie never displaces a kept row). About one
    comparison per row, unlike a heap's sift per improvement. Returns the new ``(cnt, thr)``; the
    caller cuts a final buffer of more than ``k`` entries."""
    for j in range(dist.shape[0]):
        d = dist[j]
        if d < thr:
            buf_d[cnt] = d
            buf_i[cnt] = lo + j
            cnt += 1
            if cnt == 2 * k:
                thr = _cut(buf_d, buf_i, cnt, k)
                cnt = k
    return cnt, thr


@nb.njit(inline="always")
def _cut(buf_d: np.ndarray, buf_i: np.ndarray, cnt: int, k: int) -> np.int32:
    """Keep the ``k`` best of the first ``cnt`` entries (in arrival order), return the ``k``-th distance."""
    kth = np.partition(buf_d[:cnt].copy(), k - 1)[k - 1]
    ties = k
    for j in range(cnt):
        if buf_d[j] < kth:
            ties -= 1
    out = 0
    for j in range(cnt):
        d = buf_d[j]
        if d < kth or (d == kth and ties > 0):
            if d == kth:
                ties -= 1
            buf_d[out] = d
            buf_i[out] = buf_i[j]
            out += 1
    return kth


def knn_hamming_words(query_codes: np.ndarray, codes: np.ndarray, k: int, block: int = 8192):
    """Top-``k`` ``(distances int32, ids int64)`` of ``(nq, w)`` queries over ``(n, w)`` uint8 codes,
    ``w`` a multiple of 8, ordered by (distance, id); slots beyond ``n`` hold id -1."""
    db64 = np.ascontiguousarray(codes).view(np.uint64)
    nblocks = -(-len(codes) // block)
    nchunks = min(nblocks, 2 * nb.get_num_threads())
    return _by_query_chunks(query_codes, k, nchunks, lambda q: _knn_blocks(q, db64, k, block, nchunks))


def knn_hamming_words_segments(query_codes: np.ndarray, parts: list[np.ndarray], k: int, block: int = 8192):
    """:func:`knn_hamming_words` over the concatenation of ``parts`` (an index's segments, read in place,
    not concatenated): one parallel region for all of them (a region per part would each wait for the
    threads to check in). Ids count from the first row of the first part."""
    sizes = [len(p) for p in parts]
    starts = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    dbs = List()
    for p in parts:
        dbs.append(np.asarray(np.ascontiguousarray(p)).view(np.uint64))
    block_part = np.concatenate([np.full(-(-n // block), j, np.int64) for j, n in enumerate(sizes)])
    block_lo = np.concatenate([np.arange(0, n, block, dtype=np.int64) for n in sizes])
    nchunks = max(1, min(len(block_part), 2 * nb.get_num_threads()))
    return _by_query_chunks(
        query_codes, k, nchunks, lambda q: _knn_blocks_segments(q, dbs, block_part, block_lo, starts, k, block, nchunks)
    )


def _by_query_chunks(query_codes: np.ndarray, k: int, nchunks: int, kernel) -> tuple[np.ndarray, np.ndarray]:
    """Run ``kernel`` over chunks of the queries (its selection buffers take ``nchunks * queries * k * 36``
    bytes: bounded by :data:`CANDIDATE_BYTES`) and merge its chunks' lists by (distance, id)."""
    q64 = np.ascontiguousarray(query_codes).view(np.uint64)
    chunk = max(1, CANDIDATE_BYTES // (nchunks * k * 36))
    out_d = np.empty((len(q64), k), np.int32)
    out_i = np.empty((len(q64), k), np.int64)
    for s in range(0, len(q64), chunk):
        best_d, best_i = kernel(q64[s : s + chunk])
        nq = best_d.shape[1]
        d = best_d.transpose(1, 0, 2).reshape(nq, -1)
        i = best_i.transpose(1, 0, 2).reshape(nq, -1)
        order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=-1)[:, :k]
        out_d[s : s + nq], out_i[s : s + nq] = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return out_d, out_i


@nb.njit(inline="always")
def _rows_chunk(q, db, k, lo, hi, best_d, best_i) -> None:
    """The ``k`` best of rows ``lo:hi`` for each query into ``best_*`` (``(nq, k)``)."""
    nq, w = q.shape
    dist = np.empty(hi - lo, np.int32)
    buf_d = np.empty(2 * k, np.int32)
    buf_i = np.empty(2 * k, np.int64)
    for qi in range(nq):
        for j in range(lo, hi):
            d = np.int32(0)
            for t in range(w):
                d += np.int32(_popcount64(q[qi, t] ^ db[j, t]))
            dist[j - lo] = d
        cnt, _ = _select(dist, lo, k, buf_d, buf_i, 0, _NONE)
        if cnt > k:
            _cut(buf_d, buf_i, cnt, k)
            cnt = k
        best_d[qi, :cnt] = buf_d[:cnt]
        best_i[qi, :cnt] = buf_i[:cnt]


@nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
def _knn_rows(q: np.ndarray, db: np.ndarray, k: int, nchunks: int) -> tuple[np.ndarray, np.ndarray]:
    nq = q.shape[0]
    n = db.shape[0]
    best_d = np.full((nchunks, nq, k), _NONE, np.int32)
    best_i = np.full((nchunks, nq, k), -1, np.int64)
    for c in nb.prange(nchunks):
        _rows_chunk(q, db, k, c * n // nchunks, (c + 1) * n // nchunks, best_d[c], best_i[c])
    return best_d, best_i


@nb.njit(fastmath=True, boundscheck=False, cache=True)
def _knn_rows_serial(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    best_d = np.full((1, q.shape[0], k), _NONE, np.int32)
    best_i = np.full((1, q.shape[0], k), -1, np.int64)
    _rows_chunk(q, db, k, 0, db.shape[0], best_d[0], best_i[0])
    return best_d, best_i


def knn_hamming_rows(query_codes: np.ndarray, codes: np.ndarray, k: int, nchunks: int = 0):
    """:func:`knn_hamming_words` for a few queries: the rows are read in place, row-major (no block
    transposition), split into ``nchunks`` contiguous ranges scanned in parallel (default: one per
    numba thread up to :data:`SPLIT_THREADS`, at least :data:`ROWS_PER_THREAD` rows each), so
    that one query can use every core. Same output contract."""
    q64 = np.ascontiguousarray(query_codes).view(np.uint64)
    db64 = np.ascontiguousarray(codes).view(np.uint64)
    if nchunks <= 0:
        nchunks = max(1, min(len(codes) // ROWS_PER_THREAD, nb.get_num_threads(), SPLIT_THREADS))
    # One chunk runs without a parallel region: no waiting for idle threads to check in.
    best_d, best_i = _knn_rows_serial(q64, db64, k) if nchunks == 1 else _knn_rows(q64, db64, k, nchunks)
    nq = best_d.shape[1]
    d = best_d.transpose(1, 0, 2).reshape(nq, -1)
    i = best_i.transpose(1, 0, 2).reshape(nq, -1)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=-1)[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
