"""The adapter's linear starts before any training step: nDCG@10 retention of their codes, with the
queries coded by quantiles of the titles (query calibration), on every shared dataset.

Usage (from the repo root; the shared benchmark data lies beside the repo)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/linear_starts.py

An untrained adapter is its start (``QamaAdapter.init_linear``: ``W2 = 0``), so this isolates what
the start gives each plan and size from what training adds; ``identity`` without the mean drop is
the untrained quantile codes of ``qama index`` without an adapter. No randomness but the start's
rotations (seed 0).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_targets import load, ndcg, score, title_pseudo_queries  # noqa: E402

from qama.adapter import AdapterConfig, QamaAdapter  # noqa: E402

CELLS = [("fp", 384), ("2bit", 384), ("1.5bit", 384), ("1bit", 384), ("hybrid", 384), ("fp", 192), ("2bit", 192)]
CELLS += [("fp", 96), ("2bit", 96)]
STARTS = [(init, drop) for init in ("identity", "pca", "pca_blocks") for drop in (False, True)]


def main() -> None:
    print(f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; retention of the model's FP32 nDCG@10 (%)")
    for name in ("scifact", "cranfield"):
        ev, corpus, queries = load(name)
        titles, _ = title_pseudo_queries(name, corpus)
        base = ndcg(ev, queries @ corpus.T)
        print(f"\n{name} (FP32 nDCG@10 {base:.4f})\n")
        print("| start | mean direction | " + " | ".join(f"{'FP32' if p == 'fp' else p}@{d}" for p, d in CELLS) + " |")
        print("|---|---|" + "---|" * len(CELLS))
        for init, drop in STARTS:
            adapter = QamaAdapter(AdapterConfig(dim=corpus.shape[1], init=init, drop_mean_direction=drop))
            adapter.init_linear(corpus, seed=0)
            adapter.calibrate(corpus)
            adapter.calibrate_queries(titles)
            cells = [100 * ndcg(ev, score(adapter, p, d, corpus, queries, calibrated=True)) / base for p, d in CELLS]
            print(f"| {init} | {'dropped' if drop else 'kept'} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
