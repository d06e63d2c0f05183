"""Fitting a QAMA adapter on a corpus's embeddings (no labels needed; query-document pairs optional).

Public API::

    from qama.train import TrainConfig, fit, ablate, ABLATIONS
    adapter = fit(corpus_emb, TrainConfig(), pairs=None, out_dir="my_adapter")   # -> QamaAdapter
    results = ablate(corpus_emb, evaluate, TrainConfig())  # {ablation: evaluate(adapter)}

``corpus_emb`` is ``(n, d)`` float L2-normalised; ``pairs`` an optional ``(queries, positives)`` tuple of
``(P, d)`` embeddings for the InfoNCE term; ``out_dir`` receives the adapter (``config.json`` +
``model.safetensors``) and, during training, ``out_dir/checkpoint``. See :mod:`qama.adapter` for
``transform`` / ``values`` / ``quantizer`` / ``encode`` / ``save`` / ``load``.

The loop (one function, :func:`fit`, top to bottom): validate the input; seed; build the adapter
(``pca_blocks`` start) and start its thresholds at quantiles of the corpus; find each vector's
nearest neighbours under the frozen model; then for each step draw a batch of random seeds and
their neighbours, compute every enabled loss term at every nested size on the continuous prefix
and on the straight-through quantised codes of every training plan, step AdamW with warm-up then
cosine decay and gradient clipping, move the thresholds by EMA, and every ``checkpoint_every``
steps write a checkpoint atomically into ``out_dir/checkpoint`` so an interrupted run resumes
where it stopped. Finally the thresholds are set to exact quantiles of the whole corpus.

Batches, noise and triplets of step ``t`` are drawn from a generator seeded with ``(seed, t)``, so a
run gives the same adapter twice and a resumed run the same adapter as an uninterrupted one.

Defaults (:class:`TrainConfig`; the measurements that chose them: ``benchmarks/RESULTS_training.md``):
the ``pca_blocks`` start without the corpus mean direction, and a teacher without it too; 300 steps
at lr 3e-4 with the top-neighbour KL (τ 0.2 on row-standardised similarities) on the continuous
prefixes and, at half weight, on straight-through 2-bit/1-bit/hybrid codes; batches of random seeds
plus their nearest neighbours; the regularisers (orthogonality, bottleneck, quantisation) off, kept
for the ablations (:data:`ALL_TERMS`).

``pairs`` turn InfoNCE on where it counts most: each query (or pseudo-query) against its document,
on the continuous prefixes and on every training plan's codes, the other documents of the pair
batch as negatives. Titles as pseudo-queries of their documents (no labels;
:func:`qama.embeddings.title_pairs`, the default of ``qama train`` where the corpus has titles) at
weight :data:`NCE_WEIGHT_TITLES`; labelled pairs (e.g. SciFact's train qrels) at
:data:`NCE_WEIGHT_LABELLED` (:func:`info_nce_setup` picks the weight).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from qama import losses as L
from qama._io import JsonFields, check_creatable, fingerprint, folder_lock, fsync_dir, fsync_file
from qama._validate import misfit
from qama.adapter import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    DimensionError,
    QamaAdapter,
    default_nested_dims,
    mean_direction,
)
from qama.check import HOLDOUT_FRACTION, HOLDOUT_MIN, holdout_split, never_worse_check
from qama.codes import DEFAULT_PLANS, Plan, plans_fitting

__all__ = [
    "info_nce_setup",
    "training_setup",
    "TrainConfig",
    "fit",
    "ablate",
    "ABLATIONS",
    "ALL_TERMS",
    "NCE_WEIGHT_TITLES",
    "NCE_WEIGHT_LABELLED",
    "check_training_input",
    "TrainingError",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
#: The files of a checkpoint folder (and of its scratch copies ``checkpoint.tmp``, ``checkpoint.old``).
CHECKPOINT_FILES = ("state.safetensors", "meta.json")

#: InfoNCE weight with title pseudo-queries as ``pairs`` (benchmarks/RESULTS_training.md)
NCE_WEIGHT_TITLES = 1.0
#: InfoNCE weight with labelled query-document pairs, e.g. SciFact's train qrels (same file)
NCE_WEIGHT_LABELLED = 4.0


class TrainingError(RuntimeError):
    """Training diverged (a loss became NaN or inf)."""


@dataclass
class TrainConfig(JsonFields):
    """Training settings; the defaults are the settings measured in benchmarks/RESULTS_training.md."""

    # adapter shape
    expansion: int = 2  # FFN hidden width = expansion·d (paper: 32; 2 trains fast on 2 CPU cores)
    nested_dims: tuple[int, ...] = ()  # Matryoshka sizes; () = (d/4, d/2, d)
    init: str = "pca_blocks"  # linear start: "identity", "pca" or "pca_blocks" (QamaAdapter.init_linear)
    merge_hidden: int = 16  # hidden width of the 0.5-bit pair-merge FFN
    drop_mean_direction: bool = True  # start without the corpus mean direction (QamaAdapter.init_linear)
    # optimisation
    steps: int = 300  # optimiser steps (about 1-2 min for 5k vectors on 2 idle cores)
    batch_size: int = 512  # corpus vectors per step
    lr: float = 3e-4  # peak AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay (the start is identity: decay would pull it to 0)
    warmup_steps: int = 50  # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.05  # final learning rate / peak
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0  # fixed seed: same data + config -> same adapter
    threads: int = 2  # torch CPU threads
    # quantisation during training
    train_plans: tuple[str, ...] = ("2bit", "1bit", "hybrid")  # plans whose codes enter the losses
    relax: str = "ste"  # "ste" (exact bits forward, sigmoid gradient) or "soft" (sigmoid bits)
    temperature: float = 0.5  # sigmoid temperature at the start, in units of each value's std
    temperature_end: float = 0.1  # ... annealed geometrically to this at the end
    ema_momentum: float = 0.99  # threshold EMA: θ ← μ·θ + (1−μ)·θ_batch
    query_thresholds: bool = True  # with pairs: their queries are coded by their own quantiles (query thresholds)
    check: bool = True  # with pairs: hold some out and check the codes against untrained codes (qama.check)
    # similarity losses (applied to the continuous prefix and to the quantised codes)
    w_mse: float = 0.0  # similarity-matrix MSE (row-standardised; weighs all pairs alike, off by default)
    w_kl: float = 1.0  # symmetric KL of softmax(S/τ)
    w_rank: float = 0.0  # triplet rank preservation
    w_nce: float = 0.0  # InfoNCE: pairs when given (see NCE_WEIGHT_*), else the teacher's in-batch nearest neighbour
    quantized_weight: float = 0.5  # weight of the quantised-code terms next to the continuous ones
    matryoshka: bool = True  # apply the similarity losses at every nested size (False: full size only)
    kl_temperature: float = 0.2  # τ of the KL term (on row-standardised similarities: focuses on top neighbours)
    nce_temperature: float = 0.05  # τ of InfoNCE (on cosine / Hamming similarity)
    rank_triplets: int = 32  # sampled (j, k) pairs per anchor for the rank term
    rank_sharpness: float = 5.0  # t in σ((y_ij − y_ik)·t)
    # regularisers
    w_ortho: float = 0.0  # inter-level orthogonality (ALL_TERMS: its weight in the ablations)
    w_bottleneck: float = 0.0  # progressive information bottleneck (ALL_TERMS: its weight in the ablations)
    w_variance: float = 0.1  # adaptive variance control (× max(0.2, (e^{t/T}−1)/(e−1)))
    variance_floor: float = 0.5  # floor on each dimension's std, relative to the starting typical std
    w_quant: float = 0.0  # quantisation regulariser (× ramp 0.2 -> 1.0; ALL_TERMS: its weight in the ablations)
    quant_margin: float = 0.1  # boundary width of the regulariser, in units of each value's std
    # batches and data augmentation
    neighbour_group: int = 8  # batch = B/g random seeds + each seed's g−1 nearest teacher neighbours (1: random)
    noise: float = 0.0  # std of Gaussian noise added to inputs (relative to a coordinate's typical size)
    # housekeeping
    checkpoint_every: int = 200  # steps between checkpoints (0: none); needs out_dir
    progress: bool = True  # tqdm progress bar with the loss parts
    model_name: str = ""  # frozen model (stored in config.json)
    data_description: str = ""  # what the adapter was fitted on (stored in config.json)

    def __post_init__(self) -> None:
        check_train_types(self)
        if self.relax not in ("ste", "soft"):
            raise ValueError(f"relax must be 'ste' or 'soft', got {self.relax!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 4:
            raise ValueError(f"batch_size must be at least 4, got {self.batch_size}")
        for name in ("temperature", "temperature_end", "kl_temperature", "nce_temperature"):
            if getattr(self, name) <= 0:  # each divides similarities or values
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.ema_momentum > 1:
            raise ValueError(f"ema_momentum must be in 0..1, got {self.ema_momentum}")
        if not 1 <= self.neighbour_group <= self.batch_size:
            raise ValueError(f"neighbour_group must be in 1..batch_size, got {self.neighbour_group}")
        self.nested_dims = tuple(self.nested_dims)
        self.train_plans = tuple(self.train_plans)


#: Upper bounds of the integer settings whose size is memory or threads (a bad value must not take the machine),
#: and of the seed: each step's generator is seeded with ``seed * 1_000_003 + step``, which torch takes below 2**64.
TRAIN_INT_BOUNDS = {
    "threads": 256,
    "batch_size": 1 << 20,
    "rank_triplets": 4096,
    "merge_hidden": 4096,
    "seed": 2**32 - 1,
}


def check_train_types(cfg: TrainConfig) -> None:
    """Every setting of its declared type: integers are integers (not ``2.5`` or ``true``), numbers are
    finite, flags are booleans, texts are strings; sizes that cost memory or threads, and the seed, are bounded;
    weights, rates and temperatures are not negative. Raises a one-line ``ValueError``."""
    for f in dataclasses.fields(cfg):
        v, kind = getattr(cfg, f.name), str(f.type)
        if kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
            want = "an integer"
        elif kind == "float":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            want = "a finite number"
        elif kind == "bool":
            ok, want = isinstance(v, bool), "true or false"
        elif kind == "str":
            ok, want = isinstance(v, str), "a string"
        elif kind.startswith("tuple[int"):
            ok = isinstance(v, (tuple, list)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            want = "a list of integers"
        elif kind.startswith("tuple[str"):
            ok, want = isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v), "a list of strings"
        else:
            continue
        if not ok:
            raise ValueError(f"{f.name} must be {want}, got {v!r:.60}")
        if kind in ("int", "float") and v < 0:
            raise ValueError(f"{f.name} must not be negative, got {v}")
        if f.name in TRAIN_INT_BOUNDS and v > TRAIN_INT_BOUNDS[f.name]:
            raise ValueError(f"{f.name} must be at most {TRAIN_INT_BOUNDS[f.name]}, got {v}")


# ---------------------------------------------------------------------------- schedules
def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_schedules(step: int, total: int) -> dict[str, float]:
    """Progressive weight multipliers at ``step`` of ``total``: the quantisation regulariser ramps
    from 0.2 to 1.0; variance control grows as ``max(0.2, (e^{t/T} − 1)/(e − 1))``."""
    frac = step / max(1, total)
    return {"quant": 0.2 + 0.8 * frac, "variance": max(0.2, (math.exp(frac) - 1) / (math.e - 1))}


def temperature_at(step: int, cfg: TrainConfig) -> float:
    """Sigmoid temperature, annealed geometrically from ``temperature`` to ``temperature_end``."""
    frac = step / max(1, cfg.steps - 1)
    return cfg.temperature * (cfg.temperature_end / cfg.temperature) ** frac


# ---------------------------------------------------------------------------- input checks
def check_training_input(
    x: np.ndarray, batch_size: int, dim: int | None = None, what: str = "embeddings"
) -> np.ndarray:
    """Validate training embeddings; returns float32. Raises ``ValueError`` / :class:`DimensionError`."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise DimensionError(f"{what} must be a 2-D array (n, d), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DimensionError(f"{what} have dimension {x.shape[1]}, but the adapter expects {dim}")
    if x.shape[0] < batch_size:
        raise ValueError(
            f"{what}: {x.shape[0]} vectors are fewer than one batch ({batch_size}); "
            "lower batch_size (qama train --train-batch-size) or give more vectors"
        )
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what} contain NaN or inf values (first at row {int(np.flatnonzero(~finite)[0])})")
    return x


def teacher_neighbours(x: torch.Tensor, k: int, max_candidates: int = 50_000, chunk: int = 2048) -> torch.Tensor:
    """``(n, k)`` rows of each vector's ``k`` nearest neighbours by cosine (itself left out).

    Beyond ``max_candidates`` vectors, neighbours are searched among the first ``max_candidates``
    rows of a fixed permutation only (enough to put near neighbours into the same batch).
    """
    n = len(x)
    cand = (
        torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_candidates] if n > max_candidates else None
    )
    pool = x if cand is None else x[cand]
    out = torch.empty(n, k, dtype=torch.long)
    for i in range(0, n, chunk):
        s = x[i : i + chunk] @ pool.T  # (c, n_pool)
        if cand is None:
            s[torch.arange(len(s)), torch.arange(i, i + len(s))] = float("-inf")
        top = s.topk(k + (0 if cand is None else 1), dim=1).indices
        top = top if cand is None else cand[top]
        out[i : i + chunk] = top[:, :k] if cand is None else _drop_self(top, torch.arange(i, i + len(s)), k)
    return out


def _drop_self(top: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """First ``k`` entries of each row of ``top`` that are not the row's own index."""
    keep = top != rows[:, None]
    return torch.stack([t[m][:k] for t, m in zip(top, keep, strict=True)])


def sample_batch(n: int, cfg: TrainConfig, gen: torch.Generator, neighbours: torch.Tensor | None) -> torch.Tensor:
    """Row indices of one batch: random seeds, each with its ``neighbour_group − 1`` nearest neighbours."""
    if neighbours is None:
        return torch.randperm(n, generator=gen)[: cfg.batch_size]
    g = neighbours.shape[1] + 1
    seeds = torch.randperm(n, generator=gen)[: cfg.batch_size // g]
    idx = torch.cat([seeds[:, None], neighbours[seeds]], dim=1).reshape(-1)  # (B,)
    fill = cfg.batch_size - len(idx)
    if fill > 0:
        idx = torch.cat([idx, torch.randint(0, n, (fill,), generator=gen)])
    return idx


# ---------------------------------------------------------------------------- one step's losses
def compute_losses(
    adapter: QamaAdapter,
    x: torch.Tensor,
    cfg: TrainConfig,
    step: int,
    gen: torch.Generator,
    unit: float,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    teacher: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted loss parts of one batch, by name (e.g. ``kl@192/2bit``, ``ortho``).

    ``unit`` is the typical standard deviation of the starting adapter's output, the scale of the
    regularisers. ``teacher`` ``(B, d)``: the embeddings whose cosines the student should keep
    (default ``x``; :func:`fit` passes ``x`` without the corpus mean direction when the start drops it).
    Terms whose weight is 0 are not computed.
    """
    parts: dict[str, torch.Tensor] = {}
    nested = adapter.config.nested_dims if cfg.matryoshka else (adapter.dim,)
    z = adapter(x)  # (B, d)
    s_x = L.cosine_matrix(x if teacher is None else teacher)  # (B, B) teacher
    temp = temperature_at(step, cfg)
    need_rank = cfg.w_rank > 0
    if need_rank:
        b = len(x)
        j = torch.randint(0, b, (b, cfg.rank_triplets), generator=gen)
        k = torch.randint(0, b, (b, cfg.rank_triplets), generator=gen)
    nn_idx = L.nearest_neighbours(s_x) if cfg.w_nce > 0 and pairs is None else None
    if pairs is not None and cfg.w_nce > 0:
        zq, zd = adapter(pairs[0]), adapter(pairs[1])
        targets = torch.arange(len(zq))

    def similarity_terms(s_y: torch.Tensor, tag: str) -> None:
        if cfg.w_mse > 0:
            parts[f"mse@{tag}"] = L.similarity_mse(s_x, s_y)
        if cfg.w_kl > 0:
            parts[f"kl@{tag}"] = L.symmetric_kl(s_x, s_y, cfg.kl_temperature)
        if need_rank:
            parts[f"rank@{tag}"] = L.rank_loss(s_x, s_y, j, k, cfg.rank_sharpness)
        if nn_idx is not None:
            scale = 1.0 if tag.endswith("fp") else 0.5  # Hamming similarities are compressed: sharper τ
            parts[f"nce@{tag}"] = L.info_nce(s_y, nn_idx, cfg.nce_temperature * scale)

    def code_bits(v: torch.Tensor, plan, queries: bool = False) -> torch.Tensor:
        """``(B, n_bits)`` straight-through (or soft) bits of ``v`` under ``plan`` (``queries``: query thresholds)."""
        levels = adapter.plan_levels(v, plan, temp, hard=cfg.relax == "ste", queries=queries)
        return torch.cat([b for b, _ in levels], 1)

    for m in nested:
        similarity_terms(L.cosine_matrix(z[:, :m]), f"{m}/fp")
        if pairs is not None and cfg.w_nce > 0:
            parts[f"nce@{m}/fp"] = L.info_nce(
                L.cosine_matrix(zq[:, :m], zd[:, :m]), targets, cfg.nce_temperature, False
            )
        if cfg.quantized_weight > 0:
            for plan in _train_plans(tuple(cfg.train_plans), m):  # hybrid has no plan at 78 dimensions
                similarity_terms(L.hamming_similarity(code_bits(z, plan)), f"{m}/{plan.name}")
                if pairs is not None and cfg.w_nce > 0:  # queries' codes against their documents' codes
                    s_qd = L.hamming_similarity(code_bits(zq, plan, cfg.query_thresholds), code_bits(zd, plan))
                    parts[f"nce@{m}/{plan.name}"] = L.info_nce(s_qd, targets, cfg.nce_temperature * 0.5, False)
    zu = (z - adapter.z_mean) / unit  # (B, d) on a unit scale
    if cfg.w_ortho > 0 and len(adapter.config.nested_dims) > 1:
        parts["ortho"] = L.orthogonality(z, adapter.config.nested_dims)
    if cfg.w_bottleneck > 0:
        parts["bottleneck"] = L.information_bottleneck(zu)
    if cfg.w_variance > 0:
        parts["variance"] = L.variance_control(zu, cfg.variance_floor)
    if cfg.w_quant > 0:
        q = [
            L.quantization_regularizer(
                z, adapter.thresholds(bits), adapter.range_lo, adapter.range_hi, adapter.z_std, cfg.quant_margin
            )
            for bits in (2.0, 1.5, 1.0)
        ]
        merged = adapter.merged(z)
        q.append(
            L.quantization_regularizer(
                merged,
                adapter.thr_0_5bit,
                adapter.m_mean - 3 * adapter.m_std,
                adapter.m_mean + 3 * adapter.m_std,
                adapter.m_std,
                cfg.quant_margin,
            )
        )
        parts["quant"] = torch.stack(q).mean()
    return parts


def weight_of(name: str, cfg: TrainConfig, sched: dict[str, float]) -> float:
    """Weight of the loss part ``name`` (e.g. ``kl@96/2bit``) at the current schedule."""
    term, _, tag = name.partition("@")
    w = {
        "mse": cfg.w_mse,
        "kl": cfg.w_kl,
        "rank": cfg.w_rank,
        "nce": cfg.w_nce,
        "ortho": cfg.w_ortho,
        "bottleneck": cfg.w_bottleneck,
        "variance": cfg.w_variance * sched["variance"],
        "quant": cfg.w_quant * sched["quant"],
    }[term]
    if tag and not tag.endswith("/fp"):
        w *= cfg.quantized_weight
    return w


@functools.lru_cache(maxsize=64)
def _train_plans(specs: tuple[str, ...], dim: int) -> tuple[Plan, ...]:
    """The plans of ``specs`` that fit ``dim`` (:func:`~qama.codes.plans_fitting`), built once: the losses
    of every step ask for them, and a plan left out is logged once, not at every step."""
    return tuple(plans_fitting(specs, dim))


# ---------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    path: Path, adapter: QamaAdapter, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig, data: str = ""
) -> None:
    """Write ``path`` (a folder) atomically: a temporary folder renamed over the old one. ``data``: the
    fingerprint of the training data (:func:`qama._io.fingerprint`), checked when it is resumed."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in adapter.state_dict().items()}
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):  # by parameter position, the order _load_checkpoint reads back
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({"step": step, "config": cfg.to_dict(), "data": data}, indent=2))
    for name in CHECKPOINT_FILES:  # the files' contents on disk before the renames make them the checkpoint
        fsync_file(tmp / name)
    fsync_dir(tmp)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)  # the renames on disk before the previous checkpoint is removed
    shutil.rmtree(old, ignore_errors=True)


def _recover_checkpoint(path: Path) -> None:
    """Put back the previous checkpoint when a write was killed between its two renames (``path`` moved
    to ``path.old``, ``path.tmp`` not yet renamed to ``path``): ``path.old`` is a whole checkpoint that was
    in place, resumed as any other (else the run would start again at step 0 and the next checkpoint
    would remove it)."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and not path.is_symlink() and _is_checkpoint(old):
        logger.warning("%s: a checkpoint write was interrupted; resuming the previous checkpoint", path)
        os.replace(old, path)


def _is_checkpoint(p: Path) -> bool:
    """Whether ``p`` is a folder holding every file of a checkpoint (and nothing else)."""
    if not p.is_dir() or p.is_symlink():
        return False
    names = {c.name for c in p.iterdir() if c.is_file() and not c.is_symlink()}
    return names == set(CHECKPOINT_FILES) and len(list(p.iterdir())) == len(CHECKPOINT_FILES)


def _read_checkpoint_meta(p: Path) -> dict:
    """A checkpoint's ``meta.json``: ``{"step": int >= 0, "config": {...}}``, or a one-line ValueError."""
    from qama._validate import Field, check_fields, read_json_file

    meta = read_json_file(p, "checkpoint meta.json")
    return check_fields(meta, {"step": Field("int", lo=0), "config": Field("dict")}, str(p))


def _load_checkpoint(
    path: Path, adapter: QamaAdapter, opt: torch.optim.Optimizer, cfg: TrainConfig, data: str = ""
) -> int:
    """Restore a checkpoint written by the same config for the same training data (``data``, the
    fingerprint :func:`_save_checkpoint` recorded); returns the step to continue from."""
    meta = _read_checkpoint_meta(path / "meta.json")
    if meta["config"] != cfg.to_dict():
        raise ValueError(f"checkpoint {path} was written with a different configuration; remove it to start anew")
    if "data" not in meta:  # written by a qama that did not record it
        logger.warning("checkpoint %s does not record its training data: resuming it as this run's", path)
    elif meta["data"] != data:
        raise ValueError(
            f"checkpoint {path} was written for other training data (the corpus or the pairs differ); "
            "remove it to start anew"
        )
    state_file = path / "state.safetensors"
    if not state_file.is_file():
        raise ValueError(f"{state_file}: file not found; remove {path} to start anew")
    try:
        tensors = load_file(str(state_file))
    except Exception as e:  # safetensors raises its own error type for a truncated or malformed file
        raise ValueError(
            f"{state_file}: unreadable or truncated checkpoint ({e}); remove {path} to start anew"
        ) from None
    adapter.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if state:
            opt.state[p] = state
    return int(meta["step"])


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an adapter folder that would replace something: a file, or an adapter (``config.json``
    or ``model.safetensors``) without ``overwrite`` unless a checkpoint there will be resumed, or a
    ``checkpoint`` entry that qama did not write. Other files in the folder are never touched."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder (an adapter is a folder)")
    check_creatable(out)
    ckpt = out / CHECKPOINT_DIR
    if ckpt.exists() and not (ckpt / "meta.json").is_file():
        raise FileExistsError(f"{ckpt}: exists but is not a qama checkpoint; move it or choose another --out")
    for scratch in (ckpt.with_name(ckpt.name + ".tmp"), ckpt.with_name(ckpt.name + ".old")):
        # removed whole by every checkpoint: only what a checkpoint write killed midway leaves there
        ours = scratch.is_dir() and not scratch.is_symlink()
        ours = ours and all(p.name in CHECKPOINT_FILES and p.is_file() for p in scratch.iterdir())
        if (scratch.exists() or scratch.is_symlink()) and not ours:
            raise FileExistsError(
                f"{scratch}: exists but is not a qama checkpoint (qama removes it while checkpointing); "
                "move it or choose another --out"
            )
    existing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if (out / name).exists()]
    resumable = ckpt.exists() or _is_checkpoint(ckpt.with_name(ckpt.name + ".old"))  # (see _recover_checkpoint)
    if existing and not overwrite and not resumable:
        raise FileExistsError(
            f"{out}: already holds {' and '.join(existing)} (--overwrite, or overwrite=True in Python, replaces them)"
        )


def adapter_plans(sizes: tuple[int, ...]) -> tuple[str, ...]:
    """The plans of :data:`~qama.codes.DEFAULT_PLANS` that fit one of the nested ``sizes`` (the plans a
    fitted adapter is for): hybrid fits none of a 300-dimensional model's 150/300, and is left out."""
    plans = tuple(p for p in DEFAULT_PLANS if misfit(p, sizes) is None)
    for p in sorted(set(DEFAULT_PLANS) - set(plans)):
        logger.warning("plan %s fits none of the nested sizes %s: the adapter is fitted without it", p, sizes)
    return plans


def _corpus_rows(corpus: np.ndarray, docs: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The row of ``corpus`` each of ``docs`` is (the largest inner product: the document itself)."""
    return np.concatenate(
        [np.argmax(docs[i : i + chunk] @ corpus.T, axis=1) for i in range(0, len(docs), chunk)]
    ).astype(np.int64)


# ---------------------------------------------------------------------------- the loop
def fit(
    corpus_emb: np.ndarray,
    config: TrainConfig | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    query_sample: np.ndarray | None = None,
) -> QamaAdapter:
    """Fit an adapter on ``(n, d)`` L2-normalised corpus embeddings; returns it (saved to ``out_dir``).

    ``pairs``: optional ``(queries, positives)`` embeddings ``(P, d)`` each (e.g. training qrels),
    used by the InfoNCE term. With ``out_dir``, checkpoints go to ``out_dir/checkpoint`` every
    ``checkpoint_every`` steps and a run that finds one resumes from it; the finished adapter is saved
    to ``out_dir`` and the checkpoint removed. An adapter already in ``out_dir`` is replaced only with
    ``overwrite`` (checked before any work, see :func:`check_out_dir`). ``query_sample``: ``(m, d)``
    query-like embeddings (queries, or pseudo-queries such as titles) whose quantiles become the
    adapter's query thresholds (:meth:`~qama.adapter.QamaAdapter.calibrate_queries`).

    One training at a time writes ``out_dir``: a second is refused at once with
    :class:`~qama.errors.FolderLockedError` (two would swap each other's checkpoints).
    """
    if out_dir is None:
        return _fit(corpus_emb, config, pairs, None, query_sample)
    check_out_dir(out_dir, overwrite)
    out = Path(out_dir)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out, "another process is training into this folder; wait for it or choose another --out"):
            check_out_dir(out, overwrite)  # again, under the lock: a training that just finished saved its adapter
            return _fit(corpus_emb, config, pairs, out, query_sample)
    except BaseException:
        if made and not any(out.iterdir()):  # refused or failed before it wrote anything: leave no empty folder
            out.rmdir()
        raise


def _fit(
    corpus_emb: np.ndarray,
    config: TrainConfig | None,
    pairs: tuple[np.ndarray, np.ndarray] | None,
    out: Path | None,
    query_sample: np.ndarray | None,
) -> QamaAdapter:
    """:func:`fit`, with ``out`` (if any) checked and locked."""
    cfg = config or TrainConfig()
    x_np = check_training_input(corpus_emb, cfg.batch_size)
    d = x_np.shape[1]
    if query_sample is not None:
        query_sample = check_training_input(query_sample, 2, d, "query sample")
    pair_t: tuple[torch.Tensor, torch.Tensor] | None = None
    if pairs is not None and cfg.w_nce <= 0:
        raise ValueError("pairs are used only by the InfoNCE term, which is off: set w_nce > 0")
    held: tuple[np.ndarray, np.ndarray] | None = None  # pairs held out of the fit for the check
    if pairs is not None:
        if len(pairs) != 2:  # a third array would be ignored, silently
            raise ValueError(f"pairs must be (queries, documents), two arrays; got {len(pairs)}")
        q_np = check_training_input(pairs[0], 2, d, "pair queries")
        p_np = check_training_input(pairs[1], 2, d, "pair documents")
        if len(q_np) != len(p_np):
            raise ValueError(f"pairs need as many queries as documents, got {len(q_np)} and {len(p_np)}")
        if cfg.check:
            fit_rows, held_rows = holdout_split(len(q_np), cfg.seed)
            if len(held_rows):
                held = (q_np[held_rows], p_np[held_rows])
                q_np, p_np = q_np[fit_rows], p_np[fit_rows]
        pair_t = (torch.from_numpy(q_np), torch.from_numpy(p_np))
    if cfg.check and held is None:  # said, so that no one reads the silence as a check passed
        least = math.ceil(HOLDOUT_MIN / HOLDOUT_FRACTION)
        why = "no pseudo-query pairs" if pairs is None else f"{len(pairs[0])} pairs, fewer than {least}"
        logger.warning(
            "never-worse check: not run (%s): every plan and size will be served by the adapter's codes, "
            "unchecked against untrained codes; `qama eval --adapter` on judged queries measures them",
            why,
        )
    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    acfg = AdapterConfig(
        dim=d,
        expansion=cfg.expansion,
        nested_dims=cfg.nested_dims,
        init=cfg.init,
        merge_hidden=cfg.merge_hidden,
        drop_mean_direction=cfg.drop_mean_direction,
        model_name=cfg.model_name,
        plans=adapter_plans(cfg.nested_dims or default_nested_dims(d)),
    )
    metadata = {
        "training": cfg.to_dict(),
        "data": {
            "description": cfg.data_description,
            "n_vectors": len(x_np),
            "n_pairs": 0 if pairs is None else len(pairs[0]),
        },
    }
    adapter = QamaAdapter(acfg, metadata)
    adapter.init_linear(x_np, cfg.seed)
    adapter.calibrate(x_np)  # thresholds start at quantiles of the corpus
    if pair_t is not None and cfg.query_thresholds:  # the pairs' queries are coded by their own quantiles
        adapter.calibrate_queries(pair_t[0].numpy())
    unit = float(adapter.z_std.mean())
    x = torch.from_numpy(x_np)
    # The teacher's similarities are taken without the corpus mean direction when the start drops it:
    # a teacher that kept it would pull the adapter into putting it back (measured: worse codes).
    u = mean_direction(x_np) if cfg.drop_mean_direction else None
    u_t = None if u is None else torch.from_numpy(u.astype(np.float32))

    def teacher_of(v: torch.Tensor) -> torch.Tensor:
        return v if u_t is None else v - (v @ u_t)[:, None] * u_t[None]

    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out / CHECKPOINT_DIR if out is not None else None
    start = 0
    data_key = ""  # fingerprint of the training data, recorded in checkpoints
    if ckpt is not None:
        _recover_checkpoint(ckpt)
    if ckpt is not None and (cfg.checkpoint_every > 0 or (ckpt / "meta.json").is_file()):
        data_key = fingerprint(x_np, *(() if pair_t is None else (pair_t[0].numpy(), pair_t[1].numpy())))
    if ckpt is not None and (ckpt / "meta.json").is_file():
        start = _load_checkpoint(ckpt, adapter, opt, cfg, data_key)
        logger.info("resuming from %s at step %d", ckpt, start)
    t0 = time.perf_counter()
    neighbours = teacher_neighbours(teacher_of(x), cfg.neighbour_group - 1) if cfg.neighbour_group > 1 else None
    adapter.train()
    bar = tqdm(range(start, cfg.steps), desc="qama fit", disable=not cfg.progress, initial=start, total=cfg.steps)
    for step in bar:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        xb = x[sample_batch(len(x), cfg, gen, neighbours)]  # (B, d)
        if cfg.noise > 0:
            xb = torch.nn.functional.normalize(xb + cfg.noise / d**0.5 * torch.randn(xb.shape, generator=gen), dim=1)
        pb = None
        if pair_t is not None:
            pidx = torch.randperm(len(pair_t[0]), generator=gen)[: cfg.batch_size // 2]
            pb = (pair_t[0][pidx], pair_t[1][pidx])
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        sched = loss_schedules(step, cfg.steps)
        parts = compute_losses(adapter, xb, cfg, step, gen, unit, pb, teacher_of(xb))
        total = cast(torch.Tensor, sum(weight_of(name, cfg, sched) * v for name, v in parts.items()))
        if not torch.isfinite(total):
            bad = [n for n, v in parts.items() if not torch.isfinite(v)]
            raise TrainingError(f"loss became non-finite at step {step} (parts {bad}); lower lr or check the input")
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            adapter.update_statistics(adapter(xb), cfg.ema_momentum)
            if pb is not None and cfg.query_thresholds:
                adapter.update_query_statistics(adapter(pb[0]), cfg.ema_momentum)
        if cfg.progress and (step % 10 == 0 or step == cfg.steps - 1):
            bar.set_postfix(_summary(parts, total))
        due = cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps
        if ckpt is not None and due:
            _save_checkpoint(ckpt, adapter, opt, step + 1, cfg, data_key)
    bar.close()
    adapter.calibrate(x_np)  # final thresholds: exact quantiles over the whole corpus
    if query_sample is None and pair_t is not None and cfg.query_thresholds:
        query_sample = pair_t[0].numpy()
    if query_sample is not None:
        adapter.calibrate_queries(query_sample)
        adapter.metadata["data"]["n_query_sample"] = len(query_sample)
    adapter.eval()
    if held is not None:
        rows = _corpus_rows(x_np, held[1])
        results = never_worse_check(adapter, x_np, held[0], rows, pair_t[0].numpy(), acfg.plans)  # type: ignore[index]
        adapter.metadata["check"] = {
            "held_out_pairs": len(rows),
            "results": [r.to_dict() for r in results],
            "lost": [f"{r.plan}@{r.dims}" for r in results if r.lost],
        }
    adapter.metadata["training"]["seconds"] = round(time.perf_counter() - t0, 1)
    logger.info("fitted adapter in %.1f s", time.perf_counter() - t0)
    if out is not None:
        adapter.save(out)
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return adapter


def _summary(parts: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, str]:
    """Loss parts grouped by term (summed over sizes and plans) for the progress bar."""
    grouped: dict[str, float] = {"loss": float(total.detach())}
    for name, v in parts.items():
        key = name.split("@")[0]
        grouped[key] = grouped.get(key, 0.0) + float(v.detach())
    return {k: f"{v:.3g}" for k, v in grouped.items()}


# ---------------------------------------------------------------------------- ablations
#: Weights of the regularisers in the reference ("full") configuration of the ablations. The
#: defaults leave them at 0: switched on at these weights they measured no better (see
#: benchmarks/RESULTS_training.md), so the ablations start from every term on and switch one off.
ALL_TERMS: dict[str, float] = {"w_ortho": 0.05, "w_bottleneck": 0.01, "w_variance": 0.1, "w_quant": 0.01}

#: Ablation name -> config changes that switch one component off.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_matryoshka": {"matryoshka": False},
    "no_orthogonality": {"w_ortho": 0.0},
    "no_bottleneck": {"w_bottleneck": 0.0},
    "no_variance": {"w_variance": 0.0},
    "no_quantization": {"w_quant": 0.0},
}


def ablate(
    corpus_emb: np.ndarray,
    evaluate: Callable[[QamaAdapter], dict[str, float]],
    config: TrainConfig | None = None,
    names: list[str] | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Retrain with each component of :data:`ABLATIONS` switched off in turn; ``evaluate`` scores each.

    ``evaluate(adapter)`` returns figures by name (e.g. ``{"2bit@384": 0.64, ...}``); the result maps
    ablation name -> those figures. ``"full"`` is the unablated reference: ``config`` with every
    regulariser on (a weight of 0 in ``config`` takes its weight in :data:`ALL_TERMS`), so that
    switching one off measures it.
    """
    base = config or TrainConfig()
    on = {k: w for k, w in ALL_TERMS.items() if getattr(base, k) == 0}
    base = dataclasses.replace(base, **on)  # type: ignore[arg-type]  # loss weights are floats
    results: dict[str, dict[str, float]] = {}
    for name in names or list(ABLATIONS):
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
        cfg = dataclasses.replace(base, **ABLATIONS[name])
        logger.info("ablation %s", name)
        results[name] = evaluate(fit(corpus_emb, cfg, pairs=pairs))
    return results


def info_nce_setup(
    dataset: str,
    titles: tuple[np.ndarray, np.ndarray] | None = None,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
    labelled_split: str = "",
    weight: float | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray] | None, float | None, str]:
    """The InfoNCE ``pairs`` of a training run, their weight and the ``data_description`` of its config.

    ``titles``: title pseudo-queries and their documents (no labels); ``labelled``: query-document
    pairs of the qrels split ``labelled_split``. Both are used together. The weight is ``weight``,
    else :data:`NCE_WEIGHT_LABELLED` with labels and :data:`NCE_WEIGHT_TITLES` without; ``None``
    (and ``pairs=None``) when there are no pairs.
    """
    parts = [p for p in (titles, labelled) if p is not None]
    sources = []
    if titles is not None:
        sources.append(f"{len(titles[0])} title pseudo-queries")
    if labelled is not None:
        sources.append(f"{len(labelled[0])} {labelled_split!r} qrels pairs")
    description = ", ".join([f"{dataset} corpus embeddings", *sources])
    description += " (labels)" if labelled is not None else " (no labels)"
    if not parts:
        if weight is not None:  # asked for, and nothing to weigh: said, not ignored silently
            logger.warning(
                "InfoNCE weight %g not used: %s has no title pseudo-queries or labelled pairs", weight, dataset
            )
        return None, None, description
    pairs = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    default = NCE_WEIGHT_LABELLED if labelled is not None else NCE_WEIGHT_TITLES
    w_nce = default if weight is None else weight
    logger.info("InfoNCE (weight %g) on %s", w_nce, ", ".join(sources))
    return pairs, w_nce, description


def check_settings(**settings: Any) -> None:
    """Raise the error a :class:`TrainConfig` of ``settings`` (``None`` = the default) raises: the checks of
    the training options before any work (:func:`training_setup` builds the config once the data and its
    titles are loaded)."""
    TrainConfig(**_set(settings))


def _set(settings: dict[str, Any]) -> dict[str, Any]:
    """The :class:`TrainConfig` fields of ``settings`` that are set (``None``: the field's default)."""
    return {k: v for k, v in settings.items() if v is not None}


def training_setup(
    dataset: Any,
    corpus: np.ndarray,
    queries: np.ndarray,
    pseudo_queries: str = "auto",
    pairs_split: str | None = None,
    nce_weight: float | None = None,
    model_name: str = "",
    embeddings_dir: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    embed_batch_size: int = 64,
    progress: bool = True,
    embed_titles: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    **settings: Any,
) -> tuple[TrainConfig, tuple[np.ndarray, np.ndarray] | None]:
    """The :class:`TrainConfig` and InfoNCE ``pairs`` of a :class:`~qama.data.Dataset`'s corpus
    (``qama train`` / ``qama ablate``): title pseudo-queries (``pseudo_queries``, see
    :func:`qama.embeddings.title_pairs`; ``embed_titles``: a :func:`qama.embeddings.title_embedder`
    shared with the command's other uses of the titles) and the qrels pairs of ``pairs_split``,
    weighted by :func:`info_nce_setup`. ``settings``: :class:`TrainConfig` fields (``None`` = the default)."""
    from qama.embeddings import title_pairs

    titles = title_pairs(
        dataset, corpus, pseudo_queries, model_name, embeddings_dir, cache_dir, embed_batch_size, progress, embed_titles
    )
    labelled = None
    if pairs_split:
        q_rows, d_rows = dataset.with_split(pairs_split).relevant_pairs()
        labelled = (queries[q_rows], corpus[d_rows])
    split = pairs_split or ""
    pairs, settings["w_nce"], description = info_nce_setup(dataset.name, titles, labelled, split, nce_weight)
    cfg = TrainConfig(
        model_name=str(embeddings_dir) if embeddings_dir else model_name,
        data_description=description,
        progress=progress,
        **_set(settings),
    )
    return cfg, pairs
