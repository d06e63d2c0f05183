"""Exact top-k search: inner product on floats, Hamming distance on packed codes (faiss).

``D, I = search(...)`` follows faiss: ``I`` holds row ids (``-1`` where the corpus has fewer than
``k`` rows) and ``D`` their inner products (descending) or Hamming distances (ascending).
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["float_search", "hamming_search"]


def float_search(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search (faiss ``IndexFlatIP``)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def hamming_search(codes: np.ndarray, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming search over ``(n, code_size)`` uint8 codes (faiss ``IndexBinaryFlat``, popcount)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if codes.dtype != np.uint8 or query_codes.dtype != np.uint8 or codes.shape[1] != query_codes.shape[1]:
        raise ValueError(
            f"codes must be uint8 of one code size, got {codes.dtype} {codes.shape} and "
            f"{query_codes.dtype} {query_codes.shape}"
        )
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(np.ascontiguousarray(codes))
    return index.search(np.ascontiguousarray(query_codes), k)
