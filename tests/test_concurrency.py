"""Index folders under concurrent use and under SIGKILL (small versions of the benchmark scripts)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qama.codes import make_plan
from qama.index import IndexLockedError, QamaIndex, writer_lock
from qama.search import ThresholdEncoder

BENCH = Path(__file__).resolve().parents[1] / "stress"


def _index(tmp_path: Path) -> tuple[QamaIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", 16))
    return QamaIndex.create(tmp_path / "idx", enc, emb[:200], [f"d{i}" for i in range(200)]), emb


def test_a_second_writer_is_refused(tmp_path):
    index, emb = _index(tmp_path)
    with writer_lock(index.path):
        other = QamaIndex.open(index.path)
        with pytest.raises(IndexLockedError, match="another process is writing this index"):
            other.add(emb[200:210], [f"d{i}" for i in range(200, 210)])
        with pytest.raises(IndexLockedError):
            other.delete(["d0"])
    assert len(QamaIndex.open(index.path)) == 200  # nothing was merged


def test_a_stale_writer_builds_on_the_newest_version(tmp_path):
    index, emb = _index(tmp_path)
    stale = QamaIndex.open(index.path)
    index.add(emb[200:250], [f"d{i}" for i in range(200, 250)])
    stale.add(emb[250:300], [f"d{i}" for i in range(250, 300)])  # opened before the first add
    fresh = QamaIndex.open(index.path)
    assert len(fresh) == 300 and [fresh.doc_id(i) for i in (199, 200, 299)] == ["d199", "d200", "d299"]


def test_readers_never_see_a_torn_version():
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "concurrency_test.py"),
            "--readers",
            "2",
            "--queries",
            "40",
            "--commits",
            "3",
            "--base",
            "3000",
            "--step",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 inconsistent answers" in out.stdout and "refused 3/3 times" in out.stdout


def test_sigkill_leaves_a_complete_version():
    out = subprocess.run(
        [sys.executable, str(BENCH / "kill_test.py"), "--runs", "4"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kills" in out.stdout and " 0 torn states" in out.stdout


def test_two_trainings_into_one_folder_one_is_refused(tmp_path, monkeypatch):
    """Two trainings into one adapter folder swapped each other's checkpoints (``checkpoint.tmp`` removed
    under the other's feet: a `FileNotFoundError`, or a checkpoint of one's weights and the other's step).
    The folder is locked while a training writes it: a second is refused at once, and one that gets the
    lock after the first finished checks the folder again (the first's adapter is not replaced)."""
    import qama._io
    import qama.train as T
    from qama.errors import FolderLockedError

    x = np.random.default_rng(0).standard_normal((96, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cfg = T.TrainConfig(steps=2, batch_size=32, progress=False, checkpoint_every=1, check=False)
    out = tmp_path / "ad"
    out.mkdir()
    with qama._io.folder_lock(out, "held by the test"):
        with pytest.raises(FolderLockedError) as e:
            T.fit(x, cfg, out_dir=out)
    assert str(e.value) == f"{out}: another process is training into this folder; wait for it or choose another --out"
    assert not any(out.iterdir())
    with pytest.raises(ValueError):  # bad input: the folder the training made for its adapter is not left
        T.fit(x[:, :0], cfg, out_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()

    real_lock = T.folder_lock

    @contextlib.contextmanager
    def lock_after_another_finished(path, busy):
        monkeypatch.setattr(T, "folder_lock", real_lock)
        T.fit(x, cfg, out_dir=path)  # the other training, done between the first check and the lock
        with real_lock(path, busy):
            yield

    monkeypatch.setattr(T, "folder_lock", lock_after_another_finished)
    first = (out / "config.json", out / "model.safetensors")
    with pytest.raises(FileExistsError, match="already holds config.json and model.safetensors"):
        T.fit(x, cfg, out_dir=out)
    assert all(p.is_file() for p in first)


def test_two_reports_into_one_folder_one_is_refused(tmp_path):
    """Two reports into one folder wrote each other's config.json and stages, and fitted into one adapter
    folder: the second is now refused at once, before any work, and writes nothing."""
    import qama._io
    from qama.config import ExperimentConfig
    from qama.errors import FolderLockedError
    from qama.evaluation.study import run_report

    out = tmp_path / "report"
    (out / "stages").mkdir(parents=True)
    config = ExperimentConfig(datasets=[{"path": str(tmp_path / "no-such-dataset")}])
    with qama._io.folder_lock(out, "held by the test"):
        with pytest.raises(FolderLockedError) as e:
            run_report(config, out, progress=False)
    assert str(e.value) == f"{out}: another qama report is running in this folder; wait for it or choose another --out"
    assert [p.name for p in out.iterdir()] == ["stages"]
