"""The dataset shipped in the package (Cranfield): loads offline with its documented counts, a folder
wins over its name, other names still download, and ``qama report`` with no dataset studies it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import qama
from qama import data
from qama.cli import main
from qama.data import load_dataset
from tests.conftest import write_beir


def test_embedded_cranfield_loads_with_its_documented_counts(tmp_path):
    ds = load_dataset("cranfield", cache_dir=tmp_path)
    assert (len(ds.doc_ids), len(ds.query_ids), len(ds.qrels)) == (1400, 225, 225)
    assert sum(len(v) for v in ds.qrels.values()) == 1612
    assert {r for v in ds.qrels.values() for r in v.values()} == {1, 2, 3, 4}
    assert ds.name == "cranfield" and ds.path.is_relative_to(tmp_path)  # unpacked into the cache, not ../shared
    archive = Path(qama.__file__).parent / "datasets" / "cranfield.tar.xz"
    assert archive.is_file() and archive.stat().st_size < 1_000_000
    readme = (archive.parent / "README.md").read_text()
    assert all(s in readme for s in ("1,400 documents", "225 queries", "1,612 judgments", "Licence"))
    again = load_dataset("cranfield", cache_dir=tmp_path)  # unpacked once
    assert again.path == ds.path and again.doc_texts == ds.doc_texts


def test_cranfield_loads_from_a_read_only_cache_folder(tmp_path, monkeypatch):
    """A cache folder that exists but cannot be written (a read-only shared ``$QAMA_CACHE``; as root, the refusal
    is simulated): Cranfield is unpacked into a temporary folder, as when the cache cannot be made (before:
    PermissionError: only a cache that could not be created fell back)."""
    import tempfile

    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    real = tempfile.TemporaryDirectory

    def temporary_directory(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(cache):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(data.tempfile, "TemporaryDirectory", temporary_directory)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(data.tempfile, "tempdir", str(tmp_path / "tmp"))  # the fallback's folder, removed with tmp_path
    ds = load_dataset("cranfield", cache_dir=cache)
    assert (len(ds.doc_ids), len(ds.query_ids), len(ds.qrels)) == (1400, 225, 225) and ds.name == "cranfield"
    assert ds.path.parent.parent == tmp_path / "tmp" and ds.path.parent.name.startswith("qama-cranfield-")


def test_a_folder_wins_over_the_embedded_name(tmp_path, monkeypatch):
    write_beir(tmp_path / "cranfield", [{"_id": "d1", "text": "x"}], [{"_id": "q1", "text": "y"}], [("q1", "d1", 1)])
    monkeypatch.chdir(tmp_path)
    assert len(load_dataset("cranfield", cache_dir=tmp_path / "cache").doc_ids) == 1


def test_other_names_still_download(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, cache_dir, *a, **kw):
        calls.append(name)
        docs, queries = [{"_id": "d1", "text": "x"}], [{"_id": "q1", "text": "y"}]
        return write_beir(tmp_path / name, docs, queries, [("q1", "d1", 1)])

    monkeypatch.setattr(data, "download_beir", fake_download)
    assert load_dataset("nfcorpus", cache_dir=tmp_path).name == "nfcorpus" and calls == ["nfcorpus"]
    assert data.embedded_dataset("nfcorpus") is None


def test_report_without_a_dataset_studies_cranfield(tmp_path, monkeypatch):
    import qama.evaluation.study

    seen = {}

    def fake_run(config, out, command="", progress=True):
        seen["config"] = config
        return {"seconds": 0.0}

    monkeypatch.setattr(qama.evaluation.study, "run_report", fake_run)
    assert main(["-q", "report", "--out", str(tmp_path / "r")]) == 0
    assert [d.path for d in seen["config"].datasets] == ["cranfield"] and "pq64" in seen["config"].peers
    assert main(["-q", "report", "--no-peers", "--out", str(tmp_path / "r")]) == 0
    assert seen["config"].peers == []
    assert main(["-q", "report", "--peers", "rabitq1", "st-int8", "--out", str(tmp_path / "r")]) == 0
    assert seen["config"].peers == ["rabitq1", "st-int8"]
    assert main(["-q", "report", "--peers", "lsh", "--out", str(tmp_path / "r")]) == 2


def _readme_first_command() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(r"```bash\n(.*?)\n```", readme, re.S)[1]


@pytest.mark.slow
def test_the_readme_first_command_runs_offline_from_the_package(tmp_path, monkeypatch):
    """The README's first command, with fewer steps and a small speed table: the embedded dataset,
    the offline default model (embedding Cranfield takes about 1-4 minutes on 2 cores)."""
    command = _readme_first_command().split("&&")[-1].split()
    assert command[:2] == [".venv/bin/qama", "report"] and "--dataset" not in command
    monkeypatch.setenv("QAMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "r"
    args = command[2:]
    if "--out" in args:  # the test's own folder instead
        i = args.index("--out")
        args = args[:i] + args[i + 2 :]
    rc = main(["-q", "report", *args, "--out", str(out), "--steps", "3", "--no-ablation", "--speed-vectors", "3000"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"] == ["cranfield"] and os.path.isfile(out / "storage_quality.png")
    fp32 = next(e for e in results["main"] if (e["format"], e["dims"]) == ("fp32", 384))
    assert abs(fp32["ndcg@10"]["cranfield"] - 0.382) < 0.002  # the documented reference figure
    assert {"faiss-pq", "faiss-rabitq", "st-ubinary", "st-int8"} <= {e["format"] for e in results["main"]}
