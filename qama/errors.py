"""The exceptions of qama's stores, in one module that every store imports.

An index folder (:mod:`qama.index`) and a Milvus collection (:mod:`qama.backends.milvus`) raise the
same classes with the same texts; :mod:`qama.index` re-exports them under their old import path.
:class:`FolderLockedError` is raised by the other writers of a folder (a training's adapter folder, a
report's folder) when another process is writing it.
"""

from __future__ import annotations

__all__ = ["FolderLockedError", "IndexCorruptError", "IndexLockedError", "IndexMismatchError"]


class IndexCorruptError(ValueError):
    """A file of the index is missing, truncated, modified or malformed."""


class IndexLockedError(RuntimeError):
    """Another process holds the index's writer lock."""


class IndexMismatchError(ValueError):
    """The index does not fit what it is used with (encoder, query codes, dimensions)."""


class FolderLockedError(RuntimeError):
    """Another process is writing the folder (training into an adapter folder, a report into its folder)."""
