"""Search benchmarks: speed at 1M x 384 (synthetic), memory of a 1M index, approximate recall and
rescoring quality on SciFact (real embeddings). Prints Markdown tables.

Usage (numbers in benchmarks/RESULTS_search.md)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_search.py --sections speed memory approx quality adc_quality

Speed figures are ratios measured in one run on one machine; the machine may be shared, so compare
rows of the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numba as nb
import numpy as np

from qama.codes import make_plan
from qama.search import ThresholdEncoder, asymmetric_scores, hamming_search, search_rescored, top_by_score

# beside the repository (a worktree under wt/ finds it one level further up), or QAMA_SHARED
_HERE = Path(__file__).resolve()
SHARED = Path(
    os.environ.get("QAMA_SHARED")
    or next((p / "shared" for p in _HERE.parents[2:4] if (p / "shared").is_dir()), _HERE.parents[2] / "shared")
)
SCIFACT_EMB = SHARED / "embeddings" / "all-MiniLM-L6-v2" / "scifact"


def synthetic(n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors with a decaying spectrum (a rough stand-in for sentence embeddings)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    scale = (1.0 / np.sqrt(1 + np.arange(d) / 16)).astype(np.float32)
    for i in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - i), d), dtype=np.float32) * scale
        out[i : i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@nb.njit(parallel=True, cache=True)
def _sum_rows(words: np.ndarray, nchunks: int) -> int:
    """Sum of ``(n, w)`` uint64 words, the rows split into ``nchunks`` ranges read in parallel."""
    n = words.shape[0]
    parts = np.zeros(nchunks, np.uint64)
    for c in nb.prange(nchunks):
        acc = np.uint64(0)
        for j in range(c * n // nchunks, (c + 1) * n // nchunks):
            for t in range(words.shape[1]):
                acc += words[j, t]
        parts[c] = acc
    return int(parts.sum())


def speed(n: int, nq: int, singles: int, peers: bool = True) -> None:
    from qama.adc import FastScanCodes, adc_search
    from qama.codes import prefix_plan
    from qama.search import funnel_search

    d, k = 384, 10
    plan = make_plan("hybrid", d)
    corpus, queries = synthetic(n, d, 0), synthetic(nq, d, 1)
    t0 = time.perf_counter()
    enc = ThresholdEncoder.fit(corpus[:100_000], plan)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes78 = enc.encode(corpus)
    t_enc = time.perf_counter() - t0
    codes80 = np.zeros((n, plan.row_size(8)), dtype=np.uint8)
    codes80[:, : plan.code_size] = codes78
    q78 = enc.encode(queries)
    q80 = np.zeros((nq, 80), dtype=np.uint8)
    q80[:, :78] = q78
    _, pbytes = prefix_plan(plan, d // 4)  # the 96 2-bit dimensions: the first 36 bytes, rows padded to 40
    pre40 = np.zeros((n, 40), dtype=np.uint8)
    pre40[:, :pbytes] = codes78[:, :pbytes]
    qpre40 = np.zeros((nq, 40), dtype=np.uint8)
    qpre40[:, :pbytes] = q78[:, :pbytes]
    t0 = time.perf_counter()
    fast = FastScanCodes(codes80, plan)
    t_fast = time.perf_counter() - t0
    threads = f"faiss threads={faiss.omp_get_max_threads()}, numba threads={nb.get_num_threads()}"
    print(f"\n### Speed, {n:,} x {d} synthetic, hybrid codes, k={k}, {threads}\n")
    print(f"fit thresholds on 100k: {t_fit:.1f} s; encode + pack {n:,} embeddings: {t_enc:.1f} s; ", end="")
    print(f"fast-scan copy of the codes for adc: {t_fast:.2f} s")

    flat = faiss.IndexFlatIP(d)
    flat.add(corpus)
    ibf = faiss.IndexBinaryFlat(78 * 8)
    ibf.add(codes78)
    methods = {
        "faiss IndexFlatIP, FP32": (4 * d, lambda q: flat.search(queries[q], k)),
        "faiss IndexBinaryFlat, same codes": (78, lambda q: ibf.search(q78[q], k)),
        "qama `hamming_search`": (80, lambda q: hamming_search(codes80, q80[q], k)),
        "qama Hamming 4x + asymmetric rescoring": (
            80,
            lambda q: search_rescored(codes80, enc, queries[q], k, oversample=4, query_codes=q78[q]),
        ),
        "qama Hamming 10x + asymmetric rescoring": (
            80,
            lambda q: search_rescored(codes80, enc, queries[q], k, oversample=10, query_codes=q78[q]),
        ),
        "qama funnel: 96-dim 2-bit prefix (40 B) 10x, then asymmetric": (
            80,
            lambda q: funnel_search(
                pre40, qpre40[q], k, 10, "asymmetric", codes=codes80, encoder=enc, queries=queries[q]
            ),
        ),
        "qama asymmetric full scan (`--mode adc`)": (80, lambda q: adc_search(codes80, enc, queries[q], k, fast=fast)),
    }
    plan2 = make_plan("2bit", d)
    enc2 = ThresholdEncoder.fit(corpus[:100_000], plan2)
    codes2 = np.zeros((n, plan2.row_size(8)), dtype=np.uint8)
    codes2[:, : plan2.code_size] = enc2.encode(corpus)
    fast2 = FastScanCodes(codes2, plan2)
    methods["qama 2-bit codes, asymmetric full scan"] = (
        plan2.row_size(8),
        lambda q: adc_search(codes2, enc2, queries[q], k, fast=fast2),
    )
    if peers:
        t0 = time.perf_counter()
        for name, (nbytes, index) in peer_indexes(corpus, corpus[:50_000]).items():
            methods[name] = (nbytes, lambda q, index=index: index.search(queries[q], k))
        print(f"faiss PQ64x8 + RaBitQ: train on 50k, add {n:,}: {time.perf_counter() - t0:.1f} s")
    del corpus
    words = codes80.view(np.uint64)
    _sum_rows(words[:1000], 2)
    floor1 = timed(lambda: words.sum(), 5)
    floor2 = timed(lambda: _sum_rows(words, 2 * nb.get_num_threads()), 5)
    from qama._kernels import knn_hamming_rows

    split = nb.get_num_threads()
    single_only = {  # one query's rows split over the threads (not hamming_search's default, see _kernels)
        f"qama Hamming, one query's rows split over {split} threads": (
            80,
            lambda q: knn_hamming_rows(q80[q], codes80, k, split),
        ),
        f"qama Hamming 4x + asymmetric rescoring, rows split over {split} threads": (80, lambda q: split_rescored(q)),
    }

    def split_rescored(q: slice) -> tuple[np.ndarray, np.ndarray]:
        cand = knn_hamming_rows(q80[q], codes80, 4 * k, split)[1]
        return top_by_score(asymmetric_scores(enc.query_weights(queries[q]), codes80, cand, enc), cand, k)

    rows = []
    for name, (nbytes, fn) in {**methods, **single_only}.items():
        fn(slice(0, min(nq, 64))), fn(slice(0, 1))  # warm-up: numba compiles (or loads its cache) at first call
        batch = timed(lambda fn=fn: fn(slice(0, nq))) if name not in single_only else float("nan")
        single = timed(lambda fn=fn: [fn(slice(i, i + 1)) for i in range(singles)]) / singles
        rows.append((name, nbytes, nq / batch, single * 1e3))
    t_qenc = timed(lambda: [enc.encode(queries[i : i + 1]) for i in range(singles)]) / singles
    floor1_ms, floor2_ms = floor1 * 1e3, floor2 * 1e3
    print(f"\nmemory floor, one pass over the {codes80.nbytes / 1e6:.0f} MB of codes: numpy sum (1 thread) ", end="")
    print(f"{floor1_ms:.2f} ms, numba sum ({nb.get_num_threads()} threads) {floor2_ms:.2f} ms")
    print(f"\n| method | bytes/vec | batch of {nq:,} q/s | vs Hamming | single query ms | vs floor |")
    print("|---|---|---|---|---|---|")
    by = {r[0]: r for r in rows}
    ham = by["qama `hamming_search`"]
    floor_ms = min(floor1_ms, floor2_ms)
    for name, nbytes, qps, ms in rows:
        batch = "—" if np.isnan(qps) else f"{qps:,.0f} | {qps / ham[2]:.2f}x"
        print(f"| {name} | {nbytes} | {batch if '|' in batch else batch + ' | —'} | {ms:.2f} | {ms / floor_ms:.1f}x |")
    print(f"\nquery encoding (one query, not in the rows above): {t_qenc * 1e3:.3f} ms")
    r4, r10 = by["qama Hamming 4x + asymmetric rescoring"], by["qama Hamming 10x + asymmetric rescoring"]
    adc = by["qama asymmetric full scan (`--mode adc`)"]
    targets = [
        ("Hamming 4x + rescoring >= 0.85x Hamming-only, batch", r4[2] / ham[2], 0.85),
        ("Hamming 4x + rescoring >= 0.85x Hamming-only, single", ham[3] / r4[3], 0.85),
        ("Hamming 10x + rescoring >= 0.7x Hamming-only, batch", r10[2] / ham[2], 0.7),
        ("Hamming 10x + rescoring >= 0.7x Hamming-only, single", ham[3] / r10[3], 0.7),
        ("single query Hamming 4x + rescoring <= 2x memory floor", r4[3] / floor_ms, None),
        (
            f"single query Hamming 4x + rescoring, rows split over {split} threads <= 2x memory floor",
            by[f"qama Hamming 4x + asymmetric rescoring, rows split over {split} threads"][3] / floor_ms,
            None,
        ),
    ]
    if peers:
        pq, rq1 = by["faiss PQ64x8 (ADC)"], by["faiss RaBitQ 1-bit"]
        targets += [
            ("Hamming 4x + rescoring >= 5x faiss PQ64x8, batch", r4[2] / pq[2], 5.0),
            ("Hamming 4x + rescoring >= 3x faiss RaBitQ 1-bit, batch", r4[2] / rq1[2], 3.0),
            ("asymmetric full scan >= 2x faiss PQ64x8, batch", adc[2] / pq[2], 2.0),
            ("asymmetric full scan >= 2x faiss PQ64x8, single", pq[3] / adc[3], 2.0),
            (
                "2-bit asymmetric full scan >= 2x faiss PQ64x8, batch",
                by["qama 2-bit codes, asymmetric full scan"][2] / pq[2],
                2.0,
            ),
        ]
    print("\n| target | measured | met |\n|---|---|---|")
    for name, value, goal in targets:
        ok = value <= 2.0 if goal is None else value >= goal
        print(f"| {name} | {value:.2f}x | {'yes' if ok else '**no**'} |")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(path: str) -> None:
    from qama.index import QamaIndex

    q = synthetic(10, 384, 7)
    base = _rss_mb()
    index = QamaIndex.open(path, verify=False)
    opened = _rss_mb()
    index.search(q, 10)
    searched = _rss_mb()
    index.search(q, 10, oversample=4)
    rescored = _rss_mb()
    print(json.dumps({"base": base, "opened": opened, "searched": searched, "rescored": rescored}))


def memory(n: int) -> None:
    from qama.index import QamaIndex

    plan = make_plan("hybrid", 384)
    corpus = synthetic(n, 384, 0)
    enc = ThresholdEncoder.fit(corpus[:100_000], plan)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        index = QamaIndex.create(Path(tmp) / "ix", enc, corpus, [f"doc{i:07d}" for i in range(n)])
        t_create = time.perf_counter() - t
        disk = index.disk_bytes()
        del index, corpus
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(Path(tmp) / "ix")], capture_output=True, text=True
        )
        m = json.loads(out.stdout.strip().splitlines()[-1])
    total = sum(disk.values())
    codes_file = disk["codes"]
    print(f"\n### Index of {n:,} synthetic documents (hybrid 384, no vectors)\n")
    print(f"create (fit excluded, encode + write + checksum): {t_create:.1f} s")
    print("\n| file | bytes | bytes/doc |\n|---|---|---|")
    for key, b in disk.items():
        print(f"| {key} | {b:,} | {b / n:.2f} |")
    print(f"| total | {total:,} | {total / n:.2f} |")
    print(
        f"\ncodes file: {codes_file / n:.2f} bytes/doc -> {1536 * n / codes_file:.1f}x smaller than FP32 "
        f"(1536 B); whole folder incl. ids: {1536 * n / total:.1f}x"
    )
    print("\n| resident memory (RSS, MB) | value |\n|---|---|")
    print(f"| Python + numpy + faiss + qama (baseline) | {m['base']:.0f} |")
    print(f"| after open (memory-mapped) | +{m['opened'] - m['base']:.0f} |")
    print(f"| after 10 Hamming searches | +{m['searched'] - m['base']:.0f} |")
    print(f"| after 10 rescored searches | +{m['rescored'] - m['base']:.0f} |")


def approx() -> None:
    if not (SCIFACT_EMB / "corpus.npy").is_file():
        print(f"\n(approximate search skipped: {SCIFACT_EMB} not found)")
        return
    corpus = np.load(SCIFACT_EMB / "corpus.npy")
    queries = np.load(SCIFACT_EMB / "queries.npy")
    plan = make_plan("hybrid", corpus.shape[1])
    enc = ThresholdEncoder.fit(corpus, plan)
    xb, xq = enc.encode(corpus), enc.encode(queries)
    k = 10
    _, exact = hamming_search(xb, xq, k)
    nbits = plan.code_size * 8

    def recall(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)]))

    print(f"\n### Approximate Hamming search, SciFact corpus ({len(corpus)} x 384, hybrid), {len(queries)} queries\n")
    print("recall@10 against exact Hamming search (ties at the 10th place count as misses)\n")
    print("| index | parameter | recall@10 | q/s |\n|---|---|---|---|")
    for nlist in (32, 128):
        quant = faiss.IndexBinaryFlat(nbits)
        ivf = faiss.IndexBinaryIVF(quant, nbits, nlist)
        ivf.train(xb)
        ivf.add(xb)
        for nprobe in (1, 4, 16):
            ivf.nprobe = nprobe
            t = time.perf_counter()
            _, ids = ivf.search(xq, k)
            qps = len(xq) / (time.perf_counter() - t)
            print(f"| IndexBinaryIVF nlist={nlist} | nprobe={nprobe} | {recall(ids):.3f} | {qps:,.0f} |")
    for m in (16, 32):
        hnsw = faiss.IndexBinaryHNSW(nbits, m)
        hnsw.add(xb)
        for ef in (16, 64, 256):
            hnsw.hnsw.efSearch = ef
            t = time.perf_counter()
            _, ids = hnsw.search(xq, k)
            qps = len(xq) / (time.perf_counter() - t)
            print(f"| IndexBinaryHNSW M={m} | efSearch={ef} | {recall(ids):.3f} | {qps:,.0f} |")


def judged_dataset(name: str):
    """``(evaluator, corpus embeddings, judged queries' embeddings)`` of a shared dataset (all-MiniLM-L6-v2)."""
    from qama.data import load_dataset
    from qama.embeddings import load_embeddings
    from qama.evaluation.metrics import Evaluator

    ds = load_dataset(SHARED / "datasets" / name)
    corpus, queries = load_embeddings(SHARED / "embeddings" / "all-MiniLM-L6-v2" / name, ds)
    ev = Evaluator(ds)
    return ev, corpus, queries[ev.rows]


def quality() -> None:
    if not (SCIFACT_EMB / "corpus.npy").is_file():
        print(f"\n(quality skipped: {SCIFACT_EMB} not found)")
        return
    from qama.evaluation.rows import baseline_rows, set_retention, threshold_rescore_rows
    from qama.evaluation.tables import to_markdown

    ev, corpus, judged = judged_dataset("scifact")
    rows = [r for r in baseline_rows(corpus, judged, ev, [384]) if r.format in ("fp32", "threshold")]
    rows += threshold_rescore_rows(corpus, judged, ev, [384], ("2bit", "1bit", "hybrid"), (1, 4, 10), vectors=True)
    set_retention(rows)
    print("\n### Rescoring quality, SciFact test, all-MiniLM-L6-v2, untrained quantile thresholds (1-bit: sign)\n")
    print("format threshold = symmetric Hamming (rescore —) or asymmetric rescoring of rescore x 100 candidates;")
    print("threshold+fp32 = candidates rescored with the FP32 vectors; funnel = 96-dim 2-bit code prefix picks.\n")
    print(to_markdown(rows))


def peer_indexes(corpus: np.ndarray, train: np.ndarray) -> dict[str, tuple[int, object]]:
    """faiss's compressed float indexes qama's codes are compared with: ``name -> (bytes/vector, index)``
    (inner product; PQ trained on ``train``)."""
    d = corpus.shape[1]
    out: dict[str, tuple[int, object]] = {}
    pq = faiss.IndexPQ(d, 64, 8, faiss.METRIC_INNER_PRODUCT)
    pq.train(train)
    pq.add(corpus)
    out["faiss PQ64x8 (ADC)"] = (pq.code_size, pq)
    for bits in (1, 2):
        rq = faiss.IndexRaBitQ(d, faiss.METRIC_INNER_PRODUCT, bits)
        rq.train(train)
        rq.add(corpus)
        out[f"faiss RaBitQ {bits}-bit"] = (rq.code_size, rq)
    return out


def adc_quality() -> None:
    """nDCG@10 of the asymmetric full scan against faiss PQ64x8 and RaBitQ (SciFact, Cranfield)."""
    from qama.adc import adc_search

    k = 100  # the run keeps 100 documents per query (Recall@100)
    print(
        "\n### Asymmetric full scan vs faiss PQ / RaBitQ, nDCG@10 (all-MiniLM-L6-v2, untrained quantile thresholds)\n"
    )
    print("qama rows: thresholds and centroids fitted on the corpus (1-bit: median); `adc` = every code scored")
    print("asymmetrically (no Hamming stage); `Hamming 4x + asym` = 40 Hamming candidates rescored, top 10 of them")
    print("(R@100 of that row is over the 400-candidate variant). faiss PQ trained on the corpus.\n")
    print("| dataset | method | bytes/vec | nDCG@10 | R@100 | retention |\n|---|---|---|---|---|---|")
    agreement: list[str] = []
    for name in ("scifact", "cranfield"):
        emb_dir = SHARED / "embeddings" / "all-MiniLM-L6-v2" / name
        if not (emb_dir / "corpus.npy").is_file():
            print(f"| {name} | (skipped: {emb_dir} not found) | | | | |")
            continue
        ev, corpus, q = judged_dataset(name)
        q = np.ascontiguousarray(q, dtype=np.float32)
        corpus = np.ascontiguousarray(corpus, dtype=np.float32)
        results: list[tuple[str, int, dict]] = []
        flat = faiss.IndexFlatIP(corpus.shape[1])
        flat.add(corpus)
        s, i = flat.search(q, k)
        results.append(("FP32 (faiss IndexFlatIP)", 4 * corpus.shape[1], ev.from_ranking(i, s)))
        for spec in ("hybrid", "2bit", "1.5bit", "1bit"):
            plan = make_plan(spec, corpus.shape[1])
            enc = ThresholdEncoder.fit(corpus, plan)
            codes = enc.encode(corpus)
            s, i = adc_search(codes, enc, q, k)
            results.append((f"qama {spec} adc", plan.code_size, ev.from_ranking(i, s)))
            _, exact10 = adc_search(codes, enc, q, 10, exact=True)
            same = float(np.mean((adc_search(codes, enc, q, 10)[1] == exact10).all(axis=1)))
            agreement.append(f"{name} {spec}: {same:.1%}")
            if spec == "hybrid":
                s, i = search_rescored(codes, enc, q, 10, oversample=4)
                s4, i4 = search_rescored(codes, enc, q, k, oversample=4)
                m10, m100 = ev.from_ranking(i, s), ev.from_ranking(i4, s4)
                results.append(("qama hybrid Hamming 4x + asym", plan.code_size, {**m100, "ndcg@10": m10["ndcg@10"]}))
        for pname, (nbytes, index) in peer_indexes(corpus, corpus).items():
            s, i = index.search(q, k)
            results.append((pname, nbytes, ev.from_ranking(i, s)))
        base = results[0][2]["ndcg@10"]
        for method, nbytes, m in results:
            print(
                f"| {name} | {method} | {nbytes} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | "
                f"{m['ndcg@10'] / base:.1%} |"
            )
    print("\nqueries whose adc top 10 (fast scan + exact scores) equals the exact scan's:", "; ".join(agreement))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["speed", "memory", "approx", "quality"])
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic corpus size")
    p.add_argument("--queries", type=int, default=1000, help="batch size")
    p.add_argument("--singles", type=int, default=20, help="single queries timed one at a time")
    p.add_argument(
        "--no-peers", action="store_true", help="speed: leave out faiss PQ and RaBitQ (training takes a while)"
    )
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}, faiss {faiss.__version__}, numpy {np.__version__}, ", end="")
    print(f"faiss threads {faiss.omp_get_max_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"faiss compile options: {faiss.get_compile_options()}")
    for s in args.sections:
        {
            "speed": lambda: speed(args.n, args.queries, args.singles, not args.no_peers),
            "memory": lambda: memory(args.n),
        }.get(s, {"approx": approx, "quality": quality, "adc_quality": adc_quality}.get(s, lambda: None))()


if __name__ == "__main__":
    main()
