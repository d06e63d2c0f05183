"""Evaluation: how well each storage format retrieves, how fast it searches, and the study of both.

One module per piece, each reached by name (``qama.evaluation.metrics.Evaluator``); this package
itself imports none of them:

* :mod:`~qama.evaluation.metrics`: nDCG@10, Recall@100 and MRR@10 through pytrec_eval (``Evaluator``);
* :mod:`~qama.evaluation.baselines`: the formats qama is compared with (FP32, FP16, int8, thresholds);
* :mod:`~qama.evaluation.peers`: other libraries' compressed formats (faiss PQ and RaBitQ,
  sentence-transformers), built and searched by those libraries;
* :mod:`~qama.evaluation.rows`: the rows of an evaluation (``Row``; baselines, adapter rows,
  rescoring and funnel rows, retention) and the ablation score;
* :mod:`~qama.evaluation.tables`: the tables made of rows (``qama eval``'s Markdown and JSON, the
  loss breakdown, the ablation table, the study's main table);
* :mod:`~qama.evaluation.speed`: speed tables (queries per second, batch and single query);
* :mod:`~qama.evaluation.plots`: the study's plots (matplotlib);
* :mod:`~qama.evaluation.study`: ``qama report``, the whole study, resumable stage by stage.
"""
