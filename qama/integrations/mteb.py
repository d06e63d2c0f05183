"""Evaluate qama codes with the ``mteb`` package: Hamming scores on MTEB retrieval tasks.

:class:`QamaEncoder` is an mteb encoder (``mteb.EncoderProtocol``): ``encode`` returns packed qama
codes for queries and documents alike (symmetric; queries by the adapter's query thresholds, as
``qama eval`` codes them), and ``similarity`` scores them by
``1 - hamming / n_bits``, a decreasing function of the Hamming distance, so mteb's retrieval
evaluator ranks documents exactly as a Hamming search does. With the internet, the full MTEB
retrieval suite runs as::

    import mteb
    from sentence_transformers import SentenceTransformer
    from qama.integrations.mteb import QamaEncoder

    model = SentenceTransformer("minilm-qama", trust_remote_code=True)  # saved with save_model
    encoder = QamaEncoder(model, precision="hybrid", dim=384)
    tasks = mteb.get_tasks(task_types=["Retrieval"], languages=["eng"])
    results = mteb.evaluate(encoder, tasks)

Without it, :func:`local_retrieval_task` turns a BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``, read by :func:`qama.data.load_dataset`) into an mteb retrieval task::

    task = local_retrieval_task("datasets/scifact")
    result = mteb.evaluate(encoder, task, cache=None)
    ndcg = result.task_results[0].scores["test"][0]["ndcg_at_10"]

Needs ``pip install "qama[mteb]"`` (mteb >= 2).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qama.codes import Plan, hamming, hamming_distances
from qama.data import load_dataset
from qama.integrations.sentence_transformers import encode as st_encode
from qama.integrations.sentence_transformers import find_module

try:
    import mteb
    from datasets import Dataset as HFDataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.models.model_meta import ModelMeta
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'qama.integrations.mteb needs the mteb package: pip install "qama[mteb]"  (or: pip install "mteb>=2")'
    ) from e

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

__all__ = ["QamaEncoder", "code_similarity", "local_retrieval_task"]

logger = logging.getLogger(__name__)


def _as_codes(x: Any) -> np.ndarray:
    """Packed codes as a C-contiguous 2-D uint8 array (mteb may hand them over as torch tensors)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"expected packed uint8 codes, got dtype {x.dtype}")
    return np.ascontiguousarray(x[None] if x.ndim == 1 else x)


def code_similarity(a: Any, b: Any, n_bits: int) -> torch.Tensor:
    """``(len(a), len(b))`` float32 similarities ``1 - hamming(a_i, b_j) / n_bits`` of packed codes."""
    d = hamming_distances(_as_codes(a), _as_codes(b))
    return torch.from_numpy(1.0 - d.astype(np.float32) / np.float32(n_bits))


#: Deprecated name of :func:`code_similarity` (not :func:`qama.losses.hamming_similarity`, which takes bits).
hamming_similarity = code_similarity


class QamaEncoder:
    """An mteb encoder that returns qama codes and scores them by Hamming distance.

    Args:
        model: a sentence-transformers model whose last module is a
            :class:`~qama.integrations.sentence_transformers.QamaModule`.
        precision: the plan of the codes (a name such as ``"hybrid"``, a spec or a :class:`Plan`).
        dim: nested size the plan covers (``None``: the adapter's full dimension).
        name: the model name mteb records its results under (``"org/name"``).
        revision: the revision mteb records.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        precision: str | Plan = "hybrid",
        dim: int | None = None,
        name: str | None = None,
        revision: str | None = None,
    ) -> None:
        module = find_module(model)
        assert module is not None  # required=True raises instead
        self.model = model
        self.plan = module.adapter.plan(precision, dim)
        base = module.adapter.config.model_name or "model"
        self.name = name or f"qama/{base.rstrip('/').split('/')[-1]}-{self.plan.name}-{self.plan.dim}"
        self._meta = ModelMeta.create_empty(
            overwrites={
                "name": self.name,
                "revision": revision or "local",
                "embed_dim": self.plan.code_size,
                "similarity_fn_name": "custom",
                "framework": ["Sentence Transformers"],
                "modalities": ["text"],
                "max_tokens": getattr(model, "max_seq_length", None),
            }
        )

    @property
    def mteb_model_meta(self) -> ModelMeta:
        """What mteb records about the model."""
        return self._meta

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata | None = None,
        hf_split: str = "",
        hf_subset: str = "",
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Texts of mteb's data loader -> ``(n, plan.code_size)`` uint8 packed codes.

        A model prompt named after ``prompt_type`` (``"query"`` / ``"document"``), if the model has
        one, is used as sentence-transformers would; task instructions are not added. Queries
        (``prompt_type`` ``"query"``) are coded by the adapter's query thresholds, as ``qama eval``
        and every qama search code them; documents by the documents' thresholds.
        """
        texts = [text for batch in inputs for text in batch["text"]]
        prompt_name = getattr(prompt_type, "value", prompt_type)
        prompts = getattr(self.model, "prompts", None) or {}
        return st_encode(
            self.model,
            texts,
            precision=self.plan,
            batch_size=int(kwargs.get("batch_size", 32)),
            show_progress_bar=bool(kwargs.get("show_progress_bar", False)),
            prompt_name=prompt_name if prompts.get(prompt_name) else None,
            queries=prompt_name == "query",
        )

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """``(n1, n2)`` similarities ``1 - hamming / n_bits`` between two sets of codes."""
        return code_similarity(embeddings1, embeddings2, self.plan.n_bits)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """``(n,)`` similarities ``1 - hamming / n_bits`` of corresponding rows."""
        a, b = _as_codes(embeddings1), _as_codes(embeddings2)
        if a.shape != b.shape:
            raise ValueError(f"code shapes do not match: {a.shape} vs {b.shape}")
        d = hamming(a, b)
        return torch.from_numpy((1.0 - d / self.plan.n_bits).astype(np.float32))


def local_retrieval_task(folder: str | os.PathLike, name: str | None = None, split: str = "test") -> AbsTaskRetrieval:
    """An mteb retrieval task over a local BEIR folder (nothing is downloaded).

    Documents are ``title + " " + text`` and queries their text, exactly as qama embeds them;
    queries without a judgment in ``split`` are left out, as mteb does. The main score is nDCG@10.
    """
    folder = Path(folder)
    task_name = name or f"Local{folder.name.title().replace('-', '').replace('_', '')}"

    class LocalBeirRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=task_name,
            description=f"Local BEIR folder {folder}",
            dataset={"path": str(folder), "revision": "local"},
            type="Retrieval",
            category="t2t",
            modalities=["text"],
            eval_splits=[split],
            eval_langs=["eng-Latn"],
            main_score="ndcg_at_10",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            """Read the folder with :func:`qama.data.load_dataset`."""
            if self.data_loaded:
                return
            ds = load_dataset(folder, split=split)
            corpus = HFDataset.from_dict({"id": ds.doc_ids, "title": [""] * len(ds.doc_ids), "text": ds.doc_texts})
            rows = ds.eval_query_rows
            queries = HFDataset.from_dict(
                {"id": [ds.query_ids[i] for i in rows], "text": [ds.query_texts[i] for i in rows]}
            )
            self.dataset = {
                "default": {
                    split: {"corpus": corpus, "queries": queries, "relevant_docs": ds.qrels, "top_ranked": None}
                }
            }
            self.data_loaded = True
            logger.info("loaded %r as an mteb retrieval task", ds)

    LocalBeirRetrieval.__name__ = LocalBeirRetrieval.__qualname__ = task_name
    return LocalBeirRetrieval()


def mteb_version() -> str:
    """The installed mteb's version (recorded next to results)."""
    return str(getattr(mteb, "__version__", "unknown"))
