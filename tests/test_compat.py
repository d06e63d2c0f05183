"""Indexes and adapters written by earlier versions of qama still open and search the same; indexes of
format version 1 (one set of files, before segments) also take appends and deletes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import qama
from qama.backends import open_backend
from qama.index import QamaIndex

DATA = Path(__file__).parent / "data" / "previous_main"


@pytest.mark.parametrize("tag", ["ebc7e07", "b4fb495", "e0baec2"])
def test_previous_indexes_open_and_search(tag: str, tmp_path: Path) -> None:
    queries = np.load(DATA / "queries.npy")  # documents 0..4: each finds itself first
    for name in (f"index_thresholds_{tag}", f"index_adapter_{tag}", f"adapter_{tag}"):
        shutil.copytree(DATA / name, tmp_path / name)
    thresholds = QamaIndex.open(tmp_path / f"index_thresholds_{tag}")
    _, rows = thresholds.search(queries, 3, oversample=4)
    assert list(rows[:, 0]) == [0, 1, 2, 3, 4]
    adapted = qama.open_index(tmp_path / f"index_adapter_{tag}", tmp_path / f"adapter_{tag}")
    assert [hits[0][0] for hits in qama.search_index(adapted, queries, k=2)] == ["d0", "d1", "d2", "d3", "d4"]
    with open_backend(tmp_path / f"index_adapter_{tag}", adapter=tmp_path / f"adapter_{tag}") as backend:
        _, ids = backend.search(queries, 1, oversample=0)
        assert list(ids[:, 0]) == ["d0", "d1", "d2", "d3", "d4"]


def test_format_1_index_searches_and_takes_appends_as_segments(tmp_path: Path) -> None:
    """The last main of format version 1 (e0baec2) wrote this index: 50 documents with titles and vectors,
    10 appended, one deleted. It opens and searches as a version-2 index of the same rows does; an append
    keeps its files as the first segment (nothing of them rewritten) and commits a version-2 manifest."""
    shutil.copytree(DATA / "index_full_e0baec2", tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / "manifest.json").read_text())["version"] == 1
    old = QamaIndex.open(tmp_path / "v1")
    ids, titles, vectors = old.ids.to_list(), old.titles.to_list(), np.asarray(old.vectors)
    assert len(old) == 59 and "d7" not in ids and old.segment_counts == [59] and titles[58] == "title 59"
    queries = np.load(DATA / "queries.npy")
    fresh = QamaIndex.create(tmp_path / "v2", old.encoder, vectors, ids, titles=titles, keep_vectors=True)
    _same(old, fresh, queries)
    before = {p.name: p.read_bytes() for p in (tmp_path / "v1").iterdir() if p.name != "manifest.json"}
    extra = -vectors[:4]
    old.add(extra, ["n0", "n1", "n2", "n3"], titles=["t0", "t1", "t2", "t3"])
    fresh.add(extra, ["n0", "n1", "n2", "n3"], titles=["t0", "t1", "t2", "t3"])
    after = {p.name: p.read_bytes() for p in (tmp_path / "v1").iterdir()}
    assert all(after.get(name) == data for name, data in before.items() if name != "writer.lock")  # kept as they were
    assert json.loads(after["manifest.json"])["version"] == 2
    again = QamaIndex.open(tmp_path / "v1")
    assert again.segment_counts == [59, 4] and again.doc_id(61) == "n2" and again.title(62) == "t3"
    _same(again, fresh, queries)
    assert again.delete(["d0", "n1"]) == 2 and fresh.delete(["d0", "n1"]) == 2
    _same(QamaIndex.open(tmp_path / "v1"), fresh, queries)
    # the adapter-built index of that main takes an append too
    for name in ("index_adapter_e0baec2", "adapter_e0baec2"):
        shutil.copytree(DATA / name, tmp_path / name)
    adapted = qama.open_index(tmp_path / "index_adapter_e0baec2", tmp_path / "adapter_e0baec2")
    adapted.add(-queries, [f"q{i}" for i in range(5)])
    adapted = qama.open_index(tmp_path / "index_adapter_e0baec2", tmp_path / "adapter_e0baec2")
    hits = qama.search_index(adapted, -queries, k=1, oversample=0)
    assert [h[0][0] for h in hits] == [f"q{i}" for i in range(5)]


def _same(a: QamaIndex, b: QamaIndex, queries: np.ndarray) -> None:
    """Every search mode gives the same rows and scores on both indexes."""
    for k in (1, 5, len(a) + 3):
        for kwargs in ({}, {"oversample": 4, "rescore": "asymmetric"}, {"oversample": 4}, {"mode": "adc"}):
            for x, y in zip(a.search(queries, k, **kwargs), b.search(queries, k, **kwargs), strict=True):
                np.testing.assert_array_equal(x, y)
