"""The QAMA adapter: a small trainable transform on top of a frozen embedding model.

``z = A·x + W2·GELU(W1·x + b1) + b2`` maps a frozen model's L2-normalised embedding ``x`` (``d``
dimensions) to ``z`` (``d`` dimensions). ``W1`` is ``(k·d, d)``, ``W2`` is ``(d, k·d)``: the FFN of
the QAMA paper with expansion ``k``. The linear skip ``A`` carries the start (``init``):
``"identity"`` (``A = I``), ``"pca"`` (principal axes of the fitting corpus) or ``"pca_blocks"``
(default: principal axes rotated inside each nested level, see :meth:`QamaAdapter.init_linear`); ``W2`` starts at
zero, so an untrained adapter *is* its start and training only has to learn a correction.

Nested (Matryoshka) sizes: the ``m``-dimensional embedding is the prefix ``z[:, :m]``.

Quantisation. Every dimension ``j`` has thresholds for each precision (buffers, so they are saved
and never trained by the optimiser): 2-bit (3 thresholds), 1.5-bit (2), 1-bit (1). A 0.5-bit value
merges the pair of dimensions ``(2i, 2i+1)`` with a small shared FFN (:class:`PairMerge`) into
one value, which has its own 1-bit threshold. Thresholds start at quantiles of the fitting
embeddings, follow an exponential moving average of batch quantiles during training, and are set
to exact quantiles of the whole fitting set when training ends. Query thresholds (``qthr_*``
buffers, :meth:`QamaAdapter.calibrate_queries`) are the same quantiles of the adapter's output on
query-like texts; queries are coded with them once set (``query_calibrated``), with the
documents' thresholds before.

Public API::

    adapter = QamaAdapter(AdapterConfig(dim=384))
    z = adapter.transform(x, dim=192)              # (n, 192) float32 prefix embeddings
    v = adapter.values(x, "hybrid", dim=384)       # (n, plan.n_values) values to threshold
    q = adapter.quantizer("hybrid", dim=384)       # a qama.quantize.Quantizer
    codes = adapter.encode(x, "hybrid", dim=384)   # (n, code_size) packed uint8 codes
    adapter.save("my_adapter"); QamaAdapter.load("my_adapter")

A saved adapter is a folder with ``config.json`` (sizes, plans, training settings and data
description) and ``model.safetensors`` (weights and thresholds); nothing is pickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from qama._io import JsonFields, atomic_open, write_json
from qama._validate import check_regular_file, misfit, read_json_file
from qama.codes import DEFAULT_PLANS, Plan, make_plan
from qama.quantize import MAX_THRESHOLDS, Quantizer

__all__ = ["AdapterConfig", "PairMerge", "QamaAdapter", "DimensionError", "PRECISIONS", "mean_direction"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
#: Fields of ``config.json``'s "adapter" that a saved adapter must state (no silent defaults).
REQUIRED_FIELDS = ("dim", "expansion", "nested_dims", "init", "merge_hidden")

#: Precisions with per-dimension thresholds: bits -> (buffer name, quantiles of the thresholds).
PRECISIONS: dict[float, tuple[str, tuple[float, ...]]] = {
    2.0: ("thr_2bit", (0.25, 0.5, 0.75)),
    1.5: ("thr_1_5bit", (1 / 3, 2 / 3)),
    1.0: ("thr_1bit", (0.5,)),
    0.5: ("thr_0_5bit", (0.5,)),
}
#: Buffer of each precision's query thresholds (same shape as the documents' thresholds).
QUERY_PRECISIONS: dict[float, str] = {bits: "q" + name for bits, (name, _) in PRECISIONS.items()}
INITS = ("identity", "pca", "pca_blocks")
RANGE_QUANTILES = (0.005, 0.995)  # the valid range [lo, hi] the quantisation regulariser keeps values in


class DimensionError(ValueError):
    """Embeddings whose dimension does not match the adapter."""


@dataclass
class AdapterConfig(JsonFields):
    """Shape and start of an adapter; stored in ``config.json``."""

    dim: int = 384  # dimension of the frozen model's embeddings (and of the adapter's output)
    expansion: int = 2  # k: hidden width k·dim of the FFN (the paper uses 32; 2 trains fast on CPU)
    nested_dims: tuple[int, ...] = ()  # Matryoshka sizes, ascending; () = (dim/4, dim/2, dim)
    init: str = "pca_blocks"  # start of the linear skip: "identity", "pca" or "pca_blocks" (see init_linear)
    merge_hidden: int = 16  # hidden width of the 0.5-bit pair-merge FFN
    drop_mean_direction: bool = True  # the start projects out the corpus mean direction (see init_linear)
    model_name: str = ""  # frozen model the adapter belongs to (informative)
    plans: tuple[str, ...] = DEFAULT_PLANS  # plans the adapter is meant for

    def __post_init__(self) -> None:
        check_config_types(self)
        if self.dim <= 0 or self.dim % 2:
            raise ValueError(f"dim must be a positive even number, got {self.dim}")
        if self.expansion < 1:
            raise ValueError(f"expansion must be at least 1, got {self.expansion}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        nested = tuple(int(m) for m in self.nested_dims) or default_nested_dims(self.dim)
        if list(nested) != sorted(set(nested)) or nested[-1] != self.dim or nested[0] <= 0:
            raise ValueError(
                f"nested_dims must be ascending, distinct, positive and end at dim={self.dim}, got {nested}"
            )
        if any(m % 2 for m in nested):
            raise ValueError(f"nested_dims must be even (0.5-bit merges pairs), got {nested}")
        self.nested_dims = nested
        self.plans = tuple(self.plans)


#: Bounds of an adapter's sizes (a config read from disk must not allocate without limit).
MAX_DIM = 65536
MAX_EXPANSION = 1024
MAX_MERGE_HIDDEN = 4096
MAX_FFN_WEIGHTS = 1 << 28  # 2·k·d² (1 GiB of float32, four times that while training with Adam)


def check_config_types(cfg: AdapterConfig) -> None:
    """Every field of an :class:`AdapterConfig` of its type and in range: integers are integers (not
    ``384.0`` or ``true``), flags are booleans, plans are plan names or specs. Raises ``ValueError``."""

    def integer(name: str, value: Any, lo: int, hi: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r:.60}")
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")

    integer("dim", cfg.dim, 2, MAX_DIM)
    integer("expansion", cfg.expansion, 1, MAX_EXPANSION)
    integer("merge_hidden", cfg.merge_hidden, 1, MAX_MERGE_HIDDEN)
    if 2 * cfg.expansion * cfg.dim * cfg.dim > MAX_FFN_WEIGHTS:
        raise ValueError(
            f"expansion {cfg.expansion} at dim {cfg.dim}: {2 * cfg.expansion * cfg.dim**2:,} FFN weights, more than "
            f"{MAX_FFN_WEIGHTS:,} (the paper's 32 at 768 dimensions needs 38 million)"
        )
    if not isinstance(cfg.nested_dims, (tuple, list)):
        raise ValueError(f"nested_dims must be a list of integers, got {cfg.nested_dims!r:.60}")
    for m in cfg.nested_dims:
        integer("nested_dims", m, 1, MAX_DIM)
    if not isinstance(cfg.init, str):
        raise ValueError(f"init must be a string, got {cfg.init!r:.60}")
    if not isinstance(cfg.drop_mean_direction, bool):
        raise ValueError(f"drop_mean_direction must be true or false, got {cfg.drop_mean_direction!r:.60}")
    if not isinstance(cfg.model_name, str):
        raise ValueError(f"model_name must be a string, got {cfg.model_name!r:.60}")
    if not isinstance(cfg.plans, (tuple, list)) or not all(isinstance(p, str) for p in cfg.plans):
        raise ValueError(f"plans must be a list of plan names or specs, got {cfg.plans!r:.60}")
    sizes = tuple(cfg.nested_dims) or (cfg.dim,)
    for p in cfg.plans:
        reason = misfit(p, sizes)
        if reason is not None:
            raise ValueError(f"plans: {p!r} fits none of the sizes {', '.join(map(str, sizes))} ({reason})")


def weight_bytes(cfg: AdapterConfig) -> int:
    """A lower bound of the bytes of an adapter's float32 weights (the three ``d``-wide layers)."""
    d, h = int(cfg.dim), int(cfg.expansion) * int(cfg.dim)
    return 4 * (d * d + 2 * h * d)


def default_nested_dims(dim: int) -> tuple[int, ...]:
    """``(dim/4, dim/2, dim)``, leaving out sizes that are not whole even numbers."""
    return tuple(m for m in (dim // 4, dim // 2) if m > 0 and m % 2 == 0 and m * (dim // m) == dim) + (dim,)


class PairMerge(nn.Module):
    """Merges each pair of standardised dimensions ``(u_2i, u_2i+1)`` into one value (0.5-bit).

    ``v = (u_a + u_b)/√2 + W2·GELU(W1·[u_a, u_b] + b1)``; ``W2`` starts at zero, so the untrained
    merge is the scaled sum of the pair. The weights are shared by every pair.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` standardised pairs -> ``(...)`` merged values."""
        linear = pairs.sum(dim=-1) / 2**0.5
        return linear + self.fc2(nn.functional.gelu(self.fc1(pairs))).squeeze(-1)


class QamaAdapter(nn.Module):
    """FFN adapter with nested prefixes, per-precision thresholds and a 0.5-bit pair merge."""

    # Buffers (registered in __init__), declared for the type checker.
    z_mean: torch.Tensor
    z_std: torch.Tensor
    m_mean: torch.Tensor
    m_std: torch.Tensor
    thr_2bit: torch.Tensor
    thr_1_5bit: torch.Tensor
    thr_1bit: torch.Tensor
    thr_0_5bit: torch.Tensor
    range_lo: torch.Tensor
    range_hi: torch.Tensor
    calibrated: torch.Tensor
    query_calibrated: torch.Tensor

    def __init__(self, config: AdapterConfig, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = dict(metadata or {})  # training settings and data description
        d, h = config.dim, config.expansion * config.dim
        self.skip = nn.Linear(d, d, bias=True)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)
        self.merge = PairMerge(config.merge_hidden)
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(d))
            self.skip.bias.zero_()
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
        # Statistics of z (per dimension) used to standardise values before soft quantisation.
        self.register_buffer("z_mean", torch.zeros(d))
        self.register_buffer("z_std", torch.ones(d))
        self.register_buffer("m_mean", torch.zeros(d // 2))  # of the merged 0.5-bit values
        self.register_buffer("m_std", torch.ones(d // 2))
        for bits, (name, qs) in PRECISIONS.items():
            n = d // 2 if bits == 0.5 else d
            self.register_buffer(name, torch.zeros(n, len(qs)))
            self.register_buffer(QUERY_PRECISIONS[bits], torch.zeros(n, len(qs)))
        self.register_buffer("query_calibrated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("range_lo", torch.full((d,), -1.0))
        self.register_buffer("range_hi", torch.full((d,), 1.0))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ transform
    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` frozen embeddings -> ``(B, d)`` adapter embeddings (slice for nested sizes)."""
        return self.skip(x) + self.fc2(nn.functional.gelu(self.fc1(x)))

    def merged(self, z: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """``(B, ≥stop)`` embeddings -> ``(B, (stop-start)/2)`` merged 0.5-bit values of dims start..stop."""
        stop = z.shape[1] if stop is None else stop
        if start % 2 or stop % 2:
            raise ValueError(f"a 0.5-bit range must start and end on even dimensions, got {start}..{stop}")
        u = (z[:, start:stop] - self.z_mean[start:stop]) / self.z_std[start:stop]  # (B, n)
        return self.merge(u.reshape(len(z), (stop - start) // 2, 2))  # (B, n/2); B may be 0

    def init_linear(self, x: np.ndarray, seed: int = 0) -> None:
        """Set the linear skip from the fitting embeddings ``x`` according to ``config.init``.

        - ``"identity"``: leave ``A = I`` (the model's own coordinates);
        - ``"pca"``: principal axes of ``x``, by decreasing variance;
        - ``"pca_blocks"``: the dimensions of each nested level but the last are a random rotation of
          that level's principal axes (the prefix of size ``d_l`` spans the top ``d_l`` axes, with the
          variance spread evenly inside the level); the last level re-projects the top
          ``d_{K-1}`` axes with another random rotation (random orthonormal rows when it is wider).
          Quantile codes weigh every dimension alike; the rotation spreads the variance of a level
          evenly over its dimensions (why: ``benchmarks/RESULTS_training.md``).

        With ``config.drop_mean_direction`` (default) every start first projects out the direction of
        the corpus mean, ``A ← A·(I − u·uᵀ)``. Queries lean less toward that direction than documents
        do (SciFact: 0.29 vs 0.37 along ``u``), and quantile codes turn that one offset into a shift of
        every coordinate of every query code. Measured without training (benchmarks/RESULTS_training.md):
        Cranfield 2-bit@384 94.5% -> 97.1%, 1-bit@384 85.7% -> 92.4%; SciFact hybrid@384 91.5% -> 94.2%,
        2-bit@96 78.5% -> 83.9%, at a cost of about one point of the FP32 prefixes.
        """
        x = x.astype(np.float64)
        eye = np.eye(x.shape[1])
        u = mean_direction(x) if self.config.drop_mean_direction else None
        drop = eye
        if u is not None:
            drop = eye - np.outer(u, u)  # projection onto the complement of the mean direction
            x = x @ drop
        w = eye
        if self.config.init != "identity":
            w = self._pca_start(x, seed)
        w = w @ drop
        with torch.no_grad():
            self.skip.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            self.skip.bias.zero_()

    def _pca_start(self, x: np.ndarray, seed: int) -> np.ndarray:
        """``(d, d)`` rows of the ``"pca"`` or ``"pca_blocks"`` start from the fitting embeddings ``x``."""
        xc = x - x.mean(axis=0)
        # (d, d) rows = principal axes; fewer vectors than dimensions: completed to a full orthonormal basis
        _, _, vt = np.linalg.svd(xc, full_matrices=len(xc) < xc.shape[1])
        vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]  # deterministic signs
        if self.config.init == "pca":
            return vt
        rng = np.random.default_rng(seed)
        nested = (0, *self.config.nested_dims)
        if len(nested) == 2:
            return _rotation(len(vt), rng) @ vt
        blocks = [_rotation(b - a, rng) @ vt[a:b] for a, b in zip(nested[:-2], nested[1:-1], strict=True)]
        n_last, span = nested[-1] - nested[-2], max(nested[-2], 1)
        if n_last <= span:  # n_last orthonormal combinations of the top `span` axes
            blocks.append(_rotation(span, rng)[:n_last] @ vt[:span])
        else:
            blocks.append(_rotation(n_last, rng) @ vt[:n_last])
        return np.concatenate(blocks)

    # ------------------------------------------------------------------ thresholds
    @torch.no_grad()
    def batch_statistics(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-dimension statistics of a batch ``z``: mean, std, thresholds of every precision, range."""
        stats = {"z_mean": z.mean(0), "z_std": z.std(0).clamp_min(1e-6)}
        qs = torch.tensor(PRECISIONS[2.0][1] + PRECISIONS[1.5][1] + RANGE_QUANTILES, dtype=z.dtype)
        qz = torch.quantile(z, qs, dim=0).T  # (d, 7)
        stats["thr_2bit"], stats["thr_1_5bit"] = qz[:, :3], qz[:, 3:5]
        stats["thr_1bit"] = qz[:, 1:2]
        stats["range_lo"], stats["range_hi"] = qz[:, 5], qz[:, 6]
        m = self._merged_with(z, stats["z_mean"], stats["z_std"])
        stats["m_mean"], stats["m_std"] = m.mean(0), m.std(0).clamp_min(1e-6)
        stats["thr_0_5bit"] = m.median(dim=0).values[:, None]
        return stats

    def _merged_with(self, z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        u = (z - mean) / std
        return self.merge(u.reshape(len(z), -1, 2))

    @torch.no_grad()
    def update_statistics(self, z: torch.Tensor, momentum: float) -> None:
        """EMA update ``θ ← μ·θ + (1−μ)·θ̂_batch`` of every threshold and statistic (``μ = momentum``)."""
        for name, value in self.batch_statistics(z).items():
            getattr(self, name).mul_(momentum).add_(value, alpha=1 - momentum)

    @torch.no_grad()
    def calibrate(self, x: np.ndarray | torch.Tensor, batch_size: int = 8192) -> None:
        """Set every threshold and statistic to exact quantiles of the adapter's output on ``x``."""
        was_training = self.training
        self.eval()
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        z = torch.cat([self(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])
        stats = self.batch_statistics(z)
        # Thresholds of merged values are quantiles of values merged with the final statistics.
        for name, value in stats.items():
            getattr(self, name).copy_(value)
        self.calibrated.fill_(True)
        self.train(was_training)

    @torch.no_grad()
    def query_statistics(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Query thresholds of every precision: quantiles of adapter outputs ``z`` of query-like texts
        (0.5-bit values merged with the documents' statistics, as documents are)."""
        stats = {}
        for bits, (_, qs) in PRECISIONS.items():
            v = self._merged_with(z, self.z_mean, self.z_std) if bits == 0.5 else z
            stats[QUERY_PRECISIONS[bits]] = torch.quantile(v, torch.tensor(qs, dtype=v.dtype), dim=0).T
        return stats

    @torch.no_grad()
    def update_query_statistics(self, z: torch.Tensor, momentum: float) -> None:
        """EMA update of the query thresholds from a batch ``z`` of query outputs (see :meth:`update_statistics`)."""
        for name, value in self.query_statistics(z).items():
            getattr(self, name).mul_(momentum).add_(value, alpha=1 - momentum)

    @torch.no_grad()
    def calibrate_queries(self, x: np.ndarray, batch_size: int = 8192) -> None:
        """Set the query thresholds to quantiles of the adapter's output on ``(n, d)`` query-like
        embeddings ``x`` (queries, or pseudo-queries such as titles); at least 2 rows. The 0.5-bit
        merge standardises with the documents' statistics, as it does for documents."""
        x = self.check_input(x, "query sample")
        if len(x) < 2:
            raise ValueError(f"a query sample needs at least 2 embeddings, got {len(x)}")
        for name, value in self.query_statistics(self._z(x, batch_size)).items():
            getattr(self, name).copy_(value)
        self.query_calibrated.fill_(True)

    def thresholds(self, bits: float, queries: bool = False) -> torch.Tensor:
        """``(n, t)`` thresholds of one precision (``n = d`` or ``d/2`` for 0.5-bit); ``queries``: the
        query thresholds (the documents' while :attr:`query_calibrated` is false)."""
        if queries and bool(self.query_calibrated):
            return getattr(self, QUERY_PRECISIONS[float(bits)])
        return getattr(self, PRECISIONS[float(bits)][0])

    # ------------------------------------------------------------------ soft / hard quantisation (torch)
    def plan_levels(
        self, z: torch.Tensor, plan: Plan, temperature: float = 0.0, hard: bool = True, queries: bool = False
    ) -> list[tuple[torch.Tensor, int]]:
        """Thermometer bits of ``z`` under ``plan``, per segment: ``[(bits (B, n_values·t), n_bits)]``.

        ``temperature > 0`` gives soft bits ``σ((v − θ)/(τ·σ_v))``; with ``hard=True`` the forward pass
        uses the exact bits and the gradient that of the soft bits (straight-through estimator).
        ``temperature == 0`` gives exact bits without gradient. ``queries``: by the query thresholds
        (:meth:`thresholds`).
        """
        out, start = [], 0
        for seg in plan.segments:
            stop = start + seg.dims
            if seg.bits == 0.5:
                v = self.merged(z, start, stop)  # (B, n/2)
                thr = self.thresholds(0.5, queries)[start // 2 : stop // 2]
                scale = self.m_std[start // 2 : stop // 2]
            else:
                v = z[:, start:stop]
                thr, scale = self.thresholds(seg.bits, queries)[start:stop], self.z_std[start:stop]
            diff = v[:, :, None] - thr[None]  # (B, n, t)
            exact = (diff > 0).to(z.dtype)
            if temperature > 0:
                soft = torch.sigmoid(diff / (temperature * scale[None, :, None]))
                bits = exact + soft - soft.detach() if hard else soft
            else:
                bits = exact
            out.append((bits.reshape(len(z), -1), seg.n_bits))
            start = stop
        return out

    # ------------------------------------------------------------------ numpy API
    def check_input(self, x: np.ndarray, what: str = "embeddings") -> np.ndarray:
        """Validate ``(n, dim)`` finite float embeddings; returns them as float32."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise DimensionError(f"{what} must be a 2-D array (n, {self.dim}), got shape {x.shape}")
        if x.shape[1] != self.dim:
            raise DimensionError(
                f"{what} have dimension {x.shape[1]}, but the adapter was trained for {self.dim}-dimensional "
                f"embeddings{' of ' + self.config.model_name if self.config.model_name else ''}"
            )
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
            raise ValueError(f"{what} contain NaN or inf values (first at row {bad})")
        return x

    def check_model(self, given: str | None, where: str = "the adapter") -> None:
        """Refuse embeddings of model ``given`` (``None``: unknown) when the adapter was trained on
        embeddings of another model."""
        from qama.embeddings import same_model

        trained = self.config.model_name
        # (adapters of earlier versions recorded the embeddings' folder in place of an unknown model)
        if trained and given and not Path(trained).exists() and not same_model(trained, given):
            raise ValueError(f"{where}: the adapter was trained on embeddings of {trained}, these are of {given}")

    def _check_dim(self, dim: int | None) -> int:
        dim = self.dim if dim is None else int(dim)
        if not 0 < dim <= self.dim or dim % 2:
            raise ValueError(f"dim must be an even number in 2..{self.dim}, got {dim}")
        return dim

    @torch.no_grad()
    def _z(self, x: np.ndarray, batch_size: int = 8192) -> torch.Tensor:
        x = self.check_input(x)
        was_training = self.training
        self.eval()
        xt = torch.from_numpy(np.ascontiguousarray(x))
        z = (
            torch.cat([self(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])
            if len(xt)
            else (torch.zeros(0, self.dim))
        )
        self.train(was_training)
        return z

    def transform(self, x: np.ndarray, dim: int | None = None) -> np.ndarray:
        """``(n, d)`` frozen embeddings -> ``(n, dim)`` float32 adapter embeddings (the nested prefix)."""
        dim = self._check_dim(dim)
        return self._z(x)[:, :dim].numpy().copy()

    def plan(self, plan: str | Plan, dim: int | None = None) -> Plan:
        """The plan ``plan`` (a name, a spec or a :class:`Plan`) over the first ``dim`` dimensions.

        ``dim`` defaults to the plan's own size for a :class:`Plan`, else to the full dimension.
        """
        if isinstance(plan, Plan) and dim is None:
            dim = plan.dim
        return make_plan(plan, self._check_dim(dim))

    def values(self, x: np.ndarray, plan: str | Plan, dim: int | None = None) -> np.ndarray:
        """``(n, d)`` frozen embeddings -> ``(n, plan.n_values)`` float32 values to threshold.

        Like :func:`qama.quantize.plan_values`, but 0.5-bit segments go through the trained pair merge.
        """
        p = self.plan(plan, dim)
        z = self._z(x)
        out, start = [], 0
        with torch.no_grad():
            for seg in p.segments:
                stop = start + seg.dims
                out.append(self.merged(z, start, stop) if seg.bits == 0.5 else z[:, start:stop])
                start = stop
        return torch.cat(out, dim=1).numpy().copy()

    def quantizer(self, plan: str | Plan, dim: int | None = None, fit_values: np.ndarray | None = None) -> Quantizer:
        """A :class:`qama.quantize.Quantizer` with the adapter's thresholds for ``plan`` at ``dim``.

        Its centroids (used for asymmetric scoring) are the mean value per level of ``fit_values``
        (``(n, plan.n_values)``, from :meth:`values`) when given, else the midpoints between
        consecutive thresholds and the valid range.
        """
        p = self.plan(plan, dim)
        thr = np.full((p.n_values, MAX_THRESHOLDS), np.inf, dtype=np.float32)
        qthr = np.full((p.n_values, MAX_THRESHOLDS), np.inf, dtype=np.float32)
        cent = np.zeros((p.n_values, MAX_THRESHOLDS + 1), dtype=np.float32)
        start, row = 0, 0
        for seg in p.segments:
            stop = start + seg.dims
            rows = slice(start // 2, stop // 2) if seg.bits == 0.5 else slice(start, stop)
            t = self.thresholds(seg.bits)[rows].numpy()
            if seg.bits == 0.5:
                lo = (self.m_mean - 2 * self.m_std)[rows].numpy()[:, None]
                hi = (self.m_mean + 2 * self.m_std)[rows].numpy()[:, None]
            else:
                lo, hi = self.range_lo[rows].numpy()[:, None], self.range_hi[rows].numpy()[:, None]
            n, nt = t.shape
            thr[row : row + n, :nt] = t
            qthr[row : row + n, :nt] = self.thresholds(seg.bits, queries=True)[rows].numpy()
            edges = np.concatenate([lo, t, hi], axis=1)
            cent[row : row + n, : nt + 1] = (edges[:, 1:] + edges[:, :-1]) / 2
            start, row = stop, row + n
        q = Quantizer(p, thr, cent, qthr if bool(self.query_calibrated) else None)
        if fit_values is not None:
            q.centroids = q.fit_centroids(np.asarray(fit_values, dtype=np.float32))
        return q

    def encode(self, x: np.ndarray, plan: str | Plan, dim: int | None = None, queries: bool = False) -> np.ndarray:
        """``(n, d)`` frozen embeddings -> ``(n, code_size)`` packed uint8 codes (see :mod:`qama.codes`);
        ``queries``: coded with the query thresholds (see :meth:`calibrate_queries`)."""
        p = self.plan(plan, dim)
        return self.quantizer(p).encode(self.values(x, p), queries)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``.

        ``config.json`` records the SHA-256 of the weights and is renamed into place last, so it is
        the commit: a save interrupted at any point leaves the previous adapter loadable (its weights
        are kept as ``model.safetensors.prev`` until the new config is in place) or the new one.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        blob = st_save(tensors)
        config = {
            "format_version": FORMAT_VERSION,
            "adapter": self.config.to_dict(),
            **self.metadata,
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
        }
        weights, prev = path / WEIGHTS_NAME, path / (WEIGHTS_NAME + ".prev")
        if weights.is_file() and (path / CONFIG_NAME).is_file() and not _is_recorded(prev, path / CONFIG_NAME):
            os.replace(weights, prev)  # the previous version stays complete: its config still names it
        # (else an interrupted save left ``prev`` as the weights the config names, and unrecorded weights)
        with atomic_open(weights, "wb") as f:
            f.write(blob)
        write_json(path / CONFIG_NAME, config)
        prev.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> QamaAdapter:
        """Read an adapter folder written by :meth:`save`; never unpickles anything.

        A missing or malformed file, a config without a required field, tensors of the wrong names
        or shapes, and weights that are not the ones the config records all raise ``ValueError``
        (``FileNotFoundError`` for a missing file) naming the file.
        """
        path = Path(path)
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_path.exists():
            raise FileNotFoundError(f"{cfg_path} not found: an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        data = read_json_file(cfg_path, "adapter config")  # a regular file of bounded size
        if (
            not isinstance(data, dict)
            or type(data.get("format_version")) is not int
            or data["format_version"] != FORMAT_VERSION
        ):
            version = data.get("format_version") if isinstance(data, dict) else None
            raise ValueError(f"{cfg_path}: unsupported adapter format {version!r}")
        if not isinstance(data.get("adapter"), dict):
            raise ValueError(f"{cfg_path}: missing field 'adapter'")
        _check_sha_field(data, cfg_path)
        missing = [k for k in REQUIRED_FIELDS if k not in data["adapter"]]
        if missing:
            raise ValueError(f"{cfg_path}: missing field 'adapter.{missing[0]}'")
        try:
            config = AdapterConfig.from_dict(data["adapter"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cfg_path}: bad 'adapter' fields ({e})") from None
        blob = _read_weights(path, data.get("weights_sha256"))
        try:
            tensors = st_load(blob)
        except Exception as e:  # safetensors raises its own error type for a malformed header
            raise ValueError(f"{w_path}: not a safetensors file ({e})") from None
        _check_weight_size(len(blob), config, cfg_path)  # before allocating the adapter the config describes
        metadata = {k: v for k, v in data.items() if k not in ("format_version", "adapter", "weights_sha256")}
        adapter = cls(config, metadata)
        if "query_calibrated" not in tensors:  # written before query thresholds existed: none calibrated
            tensors["query_calibrated"] = torch.zeros((), dtype=torch.bool)
            for bits, (name, _) in PRECISIONS.items():
                if name in tensors:
                    tensors.setdefault(QUERY_PRECISIONS[bits], tensors[name].clone())
        expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != expected:
            wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
            raise ValueError(
                f"{w_path}: tensors do not fit the adapter of {cfg_path.name}: "
                + ", ".join(f"{k} {got.get(k, 'missing')} (expected {expected.get(k, 'none')})" for k in wrong[:5])
            )
        adapter.load_state_dict(tensors)
        adapter.eval()
        return adapter


def mean_direction(x: np.ndarray) -> np.ndarray | None:
    """Unit vector along the mean of ``(n, d)`` embeddings ``x``, or ``None`` for a corpus already centred
    (a mean under 1e-3 of the vectors' typical norm has no direction worth dropping)."""
    mean = np.asarray(x, dtype=np.float64).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm <= 1e-3 * np.linalg.norm(x, axis=1).mean():
        return None
    return mean / norm


def _rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``(n, n)`` orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _check_sha_field(data: dict[str, Any], cfg_path: Path) -> None:
    """``weights_sha256`` is required: without it any weights would be accepted."""
    sha = data.get("weights_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        got = f"got {sha!r:.70}" if "weights_sha256" in data else "missing"
        raise ValueError(f"{cfg_path}: field 'weights_sha256' must be the SHA-256 of {WEIGHTS_NAME} ({got})")


def _check_weight_size(size: int, config: AdapterConfig, cfg_path: Path) -> None:
    """Refuse a config whose sizes need more weight bytes than the weights file holds."""
    need = weight_bytes(config)
    if size < need:
        raise ValueError(
            f"{cfg_path}: dim {config.dim} and expansion {config.expansion} need at least {need} bytes of "
            f"weights, {WEIGHTS_NAME} has {size}"
        )


def _is_recorded(weights: Path, config: Path) -> bool:
    """Whether ``weights`` is a file holding the weights whose SHA-256 ``config`` records."""
    if not weights.is_file() or weights.is_symlink():
        return False
    try:
        data = read_json_file(config, "adapter config")
        sha256 = data.get("weights_sha256") if isinstance(data, dict) else None
        return isinstance(sha256, str) and hashlib.sha256(weights.read_bytes()).hexdigest() == sha256
    except (OSError, ValueError):
        return False


def _read_weights(path: Path, sha256: str | None) -> bytes:
    """The weights the config names: ``model.safetensors``, or the previous version's weights when a
    save was interrupted before its config was in place."""
    w_path = path / WEIGHTS_NAME
    candidates = [p for p in (w_path, path / (WEIGHTS_NAME + ".prev")) if p.exists()]
    for p in candidates:
        check_regular_file(p, "weights file")  # never a device or pipe: read_bytes would not end
    if not candidates:
        raise FileNotFoundError(f"{w_path} not found: an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    for p in candidates:
        blob = p.read_bytes()
        if sha256 is None or hashlib.sha256(blob).hexdigest() == sha256:
            if p != w_path:
                logger.warning("%s: an interrupted save left new weights; using the previous version", path)
            return blob
    raise ValueError(f"{w_path}: the weights are not the ones {CONFIG_NAME} records (modified or corrupted)")
