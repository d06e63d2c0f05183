"""The Python API in one call per step, reading like the command line.

>>> import numpy as np, qama
>>> rng = np.random.default_rng(0)
>>> docs = rng.standard_normal((1000, 64)).astype(np.float32)   # stand-ins for embeddings
>>> docs /= np.linalg.norm(docs, axis=1, keepdims=True)
>>> adapter = qama.fit(docs, steps=5, batch_size=256, progress=False)
>>> codes = qama.encode(adapter, docs, plan="hybrid")
>>> codes.shape                                                  # 64 dims hybrid: 104 bits
(1000, 13)
>>> index = qama.build_index(getfixture("tmp_path") / "idx", adapter, docs, [f"d{i}" for i in range(1000)])
>>> hits = qama.search_index(index, docs[:2], k=3)
>>> hits[0][0][0]                                                # each document finds itself first
'd0'

With real text, :func:`embed` gives the embeddings (``all-MiniLM-L6-v2`` by default), and
:func:`evaluate_dataset` scores a dataset in BEIR layout (see its docstring).

Embeddings are L2-normalised rows, as :func:`embed` gives them (adapters are trained on such):
these functions take rows as they are, where the command line normalises the ``.npy`` files it
reads; normalise embeddings of your own first (on Cranfield, an index of corpus rows of random
norms found 0.70 of FP32's top 10, of normalised rows 0.75).

The search and evaluation functions are ``search_index`` and ``evaluate_dataset`` so that the
name ``qama.search`` stays the module of that name (evaluation is the package :mod:`qama.evaluation`);
``qama.api.search`` and ``qama.api.evaluate`` are their deprecated old names.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qama.adapter import QamaAdapter
from qama.codes import ALL_PLANS
from qama.data import Dataset
from qama.embeddings import DEFAULT_MODEL
from qama.evaluation.rows import Row
from qama.index import QamaIndex

__all__ = [
    "embed",
    "fit",
    "encode",
    "build_index",
    "open_index",
    "search_index",
    "evaluate_dataset",
    "load_adapter",
    "index_corpus",
    "add_to_store",
    "search_store",
]

logger = logging.getLogger(__name__)


def embed(texts: Sequence[str], model: str = DEFAULT_MODEL, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 ``(len(texts), d)`` embeddings of ``texts``, a list of strings
    (:func:`qama.embeddings.check_texts`), with a sentence-transformers model.

    >>> emb = qama.embed(["a query", "a document"])  # doctest: +SKIP
    """
    from qama.embeddings import check_texts, load_model
    from qama.embeddings import encode as st_encode

    texts = check_texts(texts)  # before the model is loaded
    return st_encode(load_model(model), texts, batch_size=batch_size, progress=progress)


def fit(
    corpus_emb: np.ndarray,
    out: str | os.PathLike | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    overwrite: bool = False,
    **settings: Any,
) -> QamaAdapter:
    """Fit a QAMA adapter on ``(n, d)`` corpus embeddings (no labels). ``settings`` are fields of
    :class:`qama.train.TrainConfig` (``steps``, ``nested_dims``, loss weights, ...); with ``out`` the
    adapter is saved there (and an interrupted fit resumes from its checkpoint); an adapter already
    there is replaced only with ``overwrite=True``.

    ``pairs``: ``(queries, documents)`` embeddings whose rows belong together, for the InfoNCE term:
    the corpus's titles and their documents (``(qama.embed(titles), docs)``: pseudo-queries, no
    labels) or labelled query-document pairs. With pairs, ``w_nce`` defaults to
    :data:`qama.train.NCE_WEIGHT_TITLES`.
    """
    from qama.train import NCE_WEIGHT_TITLES, TrainConfig
    from qama.train import fit as train_fit

    if pairs is not None:
        settings.setdefault("w_nce", NCE_WEIGHT_TITLES)
    return train_fit(corpus_emb, TrainConfig(**settings), pairs=pairs, out_dir=out, overwrite=overwrite)


#: The plans and sizes :func:`encode` warned of, by adapter (and by adapter folder, loaded at each call).
_LOST_WARNED: weakref.WeakKeyDictionary[QamaAdapter, set[tuple[str, int]]] = weakref.WeakKeyDictionary()
_LOST_WARNED_PATHS: dict[str, set[tuple[str, int]]] = {}


def encode(adapter: QamaAdapter | str | os.PathLike, emb: np.ndarray, plan: str = "hybrid", dim: int | None = None):
    """Packed uint8 codes ``(n, code_size)`` of embeddings under ``plan`` at nested size ``dim``: the
    adapter's codes, always. Where its never-worse check found untrained codes better at this plan and
    size, a warning says so (once per adapter, plan and size): untrained thresholds are fitted on a whole corpus, which
    :func:`build_index` and :func:`qama.encoders.fit_encoder` have and a batch of embeddings is not."""
    source = None if isinstance(adapter, QamaAdapter) else str(Path(adapter).resolve())
    adapter = adapter if isinstance(adapter, QamaAdapter) else QamaAdapter.load(adapter)
    p = adapter.plan(plan, dim)
    if f"{p.name}@{p.dim}" in adapter.metadata.get("check", {}).get("lost", []):
        _warn_lost_once(adapter if source is None else source, p.name, p.dim)
    return adapter.encode(emb, plan, dim)


def _warn_lost_once(adapter: QamaAdapter | str, plan: str, dim: int) -> None:
    """The warning of :func:`encode`, once per adapter (or adapter folder), plan and size: encode is
    called a batch at a time."""
    if isinstance(adapter, QamaAdapter):
        seen = _LOST_WARNED.setdefault(adapter, set())
    else:
        seen = _LOST_WARNED_PATHS.setdefault(adapter, set())
    if (plan, dim) in seen:
        return
    seen.add((plan, dim))
    logger.warning(
        "%s at %d dims: the adapter's check found untrained codes better; these are the adapter's codes "
        "(build_index or qama.encoders.fit_encoder on the corpus serve untrained ones)",
        plan,
        dim,
    )


def build_index(
    path: str | os.PathLike,
    adapter: QamaAdapter | str | os.PathLike,
    corpus_emb: np.ndarray,
    ids: Sequence[str],
    titles: Sequence[str] | None = None,
    plan: str = "hybrid",
    dim: int | None = None,
    keep_vectors: bool = False,
    overwrite: bool = False,
    query_sample: np.ndarray | None = None,
) -> QamaIndex:
    """Encode a corpus with a trained adapter into a persistent index folder at ``path``.

    ``adapter`` given as a folder is named by the index, and :func:`open_index` opens it again with it;
    given as a :class:`QamaAdapter` (the object :func:`fit` returns, saved or not) it is not, and
    :func:`open_index` must be passed the adapter.

    ``query_sample``: query-like embeddings (a query log, titles) that calibrate how queries are
    coded, where the adapter brought no query thresholds (see :func:`qama.encoders.fit_encoder`)."""
    from qama.encoders import fit_encoder

    adapter_path = None if isinstance(adapter, QamaAdapter) else adapter
    adapter = adapter if isinstance(adapter, QamaAdapter) else QamaAdapter.load(adapter)
    encoder = fit_encoder(corpus_emb, plan, adapter, query_sample, replace_query_thresholds=False, dim=dim)
    return QamaIndex.create(
        path,
        encoder,
        corpus_emb,
        ids,
        titles,
        keep_vectors=keep_vectors,
        adapter_path=adapter_path,
        overwrite=overwrite,
        meta={"model": adapter.config.model_name or None},  # the model queries must be embedded with
    )


def load_adapter(
    path: str | os.PathLike | None, model: str | None = None, plans: Sequence[str] | None = None
) -> QamaAdapter | None:
    """The adapter folder ``path`` (``None`` or empty: no adapter, ``None``), checked before any work:
    trained on embeddings of ``model`` (``None``: unknown; :meth:`QamaAdapter.check_model`) and, with
    ``plans``, each plan fits one of its sizes (:func:`qama._validate.check_plans_fit`)."""
    from qama._validate import check_plans_fit

    if not path:
        return None
    adapter = QamaAdapter.load(path)
    adapter.check_model(model, str(path))
    if plans is not None:
        check_plans_fit(plans, adapter.config.nested_dims, str(path))
    return adapter


def index_corpus(
    uri: str | os.PathLike,
    corpus_emb: np.ndarray,
    ids: Sequence[str],
    titles: Sequence[str] | None = None,
    plan: str = "hybrid",
    adapter: QamaAdapter | str | os.PathLike | None = None,
    query_sample: np.ndarray | None = None,
    replace_query_thresholds: bool = False,
    model: str | None = None,
    shard: str | None = None,
    backend: str | None = None,
    keep_vectors: bool = False,
    progress: bool = True,
    **options: Any,
) -> int:
    """Encode a corpus into the store at ``uri`` (an index folder or a Milvus collection, created
    when missing: :func:`qama.backends.open_backend`, which takes ``backend`` and ``options``), as
    ``qama index`` does; returns the number of documents in the store.

    The encoder is fitted on the whole corpus (:func:`qama.encoders.fit_encoder`, with ``adapter``,
    ``query_sample`` and ``replace_query_thresholds``); with ``shard`` (``"I/N"``) only part ``I`` of
    ``N`` is added (:func:`qama.backends.shard_range`), so that ``N`` workers fill one store.
    ``model``: the model of the embeddings, recorded for query texts (default: the adapter's)."""
    from tqdm.auto import tqdm

    from qama.backends import backend_kind, check_new_store, open_backend, parse_shard, shard_range
    from qama.encoders import fit_encoder

    # before any work; with shard, the other workers' parts in an index folder are never replaced
    check_new_store(uri, backend, bool(options.get("overwrite")), shard)
    adapter = QamaAdapter.load(adapter) if isinstance(adapter, (str, os.PathLike)) else adapter
    if adapter is not None and model is None:  # the store answers texts with the adapter's model
        name = adapter.config.model_name
        model = name if name and not Path(name).exists() else None
    encoder = fit_encoder(corpus_emb, plan, adapter, query_sample, replace_query_thresholds)
    # no titles at all: none stored; decided on the whole corpus, so that every shard's part agrees
    titles = titles if titles is not None and any(titles) else None
    if shard:  # this worker's part of the corpus (the encoder above is fitted on all of it)
        part = shard_range(len(ids), *parse_shard(shard))
        rows = slice(part.start, part.stop)
        corpus_emb, ids, titles = corpus_emb[rows], ids[rows], None if titles is None else titles[rows]
        logger.info("shard %s: documents %d-%d", shard, part.start, part.stop - 1)
    if backend_kind(uri, backend) == "milvus":
        options["dim"] = corpus_emb.shape[1]
    meta = {"model": model}
    with open_backend(uri, backend, encoder, True, keep_vectors=keep_vectors, meta=meta, **options) as store:
        with tqdm(total=len(corpus_emb), desc="encoding", unit="doc", disable=not progress) as bar:
            store.add(corpus_emb, ids, titles=titles, progress=bar.update)
        n = store.count()
        logger.info("%r: %d documents", store, n)
    return n


def add_to_store(
    uri: str | os.PathLike,
    corpus_emb: np.ndarray,
    ids: Sequence[str],
    titles: Sequence[str] | None = None,
    model: str | None = None,
    backend: str | None = None,
    adapter: QamaAdapter | str | os.PathLike | None = None,
    progress: bool = True,
    **options: Any,
) -> int:
    """Add documents to the store that already exists at ``uri`` (an index folder or a Milvus collection,
    :func:`qama.backends.open_backend`, which takes ``backend``, ``adapter`` and ``options``), as
    ``qama index --add`` does; returns the number of documents in the store. They are coded with the
    store's own encoder (its plan, thresholds and adapter: nothing is refitted, so the codes already
    there stay comparable); their ids must be new to an index folder (a Milvus collection upserts).
    ``model``: the model of the embeddings, refused when the store recorded another."""
    from tqdm.auto import tqdm

    from qama.backends import open_backend
    from qama.embeddings import same_model

    with open_backend(uri, backend, adapter=adapter, **options) as store:
        recorded = store.manifest.get("meta", {}).get("model")
        if model and recorded and not same_model(model, recorded):
            raise ValueError(
                f"{uri}: the documents there were embedded with {recorded}, these with {model}: "
                "their codes would not be comparable"
            )
        with tqdm(total=len(corpus_emb), desc="encoding", unit="doc", disable=not progress) as bar:
            store.add(corpus_emb, ids, titles=titles, progress=bar.update)  # the store keeps titles or not
        n = store.count()
        logger.info("%r: %d documents (%d added)", store, n, len(ids))
    return n


def search_store(
    uri: str | os.PathLike,
    texts: Sequence[str] = (),
    npy: str | os.PathLike | None = None,
    model: str | None = None,
    k: int = 10,
    oversample: int = 4,
    rescore: str = "auto",
    backend: str | None = None,
    adapter: QamaAdapter | str | os.PathLike | None = None,
    mode: str = "hamming",
    **options: Any,
) -> list[dict[str, Any]]:
    """Search the store at ``uri`` (:func:`qama.backends.open_backend`, which takes ``backend``,
    ``adapter`` and ``options``) as ``qama search`` does: the records of :func:`qama.backends.search_hits`
    for query ``texts`` embedded with the store's model (``model`` must not contradict it) or for the
    ``.npy`` file ``npy`` (:func:`qama.embeddings.query_embeddings`). An empty store raises; a ``k``
    larger than the store is clamped to its size, with a warning. ``mode="adc"``: the asymmetric full
    scan (an index folder only)."""
    from qama.backends import open_backend, search_hits
    from qama.embeddings import check_query_input, query_embeddings

    check_query_input(texts, npy)  # before the store is opened
    with open_backend(uri, backend, adapter=adapter, **options) as store:
        n = store.count()
        if n == 0:
            raise ValueError(f"{uri}: the index is empty")
        if k > n:
            logger.warning("k=%d is larger than the index (%d documents): returning all of them", k, n)
            k = n
        recorded = store.manifest.get("meta", {}).get("model")
        queries, labels = query_embeddings(list(texts), npy, model, recorded, str(uri))
        return search_hits(store, queries, labels, k, oversample, rescore, mode)


def open_index(path: str | os.PathLike, adapter: QamaAdapter | str | os.PathLike | None = None) -> QamaIndex:
    """Open an index folder memory-mapped (the adapter defaults to the folder the index names)."""
    return QamaIndex.open_with_adapter(path, adapter)


def search_index(
    index: QamaIndex, query_emb: np.ndarray, k: int = 10, oversample: int = 4, mode: str = "hamming"
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(doc_id, score)`` per query: Hamming candidates (``oversample × k``) rescored
    (stored vectors if kept, else query · dequantised code); ``oversample=0`` is Hamming only;
    ``mode="adc"``: every code scored asymmetrically (no Hamming stage)."""
    scores, rows = index.search(np.atleast_2d(query_emb), k, oversample=oversample, mode=mode)
    return [
        [(index.ids[int(r)], float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
        for srow, rrow in zip(scores, rows, strict=True)
    ]


def evaluate_dataset(
    dataset: Dataset | str | os.PathLike,
    corpus_emb: np.ndarray,
    query_emb: np.ndarray,
    adapter: QamaAdapter | str | os.PathLike | None = None,
    plans: Sequence[str] | None = None,
    rescore: Sequence[int] = (4,),
    dims: Sequence[int] | None = None,
    query_sample: np.ndarray | None = None,
    recalibrate_adapter: bool = True,
    untrained_query_sample: np.ndarray | None = None,
) -> list[Row]:
    """The evaluation table of ``qama eval``: baselines, and the adapter's rows when one is given.

    ``query_emb`` holds every query of the dataset in file order (the judged ones are picked), and
    ``corpus_emb`` every document: their row counts, dimensions and values are checked before any work
    (:func:`qama.embeddings.check_embeddings`, without normalising them).
    ``plans``: the plans of the adapter's rows (default: those of ``ALL_PLANS`` that fit one of the
    adapter's sizes; a plan given must fit one). ``rescore``: the oversampling factors of the adapter's
    rescoring rows; ``dims``: the embedding
    sizes of the baselines (default: d, d/2, d/4). ``query_sample``: query-like embeddings whose
    quantiles code the queries (:func:`qama.embeddings.query_sample`): adds ``threshold-qcal`` rows,
    and replaces the adapter's own query thresholds unless ``recalibrate_adapter=False``.
    ``untrained_query_sample``: the sample of the ``threshold-qcal`` rows where it is not ``query_sample``
    (``qama eval --adapter`` on a corpus without titles: sentences of the documents code untrained codes'
    queries, as ``qama index`` codes them, while the adapter's queries keep its own thresholds).

    >>> rows = qama.evaluate_dataset("../shared/datasets/scifact", corpus, queries, "my_adapter")  # doctest: +SKIP
    >>> from qama.evaluation.tables import to_markdown  # (import qama imports no evaluation table)
    >>> print(to_markdown(rows))  # doctest: +SKIP
    """
    from qama._validate import check_eval_options, check_plans_fit, misfit
    from qama.data import load_dataset
    from qama.embeddings import check_embeddings
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import adapter_rows, baseline_rows, calibrated_threshold_rows, default_dims, set_retention

    # before any work: a plan that does not read would leave no row
    check_eval_options(plans or (), rescore, dims, adapter is not None)
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    # rows of another dataset (or another order) would be scored against the wrong documents, silently
    corpus_emb = check_embeddings(np.asarray(corpus_emb), len(ds.doc_ids), "corpus embeddings", normalise=False)
    dim = corpus_emb.shape[1]
    query_emb = check_embeddings(np.asarray(query_emb), len(ds.query_ids), "query embeddings", dim, normalise=False)
    evaluator = Evaluator(ds)
    judged = query_emb[evaluator.rows]
    if adapter is not None:  # loaded and checked before any work
        adapter = adapter if isinstance(adapter, QamaAdapter) else QamaAdapter.load(adapter)
        adapter.check_input(corpus_emb, "corpus embeddings")
        nested = adapter.config.nested_dims
        if plans is None:  # the default plans that fit (hybrid fits none of a 300-dimensional model's sizes)
            plans = [p for p in ALL_PLANS if misfit(p, nested) is None]
        check_plans_fit(plans, nested, "the adapter")
    rows = baseline_rows(corpus_emb, judged, evaluator, list(dims) if dims else None)
    untrained_sample = query_sample if untrained_query_sample is None else untrained_query_sample
    if untrained_sample is not None:
        sizes = list(dims) if dims else default_dims(corpus_emb.shape[1])
        rows += calibrated_threshold_rows(corpus_emb, judged, evaluator, untrained_sample, sizes)
    if adapter is not None:
        rows += adapter_rows(
            adapter, corpus_emb, judged, evaluator, plans or ALL_PLANS, rescore, query_sample, recalibrate_adapter
        )
    for r in rows:
        r.dataset = ds.name
    set_retention(rows)  # against FP32 at full size, a row baseline_rows adds where dims leave it out
    return rows


def search(*args: Any, **kwargs: Any) -> list[list[tuple[str, float]]]:
    """Deprecated name of :func:`search_index` (``qama.search`` is the module :mod:`qama.search`)."""
    warnings.warn("qama.api.search is now qama.search_index", DeprecationWarning, stacklevel=2)
    return search_index(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> list[Row]:
    """Deprecated name of :func:`evaluate_dataset` (the evaluation modules are in :mod:`qama.evaluation`)."""
    warnings.warn("qama.api.evaluate is now qama.evaluate_dataset", DeprecationWarning, stacklevel=2)
    return evaluate_dataset(*args, **kwargs)
