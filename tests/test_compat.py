"""Indexes and adapters written by earlier versions of qama still open and search the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import qama
from qama.backends import open_backend
from qama.index import QamaIndex

DATA = Path(__file__).parent / "data" / "previous_main"


@pytest.mark.parametrize("tag", ["ebc7e07", "b4fb495"])
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
