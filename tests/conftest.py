"""Shared fixtures: a tiny BEIR-layout dataset with embeddings, and the shared benchmark data."""

from __future__ import annotations

import json
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
