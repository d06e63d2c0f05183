"""Peak traced memory (tracemalloc) of the steps that read a whole corpus or a whole query batch.

Usage (from the repo root)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_memory.py [--rows 200000]

Each step runs once on synthetic unit vectors (384 dims) and prints its peak traced memory next to
the size of its input and of its result; numpy's allocations are traced, so the peak is what the step
holds at once beyond its input. Steps: fitting untrained quantile thresholds (``ThresholdEncoder.fit``,
2-bit and hybrid), Hamming distances of 300 query codes against 50,000 hybrid codes
(``hamming_distances``, the reference scan the check and the mteb integration use), rescoring
10,000 queries' 40 candidates with stored vectors (``exact_scores``), and a float64 corpus given to
``fit_encoder`` (hybrid, untrained) and to an index folder's ``FaissBackend.add`` (with and without
``keep_vectors``): the steps that took a float32 copy of the whole corpus before reading it. ``--only
float64`` runs those alone.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qama.backends import FaissBackend  # noqa: E402
from qama.codes import hamming_distances, make_plan  # noqa: E402
from qama.encoders import ThresholdEncoder, fit_encoder  # noqa: E402
from qama.search import exact_scores  # noqa: E402

MB = 1e6


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def peak(fn) -> tuple[float, object]:
    tracemalloc.start()
    out = fn()
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top / MB, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200000, help="corpus rows of the threshold fit")
    parser.add_argument("--only", choices=["float64"], help="run only the float64-corpus steps")
    args = parser.parse_args()
    print(f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; numpy {np.__version__}\n")
    print("| step | input (MB) | result (MB) | peak traced (MB) |")
    print("|---|---|---|---|")
    if args.only != "float64":
        fp32_steps(args.rows)
    float64_steps(args.rows)


def float64_steps(rows: int) -> None:
    """A float64 corpus (as ``np.load`` of a float64 file, or a torch ``.double()``, gives it)."""
    corpus = unit(rows, 384, 7).astype(np.float64)
    mb, enc = peak(lambda: fit_encoder(corpus, "hybrid"))
    print(f"| fit_encoder hybrid, float64 {rows:,} × 384 | {corpus.nbytes / MB:.0f} | 0 | {mb:.0f} |")
    ids = [f"d{i}" for i in range(rows)]
    for keep in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            backend = FaissBackend(Path(tmp) / "index", encoder=enc, create=True, keep_vectors=keep)
            mb, _ = peak(lambda backend=backend: backend.add(corpus, ids))
            what = "keep_vectors" if keep else "codes only"
            print(f"| FaissBackend.add, float64 {rows:,} × 384, {what} | {corpus.nbytes / MB:.0f} | 0 | {mb:.0f} |")


def fp32_steps(rows: int) -> None:
    corpus = unit(rows, 384, 0)
    for spec in ("2bit", "hybrid"):
        mb, _ = peak(lambda spec=spec: ThresholdEncoder.fit(corpus, make_plan(spec, 384)))
        print(f"| ThresholdEncoder.fit {spec}, {rows:,} × 384 | {corpus.nbytes / MB:.0f} | 0 | {mb:.0f} |")
    corpus = corpus[:0]  # freed before the next steps
    enc = ThresholdEncoder.fit(unit(20000, 384, 1), make_plan("hybrid", 384))
    docs, queries = enc.encode(unit(50000, 384, 2)), enc.encode(unit(300, 384, 3))
    mb, out = peak(lambda: hamming_distances(queries, docs))
    print(
        f"| hamming_distances 300 × 50,000 hybrid codes | {docs.nbytes / MB:.1f} | {out.nbytes / MB:.0f} | {mb:.0f} |"
    )
    vectors, q = unit(50000, 384, 4), unit(10000, 384, 5)
    cand = np.random.default_rng(6).integers(0, len(vectors), size=(len(q), 40))
    mb, out = peak(lambda: exact_scores(q, vectors, cand))
    print(
        f"| exact_scores 10,000 queries × 40 candidates, 384 dims | {vectors.nbytes / MB:.0f} | {out.nbytes / MB:.1f} | {mb:.0f} |"
    )


if __name__ == "__main__":
    main()
