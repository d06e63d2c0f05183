"""Speed tables: queries per second of search methods, in batch and one query at a time.

:func:`time_methods` times any set of methods on the same queries and reports each against the
first (the FP32 reference); :func:`speed_table` is the table of ``qama report`` (synthetic vectors).
``benchmarks/bench_search.py`` times its larger set of methods with its own loop. The figures are
ratios of one run on one machine: ``benchmarks/RESULTS_search.md``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["time_methods", "speed_table", "speed_size"]

logger = logging.getLogger(__name__)

#: A method of a speed table: ``(bytes per vector, run(queries: slice))``.
Method = tuple[int, Callable[[slice], Any]]


def time_methods(methods: dict[str, Method], n_queries: int, singles: int = 50) -> list[dict[str, Any]]:
    """Time each method on the batch of ``n_queries`` queries and on ``singles`` single queries.

    Each is run once first (the Hamming kernel compiles on its first call). Returns one row per
    method: ``method``, ``bytes_per_vector``, ``batch_qps``, ``single_ms`` and the speed-ups
    ``batch_speedup`` / ``single_speedup`` over the first method.
    """
    rows: list[dict[str, Any]] = []
    for name, (nbytes, run) in methods.items():
        run(slice(0, n_queries)), run(slice(0, 1))  # warm-up
        t = time.perf_counter()
        run(slice(0, n_queries))
        batch_qps = n_queries / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(singles):  # cycling through the queries when there are fewer than `singles`
            j = i % n_queries
            run(slice(j, j + 1))
        single_ms = 1000 * (time.perf_counter() - t) / singles
        rows.append({"method": name, "bytes_per_vector": nbytes, "batch_qps": batch_qps, "single_ms": single_ms})
    base = rows[0]
    for r in rows:
        r["batch_speedup"] = r["batch_qps"] / base["batch_qps"]
        r["single_speedup"] = base["single_ms"] / r["single_ms"]
    return rows


def speed_table(
    n: int, d: int, n_queries: int, plan_name: str = "hybrid", singles: int = 50, peers: tuple[str, ...] = ()
) -> list[dict]:
    """Queries per second on ``n`` synthetic unit vectors: FP32 flat inner product (faiss) against
    Hamming search on the plan's codes, with and without asymmetric rescoring (4x and 100
    candidates), and the ``peers`` (:func:`qama.evaluation.peers.speed_methods`).

    Every method is given the float queries, so the time of a qama method includes coding them, as the
    peers' includes their query tables. Synthetic data: the figures are speed only, as ratios of one
    run on one machine.
    """
    import faiss

    from qama.adc import FastScanCodes, adc_search
    from qama.codes import make_plan
    from qama.encoders import ThresholdEncoder
    from qama.search import search_rescored

    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((n, d), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.choice(n, n_queries)] + 0.1 * rng.standard_normal((n_queries, d), dtype=np.float32)
    encoder = ThresholdEncoder.fit(corpus[:100_000], make_plan(plan_name, d))
    plan = encoder.plan
    width = plan.row_size(8)  # rows padded to 64-bit words, as an index stores them
    codes = np.zeros((n, width), np.uint8)
    codes[:, : plan.code_size] = encoder.encode(corpus)
    flat = faiss.IndexFlatIP(d)
    flat.add(corpus)
    k = 10

    methods: dict[str, Method] = {
        "fp32 (faiss IndexFlatIP)": (
            4 * d,
            lambda q: flat.search(queries[q], k),
        ),
        f"{plan_name} Hamming": (
            width,
            lambda q: search_rescored(codes, encoder, queries[q], k, oversample=0),
        ),
        f"{plan_name} Hamming + rescore 4x": (
            width,
            lambda q: search_rescored(codes, encoder, queries[q], k, oversample=4),
        ),
        f"{plan_name} Hamming + rescore 100": (
            width,
            lambda q: search_rescored(codes, encoder, queries[q], k, oversample=10),
        ),
    }
    fast = FastScanCodes(codes, plan)  # what an index builds at its first adc search
    methods[f"{plan_name} asymmetric full scan (adc)"] = (
        width,
        lambda q: adc_search(codes, encoder, queries[q], k, fast=fast),
    )
    if peers:
        from qama.evaluation.peers import speed_methods

        methods.update(speed_methods(corpus, queries, k, peers))
    return time_methods(methods, n_queries, singles)


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def speed_size(n: int, d: int) -> int:
    """``n``, or fewer vectors (a multiple of 100k) when the speed table of ``n`` would take more than
    half the available memory (about 12 bytes per dimension and vector: the corpus, the FP32 index, the
    peers' codes)."""
    available = _available_memory()
    if available is None or 12 * n * d <= available // 2:
        return n
    fits = max(100_000, (available // 2 // (12 * d)) // 100_000 * 100_000)
    if fits < n:
        logger.warning("speed table: %d vectors would not fit in memory; measuring %d", n, fits)
    return min(n, fits)
