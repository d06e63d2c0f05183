"""Retrieval datasets in BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

:func:`load_dataset` reads a folder, or a BEIR dataset name that it downloads once into a cache
folder. Rows keep file order, so row ``i`` of a precomputed ``corpus.npy`` is line ``i`` of
``corpus.jsonl``. Every malformed input raises :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "DataError",
    "Dataset",
    "load_dataset",
    "download_beir",
    "default_cache_dir",
    "dataset_name",
    "read_jsonl_corpus",
    "jsonl_dataset",
    "embedded_dataset",
    "EMBEDDED",
    "sentence_sample",
]

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 sums published by BEIR (beir/datasets/README); checked when known.
BEIR_MD5 = {
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
}
# Datasets shipped inside the package (qama/datasets/NAME.tar.xz, BEIR layout; see the README there).
EMBEDDED_DIR = Path(__file__).parent / "datasets"
EMBEDDED = {"cranfield": "cranfield.tar.xz"}
DEFAULT_DATASET = "cranfield"  # what `qama report` studies when given no dataset
MAX_DOWNLOAD_BYTES = 8 * 1024**3
MAX_LINE_BYTES = 16 * 1024**2  # one JSONL record; BEIR's longest is far below


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and line."""


@dataclass
class Dataset:
    """A retrieval dataset; documents and queries in file order, judgments of one split."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]  # "title text", stripped: what gets embedded
    titles: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # qid -> {doc_id: relevance}, only queries with a judgment
    split: str = "test"
    path: Path | None = None
    _doc_index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def eval_query_rows(self) -> list[int]:
        """Rows of the queries judged in this split (the only ones that are evaluated)."""
        return [i for i, q in enumerate(self.query_ids) if q in self.qrels]

    def relevant_pairs(self) -> tuple[list[int], list[int]]:
        """``(query_rows, doc_rows)``: one entry per judged pair with relevance > 0 in this split,
        in qrels order (training pairs for the InfoNCE term, e.g. from the ``train`` split)."""
        query_row = {q: i for i, q in enumerate(self.query_ids)}
        doc_row = self._doc_index or {d: i for i, d in enumerate(self.doc_ids)}
        pairs = [(query_row[q], doc_row[d]) for q, docs in self.qrels.items() for d, rel in docs.items() if rel > 0]
        return [q for q, _ in pairs], [d for _, d in pairs]

    def with_split(self, split: str) -> Dataset:
        """This dataset with the judgments of the qrels split ``split`` instead, read from its folder (the
        documents and queries are not read again); :class:`DataError` as :func:`load_dataset` for a split
        that does not exist or judges nothing."""
        if self.path is None:
            raise DataError(f"{self.name}: no dataset folder to read the split {split!r} from")
        doc_index = self._doc_index or {d: i for i, d in enumerate(self.doc_ids)}
        return replace(self, qrels=_read_split(self.path, split, doc_index, self.query_ids), split=split)

    def __repr__(self) -> str:
        judged = f"judged[{self.split}]={len(self.qrels)}" if self.split else "no judgments read"
        return f"Dataset({self.name!r}, docs={len(self.doc_ids)}, queries={len(self.query_ids)}, {judged})"


#: Most documents :func:`sentence_sample` draws a sentence from, and the fewest words of a drawn sentence.
SENTENCE_SAMPLE_DOCS = 2000
MIN_SENTENCE_WORDS = 5
#: The fewest characters of scripts written without spaces between words (:data:`_SPACELESS`) that also
#: make a sentence long enough: a Chinese or Japanese word averages under two characters, so ten are about
#: five words (in Thai, Lao, Khmer, Myanmar or Tibetan, where a word takes more characters, two or three).
MIN_SENTENCE_CHARS = 10
# Sentence ends. ``.``, ``!`` and ``?`` end a sentence only when whitespace follows (not in "3.5" or
# "e.g.x"). The other common Unicode sentence terminators (a subset of \p{Sentence_Terminal}; the
# stdlib re has no \p classes) end one with or without whitespace after them, together with the
# closing quotes and brackets that follow them, up to two ("「…か？」と" ends after the 」, "…か？』」と"
# after both): Armenian, Arabic, Syriac, Devanagari, Myanmar, Ethiopic, Khmer and Mongolian stops;
# doubled Latin marks; CJK ideographic, full-width, half-width, small and vertical stops, question and
# exclamation marks.
_TERMINATORS = (
    "\u0589\u061f\u06d4\u0701\u0702\u0964\u0965\u104b\u1362\u1367\u17d4\u17d5\u1803\u1809"
    "\u203c\u203d\u2047\u2048\u2049"
    "\u3002\ufe12\ufe15\ufe16\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61"
)
_CLOSERS = "\"'\u2019\u201d\u00bb)\\]}\uff09\uff3d\u300d\u300f\u3011\u3015\u3017\u3009\u300b\uff63"
_SENTENCE_END = re.compile(
    rf"(?<=[.!?])\s+|(?:(?<=[{_TERMINATORS}])|(?<=[{_TERMINATORS}][{_CLOSERS}])|(?<=[{_TERMINATORS}][{_CLOSERS}]{{2}}))"
    rf"(?![{_TERMINATORS}{_CLOSERS}])\s*"
)
# Scripts written without spaces between words: Han (with 々〆〇), Hiragana, Katakana (half-width too),
# Thai, Lao, Tibetan, Myanmar, Khmer. Not Hangul: Korean puts spaces between words.
_SPACELESS = re.compile(
    "[\u3005-\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
    "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff]"
)


def _long_enough(sentence: str) -> bool:
    """Whether ``sentence`` has at least :data:`MIN_SENTENCE_WORDS` whitespace-separated words or at least
    :data:`MIN_SENTENCE_CHARS` characters of scripts written without spaces between words. Reads no more
    than it needs: at most ``MIN_SENTENCE_WORDS - 1`` splits, so a huge sentence is not cut into all its
    words, and the characters counted up to the :data:`MIN_SENTENCE_CHARS`-th."""
    if len(sentence.split(None, MIN_SENTENCE_WORDS - 1)) >= MIN_SENTENCE_WORDS:
        return True
    return next(itertools.islice(_SPACELESS.finditer(sentence), MIN_SENTENCE_CHARS - 1, None), None) is not None


def _sentences(text: str) -> Iterator[str]:
    """The sentences of ``text`` that are long enough (:func:`_long_enough`), in order, unstripped: the
    pieces of ``_SENTENCE_END.split(text)``, made one at a time so that a huge document is never held as
    a list of all its sentences."""
    start = 0
    for end in _SENTENCE_END.finditer(text):
        if _long_enough(piece := text[start : end.start()]):
            yield piece
        start = end.end()
    if _long_enough(piece := text[start:]):
        yield piece


def sentence_sample(dataset: Dataset, max_docs: int = SENTENCE_SAMPLE_DOCS, seed: int = 0) -> list[str]:
    """Short query-like texts of the corpus itself: one sentence drawn at random from each of at most
    ``max_docs`` documents drawn at random; documents with no such sentence give none. A document's text
    is split after ``.``, ``!`` or ``?`` followed by whitespace, or after another common sentence
    terminator (``。``, ``！``, ``？``, ``．``, ``।``, ``؟``, …) and the closing quotes or brackets after
    it. A sentence counts when it has at least :data:`MIN_SENTENCE_WORDS` whitespace-separated words or,
    for text written without spaces between words (Chinese, Japanese, Thai, …), at least
    :data:`MIN_SENTENCE_CHARS` characters of such scripts. Same dataset and seed, same sentences."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(dataset.doc_texts))
    out: list[str] = []
    for r in rows.tolist():
        text = dataset.doc_texts[r]
        n = sum(1 for _ in _sentences(text))  # counted, then the drawn one found again: no list of them all
        if n:
            out.append(next(itertools.islice(_sentences(text), int(rng.integers(n)), None)).strip())
            if len(out) == max_docs:
                break
    return out


def dataset_name(path_or_name: str | os.PathLike) -> str:
    """The name of the dataset in the folder ``path_or_name`` (or of the BEIR dataset so named): the folder's
    own name, with ``.`` and ``..`` read as the folders they stand for (not following links), so that
    ``--dataset .`` is named after the working folder, not ``""``, and ``--dataset ..`` not ``".."``."""
    return Path(os.path.abspath(path_or_name)).name


def default_cache_dir() -> Path:
    """``$QAMA_CACHE`` or ``~/.cache/qama``."""
    return Path(os.environ.get("QAMA_CACHE", Path.home() / ".cache" / "qama"))


#: The fields of a JSONL record that are kept; the others (BEIR's ``metadata``, a corpus's own fields) are
#: read and dropped, so that a corpus's memory is its texts.
RECORD_FIELDS = ("_id", "title", "text")


def _read_jsonl(path: Path, kind: str, id_keys: tuple[str, ...] = ("_id",)) -> list[dict]:
    """The records of a JSONL file; ``id_keys``: the keys that may hold a record's id (the first
    present is used and stored as ``_id``)."""
    _check_input_file(path)
    rows, seen, empty = [], set(), []
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: malformed JSON (nested too deeply)") from None
            except ValueError:  # json reads integers of at most sys.get_int_max_str_digits() digits
                raise DataError(
                    f"{path}:{lineno}: malformed JSON (an integer of more than {sys.get_int_max_str_digits()} digits)"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            key = next((k for k in id_keys if k in obj), None)
            if key is None:
                raise DataError(f"{path}:{lineno}: missing {' or '.join(repr(k) for k in id_keys)}")
            obj["_id"] = _record_id(obj[key], path, lineno)
            if obj["_id"] in seen:
                raise DataError(f"{path}:{lineno}: duplicate _id {obj['_id']!r}")
            seen.add(obj["_id"])
            for key in ("title", "text"):
                if key in obj and obj[key] is None:  # null (pandas' and other exporters' missing value): absent
                    del obj[key]
                if key in obj and not isinstance(obj[key], str):
                    raise DataError(f"{path}:{lineno}: '{key}' must be a string")
                _check_unicode(obj.get(key, ""), key, path, lineno)
            if not (obj.get("title", "") + obj.get("text", "")).strip():
                empty.append(lineno)
            rows.append({k: obj[k] for k in RECORD_FIELDS if k in obj})  # not the rest (metadata, urls, ...)
    if not rows:
        raise DataError(f"{path}: no {kind} (the file is empty)")
    if empty and kind == "queries":
        raise DataError(f"{path}:{empty[0]}: empty query text")
    if empty:  # kept, so that rows still follow the file order (Cranfield has two such documents)
        logger.warning("%s:%d: empty title and text (%d such %s, kept)", path, empty[0], len(empty), kind)
    return rows


def _check_input_file(path: Path) -> None:
    """A dataset file must be a regular file (a link to one is fine): a folder, a device or a pipe
    (``/dev/zero``) is refused by name before anything is read."""
    from qama._validate import check_regular_file

    try:
        check_regular_file(path, "file", DataError)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def _record_id(value: object, path: Path, lineno: int) -> str:
    """A record's id: a non-empty string or an integer (kept as its decimal string)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataError(f"{path}:{lineno}: the id must be a non-empty string or an integer, got {value!r:.60}")
    _check_unicode(str(value), "the id", path, lineno)
    return str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(text: str, what: str, path: Path, lineno: int) -> None:
    """Refuse a string with a lone surrogate (JSON's ``\\ud83d`` escape without its other half): it is
    not Unicode text, and cannot be written as UTF-8 (to a cache key, a tokenizer, an index)."""
    if not text.isascii() and (m := _SURROGATE.search(text)):
        name = what if what == "the id" else repr(what)
        raise DataError(
            f"{path}:{lineno}: {name} holds a lone surrogate {m.group()!r} (half of an escaped UTF-16 pair): "
            "not valid Unicode"
        )


def _check_relevance(rel: int, path: Path, lineno: int) -> None:
    from qama._validate import RELEVANCE_RANGE

    lo, hi = RELEVANCE_RANGE
    if not lo <= rel <= hi:
        raise DataError(f"{path}:{lineno}: relevance {rel} is out of range ({lo}..{hi})")


def _read_qrels(path: Path, doc_index: dict[str, int], query_set: set[str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    _check_input_file(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB")
            try:
                line = raw.decode("utf-8").lstrip("\ufeff" if lineno == 1 else "").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
            row = line.split("\t")
            if not line.strip() or (lineno == 1 and row[0] == "query-id"):
                continue
            if len(row) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}")
            qid, did, score = row
            try:
                rel = int(score)
            except ValueError:
                raise DataError(f"{path}:{lineno}: relevance {score!r} is not an integer") from None
            _check_relevance(rel, path, lineno)
            if did not in doc_index:
                raise DataError(f"{path}:{lineno}: unknown document {did!r}")
            if qid not in query_set:
                raise DataError(f"{path}:{lineno}: unknown query {qid!r}")
            qrels.setdefault(qid, {})[did] = rel
    # A query judged only with relevance 0 has no relevant document: nDCG is undefined, skip it.
    return {q: docs for q, docs in qrels.items() if any(r > 0 for r in docs.values())}


def _read_split(path: Path, split: str, doc_index: dict[str, int], query_ids: list[str]) -> dict[str, dict[str, int]]:
    """The judgments of the qrels split ``split`` of the dataset folder ``path`` (only queries with a relevant
    document); :class:`DataError` when the split does not exist or judges nothing."""
    qrels_path = path / "qrels" / f"{split}.tsv"
    if not qrels_path.exists() and not qrels_path.is_symlink():
        found = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
        raise DataError(f"{qrels_path}: split {split!r} does not exist (found: {', '.join(found) or 'none'})")
    qrels = _read_qrels(qrels_path, doc_index, set(query_ids))
    if not qrels:
        raise DataError(f"{qrels_path}: no query has a relevant document")
    return qrels


def load_dataset(path_or_name: str | os.PathLike, split: str | None = "test", cache_dir: Path | None = None) -> Dataset:
    """Load a BEIR-layout dataset from a folder, or a BEIR dataset by name (downloaded once); the judgments
    of ``split`` (``None``: none are read, for work that judges nothing, such as indexing and training).

    >>> ds = load_dataset("../shared/datasets/scifact")  # doctest: +SKIP
    >>> len(ds.doc_ids), len(ds.qrels)  # doctest: +SKIP
    (5183, 300)

    A folder wins over a name; ``cranfield`` (:data:`EMBEDDED`) is read from the copy shipped in the
    package, other names are downloaded.
    """
    path = Path(path_or_name)
    if not path.is_dir():
        name = str(path_or_name)
        if os.sep in name or name.startswith("."):
            raise DataError(f"{path}: no such dataset folder")
        path = embedded_dataset(name, cache_dir) or download_beir(name, cache_dir or default_cache_dir())
    corpus = _read_jsonl(path / "corpus.jsonl", "documents")
    queries = _read_jsonl(path / "queries.jsonl", "queries")
    doc_ids = [d["_id"] for d in corpus]
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    query_ids = [q["_id"] for q in queries]
    qrels = {} if split is None else _read_split(path, split, doc_index, query_ids)
    return Dataset(
        name=dataset_name(path),
        doc_ids=doc_ids,
        doc_texts=[(d.get("title", "") + " " + d.get("text", "")).strip() for d in corpus],
        titles=[d.get("title", "") for d in corpus],
        query_ids=query_ids,
        query_texts=[q.get("text", "") for q in queries],
        qrels=qrels,
        split=split or "",
        path=path,
        _doc_index=doc_index,
    )


def embedded_dataset(name: str, cache_dir: Path | None = None) -> Path | None:
    """The folder of the dataset ``name`` shipped inside the package, unpacked once into
    ``cache_dir/datasets/embedded-<checksum>/name`` (a temporary folder if the cache is not writable);
    ``None`` if no such dataset is shipped."""
    if name not in EMBEDDED:
        return None
    archive = EMBEDDED_DIR / EMBEDDED[name]
    blob = archive.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()[:12]
    members = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv")
    try:
        parent = Path(cache_dir or default_cache_dir()) / "datasets" / f"embedded-{digest}"
        parent.mkdir(parents=True, exist_ok=True)
        return _unpack_embedded(archive, parent / name, members)
    except OSError as e:  # a cache folder that exists but is read-only, too
        parent = Path(tempfile.mkdtemp(prefix=f"qama-{name}-"))
        logger.info("cannot unpack %s into the cache (%s): unpacked into %s", name, e.strerror or e, parent)
        return _unpack_embedded(archive, parent / name, members)


def _unpack_embedded(archive: Path, target: Path, members: tuple[str, ...]) -> Path:
    """``target``, holding ``members`` of ``archive`` (unpacked there unless already there)."""
    if all((target / m).is_file() for m in members):
        return target
    name = target.name
    with (
        tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp,
        tarfile.open(archive, "r:xz") as tar,
    ):
        staged = Path(tmp) / name
        for member in members:  # only these, written by name: nothing else in the archive is extracted
            src = tar.extractfile(member)
            if src is None:
                raise DataError(f"{archive}: {member} missing from the package's copy")
            (staged / member).parent.mkdir(parents=True, exist_ok=True)
            (staged / member).write_bytes(src.read())
        try:
            os.replace(staged, target)
        except OSError:  # another process unpacked it first
            if not all((target / m).is_file() for m in members):
                raise
    logger.info("unpacked the package's copy of %s into %s", name, target)
    return target


def _safe_extract(zf: zipfile.ZipFile, target: Path) -> None:
    """Extract refusing absolute paths, ``..`` components and symbolic links (zip slip)."""
    root = target.resolve()
    for info in zf.infolist():
        name = info.filename
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        dest = (root / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or is_link or not dest.is_relative_to(root):
            raise DataError(f"refusing unsafe archive member {name!r}")
    zf.extractall(root)


def _downloaded(target: Path) -> bool:
    """Whether the dataset folder ``target`` is in place (it holds ``corpus.jsonl``); a file or a folder
    with other things there is refused (:class:`DataError`): never qama's, which renames a download in
    whole, so the user's. An empty folder or none: False."""
    if (target / "corpus.jsonl").is_file():
        return True
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target}: exists but holds no corpus.jsonl; move it or choose another cache folder")
    return False


def download_beir(name: str, cache_dir: Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download and unpack the public BEIR archive ``name`` into ``cache_dir/datasets/name``.

    HTTPS only, a timeout and a size cap, md5 checked when BEIR publishes one, written to a
    temporary file and renamed, so an interrupted download leaves nothing half-done behind.
    """
    target = Path(cache_dir) / "datasets" / name
    if _downloaded(target):
        return target
    url = url or BEIR_URL.format(name=name)
    if not url.startswith("https://"):
        raise DataError(f"refusing to download over plain HTTP: {url}")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s", url)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        md5 = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, archive.open("wb") as out:
                size = 0
                # a bar where the logs show (not under qama -q): BEIR archives reach 1.5 GB, minutes of download
                length = getattr(resp, "headers", {}).get("Content-Length")
                bar = tqdm(
                    total=int(length) if length and length.isdigit() else None, desc=f"downloading {name}",
                    unit="B", unit_scale=True, disable=not logger.isEnabledFor(logging.INFO),
                )  # fmt: skip
                with bar:
                    while chunk := resp.read(1 << 20):
                        size += len(chunk)
                        if size > MAX_DOWNLOAD_BYTES:
                            raise DataError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes, refusing")
                        md5.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise DataError(f"cannot download BEIR dataset {name!r} from {url} (HTTP {e.code})") from None
            raise DataError(
                f"{name!r}: no such folder here, and no BEIR dataset of that name ({url}: HTTP 404 Not Found); "
                "check the name or the path"
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise DataError(
                f"cannot download BEIR dataset {name!r} from {url} ({e}); are you offline? "
                f"Pass a local folder in BEIR layout instead."
            ) from None
        expected = BEIR_MD5.get(name)
        if expected and md5.hexdigest() != expected:
            raise DataError(f"{url}: md5 {md5.hexdigest()} does not match the published {expected}")
        extracted = Path(tmp) / "out"
        try:
            with zipfile.ZipFile(archive) as zf:
                _safe_extract(zf, extracted)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise DataError(
                f"{url}: not a readable zip archive ({e}): a truncated download, or a web page in its place; "
                "nothing kept"
            ) from None
        inner = extracted / name if (extracted / name).is_dir() else extracted
        if not (inner / "corpus.jsonl").is_file():
            raise DataError(f"{url}: archive has no corpus.jsonl")
        if _downloaded(target):  # by another process meanwhile (or the user made the folder): checked again
            return target
        try:
            if target.exists():  # an empty folder
                target.rmdir()
            os.replace(inner, target)
        except OSError as e:  # another download moved into place between the check and the rename
            if (target / "corpus.jsonl").is_file():
                return target
            raise DataError(f"{target}: cannot move the downloaded dataset into place ({e})") from None
    return target


def jsonl_dataset(path: str | os.PathLike) -> Dataset:
    """A plain JSONL corpus (:func:`read_jsonl_corpus`) as a :class:`Dataset` with no queries, named
    after the file: what the query samples of ``qama index --corpus`` (its titles, its sentences) read."""
    ids, titles, texts = read_jsonl_corpus(path)
    return Dataset(Path(path).stem, ids, texts, titles, [], [], {}, split="", path=None)


def read_jsonl_corpus(path: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """``(ids, titles, texts)`` of a plain JSONL corpus: one ``{"_id" or "id", "text", "title"?}`` a line.

    A text is ``title + " " + text``, as :class:`Dataset` builds it.
    """
    docs = _read_jsonl(Path(path), "documents", id_keys=("_id", "id"))  # the checks, limits and BOM of a dataset
    ids = [d["_id"] for d in docs]
    titles = [d.get("title", "") for d in docs]
    texts = [f"{t} {d.get('text', '')}".strip() for t, d in zip(titles, docs, strict=True)]
    return ids, titles, texts
