"""The never-worse check: do a fitted adapter's codes beat untrained codes on pairs held out of the fit?

Without labels, the only relevance signal a corpus offers is its own pseudo-queries: each held-out
pair ``(query, document row)`` (a document's title and that document, or a labelled pair) is a
known-item search: the query should find its document among the whole corpus. For each plan and
nested size the check scores that search with symmetric codes twice, once with the adapter's codes
and once with untrained quantile codes of the model's own embedding prefix (queries coded by the
quantiles of the pairs used for fitting, as :class:`~qama.search.ThresholdEncoder` does with a
query sample), and compares the mean nDCG@10 (one relevant document: ``1 / log2(1 + rank)``).

A plan and size is judged *lost* only when the adapter is behind by more than ``margin`` and by more
than ``z`` standard errors of the paired per-query differences: the known-item signal does not rank
small differences reliably (measured in ``benchmarks/RESULTS_training.md``), so the check is a net
for clear failures, not a fine selector. Lost plans and sizes are recorded in the adapter
(``metadata["check"]``) and :func:`qama.encoders.fit_encoder` then serves them with untrained codes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from qama.codes import hamming_distances, make_plan
from qama.encoders import ThresholdEncoder

if TYPE_CHECKING:
    from qama.adapter import QamaAdapter

__all__ = ["CheckResult", "holdout_split", "known_item_gains", "never_worse_check"]

logger = logging.getLogger(__name__)

#: Share of the pairs held out of the fit for the check, and the most that are held out.
HOLDOUT_FRACTION = 0.2
HOLDOUT_MAX = 1000
#: The fewest pairs held out: with fewer, none are and the check is not run.
HOLDOUT_MIN = 20
#: Documents the known-item search runs over, at most: the held-out targets and a random sample of the rest.
CHECK_CORPUS_MAX = 20000
#: A plan and size is lost when the adapter is behind by more than MARGIN (nDCG@10) and Z standard errors.
MARGIN = 0.02
Z = 3.0


@dataclass
class CheckResult:
    """One plan at one nested size: mean known-item nDCG@10 of both encoders and the verdict."""

    plan: str
    dims: int
    adapter: float
    untrained: float
    stderr: float  # standard error of the mean paired difference
    lost: bool

    def to_dict(self) -> dict:
        return asdict(self)


def holdout_split(n_pairs: int, seed: int = 0, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_rows, held_rows)`` of ``n_pairs`` pairs: ``fraction`` of them (at most :data:`HOLDOUT_MAX`,
    none when fewer than :data:`HOLDOUT_MIN` would be held out) are held out of the fit, chosen at random."""
    held = min(int(n_pairs * fraction), HOLDOUT_MAX)
    if held < HOLDOUT_MIN:
        return np.arange(n_pairs), np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(n_pairs)
    return np.sort(perm[held:]), np.sort(perm[:held])


def known_item_gains(codes: np.ndarray, query_codes: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per query, ``1 / log2(1 + rank)`` of its target row under Hamming distance (0 past rank 10);
    ties count as the expected rank in a random order among them."""
    budget = max(1, (1 << 26) // max(1, codes.shape[0] * codes.shape[1]))  # bounded memory per block
    gains = np.zeros(len(query_codes))
    for s in range(0, len(query_codes), budget):
        dist = hamming_distances(query_codes[s : s + budget], codes, chunk=budget)
        own = dist[np.arange(len(dist)), targets[s : s + budget]][:, None]
        rank = (dist < own).sum(axis=1) + ((dist == own).sum(axis=1) - 1) / 2 + 1
        gains[s : s + budget] = np.where(rank <= 10, 1 / np.log2(1 + rank), 0.0)
    return gains


def never_worse_check(
    adapter: QamaAdapter,
    corpus: np.ndarray,
    held_queries: np.ndarray,
    held_rows: np.ndarray,
    query_sample: np.ndarray | None,
    plans: tuple[str, ...],
    margin: float = MARGIN,
    z: float = Z,
) -> list[CheckResult]:
    """Compare ``adapter``'s codes with untrained codes at every plan in ``plans`` and nested size.

    ``held_queries`` ``(m, d)`` and ``held_rows`` ``(m,)``: pseudo-queries held out of the fit and the
    corpus rows of their documents; ``query_sample``: the query-like embeddings the untrained codes
    calibrate their query thresholds on (None: the documents' thresholds).
    """
    results = []
    targets = np.asarray(held_rows, dtype=np.int64)
    if len(corpus) > CHECK_CORPUS_MAX:  # bounded work: the targets and a random sample of the others
        own = np.unique(targets)
        others = np.setdiff1d(np.arange(len(corpus)), own)
        drawn = np.random.default_rng(0).choice(others, CHECK_CORPUS_MAX - len(own), replace=False)
        keep = np.concatenate([own, drawn])
        keep.sort()
        corpus, targets = corpus[keep], np.searchsorted(keep, targets)
    for dims in sorted(adapter.config.nested_dims, reverse=True):
        for name in plans:
            try:
                plan = make_plan(name, dims)
            except ValueError:  # e.g. hybrid at a size its 0.5-bit pairs do not fit
                continue
            name = plan.name
            query_codes = adapter.encode(held_queries, plan, queries=True)
            ours = known_item_gains(adapter.encode(corpus, plan), query_codes, targets)
            base = ThresholdEncoder.fit(corpus, plan, query_sample=query_sample)
            theirs = known_item_gains(base.encode(corpus), base.encode_queries(held_queries), targets)
            diff = ours - theirs
            stderr = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
            lost = bool(diff.mean() < -margin and diff.mean() < -z * stderr)
            results.append(CheckResult(name, dims, float(ours.mean()), float(theirs.mean()), stderr, lost))
            level = logging.WARNING if lost else logging.INFO
            rule = f"behind by more than {margin:g} and {z:g} standard errors"
            verdict = (
                f"lost ({rule}): untrained codes serve it" if lost else f"the adapter serves it (lost only if {rule})"
            )
            logger.log(
                level,
                "check %s@%d on %d held-out pseudo-queries: adapter %.4f, untrained %.4f, difference %+.4f ± %.4f; %s",
                name,
                dims,
                len(diff),
                ours.mean(),
                theirs.mean(),
                diff.mean(),
                stderr,
                verdict,
            )
    lost_at = [f"{r.plan}@{r.dims}" for r in results if r.lost]
    logger.log(
        logging.WARNING if lost_at else logging.INFO,
        "never-worse check: %s. It acts only on a clear loss on the held-out pseudo-queries; a change that shows "
        "only on real queries (measured: up to 4 points at full size) is beyond it: `qama eval --adapter` on "
        "judged queries measures the real change",
        f"training lost at {', '.join(lost_at)}, served by untrained codes there" if lost_at else "no clear loss",
    )
    return results
