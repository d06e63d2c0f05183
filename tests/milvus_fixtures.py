"""Deprecated home of the milvus-lite fixture: it lives in ``tests/conftest.py`` (no import needed)."""

from tests.conftest import collection_name, milvus_uri, require_milvus

__all__ = ["collection_name", "milvus_uri", "require_milvus"]
