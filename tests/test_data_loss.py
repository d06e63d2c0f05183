"""Nothing of the user's is ever deleted or replaced: index, train and report output folders."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from qama.cli import main
from qama.codes import make_plan
from qama.index import QamaIndex
from qama.search import ThresholdEncoder

EMB = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
IDS = [f"d{i}" for i in range(50)]


def _encoder() -> ThresholdEncoder:
    return ThresholdEncoder.fit(EMB, make_plan("2bit", 16))


def _user_files(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "vectors-202401.npy", np.ones((3, 3)))
    (folder / "ids-000123.csv").write_text("a\n")
    (folder / "codes-000001.npy").write_bytes(b"mine")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_index_refuses_a_folder_of_user_files_and_leaves_them(tmp_path):
    before = _user_files(tmp_path / "mydir")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"mydir: the folder is not empty and holds no qama index"):
            QamaIndex.create(tmp_path / "mydir", _encoder(), EMB, IDS, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in (tmp_path / "mydir").iterdir()} == before


def _names(manifest: dict) -> set[str]:
    """The files a manifest lists (the encoder's and every segment's)."""
    names = {f["name"] for f in manifest["files"].values()}
    return names | {f["name"] for seg in manifest["segments"] for f in seg["files"].values()}


def test_commit_removes_only_the_files_the_index_wrote(tmp_path):
    index = QamaIndex.create(tmp_path / "ix", _encoder(), EMB[:10], IDS[:10])
    mine = tmp_path / "ix" / "vectors-202401.npy"
    np.save(mine, np.ones(2))
    lookalike = tmp_path / "ix" / "codes-000007.npy"  # a generation name the index never wrote
    lookalike.write_bytes(b"user data")
    lookalike2 = tmp_path / "ix" / "ids-000009-1.off.npy"  # the names of segment files too
    lookalike2.write_bytes(b"user data")
    old = _names(index.manifest)
    index.add(EMB[10:20], IDS[10:20])
    index.delete(["d3"])  # rewrites the first segment: its files go, the appended segment's stay
    assert mine.is_file() and lookalike.read_bytes() == b"user data" and lookalike2.read_bytes() == b"user data"
    live = _names(index.manifest)
    assert old - live and not any((tmp_path / "ix" / name).exists() for name in old - live)  # superseded: gone
    assert len(index.manifest["segments"]) == 2 and live & old == {index.manifest["files"]["encoder"]["name"]}
    again = QamaIndex.create(tmp_path / "ix", _encoder(), EMB[:5], IDS[:5], overwrite=True)
    assert len(again) == 5 and mine.is_file() and lookalike.is_file() and lookalike2.is_file()
    assert not any((tmp_path / "ix" / name).exists() for name in live - _names(again.manifest))


def test_index_cli_refuses_before_any_work(tmp_path, tiny):
    before = _user_files(tmp_path / "mydir")
    emb = tiny.parent / "tiny-emb"
    rc = main(["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--out", str(tmp_path / "mydir")])
    assert rc == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "mydir").iterdir()} == before


def _create(args: tuple[str, int]) -> str:
    path, seed = args
    emb = np.random.default_rng(seed).standard_normal((20000, 16)).astype(np.float32)
    try:
        QamaIndex.create(path, ThresholdEncoder.fit(emb, make_plan("2bit", 16)), emb, [f"d{i}" for i in range(20000)])
        return "created"
    except (FileExistsError, RuntimeError) as e:
        return type(e).__name__


def test_two_concurrent_creators_one_wins(tmp_path):
    ctx = mp.get_context("spawn")
    for trial in range(3):
        path = str(tmp_path / f"ix{trial}")
        with ctx.Pool(2) as pool:
            outcomes = pool.map(_create, [(path, 1), (path, 2)])
        assert sorted(outcomes).count("created") == 1, outcomes
        assert set(outcomes) - {"created"} <= {"FileExistsError", "IndexLockedError"}
        assert len(QamaIndex.open(path)) == 20000


def test_train_refuses_an_existing_adapter_folder(tmp_path, tiny):
    emb = tiny.parent / "tiny-emb"
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.json").write_text('{"my": 1}')
    (proj / "model.safetensors").write_text("x")
    args = ["-q", "train", "--dataset", str(tiny), "--embeddings", str(emb), "--steps", "2"]
    args += ["--train-batch-size", "16", "--nested-dims", "8", "16", "--pseudo-queries", "none", "--out", str(proj)]
    assert main(args) == 2
    assert (proj / "config.json").read_text() == '{"my": 1}' and (proj / "model.safetensors").read_text() == "x"
    assert main([*args, "--overwrite"]) == 0
    assert (proj / "config.json").read_text() != '{"my": 1}'


def test_train_out_that_is_a_file_fails_before_training(tmp_path, tiny, capsys):
    emb = tiny.parent / "tiny-emb"
    target = tmp_path / "file"
    target.write_text("keep")
    args = ["-q", "train", "--dataset", str(tiny), "--embeddings", str(emb), "--out", str(target)]
    assert main(args) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "keep"


@pytest.mark.parametrize(
    "command, flag",
    [
        ("train", "--out"),
        ("index", "--out"),
        ("report", "--out"),
        ("eval", "--json"),
        ("eval", "--markdown"),
        ("ablate", "--json"),
    ],
)
def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, capsys, command, flag):
    """An output path under a file of the user's (``notes.txt/out``) is refused before the dataset is read
    (before: `[Errno 20] Not a directory` at the first write, after the work: the embedding and training, or
    the whole evaluation, lost; `[Errno 17] File exists` for ``--json``); the file is left as it is."""
    user = tmp_path / "notes.txt"
    user.write_text("keep")
    out = user / "sub" / "out"
    rc = main(["-q", command, "--dataset", str(tmp_path / "nowhere"), flag, str(out)])
    assert (rc, capsys.readouterr().err) == (2, f"qama: error: {out}: cannot be created, {user} is not a folder\n")
    assert user.read_text() == "keep"


def test_search_json_that_cannot_be_written_is_refused_before_the_search(tmp_path, capsys):
    """``qama search --json`` naming a folder, or a path under a file, is refused before the index is opened, as
    ``qama eval --json`` is (before: searched, then `[Errno 21] Is a directory: '….tmp' -> 'DIR'`)."""
    user = tmp_path / "notes.txt"
    user.write_text("keep")
    for out, message in (
        (tmp_path, f"{tmp_path}: is a folder; give the path of a file to write"),
        (user / "hits.json", f"{user / 'hits.json'}: cannot be created, {user} is not a folder"),
    ):
        rc = main(["-q", "search", "--index", str(tmp_path / "nowhere"), "--json", str(out), "text"])
        assert (rc, capsys.readouterr().err) == (2, f"qama: error: {message}\n")
    assert user.read_text() == "keep"


def test_report_refuses_a_folder_that_is_not_a_report(tmp_path, tiny):
    emb = tiny.parent / "tiny-emb"
    out = tmp_path / "proj"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    rc = main(["-q", "report", "--dataset", str(tiny), "--embeddings", str(emb), "--out", str(out)])
    assert rc == 2
    assert (out / "config.json").read_text() == '{"mine": true}'


def test_a_manifest_json_of_the_user_is_not_taken_for_an_index(tmp_path):
    """A folder holding the user's own manifest.json (a common name) is not an index: refused with or
    without --overwrite, and nothing in it replaced."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": "my project"}')
    (folder / "data.csv").write_text("precious\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"project/manifest.json: not the manifest of a qama index"):
            QamaIndex.create(folder, _encoder(), EMB, IDS, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "writer.lock"} == before


def test_one_string_for_ids_is_refused_not_read_as_its_characters(tmp_path):
    """``delete("ab")`` removed the documents "a" and "b" (a string is an iterable of characters), and
    ``add(emb, "pqr")`` stored three one-letter ids: both refused, nothing committed."""
    ids = ["a", "b", "ab", "c"]
    index = QamaIndex.create(tmp_path / "ix", _encoder(), EMB[:4], ids, titles=ids)
    for call in (lambda: index.delete("ab"), lambda: index.delete(b"ab")):
        with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one (str|bytes)"):
            call()
    with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one str"):
        index.add(EMB[4:7], "pqr", titles=["p", "q", "r"])
    with pytest.raises(TypeError, match=r"titles must be a list of titles, not one str"):
        index.add(EMB[4:7], ["p", "q", "r"], titles="pqr")
    assert QamaIndex.open(index.path).ids.to_list() == ids
    assert index.delete(["ab"]) == 1 and index.ids.to_list() == ["a", "b", "c"]


def test_a_commit_makes_its_renames_durable_before_removing_files(tmp_path, monkeypatch):
    """Renames are durable only once their folder is fsynced: without that, a power cut after a commit
    removed the superseded segment files could bring back the previous manifest, naming files that are
    gone (an index that no longer opens). The folder is fsynced after the new segment files are in place
    (before the manifest names them) and after the manifest's rename (before anything is removed)."""
    import os
    import stat

    index = QamaIndex.create(tmp_path / "ix", _encoder(), EMB[:20], IDS[:20])
    index.add(EMB[20:30], IDS[20:30])
    events: list = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, Path.unlink

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append("fsync folder")
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", Path(dst).name))

    def unlink(self, missing_ok=False):
        events.append(("remove", self.name))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    index.delete(["d3"])  # rewrites segment 0: its files are removed after the commit
    monkeypatch.undo()
    manifest = events.index(("rename", "manifest.json"))
    last_segment_file = max(i for i, e in enumerate(events[:manifest]) if e[0] == "rename")
    first_removal = min(i for i, e in enumerate(events) if e[0] == "remove")
    assert "fsync folder" in events[last_segment_file:manifest], events
    assert "fsync folder" in events[manifest:first_removal], events
    assert len(QamaIndex.open(index.path)) == 29


def test_a_create_killed_midway_can_be_run_again(tmp_path, monkeypatch):
    """A create killed before its manifest existed left its own files (segment, encoder, a temporary
    file): the folder was then refused for good ('not empty and holds no qama index'), even with
    --overwrite. Running it again now works and removes them; a file of the user's is still refused."""
    import qama.index as qi

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest was written")

    monkeypatch.setattr(qi, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        QamaIndex.create(tmp_path / "ix", _encoder(), EMB, IDS, keep_vectors=True)
    monkeypatch.undo()
    (tmp_path / "ix" / ".vectors-000001-1.npy.k1ll3d.tmp").write_bytes(b"\0" * 100)
    left = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert "codes-000001-1.npy" in left and "manifest.json" not in left
    index = QamaIndex.create(tmp_path / "ix", _encoder(), EMB, IDS)
    assert len(index) == 50 and {p.name for p in index.path.iterdir()} == _names(index.manifest) | {
        "manifest.json",
        "writer.lock",
    }
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "codes-000001-1.npy").write_bytes(b"mine")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"other: the folder is not empty and holds no qama index"):
        QamaIndex.create(tmp_path / "other", _encoder(), EMB, IDS)


def test_the_index_folder_store_refuses_one_string_for_ids(tmp_path):
    """The index folder's backend turned ids into a list before the index could see them: add(emb, "pqr")
    stored the ids "p", "q", "r" (the first add creates the index, a later one appends)."""
    from qama.backends import open_backend

    with open_backend(tmp_path / "ix", encoder=_encoder(), create=True) as backend:
        with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one str"):
            backend.add(EMB[:3], "pqr")
        backend.add(EMB[:3], ["a", "b", "c"])
        with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one str"):
            backend.add(EMB[3:6], "pqr")
        with pytest.raises(TypeError, match=r"ids must be a list of document ids, not one str"):
            backend.delete("ab")
        assert backend.count() == 3


def test_a_create_makes_the_new_folder_itself_durable(tmp_path, monkeypatch):
    """A create fsynced the index folder (the renames of its files and manifest) but not the folder
    holding it: after a power cut the new folder's entry, and with it the whole index, could be gone
    although create had returned. The parent of every folder the create made is now fsynced after the
    manifest is written (and the parent of an index folder that was there already)."""
    import qama.index as qi

    events: list = []
    real_fsync_dir, real_write_json = qi.fsync_dir, qi.write_json

    def fsync_dir(path):
        events.append(("fsync", Path(path)))
        real_fsync_dir(path)

    def write_json(path, obj):
        events.append(("write", Path(path).name))
        real_write_json(path, obj)

    monkeypatch.setattr(qi, "fsync_dir", fsync_dir)
    monkeypatch.setattr(qi, "write_json", write_json)
    ix = tmp_path / "a" / "b" / "ix"
    QamaIndex.create(ix, _encoder(), EMB, IDS)
    manifest = events.index(("write", "manifest.json"))
    parents = [("fsync", p) for p in (ix.parent, tmp_path / "a", tmp_path)]
    assert events[manifest:] == [("write", "manifest.json"), ("fsync", ix), *parents]
    (tmp_path / "empty").mkdir()
    for folder, overwrite in ((tmp_path / "empty", False), (ix, True)):
        events.clear()
        QamaIndex.create(folder, _encoder(), EMB, IDS, overwrite=overwrite)
        manifest = events.index(("write", "manifest.json"))
        assert events[manifest:] == [("write", "manifest.json"), ("fsync", folder), ("fsync", folder.parent)]


@pytest.mark.parametrize("generation", ["3", None, -1, 2.5, [3], 3])
def test_overwrite_removes_the_old_index_whatever_its_generation_says(tmp_path, generation, caplog):
    """Overwriting an index whose manifest's ``generation`` was not a whole number (a damaged or edited
    manifest) left every file of the old index in the folder: the generation was taken as 0 and no file
    as the old index's. Now the files the old manifest lists are removed once the new manifest is in
    place, and the new generation follows the highest one listed (no old file is replaced before then).
    Only names an index writes: a name the manifest lists that qama never writes (``notes.txt``, here
    listed as a file of the index), and a lookalike it does not list, are the user's and stay."""
    import json
    import logging

    index = QamaIndex.create(tmp_path / "ix", _encoder(), EMB[:20], IDS[:20], keep_vectors=True)
    index.add(EMB[20:30], IDS[20:30])
    index.add(EMB[30:40], IDS[30:40])
    folder = index.path
    (folder / "notes.txt").write_text("mine")
    (folder / "codes-000002.npy").write_bytes(b"user data")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["generation"] == 3 and len(m["segments"]) == 3
    m["generation"] = generation
    m["files"]["notes"] = {"name": "notes.txt", "bytes": 4, "sha256": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING, logger="qama.index"):
        again = QamaIndex.create(folder, _encoder(), EMB[:5], IDS[:5], overwrite=True)
    assert again.manifest["generation"] == 4 and len(QamaIndex.open(folder)) == 5
    kept = {"manifest.json", "writer.lock", "notes.txt", "codes-000002.npy"}
    assert {p.name for p in folder.iterdir()} == _names(again.manifest) | kept
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "codes-000002.npy").read_bytes() == b"user data"
    warned = [r.getMessage() for r in caplog.records]
    if generation == 3:
        assert warned == []
    else:
        assert warned == [
            f"{folder / 'manifest.json'}: field 'generation' is {generation!r}, not a whole number >= 0; "
            "the 13 index files it lists are removed"  # the encoder's, and 4 of each of the 3 segments
        ]


def test_index_shards_into_one_folder_append_and_never_replace_each_other(tmp_path, tiny, capsys):
    """``qama index --shard I/N --out DIR``: each worker adds its part to the one index folder (before: the
    second worker was refused, 'an index already exists here (--overwrite … replaces it)', and with
    ``--overwrite`` it replaced the parts the other workers had written)."""
    emb = tiny.parent / "tiny-emb"
    base = ["-q", "index", "--dataset", str(tiny), "--embeddings", str(emb), "--query-sample", "none"]
    out = ["--out", str(tmp_path / "ix")]
    for i in range(2):
        assert main([*base, *out, "--shard", f"{i}/2"]) == 0
    index = QamaIndex.open(tmp_path / "ix")
    assert index.ids.to_list() == [f"d{i}" for i in range(40)]
    capsys.readouterr()
    assert main([*base, *out, "--shard", "1/2"]) == 2  # a shard run twice: its ids are there already
    dup = "qama: error: 20 document id(s) already in the index, e.g. ['d20', 'd21', 'd22']\n"
    assert capsys.readouterr().err == dup
    assert main([*base, *out, "--shard", "1/2", "--overwrite"]) == 2  # would drop the other workers' parts
    assert capsys.readouterr().err == (
        f"qama: error: {tmp_path / 'ix'}: --overwrite replaces the whole index, the parts other --shard workers "
        "added with it; remove the index to start anew\n"
    )
    assert QamaIndex.open(tmp_path / "ix").ids.to_list() == [f"d{i}" for i in range(40)]
    before = _user_files(tmp_path / "mydir")  # a folder of the user's is refused as without --shard
    assert main([*base, "--out", str(tmp_path / "mydir"), "--shard", "0/2"]) == 2
    assert "mydir: the folder is not empty and holds no qama index" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "mydir").iterdir()} == before


def test_api_index_corpus_shard_never_replaces_the_other_parts(tmp_path):
    import qama.api

    emb = EMB / np.linalg.norm(EMB, axis=1, keepdims=True)
    assert qama.api.index_corpus(tmp_path / "ix", emb, IDS, None, "2bit", shard="0/2", progress=False) == 25
    with pytest.raises(FileExistsError, match=r"ix: --overwrite replaces the whole index, the parts other --shard"):
        qama.api.index_corpus(tmp_path / "ix", emb, IDS, None, "2bit", shard="1/2", overwrite=True, progress=False)
    assert qama.api.index_corpus(tmp_path / "ix", emb, IDS, None, "2bit", shard="1/2", progress=False) == 50
    assert QamaIndex.open(tmp_path / "ix").ids.to_list() == IDS


def test_train_refuses_folders_of_the_user_named_like_its_checkpoint_scratch(tmp_path):
    """``checkpoint.tmp`` and ``checkpoint.old`` in the adapter folder are removed whole (``rmtree``) at every
    checkpoint: one of the user's is refused before any work (before: deleted with what it held). Those a
    checkpoint killed midway left (``state.safetensors``, ``meta.json``) are still taken for qama's."""
    import qama

    x = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = tmp_path / "ad"
    (out / "checkpoint.old").mkdir(parents=True)
    (out / "checkpoint.old" / "notes.txt").write_text("mine")
    settings = {"steps": 4, "batch_size": 64, "checkpoint_every": 2, "progress": False}
    with pytest.raises(FileExistsError) as e:
        qama.fit(x, out=out, **settings)
    assert str(e.value) == (
        f"{out / 'checkpoint.old'}: exists but is not a qama checkpoint (qama removes it while checkpointing); "
        "move it or choose another --out"
    )
    assert (out / "checkpoint.old" / "notes.txt").read_text() == "mine"
    (out / "checkpoint.old" / "notes.txt").unlink()
    (out / "checkpoint.old").rmdir()
    (out / "checkpoint.tmp").write_text("mine too")
    with pytest.raises(FileExistsError, match=r"checkpoint\.tmp: exists but is not a qama checkpoint"):
        qama.fit(x, out=out, **settings)
    assert (out / "checkpoint.tmp").read_text() == "mine too"
    (out / "checkpoint.tmp").unlink()
    (out / "checkpoint.tmp").mkdir()  # a checkpoint write killed midway: qama's own
    (out / "checkpoint.tmp" / "state.safetensors").write_bytes(b"partial")
    qama.fit(x, out=out, **settings)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_sigterm_unwinds_a_training_as_ctrl_c_does(tmp_path, tiny, monkeypatch, capsys):
    """``kill`` (SIGTERM) stopped ``qama train`` without unwinding: the adapter folder it had made was left
    empty. SIGTERM now unwinds as Ctrl-C does (the folder made and not written is removed), the command says
    so and exits with 143, and the previous SIGTERM handler is back afterwards."""
    import os
    import signal

    import qama.train

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(qama.train, "_fit", killed)
    before = signal.getsignal(signal.SIGTERM)
    args = ["-q", "train", "--dataset", str(tiny), "--embeddings", str(tiny.parent / "tiny-emb"), "--steps", "2"]
    args += ["--train-batch-size", "16", "--nested-dims", "8", "16", "--pseudo-queries", "none"]
    assert main([*args, "--out", str(tmp_path / "ad")]) == 143
    assert capsys.readouterr().err == "qama: terminated\n"
    assert not (tmp_path / "ad").exists() and signal.getsignal(signal.SIGTERM) is before
