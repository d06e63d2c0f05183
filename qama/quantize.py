"""From float embeddings to integer levels: plan values, thresholds, representative values.

An embedding ``z`` of shape ``(n, d)`` is quantised under a :class:`~qama.codes.Plan` in three steps:

1. :func:`plan_values` turns the first ``plan.dim`` dimensions into ``plan.n_values`` values (a
   0.5-bit segment merges each pair of dimensions into one value; untrained, by their mean);
2. :class:`Quantizer` compares each value with its thresholds: ``level = #{i : value > θ_i}``;
3. :func:`qama.codes.pack` expands and packs the levels.

Thresholds are stored as a ``(n_values, 3)`` array padded with ``+inf`` (a value with 2 levels
has one finite threshold), so every precision goes through the same comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qama.codes import Plan, pack, value_dims

__all__ = ["plan_values", "plan_values_f32", "quantile_thresholds", "Quantizer"]

MAX_THRESHOLDS = 3  # 4 levels at most

PairMerge = Callable[[np.ndarray], np.ndarray]


def mean_merge(pairs: np.ndarray) -> np.ndarray:
    """Untrained 0.5-bit merge: the mean of each ``(..., 2)`` pair."""
    return pairs.mean(axis=-1)


def plan_values(z: np.ndarray, plan: Plan, merge: PairMerge = mean_merge) -> np.ndarray:
    """``(n, d)`` embeddings -> ``(n, plan.n_values)`` values to quantise (prefix ``plan.dim`` used)."""
    if z.ndim != 2 or z.shape[1] < plan.dim:
        raise ValueError(f"plan {plan.name!r} needs embeddings with at least {plan.dim} dimensions, got {z.shape}")
    dims = value_dims(plan)  # (n_values, 2): the dimension(s) of each value
    pairs = dims[:, 1] >= 0
    out = z[:, dims[:, 0]]
    if pairs.any():
        out[:, pairs] = merge(z[:, dims[pairs]])  # (n, n_pairs, 2) -> (n, n_pairs)
    return out


#: Bytes of float32 embeddings :func:`plan_values_f32` converts at once.
BLOCK_BYTES = 1 << 24


def plan_values_f32(z: np.ndarray, plan: Plan, merge: PairMerge = mean_merge) -> np.ndarray:
    """:func:`plan_values` of ``(n, d)`` embeddings of any real dtype, as float32, computed a block of rows
    (:data:`BLOCK_BYTES` of float32) at a time: a float64, integer, Fortran-ordered or memory-mapped corpus
    is never converted whole (the values, ``(n, plan.n_values)`` float32, are the only array of the corpus's
    length). The same values as
    ``plan_values(z.astype(np.float32), plan)``, bit for bit (each row is computed alone)."""
    if z.ndim != 2 or z.shape[1] < plan.dim:
        raise ValueError(f"plan {plan.name!r} needs embeddings with at least {plan.dim} dimensions, got {z.shape}")
    out = np.empty((len(z), plan.n_values), dtype=np.float32)
    block = max(1, BLOCK_BYTES // (4 * z.shape[1]))
    for i in range(0, len(z), block):
        out[i : i + block] = plan_values(np.asarray(z[i : i + block], dtype=np.float32), plan, merge)
    return out


def quantile_thresholds(values: np.ndarray, value_levels: np.ndarray, block: int = 8) -> np.ndarray:
    """Per-value thresholds at evenly spaced quantiles (4 levels: 25/50/75%; 3: 33/67%; 2: 50%).

    Returns ``(n_values, 3)`` float32, padded with ``+inf``. The quantiles are taken ``block`` values
    (columns) at a time: the copies a quantile makes are of those columns, not of the whole matrix.
    """
    thr = np.full((values.shape[1], MAX_THRESHOLDS), np.inf, dtype=np.float32)
    for n_levels in np.unique(value_levels):
        cols = np.flatnonzero(value_levels == n_levels)
        q = np.arange(1, n_levels) / n_levels
        for i in range(0, len(cols), block):
            part = cols[i : i + block]
            thr[part, : n_levels - 1] = np.quantile(values[:, part], q, axis=0).T
    return thr


@dataclass
class Quantizer:
    """Thresholds and representative values of one plan; turns values into levels and codes.

    ``centroids[j, l]`` is the mean of the fitting values of value ``j`` that fell in level ``l``:
    the float that level stands for when a float query is scored against codes (asymmetric).

    ``query_thresholds`` (optional, same layout as ``thresholds``) code the queries: quantiles of
    query-like values (:meth:`calibrate_queries`), so that a query's level says where it stands
    among queries as a document's level says where it stands among documents. Without them,
    queries are coded with the documents' thresholds.
    """

    plan: Plan
    thresholds: np.ndarray  # (n_values, 3) float32, +inf padded
    centroids: np.ndarray  # (n_values, 4) float32, 0 padded
    query_thresholds: np.ndarray | None = None  # (n_values, 3) float32, +inf padded; None: the documents'

    def __post_init__(self) -> None:
        n = self.plan.n_values
        if self.thresholds.shape != (n, MAX_THRESHOLDS) or self.centroids.shape != (n, MAX_THRESHOLDS + 1):
            raise ValueError(
                f"quantizer for plan {self.plan.name!r} needs thresholds ({n}, 3) and centroids ({n}, 4), "
                f"got {self.thresholds.shape} and {self.centroids.shape}"
            )
        if self.query_thresholds is not None and self.query_thresholds.shape != (n, MAX_THRESHOLDS):
            raise ValueError(
                f"quantizer for plan {self.plan.name!r} needs query thresholds ({n}, 3), "
                f"got {self.query_thresholds.shape}"
            )

    @classmethod
    def fit(cls, values: np.ndarray, plan: Plan, sign_1bit: bool = False) -> Quantizer:
        """Quantile thresholds fitted on ``(n, plan.n_values)`` values; ``sign_1bit`` puts 2-level
        thresholds at zero (sign quantisation) instead of the median."""
        thr = quantile_thresholds(values, plan.value_levels)
        if sign_1bit:
            thr[plan.value_levels == 2, 0] = 0.0
        q = cls(plan, thr, np.zeros((plan.n_values, MAX_THRESHOLDS + 1), dtype=np.float32))
        q.centroids = q.fit_centroids(values)
        return q

    def fit_centroids(self, values: np.ndarray, block: int = 8) -> np.ndarray:
        """Mean value in each level (an empty level takes its nearest threshold). The values are read
        ``block`` values (columns) at a time: the levels (int64) and masked values (float64) of the
        whole matrix at once took four times the memory of its float32 values."""
        cent = np.zeros((self.plan.n_values, MAX_THRESHOLDS + 1), dtype=np.float64)
        for i in range(0, self.plan.n_values, block):
            cols = slice(i, i + block)
            part = values[:, cols]
            levels = np.zeros(part.shape, dtype=np.int64)
            for t in range(MAX_THRESHOLDS):  # as levels() does, for these columns (+inf padding never counts)
                levels += part > self.thresholds[cols, t]
            for lv in range(MAX_THRESHOLDS + 1):
                mask = levels == lv
                count = mask.sum(axis=0)
                total = np.where(mask, part, 0.0).sum(axis=0)
                fallback = self.thresholds[cols, min(lv, MAX_THRESHOLDS - 1)]
                fallback = np.where(np.isfinite(fallback), fallback, self.thresholds[cols, 0])
                cent[cols, lv] = np.where(count > 0, total / np.maximum(count, 1), fallback)
        cent[np.arange(MAX_THRESHOLDS + 1)[None, :] >= self.plan.value_levels[:, None]] = 0.0
        return cent.astype(np.float32)

    def calibrate_queries(self, values: np.ndarray) -> None:
        """Set :attr:`query_thresholds` to quantiles of ``(n, n_values)`` query-like values (at least 2 rows)."""
        if values.ndim != 2 or values.shape[1] != self.plan.n_values or len(values) < 2:
            raise ValueError(f"a query sample needs values of shape (n >= 2, {self.plan.n_values}), got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("the query sample contains NaN or inf values")
        self.query_thresholds = quantile_thresholds(values, self.plan.value_levels)

    def levels(self, values: np.ndarray, queries: bool = False) -> np.ndarray:
        """``(n, n_values)`` values -> int64 levels (``queries``: by the query thresholds, if any)."""
        if values.ndim != 2 or values.shape[1] != self.plan.n_values:
            raise ValueError(f"expected values of shape (n, {self.plan.n_values}), got {values.shape}")
        thresholds = self.query_thresholds if queries and self.query_thresholds is not None else self.thresholds
        levels = np.zeros(values.shape, dtype=np.int64)
        for i in range(MAX_THRESHOLDS):  # +inf padding never counts
            levels += values > thresholds[:, i]
        return levels

    def encode(self, values: np.ndarray, queries: bool = False) -> np.ndarray:
        """``(n, n_values)`` values -> ``(n, code_size)`` packed uint8 codes (``queries``: see :meth:`levels`)."""
        return pack(self.levels(values, queries), self.plan)
