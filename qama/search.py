"""Search over float embeddings and qama codes: exact Hamming top-k, asymmetric rescoring, funnel.

``D, I = search(...)`` follows faiss: ``I`` holds row ids and ``D`` their inner products
(descending) or Hamming distances (ascending). Edge cases are defined:

* ``k <= 0`` raises ``ValueError``;
* where the corpus has fewer than ``k`` rows (an empty corpus included), the missing slots hold id
  ``-1`` and distance :data:`MISSING_DISTANCE` (score ``-inf`` for float scores);
* ties are broken by row id, ascending, so exact search is deterministic and equals the numpy
  reference :func:`hamming_search_reference` (distances and ids).

Exact Hamming search reads the caller's array in place, a memory map included: a batch of queries
over 64-bit-aligned rows runs the blocked kernel of :mod:`qama._kernels`, a few queries or
unaligned rows faiss's XOR + popcount scan (``faiss.knn_hamming``). Speeds:
``benchmarks/RESULTS_search.md``.

*Asymmetric* scoring keeps the query in float: the score of a document is ``query · x̂``, ``x̂`` the
document's dequantised vector. Through an :class:`Encoder` it is computed as
``Σ_j w_j · centroids[j, level_j]`` (``w = encoder.query_weights(query)``), for candidate rows only:
only their codes are read, ``code_size`` look-ups each in per-query byte tables (:mod:`qama.adc`).
:func:`search_rescored` is the one two-stage search every store runs (Hamming candidates
``oversample × k`` → asymmetric or full-precision rescoring → top-k; ``oversample=0``: Hamming only)
and :func:`funnel_search` the Matryoshka funnel (a code prefix picks candidates, full codes rerank).
The encoders live in :mod:`qama.encoders` (re-exported here under their old import path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from qama._segments import RowSegments
from qama._validate import MAX_RESULT_SLOTS, check_k, check_oversample, n_candidates
from qama.codes import hamming, hamming_distances
from qama.encoders import AdapterEncoder, Encoder, ThresholdEncoder  # re-exported: their old home

__all__ = [
    "MISSING_DISTANCE",
    "RowSegments",
    "Encoder",
    "ThresholdEncoder",
    "AdapterEncoder",
    "float_search",
    "hamming_search",
    "hamming_search_reference",
    "asymmetric_scores",
    "exact_scores",
    "search_rescored",
    "RESCORE_MODES",
    "funnel_search",
    "top_by_score",
]

logger = logging.getLogger(__name__)

#: From this many queries on, aligned codes go through the blocked batch kernel.
BATCH_KERNEL_MIN_QUERIES = 32

#: Values unpacked at once by :func:`asymmetric_scores` (queries are scored in blocks of this size).
SCORE_BLOCK_VALUES = 1 << 23

#: Hamming candidates :func:`search_rescored` holds at once (queries are searched in blocks of this many
#: candidates: their rows, distances and scores, about 24 bytes each).
CANDIDATE_BLOCK = 1 << 22

#: Distance reported in the slots of missing neighbours (fewer than ``k`` rows).
MISSING_DISTANCE = np.iinfo(np.int32).max


def _check_k(k: int, n_queries: int = 1) -> int:
    """``k`` as a Python int (a numpy integer too: faiss takes only ``int``), positive, and ``n_queries × k``
    result slots bounded (:func:`qama._validate.check_k`)."""
    return check_k(k, n_queries)


def float_search(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search (faiss ``IndexFlatIP``); missing slots: id -1, score -inf.

    Ties by ascending row id, as every search here: faiss keeps rows of its own choosing among those
    tied with the ``k``-th, so one more row is asked for, and a query whose ``k``-th score is also the
    next row's is searched again for twice as many rows until the tie ends (or every row is returned)."""
    k = _check_k(k, len(queries))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq, n = len(queries), len(corpus)
    out_s, out_i = np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return out_s, out_i
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    kk = min(k, n)
    todo, m = np.arange(nq), min(kk + 1, n)
    while len(todo):
        again = []
        for rows in np.array_split(todo, -(-len(todo) * m // MAX_RESULT_SLOTS)):  # bounded result slots
            scores, ids = index.search(queries[rows], m)
            tied = scores[:, kk - 1] == scores[:, m - 1] if m < n else np.zeros(len(rows), dtype=bool)
            out_s[rows[~tied]], out_i[rows[~tied]] = top_by_score(scores[~tied], ids[~tied], k)
            again.append(rows[tied])
        todo, m = np.concatenate(again), min(2 * m, n)
    return out_s, out_i


def _check_codes(codes: np.ndarray | RowSegments, query_codes: np.ndarray) -> None:
    if (
        codes.dtype != np.uint8
        or query_codes.dtype != np.uint8
        or codes.ndim != 2
        or query_codes.ndim != 2
        or codes.shape[1] != query_codes.shape[1]
    ):
        raise ValueError(
            f"codes must be 2-d uint8 arrays of one code size, got {codes.dtype} {codes.shape} and "
            f"{query_codes.dtype} {query_codes.shape}"
        )


def _order_ties(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, id) with missing ids (-1) last."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, dist), axis=-1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ids, order, axis=1)


def hamming_search(codes: np.ndarray | RowSegments, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` Hamming search of ``(nq, w)`` query codes over ``(n, w)`` uint8 codes.

    A batch of queries over rows of whole 64-bit words (the index's aligned rows) runs the blocked
    kernel of :mod:`qama._kernels` (about 1.9x faiss's scan at 1M x 80 bytes, 1,000 queries); a
    few queries on aligned rows run its row kernel (the rows split over the cores: one query uses
    them all); unaligned rows run faiss's popcount scan. Either reads ``codes`` in place (a
    C-contiguous memory map is not copied). ``codes`` may be a :class:`RowSegments` (an index of
    several segments): each segment is scanned in place for its own top ``k`` and the lists are
    merged, the same answer as over the concatenation. Returns int32 distances and int64 ids,
    ``(nq, k)`` each; ties by ascending id.
    """
    k = _check_k(k, len(query_codes))
    _check_codes(codes, query_codes)
    if isinstance(codes, RowSegments):
        if len(codes.parts) > 1:
            return _hamming_search_segments(codes, query_codes, k)
        codes = codes.parts[0]
    return _hamming_search_array(codes, query_codes, k)


def _hamming_search_array(codes: np.ndarray, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hamming_search` over one array (checked by the caller)."""
    nq, n = len(query_codes), len(codes)
    dist = np.full((nq, k), MISSING_DISTANCE, dtype=np.int32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return dist, ids
    kk = min(k, n)
    if codes.shape[1] % 8 == 0:
        from qama._kernels import knn_hamming_rows, knn_hamming_words

        kernel = knn_hamming_words if nq >= BATCH_KERNEL_MIN_QUERIES else knn_hamming_rows
        dist[:, :kk], ids[:, :kk] = kernel(query_codes, codes, kk)
    else:
        d, i = faiss.knn_hamming(np.ascontiguousarray(query_codes), np.ascontiguousarray(codes), kk)
        dist[:, :kk], ids[:, :kk] = _order_ties(d, i)
    return dist, ids


def _hamming_search_segments(codes: RowSegments, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hamming_search` over segments. A batch over aligned rows: the blocked kernel over all the
    segments at once. Otherwise each segment's top ``k`` (row numbers shifted by its first row), then
    the ``k`` best of their union by (distance, row). Exact either way, ties by ascending row."""
    nq = len(query_codes)
    dist = np.full((nq, k), MISSING_DISTANCE, dtype=np.int32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    parts = [p for p in codes.parts if len(p)]
    if codes.shape[1] % 8 == 0 and nq >= BATCH_KERNEL_MIN_QUERIES and parts:
        from qama._kernels import knn_hamming_words_segments

        kk = min(k, len(codes))
        dist[:, :kk], ids[:, :kk] = knn_hamming_words_segments(query_codes, parts, kk)
        return dist, ids
    found_d, found_i = [], []
    for start, part in zip(codes.starts.tolist(), codes.parts, strict=False):
        if len(part) and nq:
            d, i = _hamming_search_array(part, query_codes, min(k, len(part)))  # every slot a row: no -1
            found_d.append(d)
            found_i.append(i + start)
    if not found_d:
        return dist, ids
    d, i = np.concatenate(found_d, axis=1), np.concatenate(found_i, axis=1)
    kk = min(k, d.shape[1])
    if codes.shape[1] * 8 < 1 << 22 and len(codes) < 1 << 40:
        # one int64 key per hit, distance above row: a selection, then a sort of the k kept
        key = (d.astype(np.int64) << 40) | i
        if kk < key.shape[1]:
            key = np.partition(key, kk - 1, axis=1)[:, :kk]
        key.sort(axis=1)
        dist[:, :kk], ids[:, :kk] = (key >> 40).astype(np.int32), key & ((1 << 40) - 1)
    else:  # pragma: no cover - rows of 512 KiB or more: distances do not fit the key
        d, i = _order_ties(d, i)
        dist[:, :kk], ids[:, :kk] = d[:, :kk], i[:, :kk]
    return dist, ids


def hamming_search_reference(
    codes: np.ndarray, query_codes: np.ndarray, k: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Pure-numpy reference of :func:`hamming_search` (``np.bitwise_count``; same output contract)."""
    k = _check_k(k, len(query_codes))
    _check_codes(codes, query_codes)
    nq, n = len(query_codes), len(codes)
    dist = np.full((nq, k), MISSING_DISTANCE, dtype=np.int32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, n)
    for s in range(0, nq if n else 0, chunk):
        full = hamming_distances(query_codes[s : s + chunk], codes)  # (c, n)
        order = np.argsort(full, axis=1, kind="stable")[:, :kk]  # stable: ties by ascending id
        ids[s : s + chunk, :kk] = order
        dist[s : s + chunk, :kk] = np.take_along_axis(full, order, axis=1)
    return dist, ids


def asymmetric_scores(
    weights: np.ndarray, codes: np.ndarray | RowSegments, candidates: np.ndarray, encoder: Encoder
) -> np.ndarray:
    """Asymmetric scores ``Σ_j w_j · centroids[j, level_j]`` of candidate rows.

    ``weights``: ``(nq, n_values)`` from ``encoder.query_weights``; ``codes``: the corpus codes
    (rows may be aligned wider than ``code_size``; only candidate rows are read);
    ``candidates``: ``(nq, m)`` row ids, ``-1`` for none. Returns ``(nq, m)`` float32, ``-inf``
    where the candidate is ``-1``. Computed without unpacking, ``code_size`` look-ups per row in
    per-query byte tables (:func:`qama.adc.lut_scores`; the unpacking reference is
    :func:`qama.adc.asymmetric_scores_reference`).
    """
    plan = encoder.plan
    nq, m = candidates.shape
    block = max(1, SCORE_BLOCK_VALUES // max(1, m * plan.n_values))  # bounded memory: blocks of queries
    if nq > block:
        parts = [
            asymmetric_scores(weights[i : i + block], codes, candidates[i : i + block], encoder)
            for i in range(0, nq, block)
        ]
        return np.concatenate(parts)
    if len(codes) == 0:
        return np.full((nq, m), -np.inf, dtype=np.float32)
    if isinstance(codes, RowSegments) and len(codes.parts) == 1:
        codes = codes.parts[0]  # one segment: its memory map is read in place
    if not isinstance(codes, np.ndarray):  # segments, or a store that reads rows on demand: the candidates' rows
        valid = candidates >= 0
        wanted, inverse = np.unique(np.where(valid, candidates, 0), return_inverse=True)
        codes = np.asarray(codes[wanted], dtype=np.uint8)
        candidates = np.where(valid, inverse.reshape(candidates.shape), -1)
    from qama.adc import lut_scores

    return lut_scores(weights, codes, candidates, encoder)


def exact_scores(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Inner products of float ``queries`` ``(nq, d)`` with candidate rows of ``vectors`` (e.g. a
    memory-mapped FP32 file: only candidate rows are read). ``-inf`` where the candidate is -1.
    The candidates' rows are gathered for a block of queries at a time (at most
    :data:`SCORE_BLOCK_VALUES` floats), not for all of them at once."""
    nq, m = candidates.shape
    if len(vectors) == 0 or nq == 0 or m == 0:
        return np.full((nq, m), -np.inf, dtype=np.float32)
    block = max(1, SCORE_BLOCK_VALUES // max(1, m * np.shape(queries)[-1]))  # bounded memory: blocks of queries
    if nq > block:
        parts = [exact_scores(queries[i : i + block], vectors, candidates[i : i + block]) for i in range(0, nq, block)]
        return np.concatenate(parts)
    valid = candidates >= 0
    rows = np.where(valid, candidates, 0)
    cand = np.asarray(vectors[rows.reshape(-1)], dtype=np.float32).reshape(nq, m, -1)
    # C order whatever the caller's layout: einsum's float32 sums differ in the last bit between layouts
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32)[:, : cand.shape[2]])[:, None, :]
    scores = np.einsum("qmd,qmd->qm", cand, np.broadcast_to(q, cand.shape))
    return np.where(valid, scores, -np.inf).astype(np.float32)


def top_by_score(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each row by descending score, ties by ascending id; pads with -inf / -1."""
    nq, m = scores.shape
    key_ids = np.where(candidates < 0, np.iinfo(np.int64).max, candidates)
    order = np.lexsort((key_ids, -scores.astype(np.float64)), axis=-1)[:, :k]
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_s[:, : order.shape[1]] = np.take_along_axis(scores, order, axis=1)
    out_i[:, : order.shape[1]] = np.take_along_axis(candidates, order, axis=1)
    out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


def _pad_to_rows(query_codes: np.ndarray, width: int) -> np.ndarray:
    """Query codes padded with zero bytes to ``width``, that of aligned corpus rows (wider ones as they are)."""
    if query_codes.shape[1] < width:
        return np.pad(query_codes, ((0, 0), (0, width - query_codes.shape[1])))
    return query_codes


#: ``candidates(query_codes, m) -> (distances, rows)``: the first stage of :func:`search_rescored`.
CandidateFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

#: Values of ``rescore``: stored float vectors, the codes against the float query, or vectors when given.
RESCORE_MODES = ("auto", "vectors", "asymmetric")


def search_rescored(
    codes: Any,
    encoder: Encoder,
    queries: np.ndarray,
    k: int,
    oversample: int = 4,
    vectors: Any = None,
    query_codes: np.ndarray | None = None,
    rescore: str = "auto",
    candidates: CandidateFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The two-stage search every store runs: Hamming candidates, rescored, then the top ``k``.

    ``queries`` are ``(nq, d)`` float embeddings (coded by ``encoder.encode_queries`` unless ``query_codes`` is given).
    The one oversampling contract:

    * ``oversample=0``: Hamming search only; scores are negated distances (``-inf`` where missing);
    * ``oversample=f >= 1``: ``f * k`` Hamming candidates rescored, the top ``k`` kept (``f=1``
      reorders the Hamming top-k only). ``rescore="vectors"`` scores them by inner product with the
      full-precision ``vectors`` (e.g. a memory map of FP32 embeddings), ``"asymmetric"`` by
      :func:`asymmetric_scores` against their ``codes``, ``"auto"`` by vectors when given.

    The first stage is the exact scan :func:`hamming_search` over ``codes`` unless the store gives
    ``candidates(query_codes, m) -> (distances, rows)`` (an IVF list, a Milvus server). ``codes``
    and ``vectors`` are read at candidate rows only: an array, a memory map, or any object with
    ``len()`` and ``[int array]`` (a store that fetches rows on demand). Returns float32 scores
    (descending) and int64 rows, ``-1`` where fewer than ``k`` exist.
    """
    k = _check_k(k)
    oversample = check_oversample(oversample)  # 0..MAX_OVERSAMPLE
    if rescore not in RESCORE_MODES:
        raise ValueError(f"rescore must be one of {', '.join(map(repr, RESCORE_MODES))}, got {rescore!r}")
    if rescore == "vectors" and vectors is None:
        raise ValueError("rescore='vectors' needs the float vectors of the corpus (none are stored)")
    queries = np.asarray(queries, dtype=np.float32)
    if query_codes is None:
        query_codes = encoder.encode_queries(queries)
    if candidates is None:
        query_codes = _pad_to_rows(query_codes, codes.shape[1])
        candidates = lambda qc, m: hamming_search(codes, qc, m)  # noqa: E731
    # candidates: oversample × k, at most MAX_CANDIDATES and the rows there are (when codes is an array)
    n = len(codes) if isinstance(codes, (np.ndarray, RowSegments)) else None
    m = k if oversample == 0 else n_candidates(k, oversample, n)
    block = max(1, CANDIDATE_BLOCK // m)  # bounded memory: the candidates of a block of queries at a time
    out_s, out_i = np.empty((len(queries), k), dtype=np.float32), np.empty((len(queries), k), dtype=np.int64)
    for i in range(0, len(queries), block):
        dist, cand = candidates(query_codes[i : i + block], m)
        if oversample == 0:
            out_s[i : i + block] = np.where(cand >= 0, -dist.astype(np.float32), -np.inf)
            out_i[i : i + block] = cand
            continue
        q = queries[i : i + block]
        if vectors is not None and rescore != "asymmetric":
            scores = exact_scores(q, vectors, cand)
        else:
            scores = asymmetric_scores(encoder.query_weights(q), codes, cand, encoder)
        out_s[i : i + block], out_i[i : i + block] = top_by_score(scores, cand, k)
    return out_s, out_i


def funnel_search(
    prefix_codes: np.ndarray,
    prefix_query_codes: np.ndarray,
    k: int,
    oversample: int,
    rerank: str,
    codes: np.ndarray | None = None,
    query_codes: np.ndarray | None = None,
    encoder: Encoder | None = None,
    queries: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Matryoshka funnel: short prefix codes pick ``oversample * k`` candidates, full codes rerank.

    ``rerank="hamming"`` orders candidates by the Hamming distance of the full ``codes`` and
    ``query_codes`` (scores returned as negated distances); ``rerank="asymmetric"`` by the
    asymmetric score of the full ``codes`` against float ``queries`` through ``encoder``.
    The prefix codes are typically the first bytes of the full codes (:func:`qama.codes.prefix_plan`).
    ``oversample`` is at least 1 (``oversample=0`` would rerank nothing: the prefix's Hamming order).
    """
    k = _check_k(k)
    oversample = check_oversample(oversample, minimum=1)
    if rerank not in ("hamming", "asymmetric"):
        raise ValueError(f"rerank must be 'hamming' or 'asymmetric', got {rerank!r}")
    if codes is None:
        raise ValueError("funnel_search needs the full codes to rerank")
    if rerank == "asymmetric":
        if encoder is None or queries is None:
            raise ValueError("rerank='asymmetric' needs encoder and queries")
        first = lambda qc_block, m: hamming_search(prefix_codes, qc_block, m)  # noqa: E731
        qc, mode = prefix_query_codes, "asymmetric"
        return search_rescored(codes, encoder, queries, k, oversample, query_codes=qc, rescore=mode, candidates=first)
    if query_codes is None:
        raise ValueError("rerank='hamming' needs query_codes")
    _, cand = hamming_search(prefix_codes, prefix_query_codes, n_candidates(k, oversample, len(prefix_codes)))
    query_codes = _pad_to_rows(np.asarray(query_codes), codes.shape[1])
    scores = np.full(cand.shape, -np.inf, dtype=np.float32)
    valid = cand >= 0  # the full codes of the candidates only (none for no queries or no rows)
    scores[valid] = -hamming(np.asarray(codes[cand[valid]]), query_codes[np.nonzero(valid)[0]])
    return top_by_score(scores, cand, k)
