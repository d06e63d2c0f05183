"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed.

An interrupted process leaves either the previous complete file or the new complete file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_open", "write_json", "save_npy", "load_npy", "JsonFields"]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically; the path ``-`` prints it instead."""
    if str(path) == "-":
        print(json.dumps(obj, ensure_ascii=False, indent=2))
        return
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: str | os.PathLike, mmap: bool = False, error: Callable[[str], Exception] = ValueError) -> np.ndarray:
    """Load a ``.npy`` without pickle; a pickled or malformed file raises ``error(message)``."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except ValueError as e:
        raise error(f"{path}: not a plain numeric .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise error(f"{path}: unreadable or truncated .npy file ({e})") from None


class JsonFields:
    """Mixin for config dataclasses stored in JSON: tuples become lists and back; keys that are not
    fields (from a newer or older version) are ignored on reading."""

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})
