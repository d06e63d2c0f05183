"""The storage formats QAMA is compared with, each with its exact bytes per vector.

* ``fp32`` / ``fp16``: the float embedding (prefix of ``dims``, re-normalised), cosine scores;
* ``int8``: per-dimension affine quantisation to 256 levels calibrated on the corpus (min/max),
  scored by the dot product of the de-quantised vectors;
* ``threshold``: simple threshold quantisation without an adapter: 2-level values by sign,
  3 and 4 levels at per-dimension quantiles of the corpus, 0.5-bit pairs merged by their mean;
  queries and documents are both quantised and ranked by Hamming distance of the expanded codes.

Each function returns ``(corpus_repr, query_repr)`` in the representation its search uses.
"""

from __future__ import annotations

import numpy as np

from qama.codes import Plan
from qama.encoders import ThresholdEncoder

__all__ = ["truncate", "fp16", "int8", "threshold_codes"]


def truncate(emb: np.ndarray, dims: int) -> np.ndarray:
    """The first ``dims`` dimensions, re-normalised to unit length (a Matryoshka prefix)."""
    if not 0 < dims <= emb.shape[1]:
        raise ValueError(f"cannot truncate {emb.shape[1]}-dimensional embeddings to {dims}")
    out = np.ascontiguousarray(emb[:, :dims], dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def fp16(corpus: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round both to float16 (2 bytes per dimension); returned as float32 for scoring."""
    return corpus.astype(np.float16).astype(np.float32), queries.astype(np.float16).astype(np.float32)


def int8(corpus: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension int8 (1 byte per dimension) with ranges calibrated on the corpus.

    Returns the de-quantised float32 vectors: what an int8 store scores with.
    """
    lo, hi = corpus.min(axis=0), corpus.max(axis=0)
    step = np.maximum(hi - lo, 1e-12) / 255.0

    def roundtrip(x: np.ndarray) -> np.ndarray:
        q = np.clip(np.rint((x - lo) / step) - 128, -128, 127).astype(np.int8)  # stored bytes
        return ((q.astype(np.float32) + 128) * step + lo).astype(np.float32)

    return roundtrip(corpus), roundtrip(queries)


def threshold_codes(corpus: np.ndarray, queries: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """Simple threshold quantisation of the first ``plan.dim`` dimensions: packed uint8 codes of both,
    by the corpus's thresholds (:class:`~qama.encoders.ThresholdEncoder`, 2-level values by sign)."""
    encoder = ThresholdEncoder.fit(corpus, plan, sign_1bit=True)
    return encoder.encode(corpus), encoder.encode(queries)
