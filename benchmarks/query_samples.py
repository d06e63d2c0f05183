"""Untrained quantile codes (``qama index`` without an adapter) with their queries coded by each source
of query-like texts: the documents' own thresholds, the titles, or one sentence of each of up to 2,000
documents (``--query-sample sentences``, what ``auto`` falls back to for a corpus without titles).

Usage (from the repo root; the shared benchmark data lies beside the repo; loads the default model)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/query_samples.py

Rows: nDCG@10 retention (%) of the frozen model's FP32 at full size, every plan at 384/192/96 dims.
No randomness but the drawn sentences (:func:`qama.data.sentence_sample`, seed 0).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_targets import SHARED, load, title_pseudo_queries  # noqa: E402

from qama.data import load_dataset  # noqa: E402
from qama.embeddings import DEFAULT_MODEL, embed_sentences  # noqa: E402
from qama.evaluation.rows import baseline_rows, calibrated_threshold_rows, set_retention  # noqa: E402


def main() -> None:
    print(f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; retention of the model's FP32 nDCG@10 (%)")
    dims = [384, 192, 96]
    for name in ("scifact", "cranfield"):
        ev, corpus, queries = load(name)
        titles, _ = title_pseudo_queries(name, corpus)
        sentences = embed_sentences(load_dataset(SHARED / "datasets" / name), DEFAULT_MODEL, progress=False)
        table: dict[tuple[str, int], list[float]] = {}
        for sample in (None, titles, sentences):
            rows = baseline_rows(corpus, queries, ev, dims)
            if sample is not None:
                rows += calibrated_threshold_rows(corpus, queries, ev, sample, dims)
            set_retention(rows)
            fmt = "threshold" if sample is None else "threshold-qcal"
            for r in rows:
                if r.format == fmt:
                    table.setdefault((r.plan, r.dims), []).append(100 * r.retention)
        print(f"\n{name} ({len(titles)} titles, {len(sentences)} sentences)\n")
        print("| plan@dims | documents' thresholds | titles | sentences |")
        print("|---|---|---|---|")
        for (plan, d), cells in table.items():
            print(f"| {plan}@{d} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
