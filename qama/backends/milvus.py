"""qama codes in a Milvus collection: the backend for corpora larger than one machine.

Needs ``pip install 'qama[milvus]'`` (pymilvus; milvus-lite for a local server). The same
calls as the embedded faiss backend (:class:`qama.backends.Backend`); the URI picks the server:

* ``http://host:19530`` (or ``https://``, with ``token="user:password"``): a Milvus standalone
  or distributed cluster;
* ``./codes.db``: milvus-lite embedded in this process (one process at a time);
* :class:`LocalMilvusServer` starts milvus-lite as a gRPC server on a loopback port, so that
  several processes (e.g. ``qama index --shard I/N`` workers) can load one collection.

A qama store is two collections. ``<name>`` holds one row per document::

    id      VARCHAR primary key      the document id (upserts make a re-run idempotent)
    code    BINARY_VECTOR            the packed code, dim = 8 * code_size (n_bits padded to bytes)
    title   VARCHAR                  the document's title ("" when none)
    vector  FLOAT_VECTOR (optional)  the float32 embedding, for exact rescoring (keep_vectors)

and ``<name>_qama`` holds the manifest (plan, code size, encoder checksum, user meta) and, for
untrained thresholds, the encoder itself, so that any machine can search the collection. The
code field is indexed with ``BIN_FLAT`` (exact, default) or ``BIN_IVF_FLAT`` (``nlist``, searched
with ``nprobe``; approximate, for large collections on a server) and the ``HAMMING`` metric.

Loading encodes and upserts in batches (a tqdm bar, retries with exponential backoff on
transient errors). Opening checks that the collection's code size and encoder match, and an
unreachable server raises :class:`MilvusUnavailableError` naming the URI.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from qama._validate import (
    MAX_JSON_BYTES,
    Field,
    check_fields,
    check_k,
    check_new_documents,
    check_not_one_string,
    check_one_per_row,
    check_oversample,
    check_queries,
)
from qama.backends import missing_results
from qama.codes import Plan
from qama.encoders import Encoder, encoder_kind, open_encoder, state_bytes, state_from_bytes
from qama.errors import IndexMismatchError
from qama.search import search_rescored

__all__ = [
    "INDEX_TYPES",
    "MilvusBackend",
    "MilvusUnavailableError",
    "LocalMilvusServer",
    "free_port",
]

logger = logging.getLogger(__name__)

INSTALL = "pip install 'qama[milvus]'  (pymilvus==3.0.2, milvus-lite==2.5.1, setuptools<81)"
FORMAT = "qama-milvus"
VERSION = 1
#: Index types of the code field: exact scan, or inverted lists (approximate; nlist / nprobe).
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
UPSERT_THREADS = 2  # upserts in flight while the next batch is encoded
MAX_ID_BYTES = 1024
MAX_TITLE_BYTES = 65535
MAX_TOPK = 16384  # Milvus's limit on k
_META_CHUNK = 60000  # characters per manifest row (VARCHAR holds at most 65535 bytes)
_TRANSIENT = re.compile(r"unavailable|deadline|timeout|timed out|rate limit|too many|connection reset|temporar", re.I)

T = TypeVar("T")


class MilvusUnavailableError(ConnectionError):
    """The Milvus server cannot be reached (or pymilvus / milvus-lite is not installed)."""


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:
        raise MilvusUnavailableError(f"the Milvus backend needs pymilvus ({e}); {INSTALL}") from None
    return pymilvus


def _retry(fn: Callable[[], T], what: str, retries: int, backoff: float = 0.5) -> T:
    """Call ``fn``; on a transient error wait ``backoff · 2^i`` seconds (at most 8) and retry."""
    pymilvus = _pymilvus()
    for attempt in range(retries + 1):
        try:
            return fn()
        except (pymilvus.exceptions.MilvusException, ConnectionError) as e:
            if attempt == retries or not _TRANSIENT.search(str(e)):
                raise
            wait = min(8.0, backoff * 2**attempt)
            logger.warning("%s failed (%s); retry %d/%d in %.1f s", what, e, attempt + 1, retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _encoder_record(encoder: Encoder) -> dict[str, Any]:
    """The encoder as manifest data: kind, checksum and its state (:func:`qama.encoders.state_bytes`, base64)."""
    blob = state_bytes(encoder)
    return {"kind": encoder_kind(encoder), "checksum": encoder.checksum, "tensors": base64.b64encode(blob).decode()}


def _record_state(record: dict[str, Any], where: str) -> dict[str, np.ndarray] | None:
    """The state stored in an encoder record (``None`` for a collection written before it was stored)."""
    if "tensors" not in record:
        return None
    try:
        blob = base64.b64decode(record["tensors"])
    except ValueError as e:
        raise IndexMismatchError(f"{where}: unreadable encoder state ({e})") from None
    return state_from_bytes(blob, where)


class MilvusBackend:
    """:class:`qama.backends.Backend` over a Milvus collection. Build one with :meth:`connect`."""

    def __init__(
        self,
        client: Any,
        uri: str,
        collection: str,
        encoder: Encoder,
        manifest: dict[str, Any],
        nprobe: int,
        batch_size: int,
        timeout: float,
        retries: int,
    ) -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self._encoder = encoder
        self.manifest = manifest
        self.nprobe = nprobe
        self.batch_size = batch_size
        self.timeout = timeout
        self.retries = retries

    # ------------------------------------------------------------------ connect / create
    @classmethod
    def connect(
        cls,
        uri: str,
        encoder: Encoder | None = None,
        create: bool = False,
        collection: str = "qama",
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 16,
        keep_vectors: bool = False,
        dim: int | None = None,
        meta: dict[str, Any] | None = None,
        token: str = "",
        batch_size: int = 5000,
        timeout: float = 30.0,
        retries: int = 4,
        adapter: Any = None,
    ) -> MilvusBackend:
        """Connect to ``uri`` and open ``collection`` (creating it when ``create`` and missing).

        ``encoder`` is needed to create; a collection of untrained thresholds stores them, and one
        built with a trained adapter opens with the encoder or with ``adapter`` (a
        :class:`~qama.adapter.QamaAdapter`: the plan and centroids are read from the collection).
        ``adapter`` may also be the adapter's folder.
        ``keep_vectors`` and ``dim`` (the embedding size, default ``plan.dim``) add the float32
        vector field at creation.
        Creating is safe to race: several shard workers may call it for one collection.
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index type {index_type!r} not supported; choose one of {', '.join(INDEX_TYPES)}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", collection):
            raise ValueError(f"collection name {collection!r}: letters, digits and _ only, not starting with a digit")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if isinstance(adapter, (str, os.PathLike)):
            from qama.adapter import QamaAdapter

            adapter = QamaAdapter.load(adapter)
        pymilvus = _pymilvus()
        try:
            client = pymilvus.MilvusClient(uri=uri, token=token, timeout=timeout)
        except pymilvus.exceptions.MilvusException as e:
            raise MilvusUnavailableError(f"cannot reach Milvus at {uri}: {e.message}") from None
        meta_name = f"{collection}_qama"
        try:
            if not client.has_collection(meta_name, timeout=timeout):
                if not create:
                    raise FileNotFoundError(
                        f"{uri}: no qama collection {collection!r} (create it with create=True / 'qama index')"
                    )
                if encoder is None:
                    raise ValueError("creating a Milvus collection needs an encoder")
                manifest = {
                    "format": FORMAT,
                    "version": VERSION,
                    "plan": encoder.plan.to_dict(),
                    "code_size": encoder.plan.code_size,
                    "dim": int(dim or encoder.plan.dim),
                    "index_type": index_type,
                    "nlist": nlist,
                    "keep_vectors": keep_vectors,
                    "encoder": _encoder_record(encoder),
                    "meta": dict(meta or {}),
                }
                cls._create(client, collection, manifest, timeout)
            manifest = cls._read_manifest(client, uri, collection, timeout)
            encoder = cls._check(client, uri, collection, manifest, encoder, adapter, timeout)
            client.load_collection(collection, timeout=timeout)
        except BaseException:
            client.close()
            raise
        logger.info("opened Milvus collection %s at %s (%s)", collection, uri, manifest["index_type"])
        return cls(client, uri, collection, encoder, manifest, nprobe, batch_size, timeout, retries)

    @staticmethod
    def _create(client: Any, collection: str, manifest: dict[str, Any], timeout: float) -> None:
        DataType = _pymilvus().DataType
        plan = Plan.from_dict(manifest["plan"])
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=8 * plan.code_size)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_TITLE_BYTES)
        index = client.prepare_index_params()
        params = {"nlist": int(manifest["nlist"])} if manifest["index_type"] == "BIN_IVF_FLAT" else {}
        index.add_index("code", index_type=manifest["index_type"], metric_type="HAMMING", params=params)
        if manifest["keep_vectors"]:
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(manifest["dim"]))
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        meta_schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        meta_schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        meta_schema.add_field("value", DataType.VARCHAR, max_length=65535)
        meta_schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        meta_index = client.prepare_index_params()
        meta_index.add_index("v", index_type="FLAT", metric_type="L2")
        text = json.dumps(manifest)
        chunks = [text[i : i + _META_CHUNK] for i in range(0, len(text), _META_CHUNK)]
        rows = [{"key": f"manifest.{i}", "value": c, "v": [0.0, 0.0]} for i, c in enumerate(chunks)]
        rows.append({"key": "manifest.n", "value": str(len(chunks)), "v": [0.0, 0.0]})
        # The codes first, the manifest last: a collection with a manifest is complete. Another
        # worker creating the same collection at the same time makes ours fail; theirs is used.
        try:
            if not client.has_collection(collection, timeout=timeout):
                client.create_collection(
                    collection, schema=schema, index_params=index, consistency_level="Strong", timeout=timeout
                )
            else:  # never adopt (and write into) a collection qama did not create
                _refuse_foreign_collection(client, collection, timeout)
            if not client.has_collection(f"{collection}_qama", timeout=timeout):
                client.create_collection(f"{collection}_qama", schema=meta_schema, index_params=meta_index)
                client.upsert(f"{collection}_qama", rows, timeout=timeout)
        except _pymilvus().exceptions.MilvusException as e:
            if not client.has_collection(f"{collection}_qama", timeout=timeout):
                raise ValueError(
                    f"collection {collection!r}: Milvus refused to create it ({e.message.strip()}); a collection of "
                    "that name it made before refusing has no qama manifest: drop it in Milvus or choose another "
                    "--collection"
                ) from None
            logger.info("collection %s was created concurrently (%s)", collection, e)

    @staticmethod
    def _read_manifest(client: Any, uri: str, collection: str, timeout: float) -> dict[str, Any]:
        name = f"{collection}_qama"
        where = f"{uri} collection {collection!r}"
        client.load_collection(name, timeout=timeout)
        deadline = time.monotonic() + timeout  # a concurrent creator may not have written it yet
        while True:
            got = client.get(name, ids=["manifest.n"], output_fields=["value"], timeout=timeout)
            if got or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if not got:
            raise IndexMismatchError(f"{where}: incomplete qama manifest (no manifest.n row)")
        n_rows = str(got[0]["value"])
        if not n_rows.isdigit() or not 1 <= int(n_rows) <= MAX_JSON_BYTES // _META_CHUNK + 1:
            raise IndexMismatchError(f"{where}: malformed qama manifest (manifest.n = {n_rows[:40]!r})")
        keys = [f"manifest.{i}" for i in range(int(n_rows))]
        rows = {r["key"]: r["value"] for r in client.get(name, ids=keys, output_fields=["value"], timeout=timeout)}
        try:
            manifest = json.loads("".join(rows[k] for k in keys))
        except (KeyError, json.JSONDecodeError, RecursionError) as e:
            raise IndexMismatchError(f"{where}: unreadable qama manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise IndexMismatchError(f"{where}: not a qama collection of format version {VERSION}")
        _check_manifest_fields(manifest, where)
        return manifest

    @staticmethod
    def _check(
        client: Any,
        uri: str,
        collection: str,
        manifest: dict[str, Any],
        encoder: Encoder | None,
        adapter: Any,
        timeout: float,
    ) -> Encoder:
        where = f"{uri} collection {collection!r}"
        plan = Plan.from_dict(manifest["plan"])
        if not client.has_collection(collection, timeout=timeout):
            raise IndexMismatchError(f"{where}: the manifest exists but the code collection does not")
        fields = {f["name"]: f for f in client.describe_collection(collection, timeout=timeout)["fields"]}
        bits = int(fields.get("code", {}).get("params", {}).get("dim", -1))
        if bits != 8 * plan.code_size or int(manifest["code_size"]) != plan.code_size:
            raise IndexMismatchError(
                f"{where}: stores codes of {bits} bits ({bits // 8} bytes), but its plan {plan.spec()} "
                f"has {plan.code_size}-byte codes: the collection was not written by this plan"
            )
        record = manifest["encoder"]
        state = lambda: _record_state(record, where)  # noqa: E731
        return open_encoder(record, plan, state, where, encoder, adapter, what="collection")

    # ------------------------------------------------------------------ properties
    @property
    def encoder(self) -> Encoder:
        return self._encoder

    @property
    def plan(self) -> Plan:
        return self._encoder.plan

    @property
    def keep_vectors(self) -> bool:
        return bool(self.manifest["keep_vectors"])

    def __repr__(self) -> str:
        return (
            f"MilvusBackend({self.uri!r}, collection={self.collection!r}, plan={self.plan.spec()!r}, "
            f"index={self.manifest['index_type']})"
        )

    def __enter__(self) -> MilvusBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _retry(lambda: fn(*args, timeout=self.timeout, **kwargs), what, self.retries)

    # ------------------------------------------------------------------ updates
    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        titles: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Encode and upsert documents in batches of ``batch_size`` (existing ids are replaced)."""
        embeddings = np.asarray(embeddings)
        # The whole add before any upsert: counts, unique ids (one upsert would keep one of the rows of
        # an id), finite values, and what Milvus can store of every id and title.
        check_new_documents(embeddings, ids, titles, self.plan.dim)
        _check_storable(ids, titles)
        if embeddings.shape[1] != int(self.manifest["dim"]):  # what is searched with queries of that dimension
            raise IndexMismatchError(
                f"embeddings have {embeddings.shape[1]} dimensions, the collection {self.manifest['dim']}"
            )
        # Encoding the next batch overlaps the upserts in flight (gRPC calls release the GIL).
        in_flight: deque[Future[None]] = deque()
        with ThreadPoolExecutor(max_workers=UPSERT_THREADS, thread_name_prefix="qama-upsert") as pool:
            for start in range(0, len(embeddings), self.batch_size):
                block = np.asarray(embeddings[start : start + self.batch_size], dtype=np.float32)
                codes = self.encoder.encode(block)
                if codes.shape != (len(block), self.plan.code_size) or codes.dtype != np.uint8:
                    raise IndexMismatchError(f"the encoder returned codes {codes.dtype} {codes.shape}")
                stop = start + len(block)
                titles_part = None if titles is None else titles[start:stop]
                vectors_part = block if self.keep_vectors else None
                in_flight.append(pool.submit(self.add_codes, codes, ids[start:stop], titles_part, vectors_part))
                while len(in_flight) > UPSERT_THREADS:
                    in_flight.popleft().result()  # re-raises an upsert's error here
                if progress is not None:
                    progress(len(block))
            while in_flight:
                in_flight.popleft().result()
        self.flush()

    def add_codes(
        self,
        codes: np.ndarray,
        ids: Sequence[str],
        titles: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
        progress: bool = False,
    ) -> None:
        """Upsert ``(n, code_size)`` packed codes under ``ids`` (the load path below :meth:`add`)."""
        check_not_one_string(ids, "ids", "document ids")
        check_not_one_string(titles, "titles", "titles")
        codes = np.ascontiguousarray(codes)
        cs = self.plan.code_size
        if codes.ndim != 2 or codes.dtype != np.uint8 or codes.shape[1] < cs:
            raise IndexMismatchError(f"codes must be uint8 (n, {cs}) for plan {self.plan.spec()}, got {codes.shape}")
        check_one_per_row(ids, titles, len(codes), "codes")
        _check_storable(ids, titles)  # every row before the first upsert
        if self.keep_vectors and (vectors is None or len(vectors) != len(codes)):
            raise ValueError("this collection keeps float vectors: give one per code")
        codes = codes[:, :cs]
        bar = tqdm(total=len(codes), desc=f"upsert {self.collection}", unit="doc", disable=not progress)
        with bar:
            for start in range(0, len(codes), self.batch_size):
                stop = min(start + self.batch_size, len(codes))
                rows = []
                for i in range(start, stop):
                    title = "" if titles is None else str(titles[i] or "")
                    row: dict[str, Any] = {"id": ids[i], "code": codes[i].tobytes(), "title": title}
                    if vectors is not None:
                        row["vector"] = np.asarray(vectors[i], dtype=np.float32)
                    rows.append(row)
                self._call(f"upsert of rows {start}-{stop}", self.client.upsert, self.collection, rows)
                bar.update(stop - start)

    def flush(self) -> None:
        """Seal the loaded segments so the server indexes them (no-op on milvus-lite)."""
        try:
            self._call("flush", self.client.flush, self.collection)
        except _pymilvus().exceptions.MilvusException as e:  # milvus-lite may not implement flush
            logger.debug("flush not supported here: %s", e)

    def delete(self, ids: Iterable[str]) -> int:
        check_not_one_string(ids, "ids", "document ids")  # delete("ab") must not remove "a" and "b"
        wanted = list(dict.fromkeys(ids))
        found: set[str] = set()
        for batch in _batches(wanted, 4096):
            rows = self._call("get", self.client.get, self.collection, ids=batch, output_fields=["id"])
            found.update(r["id"] for r in rows)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} document id(s) not in the collection, e.g. {missing[:3]}")
        for batch in _batches(wanted, 4096):
            self._call("delete", self.client.delete, self.collection, ids=batch)
        return len(wanted)

    # ------------------------------------------------------------------ search
    def search_codes(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top-``k`` (exact with BIN_FLAT); distances ascending, ties in the server's order."""
        k = check_k(k, len(query_codes))  # a Python int (pymilvus refuses a numpy integer's limit)
        if k > MAX_TOPK:
            raise ValueError(f"Milvus returns at most {MAX_TOPK} results per query, asked for {k}")
        query_codes = np.asarray(query_codes)
        cs = self.plan.code_size
        if query_codes.ndim != 2 or query_codes.dtype != np.uint8 or query_codes.shape[1] < cs:
            raise IndexMismatchError(
                f"query codes must be uint8 of shape (nq, {cs}) for plan {self.plan.spec()}, "
                f"got {query_codes.dtype} {query_codes.shape}"
            )
        if np.any(query_codes[:, cs:]):
            raise IndexMismatchError("query codes wider than the code size must be padded with zero bytes")
        dist, ids = missing_results(len(query_codes), k)
        params: dict[str, Any] = {"metric_type": "HAMMING"}
        if self.manifest["index_type"] == "BIN_IVF_FLAT":
            params["params"] = {"nprobe": self.nprobe}
        step = max(1, min(1024, 16384 // k))
        for s in range(0, len(query_codes), step):
            data = [row.tobytes() for row in query_codes[s : s + step, :cs]]
            hits = self._call(
                "search",
                self.client.search,
                self.collection,
                data=data,
                anns_field="code",
                limit=k,
                search_params=params,
                output_fields=["id"],
            )
            for qi, row in enumerate(hits):
                for j, hit in enumerate(row):
                    dist[s + qi, j] = int(round(hit["distance"]))
                    ids[s + qi, j] = hit["id"]
        return dist, ids

    def _fetch(self, doc_ids: list[str], field: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for batch in _batches(doc_ids, 4096):
            for r in self._call("get", self.client.get, self.collection, ids=batch, output_fields=[field]):
                out[r["id"]] = r[field]
        return out

    def search(
        self, queries: np.ndarray, k: int = 10, oversample: int = 0, rescore: str = "auto", mode: str = "hamming"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k``: :func:`qama.search.search_rescored` with the server as its first stage.

        The server returns ``oversample × k`` Hamming candidates; their codes (``"asymmetric"``) or
        float vectors (``"vectors"``; ``"auto"`` picks vectors when the collection keeps them) are
        fetched and rescored here. ``oversample=0``: the server's Hamming top-``k`` only.
        """
        if mode != "hamming":
            raise ValueError(f"mode {mode!r} needs a local index folder; a Milvus collection searches Hamming codes")
        queries = check_queries(queries, int(self.manifest["dim"]), IndexMismatchError)  # exact dimension, finite
        k, oversample = check_k(k, len(queries)), check_oversample(oversample)
        if rescore == "vectors" and not self.keep_vectors:
            raise ValueError(f"collection {self.collection!r} keeps no float vectors; rescore='asymmetric'")
        # The candidates' document ids, each once (at most the collection's documents, whatever the
        # number of queries); rows of this search number them. ``local`` maps an id to its row.
        found: list[str] = []
        local: dict[str, int] = {}

        def row_of(doc: str) -> int:
            row = local.get(doc)
            if row is None:
                row = local[doc] = len(found)
                found.append(doc)
            return row

        def candidates(query_codes: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
            dist, ids = self.search_codes(query_codes, m)
            rows = np.array([row_of(c) if c is not None else -1 for c in ids.reshape(-1)], dtype=np.int64)
            return dist, rows.reshape(ids.shape)

        codes = _FetchedRows(self, found, "code")
        vectors = _FetchedRows(self, found, "vector") if self.keep_vectors else None
        scores, rows = search_rescored(
            codes, self.encoder, queries, k, oversample, vectors, rescore=rescore, candidates=candidates
        )
        out = np.full(rows.shape, None, dtype=object)
        valid = rows >= 0
        out[valid] = np.array(found, dtype=object)[rows[valid]]
        return scores, out

    # ------------------------------------------------------------------ misc
    def title(self, doc_id: str) -> str | None:
        rows = self._call("get", self.client.get, self.collection, ids=[doc_id], output_fields=["title"])
        return (rows[0]["title"] or None) if rows else None

    def count(self) -> int:
        rows = self._call("count", self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def drop(self) -> None:
        """Delete the collection and its manifest from the server."""
        for name in (self.collection, f"{self.collection}_qama"):
            self._call("drop", self.client.drop_collection, name)

    def close(self) -> None:
        self.client.close()


#: Types and ranges of a collection manifest's fields (qama._validate.check_fields).
MANIFEST_SCHEMA = {
    "plan": Field("dict"),
    "code_size": Field("int", lo=1),
    "dim": Field("int", lo=1, hi=1 << 20),
    "index_type": Field("str", choices=INDEX_TYPES),
    "nlist": Field("int", lo=1, hi=1 << 20),
    "keep_vectors": Field("bool"),
    "encoder": Field("dict"),
    "meta": Field("dict", optional=True),
}


def _check_manifest_fields(manifest: dict[str, Any], where: str) -> None:
    """The type of every field a collection's manifest is read for; a one-line IndexMismatchError."""
    check_fields(manifest, MANIFEST_SCHEMA, where, error=IndexMismatchError)
    encoder_schema = {
        "kind": Field("str", choices=("thresholds", "adapter")),
        "checksum": Field("str"),
        "tensors": Field("str", optional=True),
    }
    check_fields(manifest["encoder"], encoder_schema, where, "encoder.", IndexMismatchError)
    check_fields(
        manifest.get("meta", {}),
        {"model": Field("str", optional=True, nullable=True)},
        where,
        "meta.",
        IndexMismatchError,
    )
    try:
        plan = manifest["plan"]
        if not isinstance(plan.get("name"), str) or not isinstance(plan.get("segments"), list):
            raise ValueError("needs a name and a list of segments")
        for seg in plan["segments"]:
            if not (isinstance(seg, list) and len(seg) == 2 and type(seg[0]) is int and type(seg[1]) in (int, float)):
                raise ValueError(f"segment {seg!r:.40} is not [dims, bits]")
        Plan.from_dict(plan)
    except (ValueError, TypeError) as e:
        raise IndexMismatchError(f"{where}: field 'plan': {e}") from None


def _refuse_foreign_collection(client: Any, collection: str, timeout: float, wait: float = 10.0) -> None:
    """``collection`` exists: it is qama's only if its manifest collection appears (a concurrent creator
    writes it right after the codes' collection); otherwise refuse, before anything is written."""
    deadline = time.monotonic() + min(wait, timeout)
    while not client.has_collection(f"{collection}_qama", timeout=timeout):
        if time.monotonic() > deadline:
            raise FileExistsError(
                f"collection {collection!r} exists and has no qama manifest ({collection}_qama): it is not a qama "
                "collection, or its creation was interrupted; qama leaves it as it is: choose another --collection"
            )
        time.sleep(0.2)


class _FetchedRows:
    """Rows of the documents ``found`` by one search, read from the server when indexed: the ``codes``
    (``field="code"``) or ``vectors`` that :func:`qama.search.search_rescored` rescores with."""

    def __init__(self, backend: MilvusBackend, found: list[str], field: str) -> None:
        self.backend, self.found, self.field = backend, found, field

    def __len__(self) -> int:
        return len(self.found)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(np.asarray(rows).reshape(-1), return_inverse=True)
        docs = [self.found[int(r)] for r in unique]
        fetched = self.backend._fetch(docs, self.field)
        if self.field == "code":
            cs = self.backend.plan.code_size
            codes = np.frombuffer(b"".join(_code_bytes(fetched[d]) for d in docs), dtype=np.uint8)
            return codes.reshape(-1, cs)[inverse]
        return np.array([fetched[d] for d in docs], dtype=np.float32).reshape(len(docs), -1)[inverse]


def _code_bytes(value: Any) -> bytes:
    """A BINARY_VECTOR as returned by pymilvus (``bytes`` or ``[bytes]``) -> its bytes."""
    return bytes(value[0]) if isinstance(value, list) else bytes(value)


def _check_storable(ids: Sequence[str], titles: Sequence[str] | None) -> None:
    """Every id and title fits its VARCHAR field (checked before the first upsert of an add)."""
    for i, doc in enumerate(ids):
        if not isinstance(doc, str) or not doc or len(doc.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            raise ValueError(f"document ids must be non-empty strings of <= {MAX_ID_BYTES} bytes: {doc!r:.60}")
        title = "" if titles is None else str(titles[i] or "")
        if len(title.encode("utf-8", "surrogatepass")) > MAX_TITLE_BYTES:
            raise ValueError(f"title of {doc!r} is longer than {MAX_TITLE_BYTES} bytes")


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------- a local server
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the parent process dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalMilvusServer:
    """milvus-lite serving gRPC on ``127.0.0.1:port``; stops itself after ``lifetime`` seconds.

    A context manager: ``with LocalMilvusServer(tmp / "m.db") as uri: MilvusClient(uri)``. The
    server also stops when this process dies. Only the loopback interface is bound.
    """

    def __init__(self, db_file: str | os.PathLike, port: int | None = None, lifetime: float = 3600.0) -> None:
        self.db_file = Path(db_file).absolute()
        self.port = port or free_port()
        self.lifetime = lifetime
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 30.0) -> str:
        """Start the server and wait until it answers; returns its URI."""
        try:
            from milvus_lite.server import BIN_PATH
        except ImportError as e:
            raise MilvusUnavailableError(f"a local Milvus server needs milvus-lite ({e}); {INSTALL}") from None
        binary = Path(BIN_PATH) / "milvus"
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, LD_LIBRARY_PATH=f"{BIN_PATH}:{os.environ.get('LD_LIBRARY_PATH', '')}")
        level = os.environ.get("LOG_LEVEL", "ERROR")
        args = [
            "timeout",
            "-s",
            "TERM",
            str(int(self.lifetime)),
            str(binary),
            str(self.db_file),
            f"127.0.0.1:{self.port}",
            level,
        ]
        self.process = subprocess.Popen(args, env=env, cwd=self.db_file.parent, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MilvusUnavailableError(f"milvus-lite exited with status {self.process.returncode} at start")
            try:
                pymilvus = _pymilvus()
                client = pymilvus.MilvusClient(uri=self.uri, timeout=2)
                client.list_collections()
                client.close()
                logger.info("milvus-lite serving %s at %s", self.db_file, self.uri)
                return self.uri
            except Exception:  # not answering yet
                time.sleep(0.2)
        self.stop()
        raise MilvusUnavailableError(f"milvus-lite did not answer at {self.uri} within {wait:.0f} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
