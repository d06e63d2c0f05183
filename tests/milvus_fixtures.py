"""A milvus-lite gRPC server on a loopback port for the backend tests (skipped when not installed).

Import the fixture into a test module: ``from tests.milvus_fixtures import milvus_uri``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_milvus() -> None:
    """Skip the calling test, with the reason, unless pymilvus and milvus-lite are installed."""
    for module in ("pymilvus", "milvus_lite"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'qama[milvus]'")


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a fresh milvus-lite server; it stops after the module (or in 10 min)."""
    require_milvus()
    from qama.backends.milvus import LocalMilvusServer

    folder: Path = tmp_path_factory.mktemp("milvus")
    server = LocalMilvusServer(folder / "test.db", lifetime=600)
    uri = server.start(wait=60)
    try:
        yield uri
    finally:
        server.stop()
