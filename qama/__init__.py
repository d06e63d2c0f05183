"""qama: Quantization Aware Matryoshka Adaptation.

Text embeddings made 10-30x smaller, searched with XOR + popcount. The pipeline, one module each:
data (:mod:`qama.data`) -> embeddings (:mod:`qama.embeddings`) -> adapter (:mod:`qama.adapter`,
:mod:`qama.train`) -> codes (:mod:`qama.codes`, :mod:`qama.quantize`) -> index and search
(:mod:`qama.index`, :mod:`qama.search`) -> evaluation (:mod:`qama.evaluation`).
One call per step: :func:`embed`, :func:`fit`, :func:`encode`, :func:`build_index`,
:func:`open_index`, :func:`search_index`, :func:`evaluate_dataset` (:mod:`qama.api`).
Every other name is reached by module: ``qama.search.hamming_search``, ``qama.codes.pack``.
"""

import os as _os
import sys as _sys

# numba's OpenMP layer starts one thread per core whatever OMP_NUM_THREADS says, and sets the process's
# OpenMP thread count, which torch shares: a user's OMP_NUM_THREADS=1 became 2 threads for both after the
# first asymmetric search. So OMP_NUM_THREADS bounds numba's threads too, unless NUMBA_NUM_THREADS is set
# (read when numba is first imported). A numba imported before qama keeps its own count: the variable is
# then left unset, since numba re-reads it at each compilation and, once its threads run, raises
# "Cannot set NUMBA_NUM_THREADS to a different value" at any later jit compilation, qama's kernels included.
if (
    "numba" not in _sys.modules
    and _os.environ.get("OMP_NUM_THREADS", "").isdigit()
    and int(_os.environ["OMP_NUM_THREADS"]) > 0
):
    _os.environ.setdefault("NUMBA_NUM_THREADS", _os.environ["OMP_NUM_THREADS"])

from qama import evaluation as evaluation  # the modules (the API functions are evaluate_dataset, search_index)
from qama import search as search
from qama.api import build_index, embed, encode, evaluate_dataset, fit, open_index, search_index
from qama.codes import Plan, make_plan
from qama.data import Dataset, load_dataset

__version__ = "0.1.0"
__all__ = [
    "embed",
    "fit",
    "encode",
    "build_index",
    "open_index",
    "search_index",
    "evaluate_dataset",
    "Plan",
    "make_plan",
    "Dataset",
    "load_dataset",
    "__version__",
]
