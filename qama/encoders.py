"""Encoders: what turns float embeddings into qama codes, and what a store keeps to rebuild one.

An :class:`Encoder` encodes documents and queries under one plan and gives the query weights of the
asymmetric score (:func:`qama.search.asymmetric_scores`). Two implementations:

* :class:`ThresholdEncoder`: untrained quantile thresholds (no adapter);
* :class:`AdapterEncoder`: a trained :class:`~qama.adapter.QamaAdapter` at one plan and nested size.

Every store (an index folder, :mod:`qama.index`; a Milvus collection, :mod:`qama.backends.milvus`)
saves an encoder the same way: its kind (:func:`encoder_kind`), its checksum, and its
``state`` (a dict of float32 arrays) as safetensors bytes (:func:`state_bytes`). Untrained
thresholds are rebuilt from the state alone; an adapter's state holds only what depends on the
corpus (centroids, pair axes), the adapter itself is passed when the store is opened.
:func:`open_encoder` is the one place that rebuilds an encoder for a store and checks it
(:func:`check_encoder`): a store built with one encoder is never searched with another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from qama._validate import check_fit_corpus
from qama.codes import Plan, pack, value_dims
from qama.errors import IndexCorruptError, IndexMismatchError
from qama.quantize import Quantizer, plan_values, plan_values_f32

logger = logging.getLogger(__name__)

__all__ = [
    "Encoder",
    "ThresholdEncoder",
    "AdapterEncoder",
    "state_bytes",
    "state_from_bytes",
    "check_encoder",
    "open_encoder",
    "fit_encoder",
    "uses_query_sample",
]


@runtime_checkable
class Encoder(Protocol):
    """What an index needs from the thing that turns float embeddings into codes.

    :class:`ThresholdEncoder` (untrained quantile thresholds) implements it; so does the trained
    adapter (:class:`AdapterEncoder`). Two optional attributes: ``level_norms2`` ``(n_values, 4)``
    makes the asymmetric score a cosine (divided by the reconstruction's length), and ``state``
    (a dict of float32 arrays) is what a store keeps to rebuild the encoder;
    ``kind`` (``"thresholds"`` or ``"adapter"``) says how. ``checksum`` identifies the encoder's
    parameters: a store built with one encoder refuses to be searched with another.
    """

    @property
    def plan(self) -> Plan:
        """The plan of the codes."""
        ...

    @property
    def checksum(self) -> str:
        """A hex digest of everything that determines the codes and the centroids."""
        ...

    @property
    def centroids(self) -> np.ndarray:
        """``(plan.n_values, 4)`` float32: the value each level of each quantised value stands for."""
        ...

    def encode(self, emb: np.ndarray) -> np.ndarray:
        """``(n, d)`` float document embeddings -> ``(n, plan.code_size)`` packed uint8 codes."""
        ...

    def encode_queries(self, emb: np.ndarray) -> np.ndarray:
        """``(n, d)`` float query embeddings -> ``(n, plan.code_size)`` codes, by the query thresholds
        where the encoder has them (see :meth:`qama.quantize.Quantizer.calibrate_queries`)."""
        ...

    def query_weights(self, emb: np.ndarray) -> np.ndarray:
        """``(n, d)`` float queries -> ``(n, plan.n_values)`` float32 weights ``w`` such that
        ``Σ_j w_j · centroids[j, level_j]`` is the asymmetric score of a code."""
        ...


class ThresholdEncoder:
    """:class:`Encoder` over an untrained :class:`~qama.quantize.Quantizer` (quantile thresholds).

    A 0.5-bit value is the mean of a pair of dimensions; its dequantised pair is ``(c, c)``, so the
    query weight of that value is the sum of the query's pair.
    """

    kind = "thresholds"

    def __init__(self, quantizer: Quantizer) -> None:
        self.quantizer = quantizer

    @classmethod
    def fit(
        cls, emb: np.ndarray, plan: Plan, sign_1bit: bool = False, query_sample: np.ndarray | None = None
    ) -> ThresholdEncoder:
        """Fit quantile thresholds and centroids on ``(n, d)`` corpus embeddings; with ``query_sample``
        (``(m, d)`` query-like embeddings) also the query thresholds (:meth:`calibrate_queries`)."""
        emb = check_fit_corpus(emb)  # (n >= 1, d), finite: a NaN threshold would code its dimension 0 everywhere
        return cls._fit(emb, plan, sign_1bit, query_sample)

    @classmethod
    def _fit(
        cls, emb: np.ndarray, plan: Plan, sign_1bit: bool = False, query_sample: np.ndarray | None = None
    ) -> ThresholdEncoder:
        """:meth:`fit` of a corpus already checked (:func:`qama._validate.check_fit_corpus`)."""
        encoder = cls(Quantizer.fit(plan_values_f32(emb, plan), plan, sign_1bit=sign_1bit))
        if query_sample is not None:
            encoder.calibrate_queries(query_sample)
        return encoder

    def calibrate_queries(self, sample: np.ndarray) -> None:
        """Code queries by quantiles of ``(m, d)`` query-like embeddings (queries, titles, ...)."""
        self.quantizer.calibrate_queries(plan_values_f32(np.asarray(sample), self.plan))

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The arrays a store keeps to rebuild the encoder (:meth:`from_state`)."""
        q = self.quantizer
        state = {"thresholds": q.thresholds, "centroids": q.centroids}
        if q.query_thresholds is not None:
            state["query_thresholds"] = q.query_thresholds
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}

    @classmethod
    def from_state(cls, plan: Plan, state: dict[str, np.ndarray]) -> ThresholdEncoder:
        """The encoder :attr:`state` describes (``KeyError`` / ``ValueError`` when it does not fit ``plan``)."""
        return cls(Quantizer(plan, state["thresholds"], state["centroids"], state.get("query_thresholds")))

    @property
    def plan(self) -> Plan:
        return self.quantizer.plan

    @property
    def centroids(self) -> np.ndarray:
        return self.quantizer.centroids

    @property
    def checksum(self) -> str:
        h = hashlib.sha256(self.plan.spec().encode())
        h.update(np.ascontiguousarray(self.quantizer.thresholds, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(self.quantizer.centroids, dtype=np.float32).tobytes())
        if self.quantizer.query_thresholds is not None:  # absent: the checksum of an index built before them
            h.update(np.ascontiguousarray(self.quantizer.query_thresholds, dtype=np.float32).tobytes())
        return h.hexdigest()

    def encode(self, emb: np.ndarray, chunk: int = 65536, queries: bool = False) -> np.ndarray:
        plan = self.plan
        out = np.empty((len(emb), plan.code_size), dtype=np.uint8)
        for i in range(0, len(emb), chunk):
            values = plan_values(np.asarray(emb[i : i + chunk], dtype=np.float32), plan)
            out[i : i + chunk] = pack(self.quantizer.levels(values, queries), plan)
        return out

    def encode_queries(self, emb: np.ndarray) -> np.ndarray:
        return self.encode(emb, queries=True)

    def query_weights(self, emb: np.ndarray) -> np.ndarray:
        sum_pairs = lambda pairs: pairs.sum(axis=-1)  # noqa: E731  (q1 c + q2 c = (q1 + q2) c)
        return plan_values(np.asarray(emb, dtype=np.float32), self.plan, merge=sum_pairs).astype(np.float32)


class AdapterEncoder:
    """:class:`Encoder` over a trained :class:`~qama.adapter.QamaAdapter` at one plan and nested size.

    The codes are the adapter's (its thresholds, its 0.5-bit pair merge). The asymmetric score of a
    code approximates the cosine, in the adapter's space (its ``plan.dim``-dimensional prefix),
    between the query and the document the code stands for: each level of a value is reconstructed
    by the mean of the L2-normalised prefix over the fitting corpus (``fit_emb``) in that level. A
    value of a 1-, 1.5- or 2-bit segment stands for one dimension. A 0.5-bit value stands for a pair
    of dimensions; its two level means ``μ_0, μ_1`` differ only along ``u = (μ_1 - μ_0) / |μ_1 - μ_0|``,
    and a pair is reconstructed by its projection ``(u · μ_l) u``: the query weight is ``q · u`` and
    the centroid ``u · μ_l`` (what is dropped is the same for every document). The score is divided
    by the length of the reconstruction (:attr:`level_norms2`).

    :meth:`state` (``centroids`` ``(n_values, 4)``, ``pair_axes`` ``(n_values, 2)``) is what a
    store keeps to rebuild the encoder without the corpus (:meth:`from_state`).
    """

    kind = "adapter"

    def __init__(
        self,
        adapter: Any,
        plan: str | Plan,
        dim: int | None = None,
        fit_emb: np.ndarray | None = None,
        state: dict[str, np.ndarray] | None = None,
    ):
        self.adapter = adapter
        self._plan = adapter.plan(plan, dim)
        self.quantizer = adapter.quantizer(self._plan)
        self._dims = value_dims(self._plan)  # (n_values, 2): dimensions of each value, -1 for none
        nv = self._plan.n_values
        if state is not None:
            cent, axes = state.get("centroids"), state.get("pair_axes")
            if cent is None or axes is None or cent.shape != (nv, 4) or axes.shape != (nv, 2):
                raise ValueError(f"encoder state does not fit plan {self._plan.name!r} ({nv} values)")
            self.quantizer.centroids, self.pair_axes = np.asarray(cent, np.float32), np.asarray(axes, np.float32)
            qthr = state.get("query_thresholds")  # absent in an index built before query calibration
            if qthr is not None and qthr.shape != (nv, 3):
                raise ValueError(f"encoder state's query thresholds do not fit plan {self._plan.name!r}")
            self.quantizer.query_thresholds = None if qthr is None else np.asarray(qthr, np.float32)
        elif fit_emb is not None:
            self.quantizer.centroids, self.pair_axes = self._fit(fit_emb)
        else:  # no corpus: the quantizer's own level midpoints, pairs along the diagonal
            self.pair_axes = np.tile(np.array([1.0, 0.0], dtype=np.float32), (nv, 1))
            self.pair_axes[self._dims[:, 1] >= 0] = np.array([0.5**0.5, 0.5**0.5], dtype=np.float32)

    def _unit_prefix(self, emb: np.ndarray) -> np.ndarray:
        z = self.adapter.transform(emb, self._plan.dim)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def _fit(self, emb: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Mean normalised prefix (a pair for 0.5-bit values) per value and level over ``emb``."""
        nv = self._plan.n_values
        first, second = self._dims[:, 0], self._dims[:, 1]
        sums = np.zeros((nv, 4, 2))
        counts = np.zeros((nv, 4))
        for i in range(0, len(emb), chunk):
            block = emb[i : i + chunk]
            z = self._unit_prefix(block)
            a = z[:, first]  # (c, nv)
            b = np.where(second >= 0, z[:, np.maximum(second, 0)], 0.0)
            levels = self.quantizer.levels(self.adapter.values(block, self._plan))
            for lv in range(4):
                mask = levels == lv
                counts[:, lv] += mask.sum(axis=0)
                sums[:, lv, 0] += np.where(mask, a, 0.0).sum(axis=0)
                sums[:, lv, 1] += np.where(mask, b, 0.0).sum(axis=0)
        overall = sums.sum(axis=1) / np.maximum(counts.sum(axis=1), 1)[:, None]  # (nv, 2)
        means = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], overall[:, None, :])
        axes = np.tile(np.array([1.0, 0.0]), (nv, 1))
        pairs = second >= 0
        step = means[pairs, 1] - means[pairs, 0]
        axes[pairs] = step / np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12)
        cent = np.einsum("vlc,vc->vl", means, axes)
        cent[np.arange(4)[None, :] >= self._plan.value_levels[:, None]] = 0.0
        return cent.astype(np.float32), axes.astype(np.float32)

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def centroids(self) -> np.ndarray:
        return self.quantizer.centroids

    @property
    def level_norms2(self) -> np.ndarray:
        """``(n_values, 4)`` squared length each level adds to a reconstructed document: the score
        is divided by the reconstruction's length, so that it is a cosine (why:
        ``benchmarks/RESULTS_search.md``, rescoring with a trained adapter)."""
        return self.quantizer.centroids**2

    @property
    def state(self) -> dict[str, np.ndarray]:
        """What depends on the fitting corpus (``centroids``, ``pair_axes``): :meth:`from_state` reads it."""
        state = {"centroids": self.quantizer.centroids, "pair_axes": self.pair_axes}
        if self.quantizer.query_thresholds is not None:
            state["query_thresholds"] = self.quantizer.query_thresholds
        return state

    def calibrate_queries(self, sample: np.ndarray) -> None:
        """Code queries by quantiles of the adapter's values of ``(m, d)`` query-like embeddings
        (replaces the query thresholds the adapter brought, if any)."""
        self.quantizer.calibrate_queries(self.adapter.values(np.asarray(sample, dtype=np.float32), self._plan))

    @classmethod
    def from_state(cls, adapter: Any, plan: str | Plan, state: dict[str, np.ndarray]) -> AdapterEncoder:
        """The encoder of ``adapter`` at ``plan`` with a stored :attr:`state`."""
        return cls(adapter, plan, state=state)

    @property
    def checksum(self) -> str:
        return self._checksum(skip_unused=True)

    @property
    def legacy_checksums(self) -> tuple[str, ...]:
        """Checksums older stores recorded for this same encoder (:func:`check_encoder` accepts them):
        with the adapter's unused query-threshold buffers hashed too."""
        calibrated = bool(getattr(self.adapter, "query_calibrated", True))
        return () if calibrated else (self._checksum(skip_unused=False),)

    def _checksum(self, skip_unused: bool) -> str:
        """SHA-256 of the plan, the adapter's tensors and the encoder state. An adapter's query
        thresholds are left out while it has none calibrated (they change no code): the checksum of
        an adapter written before query thresholds existed."""
        h = hashlib.sha256(self._plan.spec().encode())
        calibrated = bool(getattr(self.adapter, "query_calibrated", False))
        for name, t in self.adapter.state_dict().items():
            if skip_unused and not calibrated and (name == "query_calibrated" or name.startswith("qthr_")):
                continue
            h.update(t.detach().cpu().numpy().tobytes())
        for t in self.state.values():
            h.update(np.ascontiguousarray(t, dtype=np.float32).tobytes())
        return h.hexdigest()

    def encode(self, emb: np.ndarray, chunk: int = 65536, queries: bool = False) -> np.ndarray:
        out = np.empty((len(emb), self._plan.code_size), dtype=np.uint8)
        for i in range(0, len(emb), chunk):  # bounded memory: values and levels of one chunk at a time
            out[i : i + chunk] = self.quantizer.encode(self.adapter.values(emb[i : i + chunk], self._plan), queries)
        return out

    def encode_queries(self, emb: np.ndarray) -> np.ndarray:
        return self.encode(emb, queries=True)

    def query_weights(self, emb: np.ndarray) -> np.ndarray:
        z = self._unit_prefix(emb)
        first, second = self._dims[:, 0], self._dims[:, 1]
        b = np.where(second >= 0, z[:, np.maximum(second, 0)], 0.0)
        return (z[:, first] * self.pair_axes[:, 0] + b * self.pair_axes[:, 1]).astype(np.float32)


def state_bytes(encoder: Encoder) -> bytes:
    """The encoder's ``state`` as safetensors bytes (float32), with its plan and checksum as metadata."""
    state = getattr(encoder, "state", None) or {"centroids": encoder.centroids}
    meta = {"plan": json.dumps(encoder.plan.to_dict()), "checksum": encoder.checksum}
    return st_save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, meta)


def state_from_bytes(blob: bytes, where: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_bytes`; :class:`~qama.errors.IndexCorruptError` naming ``where`` if unreadable."""
    try:
        return st_load(blob)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise IndexCorruptError(f"{where}: unreadable encoder state ({e})") from None


def encoder_kind(encoder: Encoder) -> str:
    """``"thresholds"`` (stored whole) or ``"adapter"`` (any other encoder: referenced, state stored)."""
    return "thresholds" if isinstance(encoder, ThresholdEncoder) else "adapter"


def check_encoder(encoder: Encoder, plan: Plan, checksum: str, where: str, what: str = "store") -> None:
    """Refuse ``encoder`` for a store (``what``: ``"index"``, ``"collection"``) of codes of ``plan``
    written by the encoder of ``checksum``."""
    if encoder.plan.spec() != plan.spec():
        raise IndexMismatchError(
            f"{where}: holds {plan.code_size}-byte codes of plan {plan.spec()}, the encoder makes "
            f"{encoder.plan.code_size}-byte codes of plan {encoder.plan.spec()}"
        )
    if encoder.checksum != checksum and checksum not in getattr(encoder, "legacy_checksums", ()):
        raise IndexMismatchError(
            f"{where}: the encoder given (checksum {encoder.checksum[:12]}…) is not the one this {what} was built with "
            f"(checksum {checksum[:12]}…); its codes would not be comparable"
        )


def open_encoder(
    record: dict[str, Any],
    plan: Plan,
    stored_state: Callable[[], dict[str, np.ndarray] | None],
    where: str,
    encoder: Encoder | None = None,
    adapter: Any = None,
    what: str = "store",
) -> Encoder:
    """The encoder of a store, rebuilt or checked: the one open path of every store.

    ``record`` is the store's encoder metadata (``kind``, ``checksum``, optionally ``path``: the
    adapter folder); ``stored_state()`` reads the state the store kept. Untrained thresholds are
    rebuilt from it and checked against the checksum (:class:`~qama.errors.IndexCorruptError`). An
    adapter-built store needs ``encoder`` or ``adapter`` (a :class:`~qama.adapter.QamaAdapter`, whose
    encoder is rebuilt with the stored state). The encoder is then checked (:func:`check_encoder`).
    """
    kind, checksum = record["kind"], record["checksum"]
    if kind == "thresholds":
        try:
            stored = ThresholdEncoder.from_state(plan, stored_state() or {})
        except (KeyError, ValueError) as e:
            raise IndexCorruptError(f"{where}: malformed stored thresholds ({e})") from None
        if stored.checksum != checksum:
            raise IndexCorruptError(f"{where}: the stored thresholds do not match the checksum in the manifest")
        encoder = encoder or stored
    elif encoder is None:
        if adapter is None:
            at = f" at {record['path']}" if record.get("path") else ""
            raise IndexMismatchError(
                f"{where}: this {what} was built with a trained adapter{at} (checksum {checksum[:12]}…); "
                "pass the adapter to open it"
            )
        state = stored_state()
        if state is None:
            raise IndexMismatchError(f"{where}: no encoder state stored for the adapter")
        try:
            encoder = AdapterEncoder.from_state(adapter, plan, state)
        except ValueError as e:
            raise IndexMismatchError(f"{where}: the stored encoder state does not fit the adapter ({e})") from None
    check_encoder(encoder, plan, checksum, where, what)
    return encoder


def fit_encoder(
    corpus: np.ndarray,
    plan: str | Plan,
    adapter: Any = None,
    query_sample: np.ndarray | None = None,
    replace_query_thresholds: bool = True,
    dim: int | None = None,
    untrained_where_lost: bool = True,
) -> Encoder:
    """The encoder of a corpus under ``plan`` (at nested size ``dim``, default the plan's or the full
    size): a trained adapter's (a :class:`~qama.adapter.QamaAdapter` or its folder; centroids fitted
    on ``corpus``) or, without one, untrained quantile thresholds. Where the adapter's never-worse
    check found that training lost at this plan and size (:mod:`qama.check`), untrained quantile
    thresholds serve it too, unless ``untrained_where_lost`` is false (what measures the training itself).

    ``query_sample``: query-like embeddings whose quantiles code the queries; an adapter that brought
    its own query thresholds keeps them when ``replace_query_thresholds`` is false.
    """
    corpus = check_fit_corpus(corpus)  # not converted whole: both encoders read it a block of rows at a time
    if adapter is None:
        from qama.codes import make_plan

        logger.info("no adapter: fitting untrained quantile thresholds (%s) on the corpus", plan)
        p = plan if isinstance(plan, Plan) and dim is None else make_plan(plan, dim or corpus.shape[1])
        return ThresholdEncoder._fit(corpus, p, query_sample=query_sample)
    from qama.adapter import QamaAdapter

    if isinstance(adapter, (str, os.PathLike)):
        adapter = QamaAdapter.load(adapter)
    p = adapter.plan(plan, dim)
    if untrained_where_lost and _check_lost(adapter, p):
        logger.warning("%s at %d dims: the adapter's check found untrained codes better; using them", p.name, p.dim)
        return ThresholdEncoder._fit(corpus, p, query_sample=query_sample)
    encoder = AdapterEncoder(adapter, p, fit_emb=corpus)
    if query_sample is not None and not _keeps_own_query_thresholds(adapter, replace_query_thresholds):
        encoder.calibrate_queries(query_sample)
    return encoder


def uses_query_sample(
    adapter: Any, plan: str | Plan, replace_query_thresholds: bool = False, dim: int | None = None
) -> bool:
    """Whether :func:`fit_encoder` with these arguments codes the queries by a query sample given to it:
    false only where the adapter serves the plan and size itself and keeps the query thresholds it was
    fitted with (``replace_query_thresholds`` false), so that no sample need be made."""
    if adapter is None or _check_lost(adapter, adapter.plan(plan, dim)):
        return True
    return not _keeps_own_query_thresholds(adapter, replace_query_thresholds)


def _check_lost(adapter: Any, plan: Plan) -> bool:
    """Whether the adapter's never-worse check served ``plan`` (at its size) with untrained codes."""
    return f"{plan.name}@{plan.dim}" in adapter.metadata.get("check", {}).get("lost", [])


def _keeps_own_query_thresholds(adapter: Any, replace_query_thresholds: bool) -> bool:
    """Whether an adapter's codes keep the query thresholds it was fitted with instead of a sample's."""
    return not replace_query_thresholds and bool(adapter.query_calibrated)
