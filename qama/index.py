"""A persistent qama index: a folder of memory-mapped codes, document ids, the encoder and a manifest.

The rows are stored in *segments*: a create writes one, each :meth:`QamaIndex.add` appends one
holding only the new rows (it writes nothing of the rows already there). Layout of an index folder
(``G`` is the generation that wrote a file, ``J`` the number of the segment within that commit)::

    manifest.json               format, version, generation, plan, row size, count, encoder, files,
                                segments (in row order: each its count and files)
    codes-G-J.npy               a segment's (n, row_size) uint8 codes, rows padded with zero bytes to 64 bits
    ids-G-J.npy, ids-G-J.off.npy      its document ids: UTF-8 bytes and (n + 1) int64 offsets
    titles-G-J.npy, ...off.npy  optional titles, same layout
    vectors-G-J.npy             optional (n, d) float32 full-precision embeddings, for rescoring
    encoder-G.safetensors       untrained thresholds and centroids (when no adapter is referenced)

Every file in the manifest is listed with its size in bytes and its SHA-256. A commit (create,
:meth:`QamaIndex.add`, :meth:`QamaIndex.delete`, :meth:`QamaIndex.compact`) writes the new
generation's files next to the old ones, then atomically replaces ``manifest.json`` (write, fsync,
rename), then removes the files the previous manifest listed and the new one does not. A crash
before the rename leaves the previous index intact and searchable; a crash after it leaves only
stray files, removed by the next commit. A create then fsyncs the folder holding the index folder
(and the parent of any folder it made), so that the new folder's own entry survives a power cut too.
One writer at a time.

Segments keep appends cheap: an append of ``m`` rows writes ``m`` rows (and the manifest). When an
append would leave more than :data:`MAX_SEGMENTS` segments, the newest ones are merged with it into
one (from the newest backwards, while the next older segment is no larger than the run: the big old
segments are not rewritten for small appends). A delete rewrites only the segments holding deleted
rows. Searches read the segments in turn: the exact Hamming scan takes each segment's top ``k`` and
merges them (:class:`~qama._segments.RowSegments`), the same rows and distances as one segment.

A version-1 manifest (qama before segments: one set of files, listed under ``files``) is read as a
version-2 index of one segment; its files are kept as that segment, and the first commit writes a
version-2 manifest (which earlier qama refuses with a message naming the version).

Opening checks everything a wrong answer could come from and raises :class:`IndexCorruptError`
or :class:`IndexMismatchError` (both ``ValueError``) with the file and the problem: a missing,
truncated or modified file (size, then SHA-256 when ``verify=True``), an array of the wrong shape
or dtype, codes whose size does not match the plan, and an encoder whose checksum differs from
the one the index was built with. Files are memory-mapped: only the pages a search reads are
loaded (a Hamming scan reads every code once; rescoring reads candidate rows only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from qama._io import atomic_open, check_creatable, fsync_dir, save_npy_chunks, write_json
from qama._segments import RowSegments
from qama._validate import (
    Field,
    check_fields,
    check_k,
    check_not_one_string,
    check_oversample,
    check_plain_name,
    check_queries,
    read_json_file,
)
from qama._validate import check_new_documents as _check_new_docs
from qama.adc import FastScanCodes, adc_search
from qama.codes import Plan
from qama.encoders import Encoder, encoder_kind, open_encoder, state_bytes, state_from_bytes
from qama.errors import IndexCorruptError, IndexLockedError, IndexMismatchError
from qama.search import hamming_search, search_rescored

__all__ = [
    "IndexCorruptError",
    "IndexLockedError",
    "IndexMismatchError",
    "QamaIndex",
    "RowSegments",
    "StringColumn",
    "StringSegments",
    "check_new_index_folder",
    "writer_lock",
]

logger = logging.getLogger(__name__)

try:  # advisory file locks: fcntl on POSIX, msvcrt on Windows (``import qama`` works on both)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = "qama-index"
VERSION = 2  # 2: rows in segments (``segments``); 1: one set of files (``files``), still read
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
ALIGN = 8  # bytes: rows padded to whole 64-bit words
LOCK = "writer.lock"
OPEN_ATTEMPTS = 20  # re-reads of a manifest that writers keep replacing while it is being opened
#: Segments an append leaves at most: more, and the newest are merged (a search scans each in turn).
MAX_SEGMENTS = 8
#: The files of one segment (``titles`` and ``vectors`` in every segment or in none).
SEGMENT_KEYS = ("codes", "ids", "ids.off", "titles", "titles.off", "vectors")
WRITE_CHUNK_BYTES = 64 * 2**20  # rows copied into a segment file at a time (merges and deletes)
ENCODE_CHUNK = 65536  # rows of new documents converted to float32 and encoded at a time (create, add)
# The names this version writes: a segment's files (generation, segment number) and the encoder's.
# Only such names of the generation being written are removed as strays of a crashed commit.
_GENERATED = re.compile(
    r"^(?:(?:codes|ids|titles|vectors)-(?P<seg>\d{6})-\d{1,6}\.(?:npy|off\.npy)|encoder-(?P<enc>\d{6})\.safetensors)$"
)
# The names of the files an index (version 1 or 2) writes, of any generation: only such names listed
# under ``superseded`` are removed by a later commit.
_OWN_NAME = re.compile(
    r"^(?:(?:codes|ids|titles|vectors)-(?P<g>\d{6,})(?:-\d{1,6})?\.(?:npy|off\.npy)"
    r"|encoder-(?P<g_encoder>\d{6,})\.safetensors)$"
)
# The temporary file of an atomic write (qama._io.atomic_open) killed midway: ``.NAME.RANDOM.tmp``.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def _sha256(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StringColumn:
    """Strings stored as one UTF-8 byte array and ``n + 1`` offsets; decoded one at a time."""

    data: np.ndarray  # (total_bytes,) uint8
    offsets: np.ndarray  # (n + 1,) int64
    source: str = ""  # the file the data was read from, named when it is not UTF-8

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> StringColumn:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in encoded])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> str:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return self._decode(bytes(self.data[start:end]), row)

    def to_list(self) -> list[str]:
        raw = bytes(self.data)
        off = self.offsets.tolist()
        return [self._decode(raw[off[i] : off[i + 1]], i) for i in range(len(self))]

    def _decode(self, raw: bytes, row: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise IndexCorruptError(
                f"{self.source or 'a string column'}: row {row} is not valid UTF-8 ({e.reason} at byte {e.start}; "
                "the file was modified or corrupted)"
            ) from None

    def check_utf8(self, chunk_bytes: int = 1 << 20) -> None:
        """Raise the :class:`IndexCorruptError` that reading the first row not valid UTF-8 raises, if any.
        The bytes are decoded whole rows of about ``chunk_bytes`` bytes at a time; no string is kept."""
        for lo, hi in _row_spans(self.offsets, chunk_bytes):
            start, end = int(self.offsets[lo]), int(self.offsets[hi])
            raw = np.asarray(self.data[start:end])
            starts = self.offsets[lo:hi]
            starts = starts[starts < end] - start
            try:
                raw.tobytes().decode("utf-8")
            except UnicodeDecodeError:
                valid = False
            else:  # valid as a whole, and no row starts inside a character (on a byte 0b10xxxxxx)
                valid = not np.any((raw[starts] & 0xC0) == 0x80)
            if not valid:
                for row in range(lo, hi):
                    self[row]  # raises at the first row that is not valid UTF-8

    def take(self, rows: np.ndarray) -> StringColumn:
        """The strings of ``rows`` as a new column in memory, after :meth:`check_utf8` of this one (a
        rewritten file does not carry corrupted bytes on under a new checksum). The bytes are copied a
        run of consecutive rows at a time, not decoded."""
        self.check_utf8()
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(self.offsets[rows + 1] - self.offsets[rows], out=offsets[1:])
        if not len(rows):
            return StringColumn(np.zeros(0, dtype=np.uint8), offsets)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # where a run of consecutive rows starts
        firsts, lasts = rows[np.r_[0, breaks]].tolist(), rows[np.r_[breaks - 1, len(rows) - 1]].tolist()
        runs = [self.data[self.offsets[a] : self.offsets[b + 1]] for a, b in zip(firsts, lasts, strict=True)]
        return StringColumn(np.asarray(np.concatenate(runs), dtype=np.uint8), offsets)


class StringSegments:
    """A string column stored in segments (one :class:`StringColumn` each), read as one column: indexed
    as a list is (a row, negative from the end; a slice gives a list)."""

    def __init__(self, parts: Sequence[StringColumn]) -> None:
        self.parts = list(parts)
        self.starts = np.zeros(len(self.parts) + 1, dtype=np.int64)
        self.starts[1:] = np.cumsum([len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @overload
    def __getitem__(self, row: int) -> str: ...

    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: int | slice) -> str | list[str]:
        n = len(self)
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(n))]
        if not isinstance(row, (int, np.integer)):
            raise TypeError(f"rows are whole numbers or slices, got {type(row).__name__}")
        given = int(row)
        row = given + (n if given < 0 else 0)
        if not 0 <= row < n:
            raise IndexError(f"row {given} is out of range for {n} rows")
        s = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.parts[s][row - int(self.starts[s])]

    def to_list(self) -> list[str]:
        return [s for part in self.parts for s in part.to_list()]


_MIX = tuple(np.uint64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser applied in place to the ``uint64`` array ``z`` (arithmetic modulo 2^64); ``z``."""
    z += _MIX[0]
    z ^= z >> np.uint64(30)
    z *= _MIX[1]
    z ^= z >> np.uint64(27)
    z *= _MIX[2]
    z ^= z >> np.uint64(31)
    return z


def _string_hashes(column: StringColumn, chunk_bytes: int = 1 << 20) -> np.ndarray:
    """A 64-bit hash of each string of ``column``, from its UTF-8 bytes alone (not its row or column):
    the mix of its length plus the sum of the mixes of ``position * 256 + byte`` over its bytes,
    mixed again. Computed with numpy, rows of about ``chunk_bytes`` bytes at a time (a few times that
    in temporary memory). Equal strings have equal hashes; a match of hashes must be confirmed on the bytes."""
    offsets = column.offsets
    out = np.empty(len(column), dtype=np.uint64)
    for lo, hi in _row_spans(offsets, chunk_bytes):
        start, end = int(offsets[lo]), int(offsets[hi])
        starts, lengths = offsets[lo:hi] - start, np.diff(offsets[lo : hi + 1])
        h = _mix64(~lengths.astype(np.uint64))  # (the lengths' keys apart from the bytes' small ones)
        if end > start:
            data = np.asarray(column.data[start:end]).astype(np.uint64)
            position = (np.arange(end - start, dtype=np.int64) - np.repeat(starts, lengths)).astype(np.uint64)
            keys = _mix64((position << np.uint64(8)) | data)
            nonempty = lengths > 0
            h[nonempty] += np.add.reduceat(keys, starts[nonempty])
        out[lo:hi] = _mix64(h)
    return out


def _row_spans(offsets: np.ndarray, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges ``[lo, hi)`` covering a string column of these ``(n + 1)`` ``offsets``, each
    of about ``chunk_bytes`` bytes and at least one row (however long)."""
    n, lo = len(offsets) - 1, 0
    while lo < n:
        hi = int(np.searchsorted(offsets, offsets[lo] + chunk_bytes, side="right")) - 1
        hi = min(max(hi, lo + 1), n)
        yield lo, hi
        lo = hi


def _storable(s: object) -> bool:
    """Whether ``s`` is a string that can be stored as UTF-8 (not one with a lone surrogate)."""
    if not isinstance(s, str):
        return False
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _id_key(segment: dict[str, Any]) -> tuple[str, ...]:
    """What identifies a segment's ids: the names and SHA-256 of its ids files, as its manifest entry lists them."""
    files = segment["files"]
    return tuple(str(files[k][field]) for k in ("ids", "ids.off") for field in ("name", "sha256"))


class _IdRows:
    """The rows of one segment's ids by value: the :func:`_string_hashes` of its ids, sorted, and the row
    of each (12 bytes a row below 2^32 rows; a Python set of the ids would take 60-100). Built only from
    ids that are valid UTF-8 (:meth:`StringColumn.check_utf8`): a corrupted ids file is reported by
    every lookup, even of ids in other segments, never passed over."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        self.hashes = hashes  # (n,) uint64, ascending
        self.rows = rows.astype(np.uint32 if len(rows) < 2**32 else np.int64)  # rows of equal hash ascending

    @classmethod
    def of(cls, column: StringColumn) -> _IdRows:
        """The table of the ids ``column`` (every id hashed, after :meth:`StringColumn.check_utf8`)."""
        column.check_utf8()
        hashes = _string_hashes(column)
        order = np.argsort(hashes, kind="stable")
        return cls(hashes[order], order)

    def without(self, keep: np.ndarray) -> _IdRows:
        """The table of the rows where the ``(n,)`` bool ``keep`` is true, renumbered in order (the segment a
        delete writes of them): the same as :meth:`of` that segment, from this table alone, no id read."""
        kept = keep[self.rows]
        renumbered = np.cumsum(keep, dtype=np.int64) - 1
        return _IdRows(self.hashes[kept], renumbered[self.rows[kept]])

    def find(self, column: StringColumn, wanted: StringColumn, hashes: np.ndarray) -> list[tuple[int, int]]:
        """``(i, row)`` for each ``wanted[i]`` equal to ``column[row]`` (``column``: the ids this table was
        built from; ``hashes``: those of ``wanted``): rows of equal hash, confirmed by comparing the bytes."""
        lo = np.searchsorted(self.hashes, hashes, side="left")
        hi = np.searchsorted(self.hashes, hashes, side="right")
        found = []
        for i in np.flatnonzero(hi > lo).tolist():
            target = bytes(wanted.data[int(wanted.offsets[i]) : int(wanted.offsets[i + 1])])
            for row in self.rows[lo[i] : hi[i]].tolist():
                if bytes(column.data[int(column.offsets[row]) : int(column.offsets[row + 1])]) == target:
                    found.append((i, row))
        return found


class QamaIndex:
    """A searchable, persistent set of qama codes with their document ids.

    Build one with :meth:`create`, reopen it with :meth:`open`. ``search`` takes float query
    embeddings; ``search_codes`` takes query codes. Rows are numbered ``0..len-1`` in insertion
    order (deletions renumber the rows after them); :meth:`doc_id` maps a row to its document id.
    ``codes`` and ``vectors`` are :class:`~qama._segments.RowSegments` (the segments' memory maps
    read as one array), ``ids`` and ``titles`` :class:`StringSegments`.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        encoder: Encoder,
        codes: RowSegments,
        ids: StringSegments,
        titles: StringSegments | None,
        vectors: RowSegments | None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        self.codes = codes
        self.ids = ids
        self.titles = titles
        self.vectors = vectors
        # The id tables of the segments (:meth:`_rows_of_ids`), by the names and checksums of their ids
        # files: built at the first lookup, kept while the segment is in the index and this object lives.
        self._id_rows: dict[tuple[str, ...], _IdRows] = {}

    # ------------------------------------------------------------------ properties
    @property
    def plan(self) -> Plan:
        return self.encoder.plan

    @property
    def row_size(self) -> int:
        return int(self.manifest["row_size"])

    @property
    def segment_counts(self) -> list[int]:
        """The number of rows of each segment, in row order."""
        return [int(seg["count"]) for seg in self.manifest["segments"]]

    def __len__(self) -> int:
        return len(self.codes)

    def __repr__(self) -> str:
        return (
            f"QamaIndex({str(self.path)!r}, n={len(self)}, plan={self.plan.spec()!r}, "
            f"row_size={self.row_size}, vectors={self.vectors is not None}, "
            f"segments={len(self.manifest['segments'])}, generation={self.manifest['generation']})"
        )

    def doc_id(self, row: int) -> str | None:
        """The document id of ``row`` (``None`` for ``-1``)."""
        return None if row < 0 else self.ids[int(row)]

    def title(self, row: int) -> str | None:
        return None if row < 0 or self.titles is None else self.titles[int(row)]

    def disk_bytes(self) -> dict[str, int]:
        """Bytes on disk of each kind of file of the current generation, summed over the segments
        (``codes``, ``ids``, ``ids.off``, …, ``encoder``), and of the manifest."""
        out = {key: int(f["bytes"]) for key, f in self.manifest["files"].items()}
        for seg in self.manifest["segments"]:
            for key, f in seg["files"].items():
                out[key] = out.get(key, 0) + int(f["bytes"])
        out["manifest"] = (self.path / MANIFEST).stat().st_size
        return out

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        encoder: Encoder,
        embeddings: np.ndarray,
        ids: Sequence[str],
        titles: Sequence[str] | None = None,
        keep_vectors: bool = False,
        adapter_path: str | os.PathLike | None = None,
        overwrite: bool = False,
        progress: Callable[[int], None] | None = None,
        chunk: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> QamaIndex:
        """Encode ``(n, d)`` float ``embeddings`` and write a new index folder at ``path``.

        A :class:`~qama.encoders.ThresholdEncoder` is stored in the folder; any other encoder (a
        trained adapter) is referenced by ``adapter_path`` and its checksum, and must be passed to
        :meth:`open`. ``keep_vectors`` also stores the float32 embeddings for exact rescoring.
        ``progress`` is called with the number of rows encoded after each chunk. ``meta`` (JSON)
        is kept in the manifest, e.g. the name of the model that embedded the documents.
        """
        path = Path(path)
        check_new_index_folder(path, overwrite)  # before any work: never replace what is not ours
        embeddings = np.asarray(embeddings)
        _check_new_docs(embeddings, ids, titles, encoder.plan.dim)
        enc_meta: dict[str, Any] = {"kind": encoder_kind(encoder), "checksum": encoder.checksum}
        if enc_meta["kind"] == "adapter":
            enc_meta["path"] = None if adapter_path is None else str(Path(adapter_path).resolve())
        row_size = encoder.plan.row_size(ALIGN)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "generation": 0,
            "plan": encoder.plan.to_dict(),
            "code_size": encoder.plan.code_size,
            "row_size": row_size,
            "dim": int(embeddings.shape[1]),
            "count": 0,
            "encoder": enc_meta,
            "meta": dict(meta or {}),
            "files": {},
            "segments": [],
        }
        made = [p for p in (path, *path.parents) if not p.exists()]  # the folders this create makes
        path.mkdir(parents=True, exist_ok=True)
        # Creating is exclusive: the lock is held from the check to the commit, so of two creators of
        # one folder the second is refused (locked, or the index exists by the time it looks).
        with writer_lock(path):
            check_new_index_folder(path, overwrite)
            previous: set[str] = set()
            if (path / MANIFEST).exists():  # overwrite: the old index's files go once the new manifest is in place
                manifest["generation"], previous = _replaced_index(path)
            codes = _encode_rows(encoder, embeddings, row_size, progress, chunk or ENCODE_CHUNK)
            writer = _Commit(path, manifest, previous)
            # Thresholds are stored whole; an adapter's centroids depend on the corpus they were fitted on.
            writer.write_bytes("encoder", ".safetensors", state_bytes(encoder))
            vectors = [_Float32Rows(embeddings)] if keep_vectors else None
            strings = StringColumn.from_strings
            columns = [strings(list(ids))], None if titles is None else [strings(list(titles))]
            manifest["segments"] = [writer.write_segment(codes, *columns, vectors)]
            manifest["count"] = len(codes)
            writer.commit()
            # The index folder's own entry, and those of the folders made for it, on disk before create
            # returns (a new entry is durable only once its parent folder is fsynced; commit fsyncs the index
            # folder itself): else a power cut could take the whole new index away.
            for folder in dict.fromkeys([path, *made]):
                fsync_dir(folder.parent)
        logger.info("wrote index %s: %d documents, %d bytes per code", path, len(codes), row_size)
        return cls.open(path, encoder=encoder, verify=False)

    @classmethod
    def open(cls, path: str | os.PathLike, encoder: Encoder | None = None, verify: bool = True) -> QamaIndex:
        """Open the index at ``path`` memory-mapped.

        ``encoder`` is required for an index built with an adapter and must match its checksum;
        for untrained thresholds it is read from the folder. ``verify`` checks the SHA-256 of
        every file (sizes, shapes and dtypes are always checked).
        """
        path = Path(path)
        for _ in range(OPEN_ATTEMPTS):
            manifest = _read_manifest(path)
            try:
                return cls._open_version(path, manifest, encoder, verify)
            except (IndexCorruptError, FileNotFoundError):
                # A writer may have committed a new generation and removed this one's files while we
                # read them: then read the new version; if the manifest did not change, the error stands.
                if _read_manifest(path)["generation"] == manifest["generation"]:
                    raise
                logger.debug("%s: generation changed while opening, reading it again", path)
        raise IndexCorruptError(f"{path}: the index changed {OPEN_ATTEMPTS} times while being opened")

    @classmethod
    def _open_version(cls, path: Path, manifest: dict[str, Any], encoder: Encoder | None, verify: bool) -> QamaIndex:
        for key, f in manifest["files"].items():
            _check_file(path, key, f, verify)
        for seg in manifest["segments"]:
            for key, f in seg["files"].items():
                _check_file(path, key, f, verify)
        plan = Plan.from_dict(manifest["plan"])
        if manifest["code_size"] != plan.code_size or manifest["row_size"] != plan.row_size(ALIGN):
            raise IndexCorruptError(
                f"{path / MANIFEST}: code size {manifest['code_size']} / row size {manifest['row_size']} "
                f"do not match plan {plan.spec()} ({plan.code_size} / {plan.row_size(ALIGN)} bytes)"
            )
        state = lambda: _stored_state(path, manifest)  # noqa: E731
        encoder = open_encoder(manifest["encoder"], plan, state, str(path), encoder, what="index")
        codes, ids, titles, vectors = [], [], [], []
        for seg in manifest["segments"]:
            files, n = seg["files"], int(seg["count"])
            codes.append(_load_array(path, files["codes"], np.uint8, (n, plan.row_size(ALIGN)), "codes"))
            ids.append(_load_strings(path, files, "ids", n))
            if "titles" in files:
                titles.append(_load_strings(path, files, "titles", n))
            if "vectors" in files:
                vectors.append(_load_array(path, files["vectors"], np.float32, (n, int(manifest["dim"])), "vectors"))
        return cls(
            path,
            manifest,
            encoder,
            RowSegments(codes),
            StringSegments(ids),
            StringSegments(titles) if titles else None,
            RowSegments(vectors) if vectors else None,
        )

    @classmethod
    def open_with_adapter(cls, path: str | os.PathLike, adapter: Any = None, verify: bool = True) -> QamaIndex:
        """Open an index built with a trained adapter: ``adapter`` is a :class:`~qama.adapter.QamaAdapter`,
        its folder, or ``None`` for the folder the index names. Its plan and centroids come from the index."""
        from qama.adapter import QamaAdapter

        path = Path(path)
        manifest = _read_manifest(path)
        if manifest["encoder"]["kind"] != "adapter":
            return cls.open(path, verify=verify)
        if adapter is None:
            adapter = manifest["encoder"].get("path")
            if not adapter:
                raise IndexMismatchError(f"{path}: the index names no adapter folder; pass the adapter")
        if not isinstance(adapter, QamaAdapter):
            adapter = QamaAdapter.load(adapter)
        plan = Plan.from_dict(manifest["plan"])
        state = lambda: _stored_state(path, manifest)  # noqa: E731
        encoder = open_encoder(manifest["encoder"], plan, state, str(path), adapter=adapter, what="index")
        return cls.open(path, encoder=encoder, verify=verify)

    @staticmethod
    def stored_state(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
        """The encoder state (centroids, pair axes) an adapter-built index stored, or ``None``."""
        manifest = _read_manifest(Path(path))
        if manifest["encoder"]["kind"] != "adapter":
            return None
        return _stored_state(Path(path), manifest)

    # ------------------------------------------------------------------ search
    def search_codes(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact Hamming top-``k`` of ``(nq, code_size)`` (or row-size) query codes: distances, rows."""
        query_codes = np.asarray(query_codes)
        k = check_k(k, len(query_codes))
        if (
            query_codes.ndim != 2
            or query_codes.dtype != np.uint8
            or query_codes.shape[1]
            not in (
                self.plan.code_size,
                self.row_size,
            )
        ):
            raise IndexMismatchError(
                f"query codes must be uint8 of shape (nq, {self.plan.code_size}) for this index's plan "
                f"{self.plan.spec()}, got {query_codes.dtype} {query_codes.shape}"
            )
        if np.any(query_codes[:, self.plan.code_size :]):  # the rows' padding is zero: else every distance grows
            raise IndexMismatchError("query codes wider than the code size must be padded with zero bytes")
        if query_codes.shape[1] < self.row_size:
            query_codes = np.pad(query_codes, ((0, 0), (0, self.row_size - query_codes.shape[1])))
        return hamming_search(self.codes, query_codes, k)

    def search(
        self, queries: np.ndarray, k: int = 10, oversample: int = 0, rescore: str = "auto", mode: str = "hamming"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for ``(nq, d)`` float query embeddings: ``(scores, rows)``.

        :func:`qama.search.search_rescored` over this index: ``oversample=0`` is Hamming search only
        (scores are negated distances); ``oversample=f``: ``f × k`` Hamming candidates rescored by
        ``rescore``: ``"vectors"`` (stored float32 vectors), ``"asymmetric"`` (query · dequantised
        code) or ``"auto"`` (vectors if stored). ``mode="adc"``: no Hamming stage, every code scored
        asymmetrically (the full scan of :func:`qama.adc.adc_search`; ``oversample`` and ``rescore``
        are not used).
        """
        queries = check_queries(queries, int(self.manifest["dim"]), IndexMismatchError)  # exact dimension, finite
        k, oversample = check_k(k, len(queries)), check_oversample(oversample)
        if mode not in ("hamming", "adc"):
            raise ValueError(f"mode must be 'hamming' or 'adc', got {mode!r}")
        if mode == "adc":
            return adc_search(self.codes, self.encoder, queries, k, fast=self._adc_codes())
        if rescore == "vectors" and self.vectors is None:
            raise ValueError(
                f"{self.path}: this index keeps no vectors; rebuild it with qama index --keep-vectors "
                "(keep_vectors=True in Python)"
            )
        if self.vectors is not None and rescore != "asymmetric" and queries.shape[1] != self.vectors.shape[1]:
            raise IndexMismatchError(f"queries have {queries.shape[1]} dimensions, vectors {self.manifest['dim']}")
        first = self.search_codes  # the exact scan, with query codes checked and padded to the row size
        codes, vectors = self.codes, self.vectors
        return search_rescored(codes, self.encoder, queries, k, oversample, vectors, rescore=rescore, candidates=first)

    def _adc_codes(self) -> FastScanCodes:
        """The codes in faiss's fast-scan layout for ``mode="adc"``, built at the first such search of a
        generation and kept in memory (``code_size`` bytes per row)."""
        key = (self.manifest["generation"], len(self.codes), id(self.encoder))
        cached = getattr(self, "_adc_cache", None)
        if cached is None or cached[0] != key:
            cached = self._adc_cache = (key, FastScanCodes(self.codes, self.plan))
        return cached[1]

    # ------------------------------------------------------------------ updates
    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        titles: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Append documents (new ids only) and commit a new generation: the new rows are written as
        a new segment, nothing of the rows already there is rewritten (unless the append merges the
        newest segments, see :data:`MAX_SEGMENTS`). An append of no rows commits nothing."""
        embeddings = np.asarray(embeddings)
        _check_new_docs(embeddings, ids, titles, self.plan.dim)
        if embeddings.shape[1] != self.manifest["dim"]:
            raise IndexMismatchError(
                f"embeddings have {embeddings.shape[1]} dimensions, the index {self.manifest['dim']}"
            )
        if (titles is None) != (self.titles is None) and len(self):
            raise ValueError("titles must be given for every document or for none")
        if len(ids) == 0:
            return
        new_codes = _encode_rows(self.encoder, embeddings, self.row_size, progress, ENCODE_CHUNK)
        with writer_lock(self.path):
            self._catch_up()
            self._add_codes(new_codes, embeddings, ids, titles)

    def _add_codes(
        self, new_codes: np.ndarray, embeddings: np.ndarray, ids: Sequence[str], titles: Sequence[str] | None
    ) -> None:
        found = sorted({i for i, _ in self._rows_of_ids(ids)})
        dup = [ids[i] for i in found]
        if dup:
            raise ValueError(f"{len(dup)} document id(s) already in the index, e.g. {dup[:3]}")
        if (titles is None) != (self.titles is None) and len(self):  # (a writer may have committed since)
            raise ValueError("titles must be given for every document or for none")
        manifest = json.loads(json.dumps(self.manifest))
        writer = _Commit(self.path, manifest)
        live = [j for j, seg in enumerate(manifest["segments"]) if seg["count"] > 0]  # an empty index's segment goes
        counts = [manifest["segments"][j]["count"] for j in live] + [len(new_codes)]
        lo = _merge_from(counts, MAX_SEGMENTS)
        merged = live[lo:]  # the newest segments, merged with the new rows into one (usually none)
        # (titles and vectors: given for the new rows iff the merged segments have them)
        old_titles = [] if self.titles is None else [self.titles.parts[j] for j in merged]
        old_vectors = [] if self.vectors is None else [self.vectors.parts[j] for j in merged]
        segment = writer.write_segment(
            [*(self.codes.parts[j] for j in merged), new_codes],
            [*(self.ids.parts[j] for j in merged), StringColumn.from_strings(list(ids))],
            None if titles is None else [*old_titles, StringColumn.from_strings(list(titles))],
            None if self.vectors is None else [*old_vectors, _Float32Rows(embeddings)],
        )
        if merged:
            logger.info("%s: merged the %d newest segments with the appended rows", self.path, len(merged))
        manifest["segments"] = [manifest["segments"][j] for j in live[:lo]] + [segment]
        manifest["count"] = sum(seg["count"] for seg in manifest["segments"])
        writer.commit()
        self._reload()

    def compact(self) -> None:
        """Merge every segment into one and commit (searches then scan a single array)."""
        with writer_lock(self.path):
            self._catch_up()
            if len(self.manifest["segments"]) == 1:
                return
            manifest = json.loads(json.dumps(self.manifest))
            writer = _Commit(self.path, manifest)
            segment = writer.write_segment(
                self.codes.parts,
                self.ids.parts,
                None if self.titles is None else self.titles.parts,
                None if self.vectors is None else self.vectors.parts,
            )
            manifest["segments"] = [segment]
            writer.commit()
            self._reload()

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id and commit; returns how many were removed. Unknown ids raise KeyError.
        Only the segments that held removed documents are rewritten."""
        check_not_one_string(ids, "ids", "document ids")  # delete("ab") must not remove "a" and "b"
        with writer_lock(self.path):
            self._catch_up()
            return self._delete(set(ids))

    def _delete(self, wanted: set[str]) -> int:
        asked = list(wanted)
        found = self._rows_of_ids(asked)
        hit = {i for i, _ in found}
        missing = [doc for i, doc in enumerate(asked) if i not in hit]
        if missing:
            raise KeyError(f"{len(missing)} document id(s) not in the index, e.g. {sorted(missing)[:3]}")
        deleted = np.array(sorted(row for _, row in found), dtype=np.int64)
        manifest = json.loads(json.dumps(self.manifest))
        writer = _Commit(self.path, manifest)
        segments = []
        for j, seg in enumerate(manifest["segments"]):
            lo, hi = np.searchsorted(deleted, self.codes.starts[j : j + 2])
            if lo == hi:
                segments.append(seg)  # untouched: its files stay
                continue
            keep = np.ones(seg["count"], dtype=bool)
            keep[deleted[lo:hi] - self.codes.starts[j]] = False
            rows = np.flatnonzero(keep)
            if len(rows):  # an emptied segment is dropped
                segments.append(self._write_rows(writer, j, rows))
                # its id table, from the old one (the lookup above built it): the next lookup hashes nothing
                self._id_rows[_id_key(segments[-1])] = self._id_rows[_id_key(seg)].without(keep)
        if not segments:  # every document deleted: one empty segment keeps the columns (titles, vectors)
            segments.append(self._write_rows(writer, 0, np.zeros(0, dtype=np.int64)))
        manifest["segments"] = segments
        manifest["count"] = sum(seg["count"] for seg in segments)
        writer.commit()
        self._reload()
        return len(deleted)

    def _write_rows(self, writer: _Commit, j: int, rows: np.ndarray) -> dict[str, Any]:
        """Write ``rows`` of segment ``j`` as a new segment; its manifest entry."""
        return writer.write_segment(
            [_Take(self.codes.parts[j], rows)],
            [self.ids.parts[j].take(rows)],
            None if self.titles is None else [self.titles.parts[j].take(rows)],
            None if self.vectors is None else [_Take(self.vectors.parts[j], rows)],
        )

    def row_of(self, doc_id: str) -> int | None:
        """The row of the document ``doc_id``, ``None`` when the index does not hold it (:meth:`_rows_of_ids`:
        no stored id is decoded; after the first lookup of this object, which hashes every id once, only
        ``doc_id`` is hashed)."""
        found = self._rows_of_ids([doc_id])
        return found[0][1] if found else None

    def _rows_of_ids(self, ids: Sequence[object]) -> list[tuple[int, int]]:
        """``(i, row)`` for each of ``ids`` that the index holds (``ids[i]`` is the id of ``row``), read from
        the segments' id tables: the hashes of ``ids`` are looked up, and a match confirmed on the bytes.

        A segment's table is built (every id of it hashed) the first time it is needed and kept while the
        segment is in the index: after an append, only the segment that append wrote is new, so the next
        lookup hashes its rows and the new ids, not the whole index. Tables of segments no longer in the
        manifest are dropped here, so the memory follows the rows of the index. An id that no index can
        hold (not a string, or not encodable as UTF-8) is not found."""
        storable = [i for i, doc in enumerate(ids) if _storable(doc)]
        wanted = StringColumn.from_strings([str(ids[i]) for i in storable])
        hashes = _string_hashes(wanted)
        tables: dict[tuple[str, ...], _IdRows] = {}
        found: list[tuple[int, int]] = []
        for j, seg in enumerate(self.manifest["segments"]):
            key, column = _id_key(seg), self.ids.parts[j]
            table = self._id_rows.get(key)
            tables[key] = table = _IdRows.of(column) if table is None else table
            start = int(self.ids.starts[j])
            found += [(storable[i], start + row) for i, row in table.find(column, wanted, hashes)]
        self._id_rows = tables
        return found

    def _catch_up(self) -> None:
        """Under the writer lock: build on the newest committed version, not the one opened earlier."""
        if _read_manifest(self.path)["generation"] != self.manifest["generation"]:
            self._reload()

    def _reload(self) -> None:
        """Read the newest generation into this object; the id tables of the segments it kept are kept."""
        fresh = QamaIndex.open(self.path, encoder=self.encoder, verify=False)
        live = {_id_key(seg) for seg in fresh.manifest["segments"]}
        fresh._id_rows = {key: table for key, table in self._id_rows.items() if key in live}
        self.__dict__.update(fresh.__dict__)


# ---------------------------------------------------------------------- helpers
def check_new_index_folder(path: Path, overwrite: bool) -> None:
    """Refuse to create an index where it would replace anything but a qama index (with ``overwrite``)."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder")
    if not path.is_dir():
        check_creatable(path)
        return
    if (path / MANIFEST).exists():
        if not _is_index_manifest(path / MANIFEST):  # the user's own manifest.json: never replaced
            raise FileExistsError(
                f'{path / MANIFEST}: not the manifest of a qama index (no "format": "{FORMAT}"); '
                "qama replaces nothing it did not write: write the index to a new or empty folder"
            )
        if not overwrite:
            raise FileExistsError(
                f"{path}: an index already exists here (--overwrite, or overwrite=True in Python, replaces it)"
            )
        return
    # A create killed before its manifest existed leaves its lock and its own files (generation 1): not
    # the user's, so running it again is not refused (its commit removes them).
    killed_create = (path / LOCK).is_file()
    others = sorted(p.name for p in path.iterdir() if p.name != LOCK and not (killed_create and _first_stray(p.name)))
    if others:
        raise FileExistsError(
            f"{path}: the folder is not empty and holds no qama index ({len(others)} entries, e.g. {others[0]!r}); "
            "write the index to a new or empty folder"
        )


def _first_stray(name: str) -> bool:
    """Whether ``name`` is a file the first commit of an index (generation 1) writes, or a temporary file
    of it or of a manifest."""
    t = _TEMPORARY.match(name)
    if t is not None and t.group("name") == MANIFEST:
        return True
    m = _GENERATED.match(t.group("name") if t is not None else name)
    return m is not None and f"{1:06d}" in (m.group("seg"), m.group("enc"))


def _is_index_manifest(mpath: Path) -> bool:
    """Whether ``mpath`` is a manifest qama wrote (a JSON object of this format), whatever its version."""
    try:
        manifest = read_json_file(mpath, "manifest")
    except (ValueError, OSError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the index's writer lock (``writer.lock``, an advisory ``flock``): one writer at a time.

    A second writer is refused at once with :class:`IndexLockedError`, never merged silently.
    Readers take no lock: a commit is the atomic rename of the manifest.
    """
    path.mkdir(parents=True, exist_ok=True)
    with open(path / LOCK, "a+b") as f:
        try:
            _lock(f.fileno(), True)
        except (BlockingIOError, PermissionError):
            raise IndexLockedError(f"{path}: another process is writing this index (lock {path / LOCK})") from None
        try:
            yield
        finally:
            _lock(f.fileno(), False)


def _lock(fd: int, take: bool) -> None:
    """Take (without waiting; ``BlockingIOError`` / ``PermissionError`` if held) or release the lock on ``fd``."""
    if fcntl is not None:
        fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if take else fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows: lock the first byte of the lock file
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK if take else msvcrt.LK_UNLCK, 1)


def _encode_rows(
    encoder: Encoder, embeddings: np.ndarray, row_size: int, progress: Callable[[int], None] | None, chunk: int
) -> np.ndarray:
    codes = np.zeros((len(embeddings), row_size), dtype=np.uint8)
    cs = encoder.plan.code_size
    for i in range(0, len(embeddings), chunk):
        block = encoder.encode(np.asarray(embeddings[i : i + chunk], dtype=np.float32))
        if block.shape != (min(chunk, len(embeddings) - i), cs) or block.dtype != np.uint8:
            raise IndexMismatchError(
                f"the encoder returned codes {block.dtype} {block.shape}, expected (n, {cs}) uint8"
            )
        codes[i : i + chunk, :cs] = block
        if progress is not None:
            progress(len(block))
    return codes


@dataclass(frozen=True)
class _Take:
    """Rows ``rows`` of ``array`` (a memory map), copied a chunk at a time when written."""

    array: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __getitem__(self, chunk: slice) -> np.ndarray:
        return np.asarray(self.array[self.rows[chunk]])


@dataclass(frozen=True)
class _Float32Rows:
    """The rows of ``array`` (any real dtype or layout, a memory map) as float32, converted a chunk at a
    time when written: a float64 corpus kept as vectors is never copied whole."""

    array: np.ndarray
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __getitem__(self, chunk: slice) -> np.ndarray:
        return np.asarray(self.array[chunk], dtype=np.float32)


def _row_chunks(parts: Sequence[Any], row_bytes: int) -> Iterator[np.ndarray]:
    """The rows of ``parts`` (arrays, memory maps, :class:`_Take`) in order, about
    :data:`WRITE_CHUNK_BYTES` at a time."""
    step = max(1, WRITE_CHUNK_BYTES // max(1, row_bytes))
    for part in parts:
        for i in range(0, len(part), step):
            yield np.asarray(part[i : i + step])


def _merge_from(counts: list[int], limit: int) -> int:
    """Where the run of segments (of these row ``counts``, oldest first) that an append merges into
    one starts, so that at most ``limit`` remain; ``len(counts)`` (no merge) when they are not more.

    From the newest backwards, at least two, and an older segment joins while it holds no more rows
    than the run: sizes stay roughly geometric, so a row is rewritten a few times over the life of
    an index, and a large old segment is not rewritten for a small append.
    """
    if len(counts) <= limit:
        return len(counts)
    lo, run = len(counts) - 1, counts[-1]
    while lo > 0 and (len(counts) - lo < 2 or counts[lo - 1] <= run):
        lo -= 1
        run += counts[lo]
    return min(lo, limit - 1)


def _owned_names(manifest: dict[str, Any]) -> set[str]:
    """The names of the files a manifest (version 1 or 2) lists: the files its index owns."""
    names = {str(f["name"]) for f in manifest["files"].values()}
    for seg in manifest.get("segments", []):
        names.update(str(f["name"]) for f in seg["files"].values())
    return names


def _superseded(manifest: dict[str, Any]) -> set[str]:
    """The files a commit superseded and meant to remove (``superseded``; still there if it was killed
    before removing them): names of index files only."""
    names = manifest.get("superseded", [])
    return {n for n in names if isinstance(n, str) and _OWN_NAME.match(n)} if isinstance(names, list) else set()


def _replaced_index(path: Path) -> tuple[int, set[str]]:
    """For a create that overwrites the index at ``path``: the generation to continue from, and the old
    index's files, for the new index's commit to remove once its manifest is in place.

    The files are those the old manifest lists (every segment's, the encoder's, and ``superseded``),
    each listing read on its own, so one damaged field (a ``generation`` that is not a number) loses
    nothing else; and only names of the files an index writes (:data:`_OWN_NAME`): any other name a
    damaged or edited manifest lists is left alone. The generation is the manifest's where it is a
    whole number, and at least that of every file listed, so the new index's files replace none of the
    old one's before its manifest is in place (a create killed midway leaves the old index whole)."""
    try:
        old = read_json_file(path / MANIFEST, "manifest")
    except (ValueError, OSError):
        old = None
    old = old if isinstance(old, dict) else {}
    groups = [old.get("files")]
    segments = old.get("segments")
    if isinstance(segments, list):
        groups += [seg.get("files") for seg in segments if isinstance(seg, dict)]
    names = [f.get("name") for g in groups if isinstance(g, dict) for f in g.values() if isinstance(f, dict)]
    superseded = old.get("superseded")
    names += superseded if isinstance(superseded, list) else []
    matches = [m for n in names if isinstance(n, str) and (m := _OWN_NAME.fullmatch(n))]
    listed = {m.string for m in matches}
    generation = old.get("generation")
    if type(generation) is not int or generation < 0:
        logger.warning(
            "%s: field 'generation' is %.40r, not a whole number >= 0; the %d index files it lists are removed",
            path / MANIFEST,
            generation,
            len(listed),
        )
        generation = 0
    return max([generation, *(int(m["g"] or m["g_encoder"]) for m in matches)]), listed


class _Commit:
    """Writes one generation's files, then swaps the manifest."""

    def __init__(self, path: Path, manifest: dict[str, Any], previous: set[str] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        # The files the commit may remove: the previous generation's (named by its manifest), and those
        # an earlier commit superseded but was killed before removing.
        self.previous = _owned_names(manifest) | _superseded(manifest) if previous is None else previous
        manifest["generation"] = int(manifest["generation"]) + 1
        manifest["version"] = VERSION
        self.tag = f"{manifest['generation']:06d}"
        self.n_segments = 0

    def _entry(self, name: str) -> dict[str, Any]:
        p = self.path / name
        return {"name": name, "bytes": p.stat().st_size, "sha256": _sha256(p)}

    def write_bytes(self, key: str, suffix: str, data: bytes) -> None:
        name = f"{key}-{self.tag}{suffix}"
        with atomic_open(self.path / name, "wb") as f:
            f.write(data)
        self.manifest["files"][key] = self._entry(name)

    def _write_rows(self, name: str, parts: Sequence[Any]) -> dict[str, Any]:
        """One ``.npy`` of the rows of ``parts`` in order (written a chunk at a time); its manifest entry."""
        first = parts[0]
        tail = tuple(first.shape[1:])
        dtype = first.array.dtype if isinstance(first, _Take) else first.dtype
        row_bytes = int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
        shape = (sum(len(p) for p in parts), *tail)
        save_npy_chunks(self.path / name, shape, dtype, _row_chunks(parts, row_bytes))
        return self._entry(name)

    def _write_strings(self, files: dict[str, Any], key: str, stem: str, parts: Sequence[StringColumn]) -> None:
        files[key] = self._write_rows(f"{key}-{stem}.npy", [p.data for p in parts])
        starts = np.cumsum([0, *(int(p.offsets[-1]) for p in parts)])
        offsets = [np.zeros(1, np.int64), *(p.offsets[1:] + start for p, start in zip(parts, starts, strict=False))]
        files[f"{key}.off"] = self._write_rows(f"{key}-{stem}.off.npy", offsets)

    def write_segment(
        self,
        codes: Sequence[Any] | np.ndarray,
        ids: Sequence[StringColumn],
        titles: Sequence[StringColumn] | None,
        vectors: Sequence[Any] | np.ndarray | None,
    ) -> dict[str, Any]:
        """Write a segment of the rows of ``codes`` (a list of parts: arrays, memory maps,
        :class:`_Take`; or one array), ``ids`` and ``titles`` (lists of :class:`StringColumn`) and
        ``vectors`` (like ``codes``), in order; its manifest entry ``{count, files}``."""
        self.n_segments += 1
        stem = f"{self.tag}-{self.n_segments}"
        codes_parts = [codes] if isinstance(codes, np.ndarray) else list(codes)
        files: dict[str, Any] = {"codes": self._write_rows(f"codes-{stem}.npy", codes_parts)}
        count = sum(len(p) for p in codes_parts)
        for key, column in (("ids", ids), ("titles", titles)):
            if column is None:
                continue
            if sum(len(p) for p in column) != count:
                raise ValueError(f"{sum(len(p) for p in column)} {key} for {count} rows")
            self._write_strings(files, key, stem, column)
        if vectors is not None:
            vector_parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
            files["vectors"] = self._write_rows(f"vectors-{stem}.npy", vector_parts)
        return {"count": count, "files": files}

    def commit(self) -> None:
        live = _owned_names(self.manifest)
        # Recorded before the switch, so that if this process is killed before removing them, the
        # next commit does (rather than leaving them for good).
        self.manifest["superseded"] = sorted(n for n in self.previous - live if (self.path / n).is_file())
        fsync_dir(self.path)  # the new files' renames on disk before a manifest names them
        write_json(self.path / MANIFEST, self.manifest)  # the atomic switch to the new generation
        fsync_dir(self.path)  # ... and the new manifest on disk before the files it supersedes are removed
        # Only files this index wrote are removed: the previous generation's, and strays of an earlier
        # attempt at this same generation (a crash before its manifest was renamed into place). A file
        # of any other name stays, whatever it looks like.
        for p in self.path.iterdir():
            if p.name in live or not p.is_file() or p.is_symlink():
                continue
            t = _TEMPORARY.match(p.name)  # a write of an earlier attempt at this commit, killed midway
            m = _GENERATED.match(t.group("name") if t is not None else p.name)
            ours = m is not None and self.tag in (m.group("seg"), m.group("enc"))
            if p.name in self.previous or ours or (t is not None and t.group("name") == MANIFEST):
                p.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the index at ``path``, checked, as version 2 (a version-1 manifest is read as one segment)."""
    mpath = path / MANIFEST
    if not mpath.exists():
        raise IndexCorruptError(f"{path}: not a qama index (no {MANIFEST})")
    manifest = read_json_file(mpath, "manifest", IndexCorruptError)  # a regular file of bounded size
    required = ("format", "version", "generation", "plan", "code_size", "row_size", "dim", "count", "encoder", "files")
    if not isinstance(manifest, dict) or any(key not in manifest for key in required):
        raise IndexCorruptError(f"{mpath}: incomplete manifest (needs {', '.join(required)})")
    if manifest["format"] != FORMAT:
        raise IndexCorruptError(f"{mpath}: not a qama index manifest (format {manifest['format']!r})")
    version = manifest["version"]
    if type(version) is not int or version not in READ_VERSIONS:
        raise IndexCorruptError(
            f"{mpath}: index format version {version!r}, this qama reads versions "
            f"{', '.join(map(str, READ_VERSIONS))} (a newer qama wrote it?)"
        )
    check_manifest(manifest, mpath)
    return _from_v1(manifest) if version == 1 else manifest


def _from_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest (one set of files under ``files``) as version 2: those files are its one segment."""
    files = manifest["files"]
    segment = {"count": manifest["count"], "files": {k: f for k, f in files.items() if k in SEGMENT_KEYS}}
    rest = {k: f for k, f in files.items() if k not in SEGMENT_KEYS}
    return {**manifest, "version": VERSION, "files": rest, "segments": [segment]}


#: Types and ranges of the manifest's fields (qama._validate.check_fields).
MANIFEST_SCHEMA = {
    "generation": Field("int", lo=0),
    "plan": Field("dict"),
    "code_size": Field("int", lo=1),
    "row_size": Field("int", lo=1),
    "dim": Field("int", lo=1, hi=1 << 20),
    "count": Field("int", lo=0),
    "encoder": Field("dict"),
    "meta": Field("dict", optional=True),
    "files": Field("dict"),
}
ENCODER_SCHEMA = {
    "kind": Field("str", choices=("thresholds", "adapter")),
    "checksum": Field("str"),
    "path": Field("str", optional=True, nullable=True),
}
FILE_SCHEMA = {"name": Field("str"), "bytes": Field("int", lo=0), "sha256": Field("str")}
SEGMENT_SCHEMA = {"count": Field("int", lo=0), "files": Field("dict")}


def check_manifest(manifest: dict[str, Any], mpath: Path) -> None:
    """The type of every field the index reads from its manifest; file names must lie inside the folder."""
    check_fields(manifest, MANIFEST_SCHEMA, str(mpath), error=IndexCorruptError)
    check_fields(manifest["encoder"], ENCODER_SCHEMA, str(mpath), "encoder.", IndexCorruptError)
    check_fields(
        manifest["plan"], {"name": Field("str"), "segments": Field("list")}, str(mpath), "plan.", IndexCorruptError
    )
    for i, seg in enumerate(manifest["plan"]["segments"]):
        if not (isinstance(seg, list) and len(seg) == 2 and type(seg[0]) is int and type(seg[1]) in (int, float)):
            raise IndexCorruptError(f"{mpath}: field 'plan.segments[{i}]' must be [dims, bits], got {seg!r:.60}")
    try:
        Plan.from_dict(manifest["plan"])
    except (ValueError, TypeError) as e:
        raise IndexCorruptError(f"{mpath}: field 'plan': {e}") from None
    plan = Plan.from_dict(manifest["plan"])
    if manifest["dim"] < plan.dim:  # the documents' embeddings: at least the dimensions the plan reads
        raise IndexCorruptError(
            f"{mpath}: field 'dim' is {manifest['dim']}, but the plan {plan.spec()} reads {plan.dim} dimensions"
        )
    _check_files(manifest["files"], "files", mpath)
    meta_schema = {"model": Field("str", optional=True, nullable=True)}  # the model that embedded the documents
    check_fields(manifest.get("meta", {}), meta_schema, str(mpath), "meta.", IndexCorruptError)
    if manifest["encoder"]["kind"] == "thresholds" and "encoder" not in manifest["files"]:
        raise IndexCorruptError(f"{mpath}: the manifest lists no encoder file (the index's thresholds)")
    if manifest["version"] == 1:  # one set of files: the rows' files are listed with the encoder's
        _check_segment_files(manifest["files"], "the manifest", mpath)
        return
    check_fields(manifest, {"segments": Field("list")}, str(mpath), error=IndexCorruptError)
    segments = manifest["segments"]
    if not segments:
        raise IndexCorruptError(f"{mpath}: field 'segments' lists no segment (an index has at least one)")
    for j, seg in enumerate(segments):
        check_fields(seg, SEGMENT_SCHEMA, str(mpath), f"segments[{j}].", IndexCorruptError)
        _check_files(seg["files"], f"segments[{j}].files", mpath)
        unknown = sorted(set(seg["files"]) - set(SEGMENT_KEYS))
        if unknown:
            raise IndexCorruptError(f"{mpath}: field 'segments[{j}].files': unknown file {unknown[0]!r}")
        _check_segment_files(seg["files"], f"segment {j}", mpath)
        if set(seg["files"]) != set(segments[0]["files"]):
            raise IndexCorruptError(
                f"{mpath}: segment {j} has the files {', '.join(sorted(seg['files']))}, segment 0 has "
                f"{', '.join(sorted(segments[0]['files']))} (titles and vectors are kept for every segment or none)"
            )
    seen: dict[str, str] = {}  # a file is one column of one segment: listed twice, its rows would be read twice
    places = [(f"files.{k}", f) for k, f in manifest["files"].items()]
    places += [(f"segments[{j}].files.{k}", f) for j, seg in enumerate(segments) for k, f in seg["files"].items()]
    for where, f in places:
        if f["name"] in seen:
            raise IndexCorruptError(f"{mpath}: file {f['name']!r} is listed twice ({seen[f['name']]} and {where})")
        seen[f["name"]] = where
    total = sum(seg["count"] for seg in segments)
    if total != manifest["count"]:
        raise IndexCorruptError(f"{mpath}: the segments hold {total} rows, but field 'count' is {manifest['count']}")


def _check_files(files: dict[str, Any], where: str, mpath: Path) -> None:
    for key, f in files.items():
        check_fields(f, FILE_SCHEMA, str(mpath), f"{where}.{key}.", IndexCorruptError)
        check_plain_name(f["name"], f"{mpath}: {where}.{key}", IndexCorruptError)


def _check_segment_files(files: dict[str, Any], what: str, mpath: Path) -> None:
    for key in ("codes", "ids", "ids.off"):
        if key not in files:
            raise IndexCorruptError(f"{mpath}: {what} lists no {key} file")


def _check_file(path: Path, key: str, f: dict[str, Any], verify: bool) -> None:
    p = path / f["name"]
    if not p.is_file():
        raise IndexCorruptError(f"{p}: missing {key} file of the index")
    size = p.stat().st_size
    if size != f["bytes"]:
        raise IndexCorruptError(f"{p}: {size} bytes, the manifest says {f['bytes']} (truncated or replaced)")
    if verify and _sha256(p) != f["sha256"]:
        raise IndexCorruptError(f"{p}: SHA-256 differs from the manifest (the file was modified or corrupted)")


def _load_array(path: Path, f: dict[str, Any], dtype: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    from qama._io import load_npy

    arr = load_npy(path / f["name"], mmap=True, error=IndexCorruptError)
    if arr.dtype != dtype or arr.shape != shape:
        kind = "codes of the wrong size" if what == "codes" else f"wrong {what} array"
        raise IndexCorruptError(
            f"{path / f['name']}: {kind}: {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}"
        )
    if arr.size == 0:
        return np.zeros(shape, dtype=dtype)  # a memory map of zero bytes is not allowed
    return arr


def _load_strings(path: Path, files: dict[str, Any], key: str, n: int) -> StringColumn:
    from qama._io import load_npy

    off_key = f"{key}.off"
    if off_key not in files:
        raise IndexCorruptError(f"{path}: the manifest lists {key} without its offsets")
    offsets = load_npy(path / files[off_key]["name"], error=IndexCorruptError)
    data = load_npy(path / files[key]["name"], mmap=True, error=IndexCorruptError)
    if offsets.dtype != np.int64 or offsets.shape != (n + 1,) or data.dtype != np.uint8 or data.ndim != 1:
        raise IndexCorruptError(f"{path / files[key]['name']}: malformed {key} column")
    if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
        raise IndexCorruptError(f"{path / files[off_key]['name']}: offsets do not describe the {key} data")
    return StringColumn(data if len(data) else np.zeros(0, dtype=np.uint8), offsets, str(path / files[key]["name"]))


def _stored_state(path: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The encoder state the index stored (``None`` when it stored none), its file checked."""
    f = manifest["files"].get("encoder")
    if f is None:
        return None
    _check_file(path, "encoder", f, verify=True)
    p = path / f["name"]
    return state_from_bytes(p.read_bytes(), str(p))
