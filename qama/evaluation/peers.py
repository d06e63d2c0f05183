"""What users would pick instead of qama: compressed formats of other libraries, called as they are.

Every peer is built and searched by its own library; qama only feeds it the same embeddings and
scores the rankings with the same evaluator:

* ``pq<M>``: faiss ``IndexPQ`` with ``M`` bytes per vector (``M`` sub-quantisers of 8 bits, trained
  on the corpus), searched with float queries (asymmetric distance computation), inner product.
* ``rabitq<B>``: faiss ``IndexRaBitQ`` with ``B`` bits per dimension (1: the original RaBitQ;
  more: extended RaBitQ), float queries (``qb = 0``), inner product.
* ``st-ubinary``: sentence-transformers ``quantize_embeddings(..., "ubinary")`` (one sign bit per
  dimension), searched by ``semantic_search_faiss`` with binary queries (symmetric Hamming).
* ``st-ubinary-rescore``: the same codes, ``semantic_search_faiss`` with float queries: Hamming
  candidates (``rescore_multiplier`` 4) rescored by the float query against the stored bits, as
  the sentence-transformers documentation recommends.
* ``st-int8``: sentence-transformers ``quantize_embeddings(..., "int8")`` with the corpus as the
  calibration set, queries quantised the same way, exact inner product of the int8 vectors (faiss
  ``IndexFlatIP`` over their values).

    peers = build_peer("pq64", corpus)
    scores, ids = peers.search(queries, k=100)
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_PEERS", "PeerIndex", "build_peer", "check_peers", "peer_rows", "is_peer", "PEER_FORMATS"]

logger = logging.getLogger(__name__)

# Each peer at its own natural sizes near qama's (48-212 bytes at 384 dimensions).
DEFAULT_PEERS = (
    "pq48",
    "pq64",
    "pq96",
    "rabitq1",
    "rabitq2",
    "rabitq4",
    "st-ubinary",
    "st-ubinary-rescore",
    "st-int8",
)
ST_RESCORE_MULTIPLIER = 4  # the same oversampling as qama's rescoring rows
PEER_FORMATS = {  # table format -> label of the plots
    "faiss-pq": "faiss PQ",
    "faiss-rabitq": "faiss RaBitQ",
    "st-ubinary": "ST ubinary",
    "st-int8": "ST int8",
}
_NAME = re.compile(r"^(pq(?P<m>\d+)|rabitq(?P<b>\d)|st-ubinary|st-ubinary-rescore|st-int8)$")


def is_peer(fmt: str) -> bool:
    """Whether a table row's ``format`` is a peer's."""
    return fmt in PEER_FORMATS


def check_peers(names: Iterable[str]) -> list[str]:
    """The peer names, validated (``ValueError`` naming the bad one and the grammar)."""
    names = list(names)
    for name in names:
        m = _NAME.match(name)
        if not m or (m["m"] is not None and int(m["m"]) < 1) or (m["b"] is not None and not 1 <= int(m["b"]) <= 9):
            raise ValueError(
                f"unknown peer {name!r}: choose from pq<M> (bytes per vector), rabitq<B> (bits per dimension, 1-9), "
                "st-ubinary, st-ubinary-rescore, st-int8"
            )
    return names


@dataclass
class PeerIndex:
    """A peer's index of one corpus: its size, and ``search(queries, k) -> (scores, ids)``."""

    name: str
    format: str  # a key of PEER_FORMATS
    plan: str | None  # the peer's setting, e.g. "M48" or "2bit"
    dims: int
    bytes_per_vector: int
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    rescore: int | None = None  # oversampling of a float rescoring stage
    asymmetric: bool = True  # float queries against codes (False: the query is quantised too)
    build_seconds: float = 0.0


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _st_quantization():
    with warnings.catch_warnings():  # sentence-transformers < 5 keeps them in sentence_transformers.quantization
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss
        except ImportError:
            from sentence_transformers.quantization import quantize_embeddings, semantic_search_faiss
    return quantize_embeddings, semantic_search_faiss


def _from_st_results(results: list[list[dict]], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((len(results), k), -np.inf, dtype=np.float32)
    ids = np.full((len(results), k), -1, dtype=np.int64)
    for i, hits in enumerate(results):
        for j, hit in enumerate(hits[:k]):
            ids[i, j], scores[i, j] = hit["corpus_id"], hit["score"]
    return scores, ids


def build_peer(name: str, corpus: np.ndarray, train: np.ndarray | None = None, rabitq_query_bits: int = 0) -> PeerIndex:
    """Build the peer ``name`` over ``corpus`` (``(n, d)`` float embeddings); ``train``: the vectors its
    quantiser is fitted on (default: the corpus itself, as a user would). ``rabitq_query_bits``:
    RaBitQ's query quantisation (0: float queries, as the quality rows use; faiss's default is 4,
    about 170x faster per row here: benchmarks/RESULTS_search.md)."""
    import faiss

    (name,) = check_peers([name])
    corpus = _f32(corpus)
    train = corpus if train is None else _f32(train)
    n, d = corpus.shape
    start = time.perf_counter()
    m = _NAME.match(name)
    assert m is not None  # check_peers accepted the name
    index: Any
    if m["m"] is not None:
        M = int(m["m"])
        if d % M:
            raise ValueError(f"{name}: faiss IndexPQ needs M dividing the dimension ({d} % {M} != 0)")
        index = faiss.IndexPQ(d, M, 8, faiss.METRIC_INNER_PRODUCT)
        if len(train) < 39 * 256:  # faiss would print one warning per sub-quantiser; say it once
            logger.info("%s: training on %d vectors (faiss advises at least %d)", name, len(train), 39 * 256)
            index.pq.cp.min_points_per_centroid = 1  # only silences that warning; the clustering is the same
        index.train(train)
        index.add(corpus)

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return index.search(_f32(q), k)

        peer = PeerIndex(name, "faiss-pq", f"M{M}", d, index.code_size, search)
    elif m["b"] is not None:
        bits = int(m["b"])
        index = faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits)
        index.qb = rabitq_query_bits  # 0: float queries (faiss's default quantises them to 4 bits)
        index.train(train)
        index.add(corpus)

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return index.search(_f32(q), k)

        plan = f"{bits}bit" if not rabitq_query_bits else f"{bits}bit, {rabitq_query_bits}-bit query"
        peer = PeerIndex(name, "faiss-rabitq", plan, d, index.code_size, search)
    elif name.startswith("st-ubinary"):
        quantize_embeddings, semantic_search_faiss = _st_quantization()
        codes = quantize_embeddings(corpus, precision="ubinary")  # (n, ceil(d/8)) uint8
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        rescore = name.endswith("rescore")

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            results, _ = semantic_search_faiss(
                _f32(q),
                corpus_index=index,
                corpus_precision="ubinary",
                top_k=k,
                rescore=rescore,
                rescore_multiplier=ST_RESCORE_MULTIPLIER,
            )
            scores, ids = _from_st_results(results, k)
            if not rescore:  # Hamming distances: smaller is nearer
                scores = -scores
            return scores, ids

        peer = PeerIndex(
            name,
            "st-ubinary",
            None,
            d,
            codes.shape[1],
            search,
            rescore=ST_RESCORE_MULTIPLIER if rescore else None,
            asymmetric=rescore,
        )
    else:  # st-int8
        quantize_embeddings, _ = _st_quantization()
        codes = quantize_embeddings(corpus, precision="int8", calibration_embeddings=train)  # (n, d) int8
        index = faiss.IndexFlatIP(d)
        index.add(codes.astype(np.float32))  # exact int8 inner products (faiss has no int8 flat index)

        def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            qc = quantize_embeddings(_f32(q), precision="int8", calibration_embeddings=train)
            return index.search(qc.astype(np.float32), k)

        peer = PeerIndex(name, "st-int8", None, d, codes.shape[1], search, asymmetric=False)
    peer.build_seconds = time.perf_counter() - start
    return peer


def peer_rows(corpus: np.ndarray, queries: np.ndarray, evaluator, names: Iterable[str] = DEFAULT_PEERS) -> list:
    """One :class:`qama.evaluation.rows.Row` per peer at the corpus's full dimension (``queries``: the judged
    ones, rows ``evaluator.rows``). A peer that does not fit the dimension is left out, with a warning."""
    from qama.evaluation.rows import TOP_K, Row

    rows = []
    for name in check_peers(names):
        try:
            peer = build_peer(name, corpus)
        except ValueError as e:
            logger.warning("peer left out: %s", e)
            continue
        scores, ids = peer.search(queries, min(TOP_K, len(corpus)))
        rows.append(
            Row(
                peer.format,
                peer.plan,
                peer.dims,
                8 * peer.bytes_per_vector / peer.dims,
                peer.bytes_per_vector,
                rescore=peer.rescore,
                metrics=evaluator.from_ranking(ids, scores),
            )
        )
    return rows


def peer_label(fmt: str, plan: str | None, rescore: int | None, bytes_per_vector: int | None = None) -> str:
    """How a peer row is named in the report's summary and speed table."""
    if fmt == "faiss-pq":
        return f"faiss IndexPQ {plan} (float query, ADC)"
    if fmt == "faiss-rabitq":
        return f"faiss IndexRaBitQ {plan}" if plan and "query" in plan else f"faiss IndexRaBitQ {plan} (float query)"
    if fmt == "st-ubinary":
        return f"ST ubinary + float rescore {rescore}x" if rescore else "ST ubinary (symmetric Hamming)"
    return "ST int8 (symmetric)" if fmt == "st-int8" else fmt


def speed_methods(
    corpus: np.ndarray, queries: np.ndarray, k: int, names: Iterable[str], train_size: int = 100_000
) -> dict[str, tuple[int, Callable[[slice], object]]]:
    """``{label: (bytes per vector, search the queries of a slice)}`` of each peer over ``corpus``,
    for :func:`qama.evaluation.speed.speed_table`. Quantisers are fitted on the first ``train_size`` vectors.
    ``st-int8`` is left out: faiss has no int8 scan (sentence-transformers searches int8 with usearch),
    so its time would be that of FP32. RaBitQ is timed with faiss's default 4-bit query quantisation
    (its float-query scan, which the quality rows use, costs about 2 µs per row and query here)."""
    methods: dict[str, tuple[int, Callable[[slice], object]]] = {}
    for name in check_peers(names):
        if name == "st-int8":
            continue
        try:
            peer = build_peer(name, corpus, train=corpus[:train_size], rabitq_query_bits=4)
        except ValueError as e:
            logger.warning("peer left out of the speed table: %s", e)
            continue
        label = peer_label(peer.format, peer.plan, peer.rescore)
        logger.info("%s: built over %d vectors in %.1f s", label, len(corpus), peer.build_seconds)

        def run(q: slice, peer: PeerIndex = peer) -> object:
            return peer.search(queries[q], k)

        methods[label] = (peer.bytes_per_vector, run)
    return methods


def _name(e: dict) -> str:
    if is_peer(e["format"]):
        return peer_label(e["format"], e["plan"], e["rescore"])
    plan = f" {e['plan']}" if e["plan"] else ""
    how = f" + rescore {e['rescore']}x" if e["rescore"] else (" (symmetric Hamming)" if e["plan"] else "")
    return f"{e['format']}{plan} @ {e['dims']} dims{how}"


def summary(main: list[dict], speed: list[dict] | None = None, budgets=(48, 64, 96, 128, 256)) -> list[str]:
    """Markdown lines for the top of ``report.md``: per byte budget, the best format (mean nDCG@10
    retention over the datasets), the best qama format and the best peer, and which is ahead."""
    rows = [e for e in main if e["mean_retention"] == e["mean_retention"]]  # not NaN
    qama = [e for e in rows if e["format"] == "qama" and e["plan"]]
    peers = [e for e in rows if is_peer(e["format"])]
    if not qama:
        return []
    lines = [
        "## Summary",
        "",
        "Best nDCG@10 retention (share of FP32 at full size, mean over the datasets) within each budget of"
        " stored bytes per vector:",
        "",
    ]
    ahead: list[str] = []
    behind: list[str] = []
    for budget in budgets:
        fits = [e for e in rows if e["bytes_per_vector"] <= budget]
        if not fits:
            continue
        best = max(fits, key=lambda e: e["mean_retention"])
        q = max((e for e in qama if e["bytes_per_vector"] <= budget), key=lambda e: e["mean_retention"], default=None)
        p = max((e for e in peers if e["bytes_per_vector"] <= budget), key=lambda e: e["mean_retention"], default=None)
        line = f"- **≤ {budget} B**: {_name(best)}, {best['bytes_per_vector']} B, {100 * best['mean_retention']:.1f}%"
        if q is not None and p is not None:
            gap = 100 * (q["mean_retention"] - p["mean_retention"])
            line += (
                f"; best qama {100 * q['mean_retention']:.1f}% vs best peer ({_name(p)}, {p['bytes_per_vector']} B)"
                f" {100 * p['mean_retention']:.1f}%"
            )
            (ahead if gap > 0 else behind).append(f"≤ {budget} B ({gap:+.1f} points)")
        lines.append(line)
    if ahead:
        lines.append(f"- qama is ahead of every peer at: {', '.join(ahead)}.")
    if behind:
        lines.append(f"- A peer is ahead of qama at: {', '.join(behind)}.")
    if speed:
        fp32 = speed[0]
        fastest = max(speed[1:] or speed, key=lambda r: r["batch_qps"])
        lines.append(
            f"- Speed (synthetic vectors, see below): fastest batch search {fastest['method']},"
            f" {fastest['batch_speedup']:.1f}x {fp32['method']}; "
            + ", ".join(f"{r['method']} {r['batch_speedup']:.2f}x" for r in speed[1:] if r is not fastest)
            + "."
        )
    lines.append(
        "- qama rows without rescoring compare query codes with document codes (symmetric Hamming); "
        "faiss PQ and RaBitQ compare the float query with the codes, as does qama's rescoring."
    )
    return lines + [""]
