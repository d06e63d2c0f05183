"""The exceptions of qama's stores, in one module that every store imports.

An index folder (:mod:`qama.index`) and a Milvus collection (:mod:`qama.backends.milvus`) raise the
same classes with the same texts; :mod:`qama.index` re-exports them under their old import path.
"""

from __future__ import annotations

__all__ = ["IndexCorruptError", "IndexLockedError", "IndexMismatchError"]


class IndexCorruptError(ValueError):
    """A file of the index is missing, truncated, modified or malformed."""


class IndexLockedError(RuntimeError):
    """Another process holds the index's writer lock."""


class IndexMismatchError(ValueError):
    """The index does not fit what it is used with (encoder, query codes, dimensions)."""
