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
>>> hits = qama.search(index, docs[:2], k=3)
>>> hits[0][0][0]                                                # each document finds itself first
'd0'

With real text, :func:`embed` gives the embeddings (``all-MiniLM-L6-v2`` by default), and
:func:`evaluate` scores a dataset in BEIR layout (see its docstring).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from qama.adapter import QamaAdapter
from qama.data import Dataset
from qama.embeddings import DEFAULT_MODEL
from qama.index import QamaIndex
from qama.table import Row

__all__ = ["embed", "fit", "encode", "build_index", "open_index", "search", "evaluate"]


def embed(texts: Sequence[str], model: str = DEFAULT_MODEL, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings of ``texts`` with a sentence-transformers model.

    >>> emb = qama.embed(["a query", "a document"])  # doctest: +SKIP
    """
    from qama.embeddings import encode as st_encode
    from qama.embeddings import load_model

    return st_encode(load_model(model), list(texts), batch_size=batch_size, progress=progress)


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


def encode(adapter: QamaAdapter | str | os.PathLike, emb: np.ndarray, plan: str = "hybrid", dim: int | None = None):
    """Packed uint8 codes ``(n, code_size)`` of embeddings under ``plan`` at nested size ``dim``."""
    adapter = adapter if isinstance(adapter, QamaAdapter) else QamaAdapter.load(adapter)
    return adapter.encode(emb, plan, dim)


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
) -> QamaIndex:
    """Encode a corpus with a trained adapter into a persistent index folder at ``path``."""
    from qama.search import AdapterEncoder

    adapter_path = None if isinstance(adapter, QamaAdapter) else adapter
    adapter = adapter if isinstance(adapter, QamaAdapter) else QamaAdapter.load(adapter)
    encoder = AdapterEncoder(adapter, plan, dim, fit_emb=corpus_emb)
    return QamaIndex.create(
        path,
        encoder,
        corpus_emb,
        ids,
        titles,
        keep_vectors=keep_vectors,
        adapter_path=adapter_path,
        overwrite=overwrite,
    )


def open_index(path: str | os.PathLike, adapter: QamaAdapter | str | os.PathLike | None = None) -> QamaIndex:
    """Open an index folder memory-mapped (the adapter defaults to the folder the index names)."""
    return QamaIndex.open_with_adapter(path, adapter)


def search(
    index: QamaIndex, query_emb: np.ndarray, k: int = 10, oversample: int = 4, mode: str = "hamming"
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(doc_id, score)`` per query: Hamming candidates (``oversample × k``) rescored
    (stored vectors if kept, else query · dequantised code); ``oversample=0`` is Hamming only;
    ``mode="adc"``: every code scored asymmetrically (no Hamming stage)."""
    scores, rows = index.search(np.atleast_2d(query_emb), k, oversample=oversample, mode=mode)
    return [
        [(index.doc_id(int(r)), float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
        for srow, rrow in zip(scores, rows, strict=True)
    ]


def evaluate(
    dataset: Dataset | str | os.PathLike,
    corpus_emb: np.ndarray,
    query_emb: np.ndarray,
    adapter: QamaAdapter | str | os.PathLike | None = None,
    plans: Sequence[str] = ("2bit", "1.5bit", "1bit", "0.5bit", "hybrid"),
    rescore: Sequence[int] = (4,),
) -> list[Row]:
    """The evaluation table of ``qama eval``: baselines, and the adapter's rows when one is given.

    ``query_emb`` holds every query of the dataset in file order (the judged ones are picked).

    >>> rows = qama.evaluate("../shared/datasets/scifact", corpus, queries, "my_adapter")  # doctest: +SKIP
    >>> print(qama.table.to_markdown(rows))  # doctest: +SKIP
    """
    from qama.data import load_dataset
    from qama.evaluate import Evaluator
    from qama.rescore import adapter_rows
    from qama.table import baseline_rows, set_retention

    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    evaluator = Evaluator(ds)
    judged = np.asarray(query_emb)[evaluator.rows]
    rows = baseline_rows(corpus_emb, judged, evaluator)
    if adapter is not None:
        adapter = adapter if isinstance(adapter, QamaAdapter) else QamaAdapter.load(adapter)
        rows += adapter_rows(adapter, corpus_emb, judged, evaluator, plans, rescore)
    for r in rows:
        r.dataset = ds.name
    set_retention(rows)
    return rows
