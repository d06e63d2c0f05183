"""Shared fixtures: tiny BEIR-layout datasets with embeddings, the shared benchmark data, one milvus-lite
server per test module."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_EMB = SHARED / "embeddings" / "all-MiniLM-L6-v2"


def shared_dataset(name: str) -> tuple[Path, Path]:
    """(dataset folder, embeddings folder) of a shared benchmark, or skip with the reason."""
    data, emb = SHARED / "datasets" / name, SHARED_EMB / name
    if not (data / "corpus.jsonl").is_file() or not (emb / "corpus.npy").is_file():
        pytest.skip(f"shared benchmark data not found at {SHARED} (it lies beside the repo in CI)")
    return data, emb


def write_beir(root: Path, docs: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]], split="test"):
    """Write a BEIR-layout folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """40 documents, 6 queries (5 judged), 16-dim embeddings where query i is near documents 2i, 2i+1."""
    rng = np.random.default_rng(0)
    n_docs, n_q, d = 40, 6, 16
    docs = [{"_id": f"d{i}", "title": f"title {i}", "text": f"text of document {i}"} for i in range(n_docs)]
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(n_q)]
    qrels = [(f"q{i}", f"d{2 * i}", 1) for i in range(5)] + [(f"q{i}", f"d{2 * i + 1}", 2) for i in range(5)]
    root = write_beir(tmp_path / "tiny", docs, queries, qrels)
    corpus = rng.normal(size=(n_docs, d)).astype(np.float32)
    qs = np.stack([corpus[2 * i] + corpus[2 * i + 1] + 0.3 * rng.normal(size=d) for i in range(n_q)])
    emb = tmp_path / "tiny-emb"
    emb.mkdir()
    np.save(emb / "corpus.npy", corpus / np.linalg.norm(corpus, axis=1, keepdims=True))
    np.save(emb / "queries.npy", (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype(np.float32))
    return root


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """300 documents, 30 judged queries, 32-dim embeddings; query i is a noisy copy of document i."""
    rng = np.random.default_rng(0)
    n, d, nq = 300, 32, 30
    docs = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(n)]
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(nq)]
    root = write_beir(tmp_path / "ds", docs, queries, [(f"q{i}", f"d{i}", 1) for i in range(nq)])
    c = rng.normal(size=(n, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = c[:nq] + 0.1 * rng.normal(size=(nq, d)).astype(np.float32)
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "corpus.npy", c)
    np.save(emb / "queries.npy", (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return root, emb


def interrupted_fit(monkeypatch: pytest.MonkeyPatch, x: np.ndarray, cfg, out_dir: Path, at_call: int) -> None:
    """Run :func:`qama.train.fit` into ``out_dir`` until its ``at_call``-th loss computation, which raises
    ``KeyboardInterrupt`` (a kill in the middle of training); then training is left as it was."""
    import qama.train as T

    original, calls = T.compute_losses, {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(T, "compute_losses", crash)
    with pytest.raises(KeyboardInterrupt):
        T.fit(x, cfg, out_dir=out_dir)
    monkeypatch.setattr(T, "compute_losses", original)


def require_milvus() -> None:
    """Skip the calling test, with the reason, unless pymilvus and milvus-lite are installed."""
    for module in ("pymilvus", "milvus_lite"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'qama[milvus]'")


#: Starts of the shared milvus-lite server tried before the tests that need it fail.
MILVUS_START_ATTEMPTS = 3


def collection_name(prefix: str = "t") -> str:
    """A collection name no other test uses: the tests of a module share one Milvus server (:func:`milvus_uri`)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def start_milvus_server(folder: Callable[[], Path], attempts: int = MILVUS_START_ATTEMPTS):
    """A started :class:`~qama.backends.milvus.LocalMilvusServer` (database in a new ``folder()`` each
    try). milvus-lite sometimes aborts at start on a loaded machine ("exited with status -6 at start"):
    a failed start is retried with a new port and database, and after ``attempts`` the error names each."""
    from qama.backends.milvus import LocalMilvusServer, MilvusUnavailableError

    failures = []
    for attempt in range(1, attempts + 1):
        server = LocalMilvusServer(folder() / "test.db", lifetime=3 * 3600)
        try:
            server.start(wait=60)
            return server
        except MilvusUnavailableError as e:
            server.stop()
            failures.append(f"attempt {attempt}: {e}")
    tries = "; ".join(failures)
    raise MilvusUnavailableError(f"milvus-lite did not start for the tests in {attempts} attempts ({tries})")


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of one milvus-lite server for the tests of a module (started by
    :func:`start_milvus_server`; it stops after the module, or after 3 hours); tests keep apart by
    collection names (:func:`collection_name`). Not one server for the whole session: its clients'
    gRPC channels to one address, idle between modules, were refused for 30 s and more after the
    server's "too_many_pings" GOAWAY (two failures in one CI run); a server per module gives each
    module fresh channels."""
    require_milvus()
    server = start_milvus_server(lambda: tmp_path_factory.mktemp("milvus"))
    try:
        yield server.uri
    finally:
        server.stop()
