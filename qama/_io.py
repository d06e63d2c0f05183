"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed.

An interrupted process leaves either the previous complete file or the new complete file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from qama._validate import file_mode

__all__ = [
    "atomic_open",
    "folder_lock",
    "fsync_dir",
    "fsync_file",
    "write_json",
    "write_text",
    "check_output_files",
    "check_creatable",
    "save_npy",
    "save_npy_chunks",
    "load_npy",
    "JsonFields",
]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp creates 0600: give the file the mode open() would (the umask's)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def folder_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the folder ``path`` itself (no lock file is left in
    it); another process holding it: :class:`~qama.errors.FolderLockedError` ``"PATH: BUSY"`` at once.
    Where folders cannot be locked (Windows), nothing is locked."""
    from qama.errors import FolderLockedError

    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            raise FolderLockedError(f"{path}: {busy}") from None
        yield
    finally:
        os.close(fd)  # (releases the lock)


def fsync_file(path: str | os.PathLike) -> None:
    """Make the content of the file ``path`` durable (before a rename makes it the one in use)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the renames and removals of entries of the folder ``path`` durable (a rename is on disk only
    once its folder is fsynced). Where a folder cannot be opened or fsynced (Windows), nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_files(*paths: str | os.PathLike | None, overwrite: bool = False) -> None:
    """Refuse, before any work, an output file that is a folder or not a regular file (``-``: stdout), that
    cannot be made (:func:`check_creatable`), that is given twice, or that exists unless ``overwrite``
    (``--overwrite``: a slip such as ``--json corpus.jsonl`` would replace the user's file); ``-`` given
    twice too (``--json - --markdown -``: the two would be printed one after the other)."""
    if sum(x is not None and str(x) == "-" for x in paths) > 1:
        raise ValueError("-: given as two outputs; give each its own file")
    seen: set[Path] = set()
    for p in (Path(x) for x in paths if x is not None and str(x) != "-"):
        if p.is_dir() or (p.exists() and not p.is_file()):
            kind = "a folder" if p.is_dir() else "not a regular file"
            raise ValueError(f"{p}: is {kind}; give the path of a file to write")
        if p.resolve() in seen:
            raise ValueError(f"{p}: given as two outputs; give each its own file")
        seen.add(p.resolve())
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p}: exists; add --overwrite to replace it")
        check_creatable(p)


def check_creatable(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output path under something that is not a folder (``out.json/report``):
    its folders could not be made, and the work would be lost at the first write."""
    for parent in Path(path).parents:
        if parent.is_dir():
            return
        if parent.exists() or parent.is_symlink():
            raise FileExistsError(f"{path}: cannot be created, {parent} is not a folder")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically; the path ``-`` prints it instead."""
    if str(path) == "-":
        print(text, end="")
        return
    with atomic_open(path, "w") as f:
        f.write(text)


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


def save_npy_chunks(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray]) -> None:
    """Write a ``.npy`` of ``shape`` and ``dtype`` (the file :func:`save_npy` writes) from ``chunks``
    of its rows in order, atomically, holding one chunk in memory at a time."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    rows = 0
    with atomic_open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if chunk.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"{path}: a chunk of shape {chunk.shape} for an array of shape {tuple(shape)}")
            f.write(chunk.tobytes())
            rows += len(chunk)
        if rows != shape[0]:
            raise ValueError(f"{path}: chunks of {rows} rows for an array of shape {tuple(shape)}")


def load_npy(path: str | os.PathLike, mmap: bool = False, error: Callable[[str], Exception] = ValueError) -> np.ndarray:
    """Load a ``.npy`` without pickle; a pickled or malformed file raises ``error(message)``, and so
    does one whose header claims more data than the file holds (checked before anything is allocated)."""
    check_npy_size(path, error)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except ValueError as e:
        raise error(f"{path}: not a plain numeric .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise error(f"{path}: unreadable or truncated .npy file ({e})") from None


#: The first bytes of every ``.npy`` file.
NPY_MAGIC = b"\x93NUMPY"


def check_npy_size(path: str | os.PathLike, error: Callable[[str], Exception] = ValueError) -> None:
    """Refuse a ``.npy`` that is not a regular file, that does not begin with the ``.npy`` signature (a text
    file, an ``.npz`` archive, a pickle), or whose header's shape and dtype do not match the file's real
    size (a header claiming a huge shape must never be allocated)."""
    from qama._validate import check_regular_file

    try:
        size = check_regular_file(path, ".npy file", error)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError:
        head = NPY_MAGIC  # unreadable: np.load below raises the error with its reason
    if size >= len(NPY_MAGIC) and head != NPY_MAGIC:  # a JSONL or text file, an .npz archive, a pickle
        raise error(f"{path}: not a .npy file (it does not begin with the .npy signature \\x93NUMPY)")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                return  # np.load gives its own error for other versions
            shape, _, dtype = read_header[version](f, max_header_size=10000)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return  # malformed header: np.load below raises the error with its reason
    if dtype.hasobject:
        return  # refused by np.load (allow_pickle=False)
    count = 1
    for s in shape:
        count *= int(s)
    expected = offset + count * dtype.itemsize
    if expected != size:
        raise error(
            f"{path}: unreadable or truncated .npy file (its header claims {dtype} {tuple(shape)}: "
            f"{expected} bytes, the file has {size})"
        )


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


def fingerprint(*arrays: np.ndarray, chunk: int = 1 << 16) -> str:
    """SHA-256 of arrays' shapes, dtypes and contents, read a block of rows at a time: a changed
    corpus (or pairs, or queries) never reuses a stale report stage or training checkpoint."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.shape, str(a.dtype))).encode())
        for i in range(0, len(a), chunk):
            h.update(np.ascontiguousarray(a[i : i + chunk]).tobytes())
    return h.hexdigest()
