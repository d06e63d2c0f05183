"""The adapter's linear starts before any training step: nDCG@10 retention of their codes, with the
queries coded by quantiles of the titles (query calibration), on every shared dataset.

Usage (from the repo root; the shared benchmark data lies beside the repo)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/linear_starts.py
    # how far the rotations alone move the full-size codes: 8 draws, on another split's queries too
    OMP_WAIT_POLICY=PASSIVE python benchmarks/linear_starts.py --rotations 8
    OMP_WAIT_POLICY=PASSIVE python benchmarks/linear_starts.py --rotations 8 --datasets scifact --split train

An untrained adapter is its start (``QamaAdapter.init_linear``: ``W2 = 0``), so this isolates what
the start gives each plan and size from what training adds; ``identity`` without the mean drop is
the untrained quantile codes of ``qama index`` without an adapter. No randomness but the start's
rotations (seed 0). With ``--rotations N`` it prints instead, at full size, the mean and standard
deviation over N draws of the random rotations (seeds 0..N-1) of the ``pca_blocks`` start and of a
random rotation of the model's coordinates, next to the model's own coordinates: the spread a rotation
alone gives a figure on these queries.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_targets import load, ndcg, score, title_pseudo_queries  # noqa: E402

from qama.adapter import AdapterConfig, QamaAdapter, _rotation  # noqa: E402

CELLS = [("fp", 384), ("2bit", 384), ("1.5bit", 384), ("1bit", 384), ("hybrid", 384), ("fp", 192), ("2bit", 192)]
CELLS += [("fp", 96), ("2bit", 96)]
STARTS = [(init, drop) for init in ("identity", "pca", "pca_blocks") for drop in (False, True)]


def _start(
    corpus: np.ndarray, titles: np.ndarray, init: str, drop: bool, seed: int, rotate: bool = False
) -> QamaAdapter:
    """An untrained adapter (its start), calibrated on the corpus and, for queries, on the titles; ``rotate``:
    a random rotation of the model's coordinates instead of the start ``init``."""
    adapter = QamaAdapter(AdapterConfig(dim=corpus.shape[1], init=init, drop_mean_direction=drop))
    adapter.init_linear(corpus, seed=seed)
    if rotate:
        with torch.no_grad():
            rotation = _rotation(corpus.shape[1], np.random.default_rng(seed)).astype(np.float32)
            adapter.skip.weight.copy_(torch.from_numpy(rotation) @ adapter.skip.weight)
    adapter.calibrate(corpus)
    adapter.calibrate_queries(titles)
    return adapter


def spread(names: list[str], split: str, n: int) -> None:
    """Mean ± standard deviation over ``n`` rotation draws of the full-size cells, one table a dataset."""
    cells = [(p, d) for p, d in CELLS if d == CELLS[0][1]]
    variants = [
        ("model's own coordinates", "identity", False, False),
        ("random rotation of them", "identity", False, True),
        ("pca_blocks", "pca_blocks", False, False),
        ("pca_blocks", "pca_blocks", True, False),
    ]
    for name in names:
        ev, corpus, queries = load(name, split)
        titles, _ = title_pseudo_queries(name, corpus)
        base = ndcg(ev, queries @ corpus.T)
        print(f"\n{name}, {len(queries)} {split} queries (FP32 nDCG@10 {base:.4f}); {n} rotation draws\n")
        print("| start | mean direction | " + " | ".join(f"{'FP32' if p == 'fp' else p}@{d}" for p, d in cells) + " |")
        print("|---|---|" + "---|" * len(cells))
        for label, init, drop, rotate in variants:
            draws = 1 if init == "identity" and not rotate else n
            figures = np.array(
                [
                    [
                        100
                        * ndcg(ev, score(_start(corpus, titles, init, drop, seed, rotate), p, d, corpus, queries, True))
                        / base
                        for p, d in cells
                    ]
                    for seed in range(draws)
                ]
            )
            text = [
                f"{m:.1f}" + (f" ± {s:.1f}" if draws > 1 else "")
                for m, s in zip(figures.mean(0), figures.std(0), strict=True)
            ]
            print(f"| {label} | {'dropped' if drop else 'kept'} | " + " | ".join(text) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "cranfield"])
    parser.add_argument("--rotations", type=int, help="the spread over this many rotation draws, at full size")
    parser.add_argument("--split", default="test", help="the qrels split whose judged queries are measured")
    args = parser.parse_args()
    if args.rotations is not None and args.rotations < 2:
        parser.error(f"--rotations needs at least 2 draws for a spread, got {args.rotations}")
    print(f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; retention of the model's FP32 nDCG@10 (%)")
    if args.rotations:
        spread(args.datasets, args.split, args.rotations)
        return
    for name in args.datasets:
        ev, corpus, queries = load(name, args.split)
        titles, _ = title_pseudo_queries(name, corpus)
        base = ndcg(ev, queries @ corpus.T)
        print(f"\n{name} (FP32 nDCG@10 {base:.4f})\n")
        print("| start | mean direction | " + " | ".join(f"{'FP32' if p == 'fp' else p}@{d}" for p, d in CELLS) + " |")
        print("|---|---|" + "---|" * len(CELLS))
        for init, drop in STARTS:
            adapter = _start(corpus, titles, init, drop, seed=0)
            cells = [100 * ndcg(ev, score(adapter, p, d, corpus, queries, calibrated=True)) / base for p, d in CELLS]
            print(f"| {init} | {'dropped' if drop else 'kept'} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
