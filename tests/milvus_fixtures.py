"""Deprecated home of the milvus-lite fixture: it lives in ``tests/conftest.py`` (no import needed)."""

from tests.conftest import milvus_uri, require_milvus

__all__ = ["milvus_uri", "require_milvus"]
