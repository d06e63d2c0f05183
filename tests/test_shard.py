"""Sharded loading: two ``qama index --shard I/2`` worker processes fill one Milvus collection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from qama.backends import open_backend
from qama.codes import hamming_distances
from tests.conftest import collection_name


def test_two_shard_workers_load_one_collection(milvus_uri: str, tmp_path: Path) -> None:  # noqa: F811
    rng = np.random.default_rng(11)
    n, d = 501, 32
    emb = rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # the CLI normalises embeddings
    ids = [f"s{i}" for i in range(n)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": f"t {i}", "text": "x"}) + "\n" for i in ids))
    np.save(tmp_path / "corpus.npy", emb)
    base = [sys.executable, "-m", "qama.cli", "-q", "index", "--corpus", str(corpus)]
    name = collection_name("sharded")
    base += ["--embeddings", str(tmp_path / "corpus.npy"), "--uri", milvus_uri, "--collection", name]
    workers = [subprocess.Popen([*base, "--shard", f"{i}/2"], stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err

    with open_backend(milvus_uri, "milvus", collection=name) as b:
        assert b.count() == n
        codes = b.encoder.encode(emb)  # both workers fitted the same thresholds on the whole corpus
        dist, got = b.search_codes(codes, 1)
        assert np.all(dist[:, 0] == 0)  # every document is there with its exact code
        rows = {d: i for i, d in enumerate(ids)}
        found = np.array([rows[g] for g in got[:, 0]])
        ref = hamming_distances(codes, codes)
        assert np.all(ref[np.arange(n), found] == 0)  # a zero-distance twin at worst
        assert b.title("s400") == "t s400"
