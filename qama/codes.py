"""Precision plans and the bit layout of a qama code. The only module that knows it.

A *plan* is an ordered list of segments, each covering a run of embedding dimensions at one
precision. Quantising an embedding under a plan gives one integer *level* per quantised value:

========  ======  =====================  ===========  =======================
bits      levels  values per dimension   stored bits  level -> bits
========  ======  =====================  ===========  =======================
2         4       1                      3            0:000 1:001 2:011 3:111
1.5       3       1                      2            0:00  1:01  2:11
1         2       1                      1            0:0   1:1
0.5       2       1/2 (a merged pair)    1            0:0   1:1
========  ======  =====================  ===========  =======================

Levels are expanded with a thermometer code (bit ``i`` of a value is set iff its level is
greater than ``i``; the table writes bit 0 rightmost, the packed stream puts it first), so the
Hamming distance between two codes is exactly the L1 distance between their levels. The bits
of all values are concatenated in plan order, most significant bit first within each byte
(``np.packbits`` order), and each row is padded with zero bits to a whole number of bytes:
``code_size = ceil(n_bits / 8)``. Rows are packed independently; codes are ``uint8`` arrays of
shape ``(n, code_size)``, the layout faiss binary indexes use (``d = 8 * code_size``). Zero
padding is the same in every code, so it never changes a Hamming distance.

Alignment: the canonical code is byte-aligned (hybrid at 384 dimensions: 78 bytes). Stored and
searched rows may be padded further with zero bytes to a multiple of 8 bytes (``Plan.row_size()``,
80 bytes for hybrid 384, ``pack(..., align=8)``): popcount then runs on whole 64-bit words, which
measured about 1.3x faster in faiss's Hamming scan, for 2.6% more bytes (19.2x smaller than FP32).
Every function here accepts rows wider than ``code_size`` whose extra bytes are zero.

A plan whose first segments cover the first ``m`` dimensions in whole bytes has a *prefix*: the
first bytes of every code are the code of the first ``m`` dimensions under that shorter plan
(:func:`prefix_plan`), which is what the Matryoshka funnel searches before reranking.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "BITS",
    "Segment",
    "Plan",
    "make_plan",
    "BUILTIN_PLANS",
    "ALL_PLANS",
    "DEFAULT_PLANS",
    "pack",
    "unpack",
    "hamming",
    "hamming_distances",
    "value_dims",
    "prefix_plan",
    "plans_fitting",
]

logger = logging.getLogger(__name__)

#: Supported precisions: bits per dimension -> number of levels of one quantised value.
BITS: dict[float, int] = {2.0: 4, 1.5: 3, 1.0: 2, 0.5: 2}

#: Built-in plans: name -> list of (fraction of the dimensions, bits).
BUILTIN_PLANS: dict[str, list[tuple[float, float]]] = {
    "2bit": [(1.0, 2.0)],
    "1.5bit": [(1.0, 1.5)],
    "1bit": [(1.0, 1.0)],
    "0.5bit": [(1.0, 0.5)],
    "hybrid": [(0.25, 2.0), (0.25, 1.5), (0.25, 1.0), (0.25, 0.5)],
}

#: Every built-in plan, in table order: the plans ``qama eval`` scores an adapter at.
ALL_PLANS: tuple[str, ...] = tuple(BUILTIN_PLANS)

#: The plans an adapter is meant for, the baselines and ``qama report`` use (uniform 0.5-bit left out).
DEFAULT_PLANS: tuple[str, ...] = ("2bit", "1.5bit", "1bit", "hybrid")


@dataclass(frozen=True)
class Segment:
    """A run of ``dims`` consecutive embedding dimensions quantised at ``bits`` bits per dimension."""

    dims: int
    bits: float

    def __post_init__(self) -> None:
        if float(self.bits) not in BITS:
            raise ValueError(f"unsupported precision {self.bits} bits; choose one of {sorted(BITS)}")
        if self.dims <= 0:
            raise ValueError(f"a segment needs a positive number of dimensions, got {self.dims}")
        if self.bits == 0.5 and self.dims % 2:
            raise ValueError(f"a 0.5-bit segment merges pairs of dimensions: {self.dims} dimensions is odd")

    @property
    def levels(self) -> int:
        """Number of levels of one quantised value."""
        return BITS[float(self.bits)]

    @property
    def n_values(self) -> int:
        """Number of quantised values (0.5-bit merges each pair of dimensions into one value)."""
        return self.dims // 2 if self.bits == 0.5 else self.dims

    @property
    def bits_per_value(self) -> int:
        """Stored bits of one value: ``levels - 1`` (thermometer code)."""
        return self.levels - 1

    @property
    def n_bits(self) -> int:
        return self.n_values * self.bits_per_value


@dataclass(frozen=True)
class Plan:
    """An ordered list of segments covering the first ``dim`` dimensions of an embedding."""

    name: str
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a plan needs at least one segment")

    @property
    def dim(self) -> int:
        """Number of embedding dimensions the plan covers."""
        return sum(s.dims for s in self.segments)

    @property
    def n_values(self) -> int:
        return sum(s.n_values for s in self.segments)

    @property
    def n_bits(self) -> int:
        """Meaningful bits of a code (without padding)."""
        return sum(s.n_bits for s in self.segments)

    @property
    def code_size(self) -> int:
        """Bytes of one packed code: ``n_bits`` padded to a whole byte."""
        return (self.n_bits + 7) // 8

    def row_size(self, align: int = 8) -> int:
        """Bytes of one code padded with zero bytes to a multiple of ``align`` (8: 64-bit words)."""
        if align <= 0:
            raise ValueError(f"alignment must be positive, got {align}")
        return -(-self.code_size // align) * align

    @property
    def bits_per_dim(self) -> float:
        """Stored bits per embedding dimension (2-bit is stored as 3 bits)."""
        return self.n_bits / self.dim

    @cached_property
    def value_levels(self) -> np.ndarray:
        """``(n_values,)`` number of levels of each quantised value, in code order."""
        return np.concatenate([np.full(s.n_values, s.levels, dtype=np.int64) for s in self.segments])

    @cached_property
    def _bit_value(self) -> np.ndarray:
        """``(n_bits,)`` index of the value each code bit belongs to."""
        return np.repeat(np.arange(self.n_values), self.value_levels - 1)

    @cached_property
    def _bit_rank(self) -> np.ndarray:
        """``(n_bits,)`` thermometer position of each code bit within its value."""
        starts = np.concatenate([[0], np.cumsum(self.value_levels - 1)[:-1]])
        return np.arange(self.n_bits) - np.repeat(starts, self.value_levels - 1)

    def spec(self) -> str:
        """The plan as a string that :func:`make_plan` reads back: ``"96:2,96:1.5,96:1,96:0.5"``."""
        return ",".join(f"{s.dims}:{s.bits:g}" for s in self.segments)

    def to_dict(self) -> dict:
        return {"name": self.name, "segments": [[s.dims, s.bits] for s in self.segments]}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(data["name"], tuple(Segment(int(d), float(b)) for d, b in data["segments"]))


_SEGMENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(%?)\s*:\s*([0-9]+(?:\.[0-9]*)?)\s*$")


def make_plan(spec: str | Plan, dim: int) -> Plan:
    """Build the plan ``spec`` for embeddings of ``dim`` dimensions.

    ``spec`` is a built-in name (``2bit``, ``1.5bit``, ``1bit``, ``0.5bit``, ``hybrid``) or a
    comma-separated list of ``SIZE:BITS`` segments, where SIZE is a dimension count (``96``), a
    fraction (``0.25``) or a percentage (``25%``), e.g. ``"25%:2,25%:1.5,50%:1"``.

    >>> make_plan("hybrid", 384).spec()
    '96:2,96:1.5,96:1,96:0.5'
    >>> make_plan("hybrid", 384).code_size
    78
    """
    if isinstance(spec, Plan):
        if spec.dim != dim:
            raise ValueError(f"plan {spec.name!r} covers {spec.dim} dimensions, not {dim}")
        return spec
    if dim <= 0:
        raise ValueError(f"dimension must be positive, got {dim}")
    name = spec.strip()
    if name in BUILTIN_PLANS:
        parts = [(f"{frac}", bits) for frac, bits in BUILTIN_PLANS[name]]
    else:
        parts = []
        for item in name.split(","):
            m = _SEGMENT.match(item)
            if not m:
                raise ValueError(
                    f"cannot read plan {spec!r}: expected a built-in name ({', '.join(BUILTIN_PLANS)}) "
                    f"or SIZE:BITS segments such as '96:2,96:1.5,192:1' or '25%:2,75%:1'"
                )
            parts.append((m.group(1) + m.group(2), float(m.group(3))))
    segments = []
    for size, bits in parts:
        # A plain integer is a dimension count; a decimal or a percentage is a share of ``dim``.
        if size.endswith("%") or "." in size:
            share = float(size.rstrip("%")) / (100.0 if size.endswith("%") else 1.0)
            dims = share * dim
            if not math.isclose(dims, round(dims)):
                raise ValueError(f"plan {spec!r}: {size} of {dim} dimensions is not a whole number")
            dims = int(round(dims))
        else:
            dims = int(size)
        try:
            segments.append(Segment(dims, bits))
        except ValueError as e:
            raise ValueError(f"plan {spec!r} at {dim} dimensions: {e}") from None
    total = sum(s.dims for s in segments)
    if total != dim:
        raise ValueError(f"plan {spec!r} covers {total} dimensions, but the embedding has {dim}")
    return Plan(name, tuple(segments))


def plans_fitting(specs: Iterable[str], dim: int) -> Iterator[Plan]:
    """The plans of ``specs`` at ``dim`` dimensions, leaving out (and logging) those that do not fit,
    e.g. hybrid at 100 dimensions (a 0.5-bit segment of 25). For tables over many sizes."""
    for spec in specs:
        try:
            yield make_plan(spec, dim)
        except ValueError as e:
            logger.info("skipping plan %s at %d dimensions: %s", spec, dim, e)


#: Bytes of levels expanded to bits at once by :func:`pack` (a chunk of rows).
PACK_BLOCK_BYTES = 1 << 25


def pack(levels: np.ndarray, plan: Plan, chunk: int = 65536, align: int = 1) -> np.ndarray:
    """Expand ``(n, plan.n_values)`` integer levels to thermometer bits and pack each row.

    Returns ``(n, plan.row_size(align))`` uint8 codes (``align=1``: ``code_size`` bytes). Levels
    outside ``[0, levels-1]`` are refused, and levels that are not whole numbers (a float level
    ``0.5`` would set the bits of level 1, a NaN none).
    """
    levels = np.asarray(levels)
    if levels.ndim != 2 or levels.shape[1] != plan.n_values:
        raise ValueError(f"expected levels of shape (n, {plan.n_values}) for plan {plan.name!r}, got {levels.shape}")
    if levels.dtype.kind not in "biu":
        whole = levels.dtype.kind == "f" and bool(np.all(np.floor(levels) == levels))
        if not whole:
            raise ValueError(f"levels must be whole numbers for plan {plan.name!r}, got {levels.dtype} levels")
    if levels.size and (levels.min() < 0 or np.any(levels.max(axis=0) >= plan.value_levels)):
        raise ValueError(f"levels out of range for plan {plan.name!r}")
    width = plan.row_size(align)
    out = np.empty((levels.shape[0], width), dtype=np.uint8)
    pad = width * 8 - plan.n_bits
    # the thermometer bits of a chunk are expanded from its levels' dtype (int64: 8 bytes a bit): bounded
    chunk = max(1, min(chunk, PACK_BLOCK_BYTES // max(1, plan.n_bits * levels.dtype.itemsize)))
    for i in range(0, levels.shape[0], chunk):
        bits = levels[i : i + chunk, plan._bit_value] > plan._bit_rank  # (c, n_bits) thermometer bits
        out[i : i + chunk] = np.packbits(np.pad(bits, ((0, 0), (0, pad))), axis=-1)
    return out


def unpack(codes: np.ndarray, plan: Plan) -> np.ndarray:
    """Inverse of :func:`pack`: ``(n, code_size)`` uint8 codes to ``(n, n_values)`` int64 levels.

    Rows may be wider than ``code_size`` (aligned rows); the extra bytes are ignored.
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] < plan.code_size:
        raise ValueError(
            f"expected uint8 codes of shape (n, {plan.code_size}) for plan {plan.name!r}, "
            f"got {codes.dtype} {codes.shape}"
        )
    bits = np.unpackbits(codes, axis=-1, count=plan.n_bits)  # (n, n_bits)
    levels, start = [], 0
    for seg in plan.segments:
        block = bits[:, start : start + seg.n_bits].reshape(len(codes), seg.n_values, seg.bits_per_value)
        levels.append(block.sum(axis=-1, dtype=np.int64))  # a thermometer code's level is its popcount
        start += seg.n_bits
    return np.concatenate(levels, axis=1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of packed codes along the last axis (XOR + popcount), broadcasting the others:
    ``(n, w)`` and ``(n, w)`` give the ``(n,)`` distances of corresponding rows, ``(nq, m, w)`` and
    ``(nq, 1, w)`` those of each query's ``m`` candidates. Returns int32."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int32)


#: Bytes of the XOR (and of its popcount) :func:`hamming_distances` computes at once.
DISTANCE_BLOCK_BYTES = 1 << 24


def hamming_distances(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Reference ``(len(a), len(b))`` Hamming distances between two sets of packed codes (numpy popcount).

    Computed in blocks of at most ``chunk`` rows of ``a`` and :data:`DISTANCE_BLOCK_BYTES` of XOR, so
    the temporary memory is bounded whatever ``len(b)`` (only the ``(len(a), len(b))`` result grows)."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    b = np.ascontiguousarray(b, dtype=np.uint8)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"code shapes do not match: {a.shape} vs {b.shape}")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    w = max(1, a.shape[1])
    cols = max(1, min(b.shape[0], DISTANCE_BLOCK_BYTES // w))  # rows of b per block
    rows = max(1, min(chunk, DISTANCE_BLOCK_BYTES // (cols * w)))  # rows of a per block
    for i in range(0, a.shape[0], rows):
        for j in range(0, b.shape[0], cols):
            out[i : i + rows, j : j + cols] = hamming(a[i : i + rows, None, :], b[None, j : j + cols, :])
    return out


def value_dims(plan: Plan) -> np.ndarray:
    """``(n_values, 2)`` int64: the embedding dimension each quantised value is read from, in code order,
    and the second dimension of a 0.5-bit pair (``-1`` for the values of the other precisions).

    >>> value_dims(make_plan("2:1,4:0.5", 6)).tolist()
    [[0, -1], [1, -1], [2, 3], [4, 5]]
    """
    out, start = [], 0
    for seg in plan.segments:
        if seg.bits == 0.5:
            first = start + 2 * np.arange(seg.n_values)
            out.append(np.stack([first, first + 1], axis=1))
        else:
            out.append(np.stack([start + np.arange(seg.dims), np.full(seg.dims, -1)], axis=1))
        start += seg.dims
    return np.concatenate(out).astype(np.int64)


def prefix_plan(plan: Plan, dims: int) -> tuple[Plan, int]:
    """The plan of the first ``dims`` dimensions and the number of code bytes it occupies.

    The first ``n_bytes`` bytes of a code under ``plan`` are then exactly the code of the first
    ``dims`` dimensions under the returned plan (a Matryoshka prefix of the code). Raises
    ``ValueError`` when ``dims`` does not end on a segment boundary or the prefix is not a whole
    number of bytes.

    >>> prefix_plan(make_plan("hybrid", 384), 96)[1]
    36
    """
    segments, covered = [], 0
    for seg in plan.segments:
        if covered >= dims:
            break
        segments.append(seg)
        covered += seg.dims
    if covered != dims:
        raise ValueError(f"plan {plan.name!r} ({plan.spec()}) has no segment boundary at {dims} dimensions")
    prefix = Plan(f"{plan.name}[:{dims}]", tuple(segments))
    if prefix.n_bits % 8:
        raise ValueError(
            f"the first {dims} dimensions of plan {plan.name!r} take {prefix.n_bits} bits, not whole bytes"
        )
    return prefix, prefix.n_bits // 8
