"""Milvus backend vs faiss backend on synthetic hybrid codes, in one run (benchmarks/RESULTS_milvus.md).

Synthetic data: ``--n`` random unit vectors of 384 dimensions, encoded with untrained quantile
thresholds under the hybrid plan (624 bits = 78-byte codes). Both backends load the same
embeddings through the same call (``Backend.add``: encode + store) and answer the same queries.
Milvus runs as milvus-lite 2.5.1 serving gRPC on 127.0.0.1 (:class:`LocalMilvusServer`).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_milvus.py --n 1000000 --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from qama.backends import open_backend
from qama.backends.milvus import LocalMilvusServer
from qama.codes import make_plan
from qama.search import ThresholdEncoder

logger = logging.getLogger("bench_milvus")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(backend, emb: np.ndarray, ids: list[str], queries: np.ndarray, k: int, singles: int) -> dict:
    out: dict = {}
    t = time.perf_counter()
    backend.add(emb, ids)
    out["load_s"] = time.perf_counter() - t
    out["load_per_s"] = len(emb) / out["load_s"]
    qc = backend.encoder.encode(queries)
    backend.search_codes(qc[:1], k)  # warm up
    t = time.perf_counter()
    dist, got = backend.search_codes(qc, k)
    out["batched_qps"] = len(qc) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(singles):
        backend.search_codes(qc[i : i + 1], k)
    out["single_qps"] = singles / (time.perf_counter() - t)
    out["count"] = backend.count()
    return out | {"dist": dist, "ids": got}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="corpus size")
    ap.add_argument("--queries", type=int, default=200, help="queries of the batched search")
    ap.add_argument("--singles", type=int, default=20, help="one-query searches timed")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=10000, help="Milvus upsert batch")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.n, 384), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = emb[rng.choice(args.n, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, 384), dtype=np.float32
    )
    encoder = ThresholdEncoder.fit(emb[:100_000], make_plan("hybrid", 384))
    ids = [f"doc{i}" for i in range(args.n)]
    t = time.perf_counter()
    encoder.encode(emb)  # the encoding share of a load, the same for both backends
    encode_per_s = args.n / (time.perf_counter() - t)
    results: dict = {
        "n": args.n,
        "code_bytes": encoder.plan.code_size,
        "threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "encode_per_s": encode_per_s,
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        rss0 = rss_mib(os.getpid())
        with open_backend(Path(tmp) / "faiss-index", "faiss", encoder, create=True) as fb:
            results["faiss"] = run(fb, emb, ids, queries, args.k, args.singles)
            results["faiss"]["rss_delta_mib"] = rss_mib(os.getpid()) - rss0
        with LocalMilvusServer(Path(tmp) / "bench.db", lifetime=1800) as uri:
            assert uri.startswith("http://127.0.0.1:")
            with open_backend(
                uri, "milvus", encoder, create=True, collection="bench", batch_size=args.batch_size
            ) as mb:
                results["milvus"] = run(mb, emb, ids, queries, args.k, args.singles)
            for proc in Path("/proc").iterdir():  # the milvus binary (child of `timeout`)
                if proc.name.isdigit():
                    try:
                        cmd = (proc / "cmdline").read_bytes().split(b"\0")
                    except OSError:
                        continue
                    if cmd and cmd[0].endswith(b"/milvus") and str(Path(tmp) / "bench.db").encode() in cmd:
                        results["milvus"]["server_rss_mib"] = rss_mib(int(proc.name))
    f, m = results["faiss"], results["milvus"]
    results["distances_equal"] = bool(np.array_equal(f["dist"], m["dist"]))
    same_sets = [set(a) == set(b) for a, b in zip(f["ids"].tolist(), m["ids"].tolist(), strict=True)]
    results["id_sets_equal_fraction"] = float(np.mean(same_sets))
    for r in (f, m):
        del r["dist"], r["ids"]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
