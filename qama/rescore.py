"""Evaluation rows for two-stage search: Hamming candidates rescored asymmetrically, and the funnel.

:func:`rescore_rows` scores one :class:`~qama.search.Encoder` (trained adapter or untrained
thresholds) on a dataset and returns :class:`~qama.table.Row` objects for ``qama eval``:

* ``rescore=None``: symmetric Hamming search (queries are codes too);
* ``rescore=f``: ``f × TOP_K`` Hamming candidates (100 per query at f=1), rescored
  by the asymmetric score (float query · dequantised code), the top ``TOP_K`` kept;
* format ``"<fmt>-funnel"``, plan ``"<plan>[:m]"``: the code prefix of the first ``m`` dimensions
  picks ``f × TOP_K`` candidates, the full code reranks them asymmetrically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from qama import baselines
from qama.codes import ALL_PLANS, DEFAULT_PLANS, plans_fitting, prefix_plan
from qama.encoders import Encoder, ThresholdEncoder, fit_encoder
from qama.evaluate import Evaluator
from qama.search import funnel_search, hamming_search, search_rescored
from qama.table import TOP_K, Row, float_row

__all__ = [
    "rescore_rows",
    "threshold_rescore_rows",
    "calibrated_threshold_rows",
    "adapter_rows",
    "ABLATION_PLANS",
    "ablation_scorer",
    "ablation_columns",
]

#: The plans an ablation is scored at (``qama ablate``, the report's ablation table).
ABLATION_PLANS = ("2bit", "hybrid")

if TYPE_CHECKING:
    from qama.adapter import QamaAdapter

logger = logging.getLogger(__name__)


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
        return Row(
            fmt_,
            plan_name,
            plan.dim,
            plan.bits_per_dim,
            plan.code_size,
            rescore=rescore,
            metrics=evaluator.from_ranking(ids, dist_or_scores),
        )

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


def ablation_columns(results: dict[str, dict[str, float]]) -> list[str]:
    """The ``"plan@dims"`` columns of an ablation table: by plan, then the largest size first."""
    return sorted({c for f in results.values() for c in f}, key=lambda c: (c.split("@")[0], -int(c.split("@")[1])))
