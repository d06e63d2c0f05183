"""The tables of an evaluation, from its rows (:mod:`qama.evaluation.rows`): the Markdown and JSON
of ``qama eval`` with its loss breakdown, the ablation table, and the study's main table (one row
per storage format across datasets).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qama.evaluation.metrics import paired_difference
from qama.evaluation.rows import Row

__all__ = [
    "to_markdown",
    "loss_breakdown",
    "breakdown_markdown",
    "difference_text",
    "eval_markdown",
    "eval_json",
    "ablation_columns",
    "ablation_markdown",
    "main_table",
]


_COLUMNS = [
    ("dataset", "dataset", "{}"),
    ("format", "format", "{}"),
    ("plan", "plan", "{}"),
    ("dims", "dims", "{}"),
    ("bits/dim", "bits_per_dim", "{:g}"),
    ("bytes/vec", "bytes_per_vector", "{}"),
    ("MB/1M vec", "mb_per_million", "{:g}"),
    ("rescore", "rescore", "{}"),
    ("nDCG@10", "ndcg@10", "{:.4f}"),
    ("R@100", "recall@100", "{:.4f}"),
    ("MRR@10", "mrr@10", "{:.4f}"),
    ("retention", "retention", "{:.1%}"),
]


def loss_breakdown(rows: list[Row]) -> list[dict]:
    """Where an adapter's codes lose nDCG@10, per plan and size (rows of ``qama eval``; the rows of several
    datasets are each compared with rows of their own dataset only).

    For each symmetric ``qama`` code row: ``transform`` = the adapter's FP32 output / the model's FP32
    at the same size (what the transform loses or gains before quantisation); ``quantisation`` = the
    symmetric codes / the adapter's FP32 at that size; ``query_side`` = the symmetric codes / the
    same codes rescored asymmetrically (float query) at the smallest factor present (what coding
    the query costs); ``untrained`` = the codes / untrained quantile codes of the same plan and size
    (``threshold-qcal`` rows when present, else ``threshold``), ``None`` where there are none.

    ``untrained_diff`` and ``untrained_stderr``: the mean over the judged queries of the codes' nDCG@10
    minus the untrained codes', and its standard error (paired over the queries; ``None`` without
    per-query figures or with fewer than two queries). A difference within about two standard errors
    is one that these queries cannot tell from noise.
    """

    def find(dataset: str | None, fmt: str, plan: str | None, dims: int) -> Row | None:
        key = (dataset, fmt, plan, dims, None)
        found = [r for r in rows if (r.dataset, r.format, r.plan, r.dims, r.rescore) == key]
        return found[0] if found else None

    def ndcg(dataset: str | None, fmt: str, plan: str | None, dims: int) -> float | None:
        row = find(dataset, fmt, plan, dims)
        return None if row is None else row.metrics["ndcg@10"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    out = []
    for r in rows:
        if r.format != "qama" or r.plan is None or r.rescore is not None:
            continue
        codes = r.metrics["ndcg@10"]
        rescored = sorted(
            (x.rescore, x.metrics["ndcg@10"])
            for x in rows
            if (x.dataset, x.format, x.plan, x.dims) == (r.dataset, "qama", r.plan, r.dims) and x.rescore is not None
        )
        base = find(r.dataset, "threshold-qcal", r.plan, r.dims) or find(r.dataset, "threshold", r.plan, r.dims)
        untrained = None if base is None else base.metrics["ndcg@10"]
        ours, theirs = r.per_query_ndcg, None if base is None else base.per_query_ndcg
        # (figures of other queries, e.g. another split's rows under the same dataset name, do not pair)
        paired = None if ours is None or theirs is None else paired_difference(ours, theirs)
        diff, stderr = paired if paired is not None else (None, None)
        out.append(
            {
                "dataset": r.dataset,
                "plan": r.plan,
                "dims": r.dims,
                "transform": ratio(ndcg(r.dataset, "qama", None, r.dims), ndcg(r.dataset, "fp32", None, r.dims)),
                "quantisation": ratio(codes, ndcg(r.dataset, "qama", None, r.dims)),
                "query_side": ratio(codes, rescored[0][1]) if rescored else None,
                "untrained": ratio(codes, untrained),
                "untrained_diff": diff,
                "untrained_stderr": stderr,
            }
        )
    return out


def breakdown_markdown(breakdown: list[dict]) -> str:
    """:func:`loss_breakdown` as a Markdown table of ratios (100% = nothing lost), with the difference to
    the untrained codes in nDCG@10 points ± its standard error where there are per-query figures."""
    keys = ["transform", "quantisation", "query_side", "untrained"]
    paired = any(b.get("untrained_diff") is not None for b in breakdown)
    head = keys + (["vs untrained (nDCG@10 points ± s.e.)"] if paired else [])
    lines = ["| plan | dims | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for b in breakdown:
        cells = ["—" if b[k] is None else f"{b[k]:.1%}" for k in keys]
        if paired:
            diff, se = b.get("untrained_diff"), b.get("untrained_stderr")
            cells.append("—" if diff is None or se is None else difference_text(100 * diff, 100 * se))
        lines.append(f"| {b['plan']} | {b['dims']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference_text(diff: float, stderr: float) -> str:
    """A paired difference (:func:`~qama.evaluation.metrics.paired_difference`, in the unit it is shown in)
    as ``"+1.2 ± 0.4 (better)"``: `` (better)`` / `` (worse)`` where it is beyond two standard errors (any
    difference at all when every query moved alike: standard error 0)."""
    verdict = ""
    if abs(diff) > 2 * stderr:
        verdict = " (better)" if diff > 0 else " (worse)"
    return f"{round(diff, 1) + 0.0:+.1f} ± {stderr:.1f}{verdict}"  # (+ 0.0: no "-0.0")


def to_markdown(rows: list[Row]) -> str:
    """A Markdown table (also readable as plain text in a terminal)."""
    dicts = [r.to_dict() for r in rows]
    cols = [c for c in _COLUMNS if c[1] != "dataset" or any(d["dataset"] for d in dicts)]
    cells = [[("—" if d[key] is None else fmt.format(d[key])) for _, key, fmt in cols] for d in dicts]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (h, _, _) in enumerate(cols)]
    lines = ["| " + " | ".join(h.ljust(w) for (h, _, _), w in zip(cols, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def eval_markdown(rows: list[Row]) -> tuple[str, list[dict]]:
    """The table of ``qama eval`` (:func:`to_markdown`) followed by its :func:`loss_breakdown`, and the breakdown."""
    table = to_markdown(rows)
    breakdown = loss_breakdown(rows)
    if breakdown:
        table += "\nWhere the adapter's codes lose (ratios of nDCG@10; 100% = nothing lost):\n\n"
        table += breakdown_markdown(breakdown)
        if any(b.get("untrained_diff") is not None for b in breakdown):
            table += (
                "\nvs untrained: the mean per-query difference of nDCG@10 with its standard error; "
                "(better) or (worse) only beyond two standard errors, else these queries cannot tell them apart.\n"
            )
    return table, breakdown


def eval_json(rows: list[Row], dataset: str, split: str) -> dict:
    """What ``qama eval --json`` writes: the dataset, its split, the rows and their :func:`loss_breakdown`."""
    return {"dataset": dataset, "split": split, "rows": [r.to_dict() for r in rows], "breakdown": loss_breakdown(rows)}


def ablation_markdown(
    results: dict[str, dict[str, float]], columns: list[str], fmt: Callable[[float | None], str] | None = None
) -> list[str]:
    """The lines of an ablation table: one row per ablation, nDCG@10 per ``"plan@dims"`` column."""
    lines = ["| ablation | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, figures in results.items():
        cells = (fmt(figures.get(c)) if fmt else f"{figures.get(c, float('nan')):.4f}" for c in columns)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ablation_columns(results: dict[str, dict[str, float]]) -> list[str]:
    """The ``"plan@dims"`` columns of an ablation table: by plan, then the largest size first."""
    return sorted({c for f in results.values() for c in f}, key=lambda c: (c.split("@")[0], -int(c.split("@")[1])))


def main_table(rows_by_dataset: dict[str, list[Row]]) -> list[dict]:
    """One row per storage format: nDCG@10 per dataset, their mean and the mean retention."""
    table: dict[tuple, dict] = {}
    for name, rows in rows_by_dataset.items():
        for r in rows:
            key = (r.format, r.plan, r.dims, r.rescore)
            entry = table.setdefault(
                key,
                {
                    "format": r.format,
                    "plan": r.plan,
                    "dims": r.dims,
                    "rescore": r.rescore,
                    "bits_per_dim": r.bits_per_dim,
                    "bytes_per_vector": r.bytes_per_vector,
                    "mb_per_million": r.mb_per_million,
                    "ndcg@10": {},
                    "retention": {},
                },
            )
            entry["ndcg@10"][name] = r.metrics["ndcg@10"]
            entry["retention"][name] = r.retention
    out = []
    for entry in table.values():
        entry["mean_ndcg@10"] = float(np.mean(list(entry["ndcg@10"].values())))
        entry["mean_retention"] = float(np.mean([v for v in entry["retention"].values() if v is not None]))
        out.append(entry)
    return out
