"""The persistent index: reopening, add/delete, atomic commits, and every corruption case's error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qama.codes import make_plan
from qama.index import LOCK, MANIFEST, IndexCorruptError, IndexMismatchError, QamaIndex
from qama.search import ThresholdEncoder, hamming_search_reference


@pytest.fixture
def emb() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 32)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def encoder(emb: np.ndarray) -> ThresholdEncoder:
    return ThresholdEncoder.fit(emb, make_plan("hybrid", 32))


@pytest.fixture
def index(tmp_path: Path, emb: np.ndarray, encoder: ThresholdEncoder) -> QamaIndex:
    ids = [f"doc{i}" for i in range(len(emb))]
    titles = [f"title {i} é" for i in range(len(emb))]
    return QamaIndex.create(tmp_path / "ix", encoder, emb, ids, titles=titles, keep_vectors=True)


def _entry(manifest: dict, key: str) -> dict:
    """The manifest entry of a file: the encoder's, or one of the (first) segment's."""
    return manifest["files"][key] if key == "encoder" else manifest["segments"][0]["files"][key]


def _file(index: QamaIndex, key: str) -> Path:
    return index.path / _entry(index.manifest, key)["name"]


def test_create_and_reopen_give_identical_results(index: QamaIndex, emb: np.ndarray) -> None:
    assert len(index) == 120 and index.row_size == 8 and index.plan.code_size == 7
    q = emb[:10] + 0.05
    before = [index.search(q, 7, oversample=f, rescore=r) for f, r in ((0, "auto"), (4, "asymmetric"), (4, "vectors"))]
    again = QamaIndex.open(index.path)
    after = [again.search(q, 7, oversample=f, rescore=r) for f, r in ((0, "auto"), (4, "asymmetric"), (4, "vectors"))]
    for (s1, i1), (s2, i2) in zip(before, after, strict=True):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    assert again.doc_id(0) == "doc0" and again.doc_id(119) == "doc119"
    assert again.title(5) == "title 5 é" and again.doc_id(-1) is None
    assert all(isinstance(part, np.memmap) for part in again.codes.parts)
    # Hamming search of the index equals the numpy reference over the encoder's codes
    d, i = again.search_codes(index.encoder.encode(q), 9)
    rd, ri = hamming_search_reference(index.encoder.encode(emb), index.encoder.encode(q), 9)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(i, ri)


def test_vector_rescoring_with_full_oversample_is_exact(index: QamaIndex, emb: np.ndarray) -> None:
    s, i = index.search(emb[:4], 5, oversample=24, rescore="vectors")
    ref = np.argsort(-(emb[:4] @ emb.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(i, ref)


def test_query_codes_of_the_row_size_must_be_padded_with_zeros(index: QamaIndex, emb: np.ndarray) -> None:
    """Row-size query codes with padding bits set were searched: every distance grew by them (the rows'
    padding is zero), silently; a Milvus collection refuses them with this message."""
    qc = index.encoder.encode_queries(emb[:3])
    width = index.row_size - index.plan.code_size
    assert width > 0
    d, i = index.search_codes(qc, 5)
    zero = index.search_codes(np.pad(qc, ((0, 0), (0, width))), 5)
    np.testing.assert_array_equal(zero[0], d)
    np.testing.assert_array_equal(zero[1], i)
    with pytest.raises(
        IndexMismatchError, match=r"^query codes wider than the code size must be padded with zero bytes$"
    ):
        index.search_codes(np.pad(qc, ((0, 0), (0, width)), constant_values=255), 5)


def test_search_edge_cases(index: QamaIndex, emb: np.ndarray) -> None:
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(emb[:1], 0)
    with pytest.raises(IndexMismatchError, match="query codes"):
        index.search_codes(np.zeros((1, 5), np.uint8), 3)
    with pytest.raises(IndexMismatchError, match="queries"):
        index.search(emb[:1, :10], 3)
    s, i = index.search(emb[:1], 200)
    assert (i[0, 120:] == -1).all() and (i[0, :120] >= 0).all()


def test_empty_index_returns_minus_one(tmp_path: Path, encoder: ThresholdEncoder) -> None:
    ix = QamaIndex.create(tmp_path / "e", encoder, np.zeros((0, 32), np.float32), [])
    ix = QamaIndex.open(tmp_path / "e")
    s, i = ix.search(np.ones((2, 32), np.float32), 3)
    assert (i == -1).all() and np.isneginf(s).all()
    s, i = ix.search(np.ones((2, 32), np.float32), 3, oversample=2)
    assert (i == -1).all()
    ix.add(np.ones((1, 32), np.float32), ["a"])
    assert QamaIndex.open(tmp_path / "e").search(np.ones((1, 32), np.float32), 2)[1].tolist() == [[0, -1]]


def test_add_and_delete(index: QamaIndex, emb: np.ndarray, encoder: ThresholdEncoder) -> None:
    extra = -emb[:5]
    index.add(extra, [f"new{i}" for i in range(5)], titles=[f"t{i}" for i in range(5)])
    assert len(index) == 125 and index.doc_id(124) == "new4" and index.title(120) == "t0"
    reopened = QamaIndex.open(index.path)
    assert len(reopened) == 125
    _, rows = reopened.search(extra[:1], 1, oversample=10, rescore="vectors")
    assert reopened.doc_id(int(rows[0, 0])) == "new0"
    with pytest.raises(ValueError, match="already in the index"):
        reopened.add(emb[:1], ["doc3"], titles=["x"])
    assert reopened.delete(["doc0", "new0", "doc7"]) == 3
    again = QamaIndex.open(reopened.path)
    ids = [again.doc_id(r) for r in range(len(again))]
    assert len(again) == 122 and "doc0" not in ids and "new0" not in ids and ids[0] == "doc1"
    # after deletion, search over the remaining documents equals a fresh index of them
    keep = [i for i in range(120) if i not in (0, 7)]
    fresh_emb = np.concatenate([emb[keep], extra[1:]])
    q = emb[:6]
    _, r1 = again.search(q, 5, oversample=3)
    fresh = QamaIndex.create(index.path.parent / "fresh", encoder, fresh_emb, ids, keep_vectors=True)
    _, r2 = fresh.search(q, 5, oversample=3)
    np.testing.assert_array_equal(r1, r2)
    with pytest.raises(KeyError, match="not in the index"):
        again.delete(["nope"])
    # only the live generation's files remain
    live = {f["name"] for f in again.manifest["files"].values()} | {MANIFEST, LOCK}
    live |= {f["name"] for seg in again.manifest["segments"] for f in seg["files"].values()}
    assert {p.name for p in again.path.iterdir()} == live


def test_crash_before_manifest_swap_leaves_previous_index(
    index: QamaIndex, emb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qama.index as qi

    before = index.search(emb[:3], 4)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(qi, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        index.add(emb[:2], ["x1", "x2"], titles=["a", "b"])
    monkeypatch.undo()
    reopened = QamaIndex.open(index.path)
    assert len(reopened) == 120
    for a, b in zip(before, reopened.search(emb[:3], 4), strict=True):
        np.testing.assert_array_equal(a, b)
    reopened.add(emb[:2], ["x1", "x2"], titles=["a", "b"])  # the next commit works and cleans up
    assert len(QamaIndex.open(index.path)) == 122


def test_create_refuses_existing_index(index: QamaIndex, emb: np.ndarray, encoder: ThresholdEncoder) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        QamaIndex.create(index.path, encoder, emb, [str(i) for i in range(120)])
    ix = QamaIndex.create(index.path, encoder, emb[:3], ["a", "b", "c"], overwrite=True)
    assert len(QamaIndex.open(ix.path)) == 3


def test_truncated_codes(index: QamaIndex) -> None:
    p = _file(index, "codes")
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(IndexCorruptError, match="truncated"):
        QamaIndex.open(index.path)


def test_corrupted_byte_detected_by_checksum(index: QamaIndex) -> None:
    p = _file(index, "codes")
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="SHA-256"):
        QamaIndex.open(index.path)
    QamaIndex.open(index.path, verify=False)  # sizes still agree: opening unverified is the user's choice


@pytest.mark.parametrize("key", ["ids", "ids.off", "vectors", "encoder", "titles"])
def test_missing_file(index: QamaIndex, key: str) -> None:
    _file(index, key).unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        QamaIndex.open(index.path)


def test_wrong_code_size(index: QamaIndex, emb: np.ndarray) -> None:
    # codes of another plan under a consistent manifest (sizes and checksums updated): shape check
    from qama.index import _sha256

    p = _file(index, "codes")
    np.save(p, np.zeros((120, 16), np.uint8))
    m = json.loads((index.path / MANIFEST).read_text())
    _entry(m, "codes").update(bytes=p.stat().st_size, sha256=_sha256(p))
    (index.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match="codes of the wrong size"):
        QamaIndex.open(index.path)
    m["code_size"] = 16
    (index.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError, match="do not match plan"):
        QamaIndex.open(index.path)


def test_encoder_mismatch(index: QamaIndex, emb: np.ndarray) -> None:
    other = ThresholdEncoder.fit(emb[:60], make_plan("hybrid", 32))
    with pytest.raises(IndexMismatchError, match="not the one this index was built with"):
        QamaIndex.open(index.path, encoder=other)


def test_adapter_reference_required(tmp_path: Path, emb: np.ndarray, encoder: ThresholdEncoder) -> None:
    class Wrapped:  # any Encoder that is not stored in the folder: referenced by path and checksum
        def __init__(self, inner: ThresholdEncoder) -> None:
            self.inner = inner
            self.plan, self.centroids, self.checksum = inner.plan, inner.centroids, "abc" + inner.checksum

        def encode(self, x: np.ndarray) -> np.ndarray:
            return self.inner.encode(x)

        def query_weights(self, x: np.ndarray) -> np.ndarray:
            return self.inner.query_weights(x)

    wrapped = Wrapped(encoder)
    ix = QamaIndex.create(tmp_path / "a", wrapped, emb, [str(i) for i in range(120)], adapter_path=tmp_path / "ad")
    assert ix.manifest["encoder"]["kind"] == "adapter"
    with pytest.raises(IndexMismatchError, match="built with a trained adapter"):
        QamaIndex.open(tmp_path / "a")
    with pytest.raises(IndexMismatchError, match="not the one"):
        QamaIndex.open(tmp_path / "a", encoder=encoder)
    assert len(QamaIndex.open(tmp_path / "a", encoder=wrapped)) == 120


@pytest.mark.parametrize("text", ["", "{not json", '{"format": "other"}'])
def test_bad_manifest(index: QamaIndex, text: str) -> None:
    (index.path / MANIFEST).write_text(text)
    with pytest.raises(IndexCorruptError):
        QamaIndex.open(index.path)


def test_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(IndexCorruptError, match="not a qama index"):
        QamaIndex.open(tmp_path)


def test_pickled_or_garbage_npy_refused(index: QamaIndex) -> None:
    from qama.index import _sha256

    p = _file(index, "ids.off")
    p.write_bytes(b"garbage" * 10)
    m = json.loads((index.path / MANIFEST).read_text())
    _entry(m, "ids.off").update(bytes=p.stat().st_size, sha256=_sha256(p))
    (index.path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(IndexCorruptError):
        QamaIndex.open(index.path)
    shutil.rmtree(index.path)


def _adc_reference(index: QamaIndex, q: np.ndarray, k: int):
    from qama.search import asymmetric_scores, top_by_score

    full = np.tile(np.arange(len(index)), (len(q), 1))
    return top_by_score(asymmetric_scores(index.encoder.query_weights(q), index.codes, full, index.encoder), full, k)


class _NormedEncoder(ThresholdEncoder):
    """Scores are cosines (``level_norms2``), as an adapter's are: the index keeps the rows' lengths."""

    @property
    def level_norms2(self) -> np.ndarray:
        return self.centroids**2


def test_adc_mode_scores_every_code(tmp_path: Path, index: QamaIndex, emb: np.ndarray) -> None:
    q = emb[:6] + 0.05
    for k in (7, 200):
        s, i = index.search(q, k, mode="adc")
        rs, ri = _adc_reference(index, q, k)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(s, rs)
    assert (i[:, 120:] == -1).all()
    with pytest.raises(ValueError, match="mode"):
        index.search(q, 3, mode="pq")
    # with cosine scores the index keeps the rows' lengths; they follow add and delete
    normed = QamaIndex.create(
        tmp_path / "normed", _NormedEncoder.fit(emb, make_plan("hybrid", 32)), emb, [f"doc{j}" for j in range(len(emb))]
    )
    for change in (
        None,
        lambda: normed.add(-emb[:9], [f"new{j}" for j in range(9)]),
        lambda: normed.delete(["doc0", "new3", "doc50"]),
    ):
        if change:
            change()
        s, i = normed.search(q, 10, mode="adc")
        rs, ri = _adc_reference(normed, q, 10)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(s, rs)
    assert len(normed) == 126
