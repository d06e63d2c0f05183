"""Checks shared by every reader of untrusted input: bounds, sizes, and the types of JSON fields.

The bounds are defined once here and used by the command line and the Python API alike:

* :data:`MAX_OVERSAMPLE`, :data:`MAX_CANDIDATES`: rescoring reads at most ``MAX_CANDIDATES``
  Hamming candidates per query; ``k`` itself is clamped to the size of the index;
* :data:`MAX_RESULT_SLOTS`: ``queries × k`` result slots an API call may ask for;
* :data:`MAX_BATCH_SIZE`, :data:`MAX_NPROBE`: texts embedded at once, Milvus lists searched per query;
* :data:`RELEVANCE_RANGE`: qrels relevance scores (an evaluator's memory grows with the largest);
* :data:`MAX_JSON_BYTES`: a ``manifest.json``, ``config.json`` or ``meta.json`` is read only when it
  is a regular file of at most this size (never a link to ``/dev/zero``, never an endless stream).

:func:`check_fields` validates a JSON object against a small schema (a dict of field name to
:class:`Field`), naming the file and the field, so that a wrong type is a one-line ``ValueError``
and never a traceback further down.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_CANDIDATES",
    "MAX_JSON_BYTES",
    "MAX_NPROBE",
    "MAX_OVERSAMPLE",
    "MAX_RESULT_SLOTS",
    "RELEVANCE_RANGE",
    "Field",
    "check_batch_size",
    "check_fields",
    "check_finite_rows",
    "check_fit_corpus",
    "check_k",
    "check_nprobe",
    "check_oversample",
    "check_plain_name",
    "check_plan_syntax",
    "check_queries",
    "check_regular_file",
    "file_mode",
    "n_candidates",
    "read_json_file",
]

#: Largest oversampling factor (candidates = oversample × k, then at most MAX_CANDIDATES).
MAX_OVERSAMPLE = 1000
#: Most Hamming candidates rescored per query (Milvus's own top-k limit is the same).
MAX_CANDIDATES = 16384
#: Most result slots (queries × k) one search call may return (about 200 MB of ids and scores).
MAX_RESULT_SLOTS = 1 << 24
#: Relevance scores accepted in qrels (TREC scales use -2..4; pytrec_eval's memory grows with the maximum).
RELEVANCE_RANGE = (-1000, 1000)
#: Largest JSON metadata file read (manifest, adapter config, embeddings' meta.json).
MAX_JSON_BYTES = 64 * 1024**2
#: Most texts embedded at once (``--batch-size``).
MAX_BATCH_SIZE = 65536
#: Most Milvus inverted lists searched per query (``--nprobe``).
MAX_NPROBE = 65536


# ---------------------------------------------------------------------------- files
def check_regular_file(
    path: str | os.PathLike, what: str = "file", error: Callable[[str], Exception] = ValueError
) -> int:
    """The size of ``path``, a regular file (links are followed); a folder, a device, a pipe or a
    missing path raises ``error`` (``FileNotFoundError`` for a missing one) naming it."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: {what} not found") from None
    except OSError as e:
        raise error(f"{p}: cannot read the {what} ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a folder, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{p}: not a regular file (a device, pipe or socket), expected a {what}")
    return st.st_size


def read_json_file(
    path: str | os.PathLike,
    what: str = "JSON file",
    error: Callable[[str], Exception] = ValueError,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Parse the JSON file ``path``: a regular file of at most ``max_bytes``, UTF-8, nested at most
    a few hundred levels; anything else raises ``error`` naming the file."""
    size = check_regular_file(path, what, error)
    if size > max_bytes:
        raise error(f"{path}: {size} bytes, more than the {max_bytes // 2**20} MiB a {what} may have")
    with open(path, "rb") as f:
        raw = f.read(size + 1)  # (a read of n bytes allocates n: not max_bytes for a small file)
        if len(raw) > size:  # the file grew since its size was read
            raw += f.read(max_bytes + 1 - len(raw))
    if len(raw) > max_bytes:  # the file grew while being read
        raise error(f"{path}: more than the {max_bytes // 2**20} MiB a {what} may have")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON (invalid UTF-8 at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None


def check_plain_name(name: Any, where: str, error: Callable[[str], Exception] = ValueError) -> str:
    """A file name inside a folder: no separator, not ``.`` or ``..``, not absolute, no NUL."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or os.sep in name
    ):
        raise error(f"{where}: file name {name!r} is not a plain name inside the folder")
    return name


_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode a new file gets from ``open()`` under the current umask (``0o666 & ~umask``)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


# ---------------------------------------------------------------------------- search bounds
def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_not_one_string(seq: Any, name: str, what: str) -> None:
    """A string is a sequence of its characters: taken for a list, each would be an id (or title)."""
    if isinstance(seq, (str, bytes)):
        raise TypeError(f"{name} must be a list of {what}, not one {type(seq).__name__} ({seq!r:.40})")


def check_k(k: Any, n_queries: int = 1) -> int:
    """A positive integer ``k`` whose ``n_queries × k`` results fit :data:`MAX_RESULT_SLOTS`."""
    k = _int(k, "k")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if k * max(1, n_queries) > MAX_RESULT_SLOTS:
        raise ValueError(
            f"k={k} for {n_queries} queries asks for more than {MAX_RESULT_SLOTS} results; "
            "ask for at most the size of the index"
        )
    return k


def check_oversample(oversample: Any, minimum: int = 0) -> int:
    """An integer oversampling factor in ``minimum..MAX_OVERSAMPLE``."""
    oversample = _int(oversample, "oversample")
    if oversample < minimum:
        raise ValueError(f"oversample must be >= {minimum}, got {oversample}")
    if oversample > MAX_OVERSAMPLE:
        raise ValueError(
            f"oversample must be at most {MAX_OVERSAMPLE}, got {oversample} "
            f"(at most {MAX_CANDIDATES} candidates per query are rescored)"
        )
    return oversample


def _check_count(value: Any, maximum: int, name: str) -> int:
    value = _int(value, name)
    if not 1 <= value <= maximum:
        raise ValueError(f"{name} must be in 1..{maximum}, got {value}")
    return value


def check_batch_size(batch_size: Any) -> int:
    """An embedding batch size in ``1..MAX_BATCH_SIZE`` (``--batch-size``)."""
    return _check_count(batch_size, MAX_BATCH_SIZE, "--batch-size")


def check_nprobe(nprobe: Any) -> int:
    """A number of Milvus inverted lists searched per query in ``1..MAX_NPROBE`` (``--nprobe``)."""
    return _check_count(nprobe, MAX_NPROBE, "--nprobe")


def n_candidates(k: int, oversample: int, n: int | None) -> int:
    """Hamming candidates per query for top-``k`` rescoring: ``oversample × k``, at most the ``n`` rows
    searched (``None``: unknown, e.g. a server) and :data:`MAX_CANDIDATES`, and never fewer than
    ``min(k, n)``; at least 1."""
    n = k * max(1, oversample) if n is None else n
    kk = min(k, n)
    if kk > MAX_CANDIDATES and oversample > 0:
        raise ValueError(
            f"k={k} with rescoring: at most {MAX_CANDIDATES} candidates per query are rescored; "
            "ask for fewer results or search without rescoring (oversample 0)"
        )
    return max(1, min(k * max(1, oversample), n, max(kk, MAX_CANDIDATES)))


def check_queries(
    queries: Any, dim: int, error: Callable[[str], Exception] = ValueError, what: str = "queries"
) -> np.ndarray:
    """``(nq, dim)`` finite float32 query embeddings: exactly the dimension of what they search."""
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise error(f"{what} must be (nq, {dim}) to search this index, got shape {q.shape}")
    if q.dtype.kind not in "fiu":
        raise error(f"{what} must be numbers, got dtype {q.dtype}")
    q = q.astype(np.float32, copy=False)
    bad = ~np.isfinite(q).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(bad)[0])} has NaN or inf values ({int(bad.sum())} rows)")
    return q


def check_eval_options(
    plans: Sequence[Any], oversamples: Sequence[Any] | None, dims: Sequence[Any] | None, adapter: bool = True
) -> None:
    """An evaluation's plans, oversampling factors and sizes, before any work: every plan reads as
    one (name or ``SIZE:BITS`` spec), every factor is in ``1..MAX_OVERSAMPLE``, every size in range, and
    none is given twice (its rows would be measured and printed twice); plans only with an ``adapter``
    (they choose its rows; the baselines measure every built-in plan, so they would be ignored, silently).
    Each is a list (as :func:`qama.evaluate_dataset` names them: ``plans``, ``rescore``, ``dims``): one
    string would be read as its characters, one number is not a list."""
    for name, values, what in (("plans", plans, "plans"), ("rescore", oversamples, "factors"), ("dims", dims, "sizes")):
        if isinstance(values, (str, bytes)) or not (values is None or isinstance(values, Iterable)):
            raise TypeError(f"{name} must be a list of {what}, not one {type(values).__name__} ({values!r:.40})")
    if plans and not adapter:
        raise ValueError(
            "--plans: the plans of the adapter's rows; give --adapter (without one every plan is measured)"
        )
    for flag, values in (
        ("--plans", list(plans)),
        ("--oversample", list(oversamples or [])),
        ("--dims", list(dims or [])),
    ):
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:
            raise ValueError(f"{flag}: {twice[0]} is given twice")
    for f in oversamples or []:
        check_oversample(f, minimum=1)
    for d in dims or []:
        if not 1 <= _int(d, "--dims") <= 1 << 20:
            raise ValueError(f"--dims: {d} is not a dimension (1..{1 << 20})")
    for p in plans:
        check_plan_syntax(p, "--plans")


def misfit(plan: str, sizes: Sequence[int]) -> str | None:
    """Why ``plan`` fits none of the nested ``sizes`` (the last size's reason), or ``None`` when one fits."""
    from qama.codes import make_plan

    reason = None
    for m in sizes:
        try:
            make_plan(plan, int(m))
            return None
        except ValueError as e:
            reason = str(e)
    return reason


def check_plans_fit(plans: Sequence[str], sizes: Sequence[int], where: str) -> None:
    """Every plan asked for must fit at least one of the sizes evaluated (a plan that fits none
    would leave no row, silently)."""
    for p in plans:
        reason = misfit(p, sizes)
        if reason is not None:
            sizes_text = ", ".join(map(str, sizes))
            raise ValueError(f"--plans: {p!r} fits none of the sizes of {where} ({sizes_text}): {reason}")


def check_plan_syntax(spec: Any, what: str = "plan") -> str:
    """A plan name or ``SIZE:BITS`` spec that reads as one (whatever the dimension it is used at)."""
    from qama.codes import _SEGMENT, BITS, BUILTIN_PLANS

    if not isinstance(spec, str):
        raise ValueError(f"{what}: a plan is a name or a SIZE:BITS spec, got {spec!r:.60}")
    if spec.strip() in BUILTIN_PLANS:
        return spec
    for item in spec.split(","):
        m = _SEGMENT.match(item)
        if m is None:
            raise ValueError(
                f"{what}: cannot read plan {spec!r}: expected a built-in name ({', '.join(BUILTIN_PLANS)}) "
                "or SIZE:BITS segments such as '96:2,96:1.5,192:1'"
            )
        if float(m.group(3)) not in BITS:
            raise ValueError(
                f"{what}: plan {spec!r}: unsupported precision {m.group(3)} bits; choose one of 2, 1.5, 1, 0.5"
            )
    return spec


# ---------------------------------------------------------------------------- JSON schemas
@dataclass(frozen=True)
class Field:
    """One field of a JSON object: ``kind`` is ``"int"``, ``"number"``, ``"str"``, ``"bool"``,
    ``"dict"``, ``"list"``, ``"int_list"``, ``"str_list"`` or ``"any"``; ``lo``/``hi`` bound numbers
    (and the items of ``int_list``), ``choices`` the values, ``optional`` lets it be absent,
    ``nullable`` lets it be ``null``."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: Sequence[Any] | None = None
    optional: bool = False
    nullable: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_KIND_NAMES = {
    "int": "an integer",
    "number": "a finite number",
    "str": "a string",
    "bool": "true or false",
    "dict": "an object",
    "list": "a list",
    "int_list": "a list of integers",
    "str_list": "a list of strings",
}


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "int":
        return _is_int(v)
    if kind == "number":
        return _is_number(v)
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "dict":
        return isinstance(v, dict)
    if kind == "list":
        return isinstance(v, list)
    if kind == "int_list":
        return isinstance(v, (list, tuple)) and all(_is_int(x) for x in v)
    if kind == "str_list":
        return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
    return True


def check_fields(
    data: Any,
    schema: dict[str, Field],
    where: str,
    prefix: str = "",
    error: Callable[[str], Exception] = ValueError,
) -> dict[str, Any]:
    """Check the fields of the JSON object ``data`` named in ``schema`` (other keys are left alone).

    Raises ``error("WHERE: field 'PREFIX.NAME' must be …, got …")`` on the first field that is
    missing, of the wrong type, out of range or not one of its choices."""
    if not isinstance(data, dict):
        if prefix:
            raise error(f"{where}: field {prefix.rstrip('.')!r} must be an object, got {_short(data)}")
        raise error(f"{where}: not a JSON object (got {_short(data)})")
    for name, f in schema.items():
        full = f"{prefix}{name}"
        if name not in data:
            if f.optional:
                continue
            raise error(f"{where}: missing field {full!r}")
        v = data[name]
        if v is None and f.nullable:
            continue
        if not _type_ok(f.kind, v):
            raise error(f"{where}: field {full!r} must be {_KIND_NAMES.get(f.kind, f.kind)}, got {_short(v)}")
        values = v if f.kind == "int_list" else [v] if f.kind in ("int", "number") else []
        for x in values:
            if (f.lo is not None and x < f.lo) or (f.hi is not None and x > f.hi):
                rng = f"{f.lo if f.lo is not None else '-inf'}..{f.hi if f.hi is not None else 'inf'}"
                raise error(f"{where}: field {full!r} must be in {rng}, got {_short(x)}")
        if f.choices is not None:
            items = v if f.kind == "str_list" else [v]
            for x in items:
                if x not in f.choices:
                    raise error(f"{where}: field {full!r}: {_short(x)} is not one of {', '.join(map(str, f.choices))}")
    return data


def _short(v: Any, limit: int = 60) -> str:
    """A value as the error message shows it: its repr, cut to ``limit`` characters, with its type."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(v).__name__)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{text} ({type(v).__name__})" if not isinstance(v, (dict, list)) else text


def check_one_per_row(ids: Sequence[str], titles: Sequence[str] | None, n: int, rows: str) -> None:
    """One id (unique) and, when titles are given, one title for each of ``n`` ``rows`` of a store's add."""
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} {rows}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} {rows}")
    if len(set(ids)) != len(ids):
        raise ValueError("document ids must be unique")


def check_new_documents(
    embeddings: np.ndarray, ids: Sequence[str], titles: Sequence[str] | None, plan_dim: int
) -> None:
    """Documents to add to a store, checked before anything is written: the ids (unique strings that
    UTF-8 can store), the titles, the lengths of both, and finite embeddings."""
    check_not_one_string(ids, "ids", "document ids")
    check_not_one_string(titles, "titles", "titles")
    if embeddings.ndim != 2 or embeddings.shape[1] < plan_dim:
        raise ValueError(f"embeddings must be (n, d) with d >= {plan_dim}, got {embeddings.shape}")
    check_one_per_row(ids, titles, len(embeddings), "embeddings")
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("document ids must be strings")
    for name, column in (("ids", ids), ("titles", titles or ())):  # checked before anything is written
        for j, s in enumerate(column):
            if not isinstance(s, str):
                raise ValueError(f"{name}[{j}] must be a string, got {s!r:.40}")
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{name}[{j}] cannot be stored as UTF-8 ({e.reason}: {s!r:.40})") from None
    # NaN has no level: its code would be arbitrary, and the document found for nothing.
    check_finite_rows(embeddings, "embeddings")


def check_finite_rows(embeddings: np.ndarray, what: str) -> None:
    """Refuse ``(n, d)`` embeddings with a NaN or inf value (as float32: a float64 beyond its range is
    inf there), naming the first such row. Checked a block of rows at a time: a memory map is read,
    not held, and a float64 or non-contiguous corpus is never converted whole."""
    step = max(1, (1 << 20) // max(1, embeddings.shape[1]))
    first, count = -1, 0
    for i in range(0, len(embeddings), step):
        bad = np.flatnonzero(~np.isfinite(np.asarray(embeddings[i : i + step], dtype=np.float32)).all(axis=1))
        first, count = first if first >= 0 or not len(bad) else i + int(bad[0]), count + len(bad)
    if count:
        raise ValueError(f"{what}: row {first} has NaN or inf values ({count} rows)")


def check_fit_corpus(corpus: Any, what: str = "corpus embeddings") -> np.ndarray:
    """The ``(n >= 1, d)`` finite real embeddings an encoder is fitted on (quantiles of them), as an
    array (not converted: read a block at a time by the fit). NaN would make a threshold NaN, so that
    every value of its dimension took level 0; inf a centroid inf."""
    corpus = np.asarray(corpus)
    if corpus.ndim != 2 or corpus.shape[1] == 0:
        raise ValueError(f"{what} must be a matrix (n, d), got shape {corpus.shape}")
    if corpus.dtype.kind not in "fiub":
        raise ValueError(f"{what} must be real numbers, got dtype {corpus.dtype}")
    if len(corpus) == 0:
        raise ValueError(f"{what}: no rows to fit the thresholds on")
    check_finite_rows(corpus, what)
    return corpus
