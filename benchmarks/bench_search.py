"""Search benchmarks: speed at 1M x 384 (synthetic), memory of a 1M index, approximate recall and
rescoring quality on SciFact (real embeddings). Prints Markdown tables.

Usage (numbers in benchmarks/RESULTS_search.md)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_search.py --sections speed memory approx quality

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
import numpy as np

from qama.codes import make_plan
from qama.search import ThresholdEncoder, asymmetric_scores, hamming_search, search_rescored

SHARED = Path(__file__).resolve().parents[2] / "shared"
SCIFACT_EMB = SHARED / "embeddings" / "all-MiniLM-L6-v2" / "scifact"
SCIFACT_DATA = SHARED / "datasets" / "scifact"


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


def speed(n: int, nq: int, singles: int) -> None:
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
    print(f"\n### Speed, {n:,} x {d} synthetic, hybrid codes, k={k}, faiss threads={faiss.omp_get_max_threads()}\n")
    print(f"fit thresholds on 100k: {t_fit:.1f} s; encode + pack {n:,} embeddings: {t_enc:.1f} s")

    flat = faiss.IndexFlatIP(d)
    flat.add(corpus)
    ibf = faiss.IndexBinaryFlat(78 * 8)
    ibf.add(codes78)
    methods = {
        "faiss IndexFlatIP FP32": lambda q: flat.search(queries[q], k),
        "faiss IndexBinaryFlat, 78-byte codes": lambda q: ibf.search(q78[q], k),
        "qama hamming_search, 80-byte aligned rows": lambda q: hamming_search(codes80, q80[q], k),
        "qama hamming_search, 78-byte rows": lambda q: hamming_search(codes78, q78[q], k),
        "qama Hamming 4x + asymmetric rescoring": lambda q: search_rescored(
            codes80, enc, queries[q], k, oversample=4, query_codes=q78[q]
        ),
        "qama Hamming, 100 cands + asymmetric rescoring (incl. query encoding)": lambda q: search_rescored(
            codes80, enc, queries[q], k, oversample=10
        ),
    }
    rows = []
    for name, fn in methods.items():
        batch = timed(lambda fn=fn: fn(slice(0, nq)))
        single = timed(lambda fn=fn: [fn(slice(i, i + 1)) for i in range(singles)]) / singles
        rows.append((name, nq / batch, single * 1e3))
    _, cand = hamming_search(codes80, q80[:singles], 100)
    weights = enc.query_weights(queries[:singles])
    t_resc = timed(
        lambda: [asymmetric_scores(weights[i : i + 1], codes80, cand[i : i + 1], enc) for i in range(singles)]
    )
    t_qenc = timed(lambda: [enc.encode(queries[i : i + 1]) for i in range(singles)])
    base_b, base_s = rows[0][1], rows[0][2]
    print(f"\n| method | batch of {nq} q/s | vs FP32 | single query ms | vs FP32 |")
    print("|---|---|---|---|---|")
    for name, qps, ms in rows:
        print(f"| {name} | {qps:,.0f} | {qps / base_b:.2f}x | {ms:.2f} | {base_s / ms:.1f}x |")
    ham_ms = rows[2][2]
    resc_ms = t_resc / singles * 1e3
    print(
        f"\nsingle query: asymmetric rescoring of 100 candidates {resc_ms:.3f} ms "
        f"(+{resc_ms / ham_ms:.1%} of the aligned Hamming search, {ham_ms:.2f} ms); "
        f"query encoding {t_qenc / singles * 1e3:.3f} ms"
    )


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


def quality() -> None:
    if not (SCIFACT_EMB / "corpus.npy").is_file():
        print(f"\n(quality skipped: {SCIFACT_EMB} not found)")
        return
    from qama.data import load_dataset
    from qama.embeddings import load_embeddings
    from qama.evaluate import Evaluator
    from qama.rescore import threshold_rescore_rows
    from qama.table import baseline_rows, set_retention, to_markdown

    ds = load_dataset(SCIFACT_DATA)
    corpus, queries = load_embeddings(SCIFACT_EMB, ds)
    ev = Evaluator(ds)
    judged = queries[ev.rows]
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
    from qama.data import load_dataset
    from qama.embeddings import load_embeddings
    from qama.evaluate import Evaluator

    k = 100  # the run keeps 100 documents per query (Recall@100)
    print("\n### Asymmetric full scan vs faiss PQ / RaBitQ, nDCG@10 (all-MiniLM-L6-v2, untrained quantile thresholds)\n")
    print("qama rows: thresholds and centroids fitted on the corpus (1-bit: median); `adc` = every code scored")
    print("asymmetrically (no Hamming stage); `Hamming 4x + asym` = 40 Hamming candidates rescored, top 10 of them")
    print("(R@100 of that row is over the 400-candidate variant). faiss PQ trained on the corpus.\n")
    print("| dataset | method | bytes/vec | nDCG@10 | R@100 | retention |\n|---|---|---|---|---|---|")
    for name in ("scifact", "cranfield"):
        emb_dir, data_dir = SHARED / "embeddings" / "all-MiniLM-L6-v2" / name, SHARED / "datasets" / name
        if not (emb_dir / "corpus.npy").is_file():
            print(f"| {name} | (skipped: {emb_dir} not found) | | | | |")
            continue
        ds = load_dataset(data_dir)
        corpus, queries = load_embeddings(emb_dir, ds)
        ev = Evaluator(ds)
        q = np.ascontiguousarray(queries[ev.rows], dtype=np.float32)
        corpus = np.ascontiguousarray(corpus, dtype=np.float32)
        results: list[tuple[str, int, dict]] = []
        flat = faiss.IndexFlatIP(corpus.shape[1])
        flat.add(corpus)
        s, i = flat.search(q, k)
        results.append(("FP32 (faiss IndexFlatIP)", 4 * corpus.shape[1], ev.from_ranking(i, s)))
        for spec in ("hybrid", "2bit", "1bit"):
            plan = make_plan(spec, corpus.shape[1])
            enc = ThresholdEncoder.fit(corpus, plan)
            codes = enc.encode(corpus)
            s, i = adc_search(codes, enc, q, k)
            results.append((f"qama {spec} adc", plan.code_size, ev.from_ranking(i, s)))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["speed", "memory", "approx", "quality"])
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic corpus size")
    p.add_argument("--queries", type=int, default=1000, help="batch size")
    p.add_argument("--singles", type=int, default=20, help="single queries timed one at a time")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}, faiss {faiss.__version__}, numpy {np.__version__}, ", end="")
    print(f"faiss threads {faiss.omp_get_max_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"faiss compile options: {faiss.get_compile_options()}")
    for s in args.sections:
        {"speed": lambda: speed(args.n, args.queries, args.singles), "memory": lambda: memory(args.n)}.get(
            s, {"approx": approx, "quality": quality, "adc_quality": adc_quality}.get(s, lambda: None)
        )()


if __name__ == "__main__":
    main()
