"""The rows of an evaluation: one per storage format, with its size and its retrieval quality.

Rows are what ``qama eval`` prints and writes as JSON (``{"rows": [...]}``) and Markdown
(:mod:`qama.evaluation.tables`). The baselines come from :mod:`qama.evaluation.baselines`;
trained adapters and rescoring add rows of the same shape. :func:`rescore_rows` scores one
:class:`~qama.search.Encoder` (trained adapter or untrained thresholds) on a dataset:

* ``rescore=None``: symmetric Hamming search (queries are codes too);
* ``rescore=f``: ``f × TOP_K`` Hamming candidates (100 per query at f=1), rescored
  by the asymmetric score (float query · dequantised code), the top ``TOP_K`` kept;
* format ``"<fmt>-funnel"``, plan ``"<plan>[:m]"``: the code prefix of the first ``m`` dimensions
  picks ``f × TOP_K`` candidates, the full code reranks them asymmetrically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from qama.codes import ALL_PLANS, DEFAULT_PLANS, Plan, make_plan, plans_fitting, prefix_plan
from qama.encoders import Encoder, ThresholdEncoder, fit_encoder
from qama.evaluation import baselines
from qama.evaluation.metrics import Evaluator, mean_metrics
from qama.search import float_search, funnel_search, hamming_search, search_rescored

__all__ = [
    "Row",
    "float_row",
    "plan_row",
    "code_row",
    "baseline_rows",
    "set_retention",
    "default_dims",
    "rescore_rows",
    "threshold_rescore_rows",
    "calibrated_threshold_rows",
    "adapter_rows",
    "ABLATION_PLANS",
    "ablation_scorer",
]

if TYPE_CHECKING:
    from qama.adapter import QamaAdapter

logger = logging.getLogger(__name__)

TOP_K = 100  # documents retrieved per query: enough for nDCG@10, Recall@100, MRR@10
BASELINE_PLANS = DEFAULT_PLANS  # the plans of the threshold baselines
#: The plans an ablation is scored at (``qama ablate``, the report's ablation table).
ABLATION_PLANS = ("2bit", "hybrid")


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
    #: nDCG@10 of each judged query (in the order of the dataset's qrels), for paired comparisons of
    #: rows (:func:`qama.evaluation.tables.loss_breakdown`); not written to JSON.
    per_query_ndcg: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def mb_per_million(self) -> float:
        """Decimal megabytes for one million vectors."""
        return self.bytes_per_vector * 1e6 / 1e6

    def to_dict(self) -> dict:
        d = asdict(replace(self, per_query_ndcg=None))
        d.pop("per_query_ndcg")
        metrics = d.pop("metrics")
        d.update(metrics)
        d["mb_per_million"] = self.mb_per_million
        return d


def default_dims(d: int) -> list[int]:
    """Full size, half and quarter (the Matryoshka sizes of the paper: 384/192/96 for d=384)."""
    return [m for m in (d, d // 2, d // 4) if m > 0]


def _scored(evaluator: Evaluator, ids: np.ndarray, scores: np.ndarray) -> dict:
    """The measured fields of a :class:`Row` from a ranking: its ``metrics`` and ``per_query_ndcg``."""
    per_query = evaluator.per_query(ids, scores)
    return {"metrics": mean_metrics(per_query), "per_query_ndcg": per_query["ndcg@10"]}


def float_row(
    fmt: str, corpus: np.ndarray, queries: np.ndarray, dims: int, evaluator: Evaluator, bytes_per_dim: int | None = None
) -> Row:
    """Score a float format: ``corpus``/``queries`` already at ``dims`` dimensions in that format."""
    bytes_per_dim = bytes_per_dim or {"fp32": 4, "fp16": 2, "int8": 1}[fmt]
    scores, ids = float_search(corpus, queries, TOP_K)
    return Row(fmt, None, dims, 8.0 * bytes_per_dim, dims * bytes_per_dim, **_scored(evaluator, ids, scores))


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
    scored = _scored(evaluator, ids, scores)
    return Row(fmt, name or plan.name, plan.dim, plan.bits_per_dim, plan.code_size, rescore=rescore, **scored)


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


def fp32_row(corpus: np.ndarray, queries: np.ndarray, dims: int, evaluator: Evaluator) -> Row:
    """The FP32 row at ``dims`` dimensions (a Matryoshka prefix) of full-size embeddings."""
    return float_row("fp32", baselines.truncate(corpus, dims), baselines.truncate(queries, dims), dims, evaluator)


def set_retention(rows: list[Row], full: Row | None = None) -> None:
    """Retention of every row against the FP32 row of largest dimension (of the same dataset), or against
    ``full``, the FP32 row at full size measured apart when the rows leave it out (``qama eval --dims 96``)."""
    refs: dict[str | None, Row] = {}
    for r in rows:
        if r.format == "fp32" and r.plan is None and r.rescore is None:
            if r.dataset not in refs or r.dims > refs[r.dataset].dims:
                refs[r.dataset] = r
    for r in rows:
        ref = full or refs.get(r.dataset)
        r.retention = r.metrics["ndcg@10"] / ref.metrics["ndcg@10"] if ref and ref.metrics["ndcg@10"] else None


def rescore_rows(
    encoder: Encoder,
    corpus: np.ndarray,
    queries: np.ndarray,
    evaluator: Evaluator,
    fmt: str = "qama",
    oversamples: Iterable[int] = (1, 4),
    funnel_dims: Iterable[int] = (),
    symmetric: bool = True,
    vectors: bool = False,
) -> list[Row]:
    """Rows for ``encoder`` on ``(n, d)`` corpus and judged ``(nq, d)`` query embeddings.

    The embeddings are those the encoder takes (already truncated to ``encoder.plan.dim`` when
    the plan covers a prefix). ``oversamples`` are the rescoring factors (``1``: reorder the
    Hamming top 100 only); ``funnel_dims`` the prefix sizes tried as a funnel at the largest factor.
    ``vectors=True`` adds rows (format ``"<fmt>+fp32"``) that rescore the candidates with the
    full-precision corpus vectors instead, as an index keeping them on disk does.
    """
    plan = encoder.plan
    codes, qcodes = encoder.encode(corpus), encoder.encode_queries(queries)

    def row(fmt_: str, plan_name: str, rescore: int | None, dist_or_scores: np.ndarray, ids: np.ndarray) -> Row:
        return plan_row(fmt_, plan, evaluator, ids, dist_or_scores, rescore, plan_name)

    rows = []
    if symmetric:
        dist, ids = hamming_search(codes, qcodes, TOP_K)
        rows.append(row(fmt, plan.name, None, -dist.astype(float), ids))
    factors = sorted(set(oversamples))
    for f in factors:
        scores, ids = search_rescored(codes, encoder, queries, TOP_K, oversample=f, query_codes=qcodes)
        rows.append(row(fmt, plan.name, f, scores, ids))
        if vectors:
            scores, ids = search_rescored(codes, encoder, queries, TOP_K, f, vectors=corpus, query_codes=qcodes)
            rows.append(row(f"{fmt}+fp32", plan.name, f, scores, ids))
    for m in funnel_dims:
        try:
            _, nbytes = prefix_plan(plan, m)
        except ValueError as e:
            logger.info("no funnel at %d dims for plan %s: %s", m, plan.name, e)
            continue
        f = max(factors) if factors else 4
        scores, ids = funnel_search(
            np.ascontiguousarray(codes[:, :nbytes]),
            np.ascontiguousarray(qcodes[:, :nbytes]),
            TOP_K,
            f,
            "asymmetric",
            codes=codes,
            encoder=encoder,
            queries=queries,
        )
        rows.append(row(f"{fmt}-funnel", f"{plan.name}[:{m}]", f, scores, ids))
    return rows


def threshold_rescore_rows(
    corpus: np.ndarray,
    queries: np.ndarray,
    evaluator: Evaluator,
    dims_list: Iterable[int] | None = None,
    plans: Iterable[str] = DEFAULT_PLANS,
    oversamples: Iterable[int] = (1, 4),
    vectors: bool = False,
) -> list[Row]:
    """:func:`rescore_rows` for untrained quantile thresholds (1-bit by sign), every plan and size."""
    rows = []
    for dims in dims_list or [corpus.shape[1]]:
        c, q = baselines.truncate(corpus, dims), baselines.truncate(queries, dims)
        for plan in plans_fitting(plans, dims):
            encoder = ThresholdEncoder.fit(c, plan, sign_1bit=True)
            funnel = [dims // 4] if plan.name == "hybrid" else []
            rows += rescore_rows(encoder, c, q, evaluator, "threshold", oversamples, funnel, False, vectors)
    return rows


def calibrated_threshold_rows(
    corpus: np.ndarray,
    queries: np.ndarray,
    evaluator: Evaluator,
    query_sample: np.ndarray,
    dims_list: Iterable[int] | None = None,
    plans: Iterable[str] = DEFAULT_PLANS,
) -> list[Row]:
    """Symmetric rows (format ``threshold-qcal``) of untrained quantile codes whose queries are coded
    by quantiles of ``query_sample`` (:meth:`ThresholdEncoder.calibrate_queries`), every plan and size."""
    rows = []
    for dims in dims_list or [corpus.shape[1]]:
        c, q, s = (baselines.truncate(x, dims) for x in (corpus, queries, query_sample))
        for plan in plans_fitting(plans, dims):
            encoder = ThresholdEncoder.fit(c, plan, query_sample=s)
            rows += rescore_rows(encoder, c, q, evaluator, "threshold-qcal", oversamples=())
    return rows


def adapter_rows(
    adapter: QamaAdapter,
    corpus: np.ndarray,
    queries: np.ndarray,
    evaluator: Evaluator,
    plans: Iterable[str] = ALL_PLANS,
    oversamples: Iterable[int] = (4,),
    query_sample: np.ndarray | None = None,
    recalibrate: bool = False,
) -> list[Row]:
    """Rows of a trained adapter (format ``qama``): at every nested size, its FP32 output (plan
    ``None``), then every plan's symmetric Hamming search and its rescoring at each factor.

    ``corpus`` and ``queries`` are the frozen model's embeddings (queries: the judged ones).
    Each plan and size is served as :func:`~qama.encoders.fit_encoder` serves it; queries are coded
    with the adapter's query thresholds, else (or with ``recalibrate``) by quantiles of ``query_sample``.
    """
    rows = []
    for dims in sorted(adapter.config.nested_dims, reverse=True):
        z_c = baselines.truncate(adapter.transform(corpus, dims), dims)
        z_q = baselines.truncate(adapter.transform(queries, dims), dims)
        rows.append(float_row("qama", z_c, z_q, dims, evaluator, bytes_per_dim=4))
        for plan in plans_fitting(plans, dims):
            encoder = fit_encoder(corpus, plan, adapter, query_sample, replace_query_thresholds=recalibrate)
            rows += rescore_rows(encoder, corpus, queries, evaluator, "qama", oversamples)
    return rows


def ablation_scorer(
    corpus: np.ndarray, queries: np.ndarray, evaluator: Evaluator
) -> Callable[[QamaAdapter], dict[str, float]]:
    """The score of an ablation (:func:`qama.train.ablate`): nDCG@10 of symmetric Hamming search
    at each nested size of each of :data:`ABLATION_PLANS`, keyed ``"plan@dims"``."""

    def score(adapter: QamaAdapter) -> dict[str, float]:
        rows = adapter_rows(adapter, corpus, queries, evaluator, ABLATION_PLANS, oversamples=())
        return {f"{r.plan}@{r.dims}": r.metrics["ndcg@10"] for r in rows if r.plan is not None}

    return score
