"""The evaluation table: one row per storage format, with its size and its retrieval quality.

Rows are what ``qama eval`` prints and writes as JSON (``{"rows": [...]}``) and Markdown. The
baselines come from :mod:`qama.baselines`; trained adapters and rescoring add rows of the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from qama import baselines
from qama.codes import DEFAULT_PLANS, Plan, make_plan, plans_fitting
from qama.evaluate import Evaluator
from qama.search import float_search, hamming_search

__all__ = ["Row", "float_row", "plan_row", "code_row", "baseline_rows", "set_retention", "to_markdown", "default_dims"]

logger = logging.getLogger(__name__)

TOP_K = 100  # documents retrieved per query: enough for nDCG@10, Recall@100, MRR@10
BASELINE_PLANS = DEFAULT_PLANS  # the plans of the threshold baselines


@dataclass
class Row:
    format: str  # fp32, fp16, int8, threshold, qama
    plan: str | None  # null for float formats; 2bit, 1.5bit, 1bit, 0.5bit, hybrid or a custom plan
    dims: int
    bits_per_dim: float  # stored bits per dimension
    bytes_per_vector: int
    rescore: int | None = None  # oversampling factor of a rescoring stage, if any
    metrics: dict[str, float] = field(default_factory=dict)
    retention: float | None = None  # nDCG@10 as a fraction of FP32 at full dimension
    dataset: str | None = None

    @property
    def mb_per_million(self) -> float:
        """Decimal megabytes for one million vectors."""
        return self.bytes_per_vector * 1e6 / 1e6

    def to_dict(self) -> dict:
        d = asdict(self)
        metrics = d.pop("metrics")
        d.update(metrics)
        d["mb_per_million"] = self.mb_per_million
        return d


def default_dims(d: int) -> list[int]:
    """Full size, half and quarter (the Matryoshka sizes of the paper: 384/192/96 for d=384)."""
    return [m for m in (d, d // 2, d // 4) if m > 0]


def float_row(
    fmt: str, corpus: np.ndarray, queries: np.ndarray, dims: int, evaluator: Evaluator, bytes_per_dim: int | None = None
) -> Row:
    """Score a float format: ``corpus``/``queries`` already at ``dims`` dimensions in that format."""
    bytes_per_dim = bytes_per_dim or {"fp32": 4, "fp16": 2, "int8": 1}[fmt]
    scores, ids = float_search(corpus, queries, TOP_K)
    return Row(fmt, None, dims, 8.0 * bytes_per_dim, dims * bytes_per_dim, metrics=evaluator.from_ranking(ids, scores))


def plan_row(
    fmt: str,
    plan: Plan,
    evaluator: Evaluator,
    ids: np.ndarray,
    scores: np.ndarray,
    rescore: int | None = None,
    name: str | None = None,
) -> Row:
    """The row of a code format under ``plan`` (named ``name``, default the plan's) from a ranking:
    ``ids`` and their ``scores`` (higher is better) per query; ``rescore``: its oversampling factor."""
    metrics = evaluator.from_ranking(ids, scores)
    return Row(fmt, name or plan.name, plan.dim, plan.bits_per_dim, plan.code_size, rescore=rescore, metrics=metrics)


def code_row(
    fmt: str, plan_name: str, dims: int, codes: np.ndarray, query_codes: np.ndarray, evaluator: Evaluator
) -> Row:
    """Score packed codes by Hamming distance (symmetric: queries are codes too)."""
    dist, ids = hamming_search(codes, query_codes, TOP_K)
    return plan_row(fmt, make_plan(plan_name, dims), evaluator, ids, -dist.astype(float), name=plan_name)


def baseline_rows(
    corpus: np.ndarray,
    queries: np.ndarray,
    evaluator: Evaluator,
    dims_list: Iterable[int] | None = None,
    plans: Iterable[str] = BASELINE_PLANS,
) -> list[Row]:
    """FP32, FP16, int8 and simple threshold quantisation at every size in ``dims_list``.

    ``queries`` holds the judged queries only (rows ``evaluator.rows``).
    """
    rows = []
    for dims in dims_list or default_dims(corpus.shape[1]):
        c, q = baselines.truncate(corpus, dims), baselines.truncate(queries, dims)
        rows.append(float_row("fp32", c, q, dims, evaluator))
        rows.append(float_row("fp16", *baselines.fp16(c, q), dims, evaluator))
        rows.append(float_row("int8", *baselines.int8(c, q), dims, evaluator))
        for plan in plans_fitting(plans, dims):
            rows.append(code_row("threshold", plan.name, dims, *baselines.threshold_codes(c, q, plan), evaluator))
    return rows


def set_retention(rows: list[Row]) -> None:
    """Retention of every row against the FP32 row of largest dimension (of the same dataset)."""
    refs: dict[str | None, Row] = {}
    for r in rows:
        if r.format == "fp32" and r.plan is None and r.rescore is None:
            if r.dataset not in refs or r.dims > refs[r.dataset].dims:
                refs[r.dataset] = r
    for r in rows:
        ref = refs.get(r.dataset)
        r.retention = r.metrics["ndcg@10"] / ref.metrics["ndcg@10"] if ref and ref.metrics["ndcg@10"] else None


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
    """Where an adapter's codes lose nDCG@10, per plan and size (rows of one dataset's ``qama eval``).

    For each symmetric ``qama`` code row: ``transform`` = the adapter's FP32 output / the model's FP32
    at the same size (what the transform loses or gains before quantisation); ``quantisation`` = the
    symmetric codes / the adapter's FP32 at that size; ``query_side`` = the symmetric codes / the
    same codes rescored asymmetrically (float query) at the smallest factor present (what coding
    the query costs); ``untrained`` = the codes / untrained quantile codes of the same plan and size
    (``threshold-qcal`` rows when present, else ``threshold``), ``None`` where there are none.
    """
    def ndcg(fmt: str, plan: str | None, dims: int, rescore: int | None = None) -> float | None:
        found = [r for r in rows if (r.format, r.plan, r.dims, r.rescore) == (fmt, plan, dims, rescore)]
        return found[0].metrics["ndcg@10"] if found else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    out = []
    for r in rows:
        if r.format != "qama" or r.plan is None or r.rescore is not None:
            continue
        codes = r.metrics["ndcg@10"]
        rescored = sorted((x.rescore, x.metrics["ndcg@10"]) for x in rows if x.format == "qama"
                          and (x.plan, x.dims) == (r.plan, r.dims) and x.rescore is not None)
        untrained = ndcg("threshold-qcal", r.plan, r.dims)
        if untrained is None:
            untrained = ndcg("threshold", r.plan, r.dims)
        out.append({
            "dataset": r.dataset,
            "plan": r.plan,
            "dims": r.dims,
            "transform": ratio(ndcg("qama", None, r.dims), ndcg("fp32", None, r.dims)),
            "quantisation": ratio(codes, ndcg("qama", None, r.dims)),
            "query_side": ratio(codes, rescored[0][1]) if rescored else None,
            "untrained": ratio(codes, untrained),
        })
    return out


def breakdown_markdown(breakdown: list[dict]) -> str:
    """:func:`loss_breakdown` as a Markdown table of ratios (100% = nothing lost)."""
    keys = ["transform", "quantisation", "query_side", "untrained"]
    lines = ["| plan | dims | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for b in breakdown:
        cells = ["—" if b[k] is None else f"{b[k]:.1%}" for k in keys]
        lines.append(f"| {b['plan']} | {b['dims']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
