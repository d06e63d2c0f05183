"""qama: Quantization Aware Matryoshka Adaptation.

Text embeddings made 10-30x smaller, searched with XOR + popcount. The pipeline, one module each:
data (:mod:`qama.data`) -> embeddings (:mod:`qama.embeddings`) -> adapter (:mod:`qama.adapter`,
:mod:`qama.train`) -> codes (:mod:`qama.codes`, :mod:`qama.quantize`) -> index and search
(:mod:`qama.index`, :mod:`qama.search`) -> evaluation (:mod:`qama.evaluate`, :mod:`qama.table`).
One call per step: :func:`embed`, :func:`fit`, :func:`encode`, :func:`build_index`,
:func:`open_index`, :func:`search`, :func:`evaluate` (:mod:`qama.api`).
"""

from qama.api import build_index, embed, encode, evaluate, fit, open_index, search
from qama.codes import Plan, make_plan
from qama.data import Dataset, load_dataset

__version__ = "0.1.0"
__all__ = [
    "embed",
    "fit",
    "encode",
    "build_index",
    "open_index",
    "search",
    "evaluate",
    "Plan",
    "make_plan",
    "Dataset",
    "load_dataset",
    "__version__",
]
