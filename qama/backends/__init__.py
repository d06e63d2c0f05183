"""Where qama codes are stored and searched: one interface, two backends.

* ``faiss`` (default): :class:`FaissBackend`, a persistent :class:`~qama.index.QamaIndex` folder on
  this machine (memory-mapped codes, exact XOR + popcount scan).
* ``milvus``: :class:`~qama.backends.milvus.MilvusBackend`, a collection on a Milvus server
  (standalone, distributed, or milvus-lite), for corpora larger than one machine's index
  (``pip install 'qama[milvus]'``).

Both implement :class:`Backend`: add documents by id (with optional titles), delete by id, exact
Hamming top-``k`` (:meth:`Backend.search_codes`), two-stage search with rescoring
(:meth:`Backend.search`: Hamming candidates, then qama's asymmetric or FP32 rescoring), count,
close. Results are ``D, I`` as in faiss, with document ids instead of row numbers: ``I`` is an
``(nq, k)`` object array of ``str`` ids, ``None`` where fewer than ``k`` documents exist (their
distance is :data:`qama.search.MISSING_DISTANCE`). Equal distances may come back in a different
order from different backends.

:func:`open_backend` picks the backend from ``--backend`` or from the URI: ``http://``,
``https://``, ``tcp://`` and ``*.db`` (a milvus-lite file) mean Milvus, anything else is an index
folder. :func:`parse_shard` and :func:`shard_range` split one corpus into the disjoint parts that
``qama index --shard I/N`` workers load into one collection.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from qama._validate import check_k
from qama.codes import Plan
from qama.search import MISSING_DISTANCE, Encoder

__all__ = [
    "BACKENDS",
    "Backend",
    "FaissBackend",
    "open_backend",
    "backend_kind",
    "check_new_store",
    "parse_shard",
    "shard_range",
    "search_hits",
    "store_target",
]

logger = logging.getLogger(__name__)

#: Names accepted by ``--backend``.
BACKENDS = ("faiss", "milvus")

_MILVUS_URI = re.compile(r"^(https?|tcp|grpc)://", re.IGNORECASE)


@runtime_checkable
class Backend(Protocol):
    """What ``qama index`` / ``qama search`` need from a store of codes."""

    @property
    def encoder(self) -> Encoder:
        """The encoder of the stored codes (queries are encoded with it)."""
        ...

    @property
    def plan(self) -> Plan:
        """The plan of the stored codes."""
        ...

    @property
    def manifest(self) -> dict[str, Any]:
        """What the store records about itself; ``manifest["meta"]["model"]`` names the embedding model."""
        ...

    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        titles: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Encode ``(n, d)`` float embeddings and store them under the document ``ids``."""
        ...

    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id; returns how many were removed (unknown ids raise ``KeyError``)."""
        ...

    def search_codes(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact Hamming top-``k`` of ``(nq, code_size)`` uint8 query codes: int32 distances, object ids."""
        ...

    def search(
        self, queries: np.ndarray, k: int = 10, oversample: int = 0, rescore: str = "auto", mode: str = "hamming"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for ``(nq, d)`` float queries: float32 scores (descending) and object ids.

        ``oversample=0``: Hamming only (scores are negated distances); ``oversample=f``: ``f × k``
        Hamming candidates rescored (``"asymmetric"``, ``"vectors"`` or ``"auto"``). ``mode="adc"``:
        every code scored asymmetrically, no Hamming stage (index folders only).
        """
        ...

    def title(self, doc_id: str) -> str | None:
        """The title stored with ``doc_id`` (``None`` when there is none)."""
        ...

    def count(self) -> int:
        """Number of stored documents."""
        ...

    def close(self) -> None:
        """Release connections and files; the backend is unusable afterwards."""
        ...

    def __enter__(self) -> Backend:
        """``with open_backend(...) as backend:`` closes it at the end."""
        ...

    def __exit__(self, *exc: object) -> None: ...


def backend_kind(uri: str | os.PathLike, backend: str | None = None) -> str:
    """``"faiss"`` or ``"milvus"``: ``backend`` when given, else read from the URI."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return backend
    text = str(uri)
    if _MILVUS_URI.match(text) or text.endswith(".db"):
        return "milvus"
    return "faiss"


def store_target(
    uri: str | None,
    folder: str | os.PathLike | None,
    backend: str | None,
    milvus: dict[str, Any],
    flag: str = "path",
    faiss: dict[str, Any] | None = None,
) -> tuple[str | Path, str, dict[str, Any]]:
    """``(uri, kind, options)`` of the store a command names: a Milvus ``uri`` (with the ``milvus``
    options), else the index ``folder`` (with the ``faiss`` options; ``flag`` names its option in the
    error when it is missing)."""
    kind = backend_kind(uri or folder or "", backend)
    if kind == "milvus":
        if uri is None:
            raise ValueError("--backend milvus needs --uri (http://host:19530 or a milvus-lite file.db)")
        return uri, kind, dict(milvus)
    if folder is None:
        raise ValueError(f"give {flag} (an index folder), or --backend milvus --uri URI")
    return Path(folder), kind, dict(faiss or {})


def check_new_store(
    uri: str | os.PathLike, backend: str | None = None, overwrite: bool = False, shard: str | None = None
) -> None:
    """Before any work on a store to create: an index folder must be new, empty, or an index to
    ``overwrite`` (:func:`qama.index.check_new_index_folder`); a Milvus collection is checked when opened.

    With ``shard`` (``"I/N"``, checked here) the worker adds its part to the index folder: an index already
    there is appended to, and ``overwrite`` of one is refused (it would drop the other workers' parts).
    ``overwrite`` of a Milvus collection is refused (it is upserted into, never replaced)."""
    if shard is not None:
        parse_shard(shard)
    kind = backend_kind(uri, backend)
    if kind == "milvus" and overwrite:
        raise ValueError(
            f"{uri}: --overwrite replaces an index folder; documents are upserted into a Milvus collection "
            "by id, so drop the collection in Milvus to start anew"
        )
    if kind == "faiss":
        from qama.index import MANIFEST, check_new_index_folder

        path = Path(uri)
        check_new_index_folder(path, overwrite or shard is not None)
        if shard is not None and overwrite and (path / MANIFEST).exists():
            raise FileExistsError(
                f"{path}: --overwrite replaces the whole index, the parts other --shard workers added with it; "
                "remove the index to start anew"
            )


def open_backend(
    uri: str | os.PathLike,
    backend: str | None = None,
    encoder: Encoder | None = None,
    create: bool = False,
    **options: Any,
) -> Backend:
    """Open (or, with ``create=True``, create when missing) the store at ``uri``.

    ``encoder`` is required to create a store, and to open one built with a trained adapter.
    Both take ``adapter`` (a :class:`~qama.adapter.QamaAdapter`, or for an index folder also its
    path) to open a store built with it. ``options`` go to the backend: :class:`FaissBackend`
    takes ``keep_vectors``, ``adapter_path``, ``meta``, ``overwrite``, ``verify``;
    :class:`~qama.backends.milvus.MilvusBackend` takes ``collection``, ``index_type``, ``nlist``,
    ``nprobe``, ``token``, ``keep_vectors``, ``dim``, ``meta``, ``batch_size``, ``timeout``, ``retries``.
    """
    kind = backend_kind(uri, backend)
    if kind == "milvus":
        from qama.backends.milvus import MilvusBackend

        return MilvusBackend.connect(str(uri), encoder=encoder, create=create, **options)
    return FaissBackend(Path(uri), encoder=encoder, create=create, **options)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``: worker ``I`` of ``N``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"shard must be I/N (worker I of N, counting from 0), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def shard_range(n_docs: int, shard: int, n_shards: int) -> range:
    """Rows of worker ``shard`` of ``n_shards``: contiguous, disjoint, together all ``n_docs`` rows.

    >>> [list(shard_range(5, i, 2)) for i in range(2)]
    [[0, 1], [2, 3, 4]]
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: need 0 <= shard < n_shards")
    return range(n_docs * shard // n_shards, n_docs * (shard + 1) // n_shards)


def search_hits(
    backend: Backend,
    queries: np.ndarray,
    labels: Sequence[str],
    k: int = 10,
    oversample: int = 4,
    rescore: str = "auto",
    mode: str = "hamming",
) -> list[dict[str, Any]]:
    """:meth:`Backend.search` as records: ``[{"query": label, "hits": [{"id", "title", "score"}]}]``,
    one per query (what ``qama search`` prints); missing neighbours are left out."""
    scores, ids = backend.search(queries, k, oversample=oversample, rescore=rescore, mode=mode)
    return [
        {
            "query": label,
            "hits": [
                {"id": d, "title": backend.title(d), "score": float(s)}
                for s, d in zip(srow, irow, strict=True)
                if d is not None
            ],
        }
        for label, srow, irow in zip(labels, scores, ids, strict=True)
    ]


def missing_results(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(nq, k)`` distances :data:`MISSING_DISTANCE` and ids ``None``: the empty result."""
    return np.full((nq, k), MISSING_DISTANCE, dtype=np.int32), np.full((nq, k), None, dtype=object)


class FaissBackend:
    """:class:`Backend` over a persistent :class:`~qama.index.QamaIndex` folder (the default).

    The folder is written by the first :meth:`add` when it does not exist yet; later adds append
    (ids must be new: unlike Milvus, this backend does not upsert). An index built with a trained
    adapter opens with ``encoder``, with ``adapter``, or else with the adapter folder it names.
    """

    def __init__(
        self,
        path: Path,
        encoder: Encoder | None = None,
        create: bool = False,
        keep_vectors: bool = False,
        adapter_path: str | os.PathLike | None = None,
        meta: dict[str, Any] | None = None,
        overwrite: bool = False,
        adapter: Any = None,
        verify: bool = False,
    ) -> None:
        from qama.index import MANIFEST, QamaIndex

        self.path = Path(path)
        self.keep_vectors = keep_vectors
        self.adapter_path = adapter_path
        self.meta = meta
        self._overwrite = overwrite
        self.index: Any = None
        self._rows: dict[str, int] = {}  # document id -> row, of the ids this backend has returned
        if (self.path / MANIFEST).exists() and not overwrite:
            if encoder is None:  # an adapter-built index: ``adapter``, else the adapter folder it names
                self.index = QamaIndex.open_with_adapter(self.path, adapter, verify=verify)
            else:
                self.index = QamaIndex.open(self.path, encoder=encoder, verify=verify)
            self._encoder: Encoder | None = self.index.encoder
        elif not create:
            raise FileNotFoundError(f"{self.path}: no qama index here (create it with create=True / 'qama index')")
        elif encoder is None:
            raise ValueError("creating an index needs an encoder")
        else:
            self._encoder = encoder

    @property
    def encoder(self) -> Encoder:
        assert self._encoder is not None
        return self._encoder

    @property
    def plan(self) -> Plan:
        return self.encoder.plan

    @property
    def manifest(self) -> dict[str, Any]:
        """The index's manifest (``{}`` before the first :meth:`add`); ``meta`` holds e.g. the model."""
        return {} if self.index is None else dict(self.index.manifest)

    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        titles: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        from qama._validate import check_not_one_string
        from qama.index import QamaIndex

        check_not_one_string(ids, "ids", "document ids")  # list("pqr") would be the ids "p", "q", "r"
        check_not_one_string(titles, "titles", "titles")
        embeddings = np.asarray(embeddings)  # not converted whole: the index reads it a block of rows at a time
        if self.index is None:
            kwargs: dict[str, Any] = {"meta": self.meta} if self.meta is not None else {}
            self.index = QamaIndex.create(
                self.path,
                self.encoder,
                embeddings,
                list(ids),
                titles=titles,
                keep_vectors=self.keep_vectors,
                adapter_path=self.adapter_path,
                overwrite=self._overwrite,
                progress=progress,
                **kwargs,
            )
        else:
            if titles is not None and not any(titles):
                titles = None  # no title at all: as a first add stores none
            if self.index.titles is not None and titles is None:
                titles = [""] * len(ids)  # documents without a title, beside titled ones
            elif self.index.titles is None and titles is not None and len(self.index):
                logger.warning(
                    "%s: this index keeps no titles; the titles of the added documents are not stored", self.path
                )
                titles = None
            self.index.add(embeddings, list(ids), titles=titles, progress=progress)

    def delete(self, ids: Iterable[str]) -> int:
        self._rows.clear()  # rows after the deleted ones are renumbered
        if self.index is None:
            wanted = list(ids)
            if wanted:
                raise KeyError(f"{len(wanted)} document id(s) not in the index, e.g. {wanted[:3]}")
            return 0
        return int(self.index.delete(ids))

    def _doc_ids(self, rows: np.ndarray) -> np.ndarray:
        out = np.full(rows.shape, None, dtype=object)
        for pos in zip(*np.nonzero(rows >= 0), strict=True):
            row = int(rows[pos])
            out[pos] = doc = self.index.doc_id(row)
            self._rows[doc] = row
        return out

    def search_codes(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k, len(query_codes))
        if self.index is None:
            return missing_results(len(query_codes), k)
        dist, rows = self.index.search_codes(query_codes, k)
        return dist, self._doc_ids(rows)

    def search(
        self, queries: np.ndarray, k: int = 10, oversample: int = 0, rescore: str = "auto", mode: str = "hamming"
    ) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k, len(queries))
        if self.index is None:
            dist, ids = missing_results(len(queries), k)
            return np.full(dist.shape, -np.inf, dtype=np.float32), ids
        scores, rows = self.index.search(queries, k, oversample=oversample, rescore=rescore, mode=mode)
        return scores, self._doc_ids(rows)

    def title(self, doc_id: str) -> str | None:
        if self.index is None or self.index.titles is None:
            return None
        row = self._rows.get(doc_id)  # an id this backend returned: one row decoded to check it
        if row is None or row >= len(self.index) or self.index.doc_id(row) != doc_id:
            row = self.index.row_of(doc_id)  # any other id: looked up in the index's id tables
            if row is None:
                return None
        return self.index.title(row) or None  # an empty title is none, as a Milvus collection says

    def count(self) -> int:
        return 0 if self.index is None else len(self.index)

    def close(self) -> None:
        self.index = None

    def __enter__(self) -> FaissBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaissBackend({str(self.path)!r}, n={self.count()})"


def hits_text(results: list[dict[str, Any]]) -> str:
    """:func:`search_hits` as the lines ``qama search`` prints: the query, then ``rank. score  id  title``;
    control characters of a query, id or title are written as escapes (``\\n``, ``\\x1b``): a line a hit,
    and no escape sequence of a document reaches the terminal."""
    lines = []
    for res in results:
        lines.append(f"query: {_printable(res['query'])}")
        for rank, hit in enumerate(res["hits"], 1):
            title = f"  {_printable(hit['title'])}" if hit["title"] else ""
            lines.append(f"{rank:4d}. {hit['score']:9.4f}  {_printable(hit['id'])}{title}")
    return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    """``text`` with each character that is not printable written as its escape (``repr``'s)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
