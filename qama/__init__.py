"""qama: Quantization Aware Matryoshka Adaptation.

Text embeddings made 10-30x smaller, searched with XOR + popcount. The pipeline, one module each:
data (:mod:`qama.data`) -> embeddings (:mod:`qama.embeddings`) -> adapter -> codes
(:mod:`qama.codes`, :mod:`qama.quantize`) -> search (:mod:`qama.search`) -> evaluation
(:mod:`qama.evaluate`, :mod:`qama.table`).
"""

from qama.codes import Plan, make_plan
from qama.data import Dataset, load_dataset

__version__ = "0.1.0"
__all__ = ["Plan", "make_plan", "Dataset", "load_dataset", "__version__"]
