"""Rows stored as consecutive segments, read as one array without concatenating them.

An index keeps each column (codes, vectors) as one file per segment; :class:`RowSegments` is the
column: the memory maps of its segments, in order, addressed by global row number. The searches
take it where they take an array (:func:`qama.search.hamming_search` scans the segments in turn,
rescoring and :func:`qama.adc.adc_search` read the candidates' rows from the segments that hold
them), so no segment is copied to be searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["RowSegments"]


class RowSegments:
    """``(n, ...)`` rows of one dtype stored in consecutive ``parts`` (arrays or memory maps).

    ``len``, ``shape``, ``dtype`` and ``ndim`` are those of the concatenation; ``rows[i]`` (an int,
    an int array of any shape, or a slice) gathers rows from the parts that hold them, reading
    nothing else; ``np.asarray(rows)`` concatenates the parts (a copy, for code that needs one array).
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("RowSegments needs at least one part")
        first = parts[0]
        for p in parts:
            if p.ndim < 1 or p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
                raise ValueError(
                    f"segments must share dtype and row shape: {p.dtype} {p.shape} vs {first.dtype} {first.shape}"
                )
        self.parts = list(parts)
        self.starts = np.zeros(len(parts) + 1, dtype=np.int64)  # row number of each part's first row
        self.starts[1:] = np.cumsum([len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def ndim(self) -> int:
        return self.parts[0].ndim

    def __repr__(self) -> str:
        return f"RowSegments({len(self.parts)} parts, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if len(self.parts) > 1:
            out = np.concatenate(self.parts)  # a new array
        else:
            out = np.array(self.parts[0]) if copy else np.asarray(self.parts[0])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, rows: Any) -> np.ndarray:
        n = len(self)
        if isinstance(rows, slice):
            rows = np.arange(n)[rows]
        if isinstance(rows, (int, np.integer)):
            r = int(rows) + (n if rows < 0 else 0)
            if not 0 <= r < n:
                raise IndexError(f"row {int(rows)} is out of range for {n} rows")
            s = int(np.searchsorted(self.starts, r, side="right")) - 1
            return np.asarray(self.parts[s][r - self.starts[s]])
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, got {rows.dtype}")
        flat = rows.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"row {int(flat.max() if flat.max() >= n else flat.min())} is out of range for {n} rows")
        tail = self.parts[0].shape[1:]
        if len(self.parts) == 1:
            return np.asarray(self.parts[0][flat]).reshape(*rows.shape, *tail)
        seg = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty((len(flat), *tail), dtype=self.dtype)
        for s in np.unique(seg):
            where = seg == s
            out[where] = self.parts[s][flat[where] - self.starts[s]]
        return out.reshape(*rows.shape, *tail)
