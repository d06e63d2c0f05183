"""Integrations of a trained qama adapter with the tools users already run.

* :mod:`qama.integrations.sentence_transformers`: a sentence-transformers module that puts the
  adapter last in a model, so that ``SentenceTransformer(path)`` returns adapted float embeddings
  or packed qama codes.
* :mod:`qama.integrations.mteb`: an ``mteb`` encoder that scores qama codes by Hamming distance,
  to run MTEB retrieval tasks on them (needs ``pip install "qama[mteb]"``).

Each submodule is imported on its own; this package imports neither, so ``mteb`` stays optional.
"""
