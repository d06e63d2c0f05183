"""Index segments (format version 2): an append writes only its rows, a segmented index answers every
search exactly as one segment of the same rows does, merges and deletes keep that, reopening works."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import qama.index as qi
from qama._segments import RowSegments
from qama.codes import make_plan
from qama.index import LOCK, MANIFEST, IndexCorruptError, QamaIndex
from qama.search import ThresholdEncoder, hamming_search, hamming_search_reference

D = 32


def _emb(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _NormedEncoder(ThresholdEncoder):
    """Cosine scores (``level_norms2``), as an adapter's: the full asymmetric scan divides by lengths."""

    @property
    def level_norms2(self) -> np.ndarray:
        return self.centroids**2


def _files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (inode, mtime, size) of every file but the lock."""
    out = {}
    for p in folder.iterdir():
        if p.name != LOCK:
            st = p.stat()
            out[p.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def _written(before: dict, after: dict) -> dict[str, int]:
    """The files created or replaced between two snapshots, with their sizes."""
    return {name: st[2] for name, st in after.items() if before.get(name) != st}


def _searches(index: QamaIndex, q: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every way to search the index: Hamming, rescored by codes and by vectors, the full asymmetric
    scan, the query codes' scan; k below, at and beyond the index's size."""
    out = []
    for k in (1, 7, len(index), len(index) + 5):
        out.append(index.search(q, k))
        out.append(index.search(q, k, oversample=4, rescore="asymmetric"))
        out.append(index.search(q, k, oversample=3, rescore="vectors"))
        out.append(index.search(q, k, mode="adc"))
        out.append(index.search_codes(index.encoder.encode_queries(q), k))
    return out


def _same(a: list, b: list) -> None:
    for j, ((s1, i1), (s2, i2)) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(i1, i2, err_msg=f"search {j} of _searches")
        np.testing.assert_array_equal(s1, s2, err_msg=f"search {j} of _searches")


def test_an_append_writes_only_the_new_rows(tmp_path: Path) -> None:
    emb = _emb(3000)
    ids = [f"document-{i:05d}" for i in range(3000)]
    titles = [f"title {i}" for i in range(3000)]
    enc = ThresholdEncoder.fit(emb, make_plan("hybrid", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:2000], ids[:2000], titles=titles[:2000], keep_vectors=True)
    per_row = index.row_size + 4 * D + 2 * 8 + len(ids[0]) + len(titles[-1])  # codes, vectors, 2 offsets, strings
    header = 128  # a .npy header
    for lo, m in ((2000, 10), (2010, 100), (2110, 890)):
        before = _files(index.path)
        index.add(emb[lo : lo + m], ids[lo : lo + m], titles=titles[lo : lo + m])
        written = _written(before, _files(index.path))
        # nothing that was there is replaced or removed: only the new segment's six files and the manifest
        assert set(before) - {MANIFEST} <= set(_files(index.path))
        assert MANIFEST in written and len(written) == 7, sorted(written)
        new = {k: v for k, v in written.items() if k != MANIFEST}
        assert sum(new.values()) <= m * per_row + 6 * header + 2 * 8
        assert index.segment_counts[-1] == m
    assert index.segment_counts == [2000, 10, 100, 890] and len(index) == 3000
    assert index.manifest["version"] == qi.VERSION == 2
    # the same rows in one segment answer every search the same way
    one = QamaIndex.create(tmp_path / "one", enc, emb, ids, titles=titles, keep_vectors=True)
    q = _emb(9, seed=1)
    _same(_searches(index, q), _searches(one, q))
    again = QamaIndex.open(index.path)  # reopened, checksums verified
    _same(_searches(again, q), _searches(one, q))
    rows = (0, 1999, 2000, 2009, 2010, 2999)  # either side of each segment's boundary
    assert [again.doc_id(r) for r in rows] == [ids[r] for r in rows]
    assert again.title(2500) == titles[2500] and again.ids.to_list() == ids
    np.testing.assert_array_equal(np.asarray(again.vectors), emb)


@pytest.mark.parametrize("encoder_class", [ThresholdEncoder, _NormedEncoder])
def test_segments_merges_deletes_and_compaction_answer_as_one_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder_class: type[ThresholdEncoder]
) -> None:
    monkeypatch.setattr(qi, "MAX_SEGMENTS", 4)
    monkeypatch.setattr(qi, "WRITE_CHUNK_BYTES", 200)  # merges and deletes copy rows a few at a time
    emb = _emb(700)
    ids = [f"d{i}" for i in range(700)]
    titles = [f"t{i} é" for i in range(700)]
    enc = encoder_class.fit(emb, make_plan("hybrid", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:300], ids[:300], titles=titles[:300], keep_vectors=True)
    q = np.concatenate([_emb(6, seed=2), emb[[5, 310, 650]]])
    bounds = [300, 340, 360, 380, 390, 400, 500, 520, 700]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        index.add(emb[lo:hi], ids[lo:hi], titles=titles[lo:hi])
        assert len(index.manifest["segments"]) <= 4 and sum(index.segment_counts) == hi
        one = QamaIndex.create(tmp_path / f"one{hi}", enc, emb[:hi], ids[:hi], titles=titles[:hi], keep_vectors=True)
        _same(_searches(index, q), _searches(one, q))
    assert index.segment_counts == [300, 220, 180]  # 40, 20, 20, 10 merged; then 90, 10, 100, 20
    # deletes rewrite only the segments that held the documents; an emptied segment goes
    counts = index.segment_counts
    starts = np.cumsum([0, *counts])
    last = list(range(starts[-2], starts[-1]))
    gone = {ids[3], ids[starts[1] + 1], *(ids[r] for r in last)}
    before = _files(index.path)
    assert index.delete(gone) == len(gone)
    rewritten = {k for k in _written(before, _files(index.path)) if k != MANIFEST}
    assert len(rewritten) == 2 * 6 and index.segment_counts == [counts[0] - 1, counts[1] - 1, *counts[2:-1]]
    keep = [r for r in range(700) if ids[r] not in gone]
    kept_ids, kept_titles = [ids[r] for r in keep], [titles[r] for r in keep]
    one = QamaIndex.create(tmp_path / "one-kept", enc, emb[keep], kept_ids, titles=kept_titles, keep_vectors=True)
    _same(_searches(index, q), _searches(one, q))
    reopen = lambda: QamaIndex.open(index.path, encoder=enc)  # noqa: E731  (the subclass is not stored)
    _same(_searches(reopen(), q), _searches(one, q))
    index.compact()
    assert index.segment_counts == [len(keep)] and index.ids.to_list() == [ids[r] for r in keep]
    _same(_searches(reopen(), q), _searches(one, q))
    assert {p.name for p in index.path.iterdir()} == qi._owned_names(index.manifest) | {MANIFEST, LOCK}
    # delete everything: one empty segment keeps the columns; then an append starts afresh
    index.delete(index.ids.to_list())
    assert len(index) == 0 and index.titles is not None and index.vectors is not None
    index.add(emb[:3], ids[:3], titles=titles[:3])
    assert index.segment_counts == [3] and reopen().title(2) == titles[2]


def test_merge_policy_keeps_few_segments_and_leaves_the_large_ones() -> None:
    assert qi._merge_from([100, 10], 8) == 2  # no merge while there are at most 8
    assert qi._merge_from([200] + [10] * 8, 8) == 1  # the eight small ones, not the large one
    assert qi._merge_from([900, 80, 70, 60, 50, 40, 30, 20, 10], 8) == 1  # 20 + 10, then each older one joins
    assert qi._merge_from([200, 80, 70, 60, 50, 40, 30, 20, 10], 8) == 0  # ... up to the first: all of it
    assert qi._merge_from([5] * 9, 8) == 0  # equal sizes: everything
    assert qi._merge_from([1] * 12, 8) == 0
    assert qi._merge_from([100] * 11 + [1], 8) <= 7  # more than one over the limit: still at most 8 left
    # 200 appends of 10 rows onto 2000: few segments, and every row rewritten a few times at most
    counts, written = [2000], 0
    for _ in range(200):
        counts.append(10)
        lo = qi._merge_from(counts, 8)
        if lo < len(counts) - 1:
            written += sum(counts[lo:])
            counts[lo:] = [sum(counts[lo:])]
        else:
            written += 10
        assert len(counts) <= 8
    assert counts[0] == 2000 and written < 6 * 2000


def test_row_segments_read_as_one_array() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 8), dtype=np.uint8) for n in (5, 0, 7, 1)]
    rows, whole = RowSegments(parts), np.concatenate(parts)
    assert len(rows) == 13 and rows.shape == (13, 8) and rows.dtype == np.uint8
    pick = np.array([[12, 0, 5], [6, 4, 11]])
    np.testing.assert_array_equal(rows[pick], whole[pick])
    np.testing.assert_array_equal(rows[3:9], whole[3:9])
    np.testing.assert_array_equal(rows[-1], whole[-1])
    np.testing.assert_array_equal(np.asarray(rows), whole)
    with pytest.raises(IndexError):
        rows[np.array([13])]
    q = rng.integers(0, 256, (40, 8), dtype=np.uint8)  # the batch kernel, then the row kernel
    for nq in (40, 3):
        for k in (1, 4, 13, 20):
            d, i = hamming_search(rows, q[:nq], k)
            rd, ri = hamming_search_reference(whole, q[:nq], k)
            np.testing.assert_array_equal(d, rd)
            np.testing.assert_array_equal(i, ri)


def test_string_segments_are_indexed_as_a_list() -> None:
    """``index.ids`` and ``index.titles`` are indexed as the list of strings they read as (before:
    ``ids[:2]`` was ``TypeError: int() argument must be ... not 'slice'``, ``ids[-1]`` an IndexError)."""
    strings = ["a", "bb", "", "ccc", "d", "é"]
    column = qi.StringSegments([qi.StringColumn.from_strings(p) for p in (strings[:2], [], strings[2:5], strings[5:])])
    assert column[:2] == ["a", "bb"] and column[1:5:2] == ["bb", "ccc"] and column[::-1] == strings[::-1]
    assert column[10:] == [] and column[-1] == "é" and column[-6] == "a" and column[np.int64(3)] == "ccc"
    assert list(column) == strings
    with pytest.raises(IndexError, match=r"^row -7 is out of range for 6 rows$"):
        column[-7]
    with pytest.raises(IndexError, match=r"^row 6 is out of range for 6 rows$"):
        column[6]
    with pytest.raises(TypeError, match=r"^rows are whole numbers or slices, got str$"):
        column["a"]  # type: ignore[call-overload]


def test_version_1_index_is_read_as_one_segment_and_migrated_by_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written in the version-1 layout (what main before segments wrote), here by hand: it opens, and an
    append keeps its files as the first segment and writes a version-2 manifest."""
    emb = _emb(50)
    ids = [f"d{i}" for i in range(50)]
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    v2 = QamaIndex.create(tmp_path / "v2", enc, emb[:40], ids[:40], keep_vectors=True)
    m = json.loads((v2.path / MANIFEST).read_text())
    v1 = dict(m, version=1, files={**m["files"], **m["segments"][0]["files"]})
    del v1["segments"]
    (v2.path / MANIFEST).write_text(json.dumps(v1))
    index = QamaIndex.open(v2.path)
    assert index.segment_counts == [40] and len(index) == 40
    old_files = _files(index.path)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(qi, "write_json", crash)  # a crash before the manifest's rename leaves version 1
    with pytest.raises(KeyboardInterrupt):
        index.add(emb[40:], ids[40:])
    monkeypatch.undo()
    assert json.loads((index.path / MANIFEST).read_text())["version"] == 1
    index = QamaIndex.open(index.path)
    index.add(emb[40:], ids[40:])
    assert json.loads((index.path / MANIFEST).read_text())["version"] == 2
    assert index.segment_counts == [40, 10]
    assert all(_files(index.path)[name] == st for name, st in old_files.items() if name != MANIFEST)
    assert set(_files(index.path)) == qi._owned_names(index.manifest) | {MANIFEST}  # the crash's strays are gone
    one = QamaIndex.create(tmp_path / "one", enc, emb, ids, keep_vectors=True)
    _same(_searches(QamaIndex.open(index.path), emb[:4]), _searches(one, emb[:4]))


def test_segment_manifest_is_checked(tmp_path: Path) -> None:
    emb = _emb(30)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:20], [f"d{i}" for i in range(20)], keep_vectors=True)
    index.add(emb[20:], [f"d{i}" for i in range(20, 30)])
    good = json.loads((index.path / MANIFEST).read_text())
    cases = [
        (lambda m: m.update(segments=[]), "field 'segments' lists no segment"),
        (lambda m: m["segments"][1]["files"].pop("vectors"), "segment 1 has the files codes, ids, ids.off, segment 0"),
        (lambda m: m["segments"][1]["files"].pop("ids.off"), "segment 1 lists no ids.off file"),
        (lambda m: m["segments"][0]["files"].update(extra=m["files"]["encoder"]), "unknown file 'extra'"),
        (lambda m: m["segments"][1].update(count=-1), "field 'segments[1].count' must be in 0..inf"),
        (lambda m: m["segments"][0].update(count=10) or m["segments"][1].update(count=20), "codes of the wrong size"),
    ]
    for edit, message in cases:
        m = json.loads(json.dumps(good))
        edit(m)
        (index.path / MANIFEST).write_text(json.dumps(m))
        with pytest.raises(IndexCorruptError, match=re.escape(message)):
            QamaIndex.open(index.path)
    (index.path / MANIFEST).write_text(json.dumps(good))
    (index.path / good["segments"][1]["files"]["codes"]["name"]).unlink()
    with pytest.raises(IndexCorruptError, match=r"codes-000002-1.npy: missing codes file of the index"):
        QamaIndex.open(index.path)


def test_a_crash_after_the_manifest_swap_leaves_nothing_behind_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the new manifest is in place but before the superseded files are removed (or while
    a segment was being written): the index is the new one, and the next commit removes what the crash
    left (the superseded segment's files, the temporary file of a killed write), not only its own strays."""
    emb = _emb(40)
    ids = [f"d{i}" for i in range(40)]
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:20], ids[:20], titles=ids[:20])
    index.add(emb[20:30], ids[20:30], titles=ids[20:30])

    def killed(self: Path, missing_ok: bool = False) -> None:
        raise KeyboardInterrupt("killed while removing the superseded files")

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        index.delete(["d3"])  # rewrites segment 0: its files are superseded
    monkeypatch.undo()
    index = QamaIndex.open(index.path)
    assert len(index) == 29 and "d3" not in index.ids.to_list()
    left = {p.name for p in index.path.iterdir()} - qi._owned_names(index.manifest) - {MANIFEST, LOCK}
    assert left  # the superseded files of segment 0
    g = index.manifest["generation"] + 1  # a write of the next commit killed midway: its temporary file
    (index.path / f".codes-{g:06d}-1.npy.k1ll3d.tmp").write_bytes(b"\0" * 1000)
    (index.path / ".manifest.json.k1ll3d.tmp").write_text("{")
    (index.path / "notes.txt").write_text("mine")  # and the user's file stays
    index.add(emb[30:], ids[30:], titles=ids[30:])
    assert {p.name for p in index.path.iterdir()} == qi._owned_names(index.manifest) | {MANIFEST, LOCK, "notes.txt"}
    assert len(QamaIndex.open(index.path)) == 39


def test_a_manifest_listing_one_file_twice_is_refused(tmp_path: Path) -> None:
    """Two segments naming the same files would read every document twice (duplicate ids, each hit
    twice in the results): refused, naming both places."""
    emb = _emb(30)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:20], [f"d{i}" for i in range(20)])
    index.add(emb[20:], [f"d{i}" for i in range(20, 30)])
    m = json.loads((index.path / MANIFEST).read_text())
    m["segments"][1] = json.loads(json.dumps(m["segments"][0]))
    m["count"] = 40
    (index.path / MANIFEST).write_text(json.dumps(m))
    name = m["segments"][0]["files"]["codes"]["name"]
    with pytest.raises(IndexCorruptError, match=re.escape(f"file {name!r} is listed twice (segments[0].files.codes")):
        QamaIndex.open(index.path)


def test_ids_that_are_not_utf8_give_an_index_error_naming_the_file(tmp_path: Path) -> None:
    """An ids file whose bytes are not UTF-8 (its checksum made to match, or opened with verify=False):
    an IndexCorruptError naming the file and the row, never a bare UnicodeDecodeError. A delete or an
    append reads no id as a string: they look ids up in the segments' id tables, and building a
    segment's table checks its bytes are UTF-8, so both report the corruption even when the ids they
    look for are in another segment, and commit nothing."""
    emb = _emb(30)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:20], [f"d{i}" for i in range(20)])
    index.add(emb[20:], [f"d{i}" for i in range(20, 30)])
    name = index.manifest["segments"][1]["files"]["ids"]["name"]
    raw = bytearray((index.path / name).read_bytes())
    raw[-1] = 0xFF  # the last byte of the last id
    (index.path / name).write_bytes(bytes(raw))
    index = QamaIndex.open(index.path, verify=False)
    message = re.escape(f"{name}: row 9 is not valid UTF-8")
    calls = [
        lambda: index.doc_id(29),
        index.ids.to_list,
        lambda: index.delete(["d1"]),
        lambda: index.delete(["d29"]),
        lambda: index.add(emb[:1], ["new"]),
        lambda: index.row_of("d1"),
    ]
    for call in calls:
        with pytest.raises(IndexCorruptError, match=message):
            call()
    assert index.doc_id(28) == "d28" and len(QamaIndex.open(index.path, verify=False)) == 30


def test_check_utf8_raises_what_reading_the_rows_raises() -> None:
    """:meth:`StringColumn.check_utf8` decodes whole chunks of rows, not each row: it must still refuse
    a row that is not UTF-8 on its own though the bytes around it are (a character split across two
    rows), and name the row that reading each row in turn names first, wherever the chunks fall."""
    good = ["a", "é", "", "中文", "😀x", "", "b"]
    columns = {
        "valid": qi.StringColumn.from_strings(good),
        "split character": qi.StringColumn(np.frombuffer("aé".encode(), np.uint8).copy(), np.array([0, 2, 3])),
    }
    for k, bad in enumerate((0xFF, 0x80, 0xC3)):
        column = qi.StringColumn.from_strings(good)
        data = column.data.copy()
        data[[1, 3, 9][k]] = bad  # the first byte of é, 中 and 😀
        columns[f"byte {bad:#x}"] = qi.StringColumn(data, column.offsets)
    for what, column in columns.items():
        try:
            column.to_list()
            expected = None
        except IndexCorruptError as e:
            expected = str(e)
        for chunk_bytes in (1, 2, 3, 5, 1 << 20):
            try:
                column.check_utf8(chunk_bytes)
                got = None
            except IndexCorruptError as e:
                got = str(e)
            assert got == expected, (what, chunk_bytes)
        assert (expected is None) == (what == "valid"), what


def test_a_manifest_dim_below_the_plan_is_refused_at_open(tmp_path: Path) -> None:
    """A manifest whose 'dim' is smaller than its plan reads opened, and every search then failed with
    an error about the queries; refused at open, naming the manifest."""
    emb = _emb(30)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb, [f"d{i}" for i in range(30)])
    m = json.loads((index.path / MANIFEST).read_text())
    m["dim"] = 8
    (index.path / MANIFEST).write_text(json.dumps(m))
    message = r"manifest.json: field 'dim' is 8, but the plan 32:2 reads 32 dimensions"
    with pytest.raises(IndexCorruptError, match=message):
        QamaIndex.open(index.path)


def test_ids_and_titles_that_cannot_be_stored_are_refused_before_any_write(tmp_path: Path) -> None:
    """An id with a lone surrogate (not encodable as UTF-8) raised a bare UnicodeEncodeError after the
    new segment's codes were written; a title that is not a string, an AttributeError. Both are now
    refused before anything is written, naming the document."""
    emb = _emb(10)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:5], [f"d{i}" for i in range(5)], titles=list("abcde"))
    before = _files(index.path)
    with pytest.raises(
        ValueError, match=re.escape("ids[1] cannot be stored as UTF-8 (surrogates not allowed: 'x\\ud800')")
    ):
        index.add(emb[5:7], ["ok", "x\ud800"], titles=["f", "g"])
    with pytest.raises(ValueError, match=re.escape("titles[0] must be a string, got None")):
        index.add(emb[5:7], ["ok", "ok2"], titles=[None, "g"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=re.escape("titles[1] cannot be stored as UTF-8")):
        QamaIndex.create(tmp_path / "new", enc, emb[:2], ["a", "b"], titles=["t", "\udfff"])
    assert _files(index.path) == before and not (tmp_path / "new").exists()


def test_an_append_hashes_its_own_ids_and_the_newest_segment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicate-id check decoded every id of the index at each append (``set(ids.to_list())``: 0.4 s
    for an append of 1,000 rows onto 1M). Now each segment's ids are hashed once for the life of the
    index object and the table kept while the segment lives: an append hashes its own ids and the segment
    the previous append wrote, and decodes no stored id. The tables of segments a commit removed go."""
    monkeypatch.setattr(qi, "MAX_SEGMENTS", 3)
    emb = _emb(400)
    ids = [f"d{i}" for i in range(400)]
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:300], ids[:300])
    decoded: list[int] = []
    hashed: list[int] = []
    real_decode = qi.StringColumn._decode

    def decode(self: qi.StringColumn, raw: bytes, row: int) -> str:
        decoded.append(row)
        return real_decode(self, raw, row)

    monkeypatch.setattr(qi.StringColumn, "_decode", decode)
    index.add(emb[300:310], ids[300:310])
    assert decoded == []
    real_hashes = qi._string_hashes

    def hashes(column: qi.StringColumn, *args: int) -> np.ndarray:
        hashed.append(len(column))
        return real_hashes(column, *args)

    monkeypatch.setattr(qi, "_string_hashes", hashes)
    expected = {  # rows hashed by each append: its ids, then the segment the previous append wrote
        (310, 330): [20, 10],
        (330, 370): [40, 20],  # ... and merges the segments of 10 and 20 rows with its own 40: 70
        (370, 371): [1, 70],
    }
    for (lo, hi), rows in expected.items():
        hashed.clear()
        index.add(emb[lo:hi], ids[lo:hi])
        assert decoded == [] and hashed == rows, (lo, hi)
        live = {qi._id_key(seg) for seg in index.manifest["segments"]}
        assert set(index._id_rows) <= live and len(index._id_rows) == len(live) - 1  # all but the new segment
    assert index.segment_counts == [300, 70, 1]
    with pytest.raises(ValueError, match=re.escape("2 document id(s) already in the index, e.g. ['d5', 'd365']")):
        index.add(emb[:3], ["new", "d5", "d365"])
    assert hashed[-2:] == [3, 1] and decoded == []
    monkeypatch.undo()
    assert QamaIndex.open(index.path).ids.to_list() == ids[:371]


@pytest.mark.parametrize("collide", [False, True])
def test_duplicate_ids_are_refused_in_any_segment_and_after_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collide: bool
) -> None:
    """What an append refuses is unchanged by the id tables: an id of any segment (the first, one written
    by this object, one another writer committed meanwhile, a merged one), and the same id twice among
    the appended ones; an id deleted (by another writer) can be added again. ``collide``: every hash
    equal, the same answers (a match of hashes is confirmed on the bytes)."""
    if collide:
        monkeypatch.setattr(qi, "_string_hashes", lambda column, *args: np.zeros(len(column), np.uint64))
    monkeypatch.setattr(qi, "MAX_SEGMENTS", 3)
    emb = _emb(10)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    first = ["a", "ab", "é", "", "d0", "d1", "d2", "d3", "d4", "d5"]
    a = QamaIndex.create(tmp_path / "ix", enc, emb, first)
    a.add(emb[:3], ["a\x00", "abc", "e\u0301"])  # prefixes, a NUL, é decomposed: none equal to a stored id
    refused = [
        (["x", "ab"], "1 document id(s) already in the index, e.g. ['ab']"),
        (["abc", "q", "", "é", "d1"], "4 document id(s) already in the index, e.g. ['abc', '', 'é']"),
        (["q", "q"], "document ids must be unique"),
    ]
    for new, message in refused:
        with pytest.raises(ValueError, match=re.escape(message)):
            a.add(emb[: len(new)], new)
    b = QamaIndex.open(a.path)
    b.add(emb[:2], ["q1", "q2"])  # another writer commits; a catches up under the lock
    with pytest.raises(ValueError, match=re.escape("1 document id(s) already in the index, e.g. ['q2']")):
        a.add(emb[:2], ["q3", "q2"])
    a.add(emb[:1], ["q3"])  # merges the segments of 3, 2 and 1 rows
    assert a.segment_counts == [10, 6]
    with pytest.raises(ValueError, match=re.escape("1 document id(s) already in the index, e.g. ['abc']")):
        a.add(emb[:2], ["abc", "q4"])
    assert b.delete(["ab", "q1"]) == 2
    a.add(emb[:2], ["ab", "q1"])  # deleted by b: accepted again
    with pytest.raises(ValueError, match=re.escape("2 document id(s) already in the index, e.g. ['q1', 'ab']")):
        a.add(emb[:2], ["q1", "ab"])
    stored = ["a", "é", "", "d0", "d1", "d2", "d3", "d4", "d5", "a\x00", "abc", "e\u0301", "q2", "q3", "ab", "q1"]
    assert QamaIndex.open(a.path).ids.to_list() == stored and a.ids.to_list() == stored


def test_a_string_hash_depends_on_the_string_only() -> None:
    """The id tables match a new id to a stored one by hash: the hash of a string must not depend on the
    column it is in, its row, or where the chunks of the computation fall."""
    strings = ["", "a", "ab", "a\x00", "é", "ab", "x" * 3000, "", "b", "ba"]
    alone = [int(qi._string_hashes(qi.StringColumn.from_strings([s]))[0]) for s in strings]
    for chunk_bytes in (1, 3, 2999, 1 << 20):
        column = qi.StringColumn.from_strings(strings)
        assert qi._string_hashes(column, chunk_bytes).tolist() == alone, chunk_bytes
    assert len(set(alone)) == len(set(strings)) == 8


def _no_id_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make decoding every string of a column (``to_list``) fail, for a column or a segmented one."""

    def refuse(self: object) -> list[str]:
        raise AssertionError(f"{type(self).__name__}.to_list called")

    monkeypatch.setattr(qi.StringColumn, "to_list", refuse)
    monkeypatch.setattr(qi.StringSegments, "to_list", refuse)


@pytest.mark.parametrize("collide", [False, True])
def test_delete_finds_ids_in_the_id_tables_and_decodes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collide: bool
) -> None:
    """A delete decoded every id of the index (``ids.to_list()``) and looped over them in Python; it now
    looks the ids up in the segments' id tables (as an append does) and copies the kept rows' bytes. The
    same answers: ids spread over several appended segments (one emptied), duplicates in the argument
    counted once, untouched segments keep their files, the rows and titles after it as if never stored.
    The tables of the segments it rewrites are made from the old ones (equal to tables built afresh), so
    the next lookup hashes only the ids asked. ``collide``: every hash equal (each match is confirmed on
    the bytes)."""
    hashed: list[int] = []
    real_hashes = qi._string_hashes

    def hashes(column: qi.StringColumn, *args: int) -> np.ndarray:
        hashed.append(len(column))
        return np.zeros(len(column), np.uint64) if collide else real_hashes(column, *args)

    monkeypatch.setattr(qi, "_string_hashes", hashes)
    emb = _emb(60)
    ids = [f"d{i}" for i in range(55)] + ["é", "", "a\x00", "ab", "e\u0301"]
    titles = [f"t{i}" for i in range(60)]
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:30], ids[:30], titles=titles[:30], keep_vectors=True)
    for lo, hi in ((30, 40), (40, 45), (45, 55), (55, 60)):
        index.add(emb[lo:hi], ids[lo:hi], titles=titles[lo:hi])
    assert index.segment_counts == [30, 10, 5, 10, 5]
    gone = ["d3", "d31", "d3", "d40", "d41", "d42", "d43", "d44", "é", "", "d31"]  # all of segment 2
    before = _files(index.path)
    untouched = {f["name"] for f in index.manifest["segments"][3]["files"].values()}  # d45 … d54
    with monkeypatch.context() as m:
        _no_id_list(m)
        hashed.clear()
        assert index.delete(gone) == 9 and hashed == [9, 5]  # the ids; the last append's segment (no table yet)
        written = set(_written(before, _files(index.path)))
        assert untouched <= set(_files(index.path)) and not untouched & written
        assert index.segment_counts == [29, 9, 10, 3]
        for j, seg in enumerate(index.manifest["segments"]):
            table, fresh = index._id_rows[qi._id_key(seg)], qi._IdRows.of(index.ids.parts[j])
            np.testing.assert_array_equal(table.hashes, fresh.hashes)
            np.testing.assert_array_equal(table.rows, fresh.rows)
            assert table.rows.dtype == fresh.rows.dtype == np.uint32
        hashed.clear()
        assert index.delete(["d45", "a\x00"]) == 2 and hashed == [2]
        gone += ["d45", "a\x00"]
    keep = [r for r in range(60) if ids[r] not in set(gone)]
    again = QamaIndex.open(index.path)
    assert again.ids.to_list() == [ids[r] for r in keep] and index.ids.to_list() == [ids[r] for r in keep]
    assert again.titles is not None and again.titles.to_list() == [titles[r] for r in keep]
    np.testing.assert_array_equal(np.asarray(again.vectors), emb[keep])
    one = QamaIndex.create(tmp_path / "one", enc, emb[keep], [ids[r] for r in keep], keep_vectors=True)
    q = _emb(5, seed=3)
    _same(_searches(again, q), _searches(one, q))
    _no_id_list(monkeypatch)
    assert index.delete(["d0", "e\u0301", "d0"]) == 2
    rest = [ids[r] for r in keep if ids[r] not in ("d0", "e\u0301")]
    assert index.delete([*rest, *rest[:5]]) == len(rest) == 47  # everything: one empty segment is left
    assert index.segment_counts == [0] and index.titles is not None and index.vectors is not None
    index.add(emb[:2], ["d3", "é"], titles=["x", "y"])  # deleted ids can be added again
    assert index.segment_counts == [2] and index.row_of("é") == 1 and index.row_of("d0") is None


def test_delete_of_unknown_ids_names_the_first_three_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown ids raise the KeyError they raised when every id was decoded: how many, and the first three
    in sorted order; ids no index can hold (not strings, a lone surrogate) are unknown ones. Nothing is
    committed, and the index answers as before."""
    emb = _emb(20)
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    index = QamaIndex.create(tmp_path / "ix", enc, emb[:10], [f"d{i}" for i in range(10)])
    index.add(emb[10:], [f"d{i}" for i in range(10, 20)])
    _no_id_list(monkeypatch)
    generation = index.manifest["generation"]
    cases = [
        (["zz", "d1", "aa", "d15", "b", "zz", "ab"], "4 document id(s) not in the index, e.g. ['aa', 'ab', 'b']"),
        (["d3", "x\ud800"], "1 document id(s) not in the index, e.g. ['x\\ud800']"),
        ([7, "d3"], "1 document id(s) not in the index, e.g. [7]"),
        ([b"d3"], "1 document id(s) not in the index, e.g. [b'd3']"),
        (["d1 ", "D1", "d"], "3 document id(s) not in the index, e.g. ['D1', 'd', 'd1 ']"),
    ]
    for gone, message in cases:
        with pytest.raises(KeyError) as error:
            index.delete(gone)  # type: ignore[arg-type]
        assert error.value.args == (message,)
    assert index.manifest["generation"] == generation and len(index) == 20
    assert QamaIndex.open(index.path).manifest["generation"] == generation
    assert index.delete(["d15"]) == 1 and index.row_of("d16") == 15


def test_backend_title_looks_the_id_up_in_the_id_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FaissBackend.title`` of an id it had not returned decoded every id of the index into a map; it now
    looks the id up in the index's id tables (:meth:`QamaIndex.row_of`): after the first lookup, only the
    id asked is hashed. The title of an id in an appended segment, ``None`` for an unknown id, the right
    title after a delete renumbers the rows."""
    from qama.backends import FaissBackend

    emb = _emb(40)
    ids, titles = [f"d{i}" for i in range(40)], [f"title {i} é" for i in range(40)]
    enc = ThresholdEncoder.fit(emb, make_plan("2bit", D))
    backend = FaissBackend(tmp_path / "ix", enc, create=True)
    backend.add(emb[:25], ids[:25], titles=titles[:25])
    backend.add(emb[25:], ids[25:], titles=titles[25:])
    _no_id_list(monkeypatch)
    hashed: list[int] = []
    real_hashes = qi._string_hashes

    def hashes(column: qi.StringColumn, *args: int) -> np.ndarray:
        hashed.append(len(column))
        return real_hashes(column, *args)

    monkeypatch.setattr(qi, "_string_hashes", hashes)
    reopened = FaissBackend(tmp_path / "ix", enc)
    assert reopened.title("d31") == "title 31 é" and hashed == [1, 25, 15]  # the tables built at the first
    hashed.clear()
    assert reopened.title("d2") == "title 2 é" and reopened.title("nope") is None and hashed == [1, 1]
    assert reopened.title("") is None and reopened.title("d31\x00") is None
    assert reopened.delete(["d0", "d30"]) == 2
    assert reopened.title("d31") == "title 31 é" and reopened.title("d0") is None
    assert reopened.index.row_of("d31") == 29
