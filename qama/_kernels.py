"""A batched Hamming top-k kernel (numba) for codes whose rows are whole 64-bit words.

faiss's flat binary search pops one 64-bit word of one pair at a time. Here each block of ``B``
corpus rows is transposed once into word-major order, so that for one query the inner loop runs
over consecutive rows of one word: XOR + popcount on 8 rows at a time (AVX-512), which pays off
when many queries share the block (a batch). Blocks run in parallel; each keeps, per query, the
``k`` best rows by (distance, row id) in a max-heap, and the blocks' lists are merged at the end, so ties are
broken by ascending row id exactly.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["knn_hamming_words"]

_NONE = np.int32(1 << 30)  # distance of an empty slot
CANDIDATE_BYTES = 64 * 2**20  # memory for the blocks' candidate lists of one query chunk


@nb.njit(inline="always")
def _popcount64(x: np.uint64) -> np.uint64:
    x = x - ((x >> nb.uint64(1)) & nb.uint64(0x5555555555555555))
    x = (x & nb.uint64(0x3333333333333333)) + ((x >> nb.uint64(2)) & nb.uint64(0x3333333333333333))
    x = (x + (x >> nb.uint64(4))) & nb.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * nb.uint64(0x0101010101010101)) >> nb.uint64(56)


@nb.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
def _knn_blocks(q: np.ndarray, db: np.ndarray, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    nq, w = q.shape
    n = db.shape[0]
    nblocks = (n + block - 1) // block
    best_d = np.full((nblocks, nq, k), _NONE, np.int32)
    best_i = np.full((nblocks, nq, k), -1, np.int64)
    for b in nb.prange(nblocks):
        lo = b * block
        m = min(n, lo + block) - lo
        words = np.empty((w, m), np.uint64)  # (w, m): the block, word-major
        for j in range(m):
            for t in range(w):
                words[t, j] = db[lo + j, t]
        dist = np.empty(m, np.int32)
        for qi in range(nq):
            dist[:] = 0
            for t in range(w):
                qt = q[qi, t]
                row = words[t]
                for j in range(m):
                    dist[j] += np.int32(_popcount64(qt ^ row[j]))
            kd, ki = best_d[b, qi], best_i[b, qi]  # a max-heap on (distance, id): the root is the worst kept
            for j in range(m):
                if dist[j] < kd[0]:  # rows come in ascending id: a tie never displaces an earlier row
                    _replace_root(kd, ki, dist[j], lo + j)  # type: ignore[arg-type]  # numba: int64
    return best_d, best_i


@nb.njit(inline="always")
def _replace_root(kd: np.ndarray, ki: np.ndarray, d: np.int32, i: np.int64) -> None:
    """Put (d, i) at the root of the max-heap and sift it down."""
    k = kd.shape[0]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and (kd[child + 1] > kd[child] or (kd[child + 1] == kd[child] and ki[child + 1] > ki[child])):
            child += 1
        if kd[child] > d or (kd[child] == d and ki[child] > i):
            kd[pos] = kd[child]
            ki[pos] = ki[child]
            pos = child
        else:
            break
    kd[pos] = d
    ki[pos] = i


def knn_hamming_words(query_codes: np.ndarray, codes: np.ndarray, k: int, block: int = 8192):
    """Top-``k`` ``(distances int32, ids int64)`` of ``(nq, w)`` queries over ``(n, w)`` uint8 codes,
    ``w`` a multiple of 8, ordered by (distance, id); slots beyond ``n`` hold id -1."""
    q64 = np.ascontiguousarray(query_codes).view(np.uint64)
    db64 = np.ascontiguousarray(codes).view(np.uint64)
    nblocks = -(-len(codes) // block)
    # Per-block candidate lists take nblocks * queries * k * 12 bytes: bound them by query chunks.
    chunk = max(1, CANDIDATE_BYTES // (nblocks * k * 12))
    out_d = np.empty((len(q64), k), np.int32)
    out_i = np.empty((len(q64), k), np.int64)
    for s in range(0, len(q64), chunk):
        best_d, best_i = _knn_blocks(q64[s : s + chunk], db64, k, block)
        nq = best_d.shape[1]
        d = best_d.transpose(1, 0, 2).reshape(nq, -1)
        i = best_i.transpose(1, 0, 2).reshape(nq, -1)
        order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=-1)[:, :k]
        out_d[s : s + nq], out_i[s : s + nq] = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    return out_d, out_i
