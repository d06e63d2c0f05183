"""The ``qama`` command line: a thin layer over the library.

Examples::

    # How well does each storage format retrieve? (FP32, FP16, int8, threshold codes, truncation)
    qama eval --dataset ../shared/datasets/scifact --embeddings ../shared/embeddings/all-MiniLM-L6-v2/scifact
    # Same, embedding the dataset with a model (cached), writing JSON and Markdown
    qama eval --dataset scifact --model sentence-transformers/all-MiniLM-L6-v2 --json table.json --markdown table.md

Errors in the input end the command with exit status 2 and one line naming the file and the
problem; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["main"]

logger = logging.getLogger("qama")


def _resolve_model(args: argparse.Namespace) -> None:
    """``args.model`` and ``args.recorded_model``, before any work: :func:`qama.embeddings.resolve_model`."""
    from qama.embeddings import resolve_model

    args.model, args.recorded_model = resolve_model(args.embeddings, args.model, args.batch_size)


def _check_corpus_or_dataset(args: argparse.Namespace) -> None:
    """A command that takes a plain JSONL corpus or a dataset (``qama train``, ``qama index``): one of them."""
    if (args.corpus is None) == (args.dataset is None):
        raise ValueError("give either --dataset or --corpus")


def _load_inputs(args: argparse.Namespace, queries: bool = True):
    """The dataset and its ``(corpus, queries)`` embeddings, from ``--embeddings`` or ``--model``; for
    ``--corpus`` (a plain JSONL file) a dataset with no queries, and ``queries`` None; with ``queries=False``
    (a command that reads none) ``queries`` None too, and none embedded or read."""
    from qama.data import load_dataset
    from qama.embeddings import (
        corpus_embeddings,
        dataset_embeddings,
        jsonl_corpus_embeddings,
        query_sample_split,
        query_split_rows,
    )

    if getattr(args, "corpus", None) is not None:
        progress = not args.quiet
        dataset, corpus = jsonl_corpus_embeddings(
            args.corpus, args.embeddings, args.model, args.batch_size, args.cache_dir, progress
        )
        logger.info("%r", dataset)
        return dataset, corpus, None
    # qama train and qama index judge nothing: no --split, no qrels read (--pairs and a split as --query-sample
    # read theirs)
    dataset = load_dataset(args.dataset, split=getattr(args, "split", None), cache_dir=args.cache_dir)
    logger.info("%r", dataset)
    inputs = (dataset, args.model, args.embeddings, args.cache_dir, args.batch_size, not args.quiet)
    if not queries:
        return dataset, corpus_embeddings(*inputs), None
    if getattr(args, "query_sample", None) is not None and query_sample_split(args.query_sample):
        query_split_rows(dataset, args.query_sample)  # a mistyped file or split: refused before any embedding
    corpus, query_emb = dataset_embeddings(*inputs)
    return dataset, corpus, query_emb


def _reads_queries(args: argparse.Namespace) -> bool:
    """Whether ``qama train`` / ``qama index`` read the dataset's queries: only for the pairs of ``--pairs`` or
    a ``--query-sample`` that names a split (the embedding of every query of a large dataset costs hours)."""
    from qama.embeddings import query_sample_split

    return bool(getattr(args, "pairs", None)) or query_sample_split(args.query_sample)


def _embeddings_folder(args: argparse.Namespace) -> Path | None:
    """The folder of ``--embeddings``, whose ``meta.json`` names their model (``--corpus`` takes the
    ``.npy`` file itself, ``--dataset`` a folder), for the check that titles and sentences are embedded
    with that model; None when the model is known already: ``--model`` named it (one contradicting a
    ``meta.json`` was refused by :func:`_resolve_model`), or a ``meta.json`` did."""
    if args.recorded_model is not None:
        return None
    folder = args.embeddings
    return folder.parent if folder is not None and folder.is_file() else folder


def _query_sample(
    args: argparse.Namespace, dataset, corpus, queries, embed_titles=None, untrained=False, role="query thresholds"
):
    """The query-like embeddings of ``--query-sample`` (:func:`qama.embeddings.query_sample`), or None;
    ``embed_titles``: the command's :func:`qama.embeddings.title_embedder`, when it has one; ``untrained``:
    codes without an adapter, for which ``auto`` falls back to the documents' sentences; ``role``: whose
    query thresholds, in the log line that names the sample."""
    from qama.embeddings import query_sample

    sample, what = query_sample(
        dataset, corpus, queries, args.query_sample, args.model, _embeddings_folder(args), args.cache_dir,
        args.batch_size,
        not args.quiet, embed_titles, untrained,
    )  # fmt: skip
    logger.info("%s: %s", role, what)
    return sample


def _json_on_stdout(args: argparse.Namespace) -> bool:
    """Whether ``--json -`` prints the JSON: then it is all a command prints (a table before it would
    leave stdout unreadable as JSON)."""
    return args.json is not None and str(args.json) == "-"


def cmd_eval(args: argparse.Namespace) -> int:
    from qama._io import check_output_files, write_json, write_text
    from qama._validate import check_eval_options
    from qama.api import evaluate_dataset, load_adapter
    from qama.evaluation.tables import eval_json, eval_markdown

    check_output_files(args.json, args.markdown, overwrite=args.overwrite)
    check_eval_options(args.plans or (), args.oversample, args.dims, args.adapter is not None)
    _resolve_model(args)
    adapter = load_adapter(args.adapter, args.recorded_model, args.plans)
    dataset, corpus, queries = _load_inputs(args)
    sample = _query_sample(args, dataset, corpus, queries, untrained=adapter is None)
    explicit = args.query_sample != "auto"  # auto: the adapter keeps its own query thresholds
    untrained_sample = None  # the untrained rows' queries are coded as qama index codes them without an adapter
    if adapter is not None and sample is None and not explicit:  # auto, no titles: the documents' sentences
        untrained_sample = _query_sample(args, dataset, corpus, queries, untrained=True, role="untrained codes")
    rows = evaluate_dataset(
        dataset, corpus, queries, adapter, args.plans, args.oversample, args.dims, sample, explicit, untrained_sample
    )
    table, _ = eval_markdown(rows)
    if not _json_on_stdout(args) and str(args.markdown) != "-":  # (--markdown - prints it below)
        print(table, end="")
    if args.json:
        write_json(args.json, eval_json(rows, dataset.name, dataset.split))
    if args.markdown:
        write_text(args.markdown, table)
    return 0


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~qama.train.TrainConfig` fields set by options of ``qama train`` / ``ablate`` (None: the default)."""
    drop_mean_direction = False if args.keep_mean_direction else None
    return dict(
        steps=args.steps, expansion=args.expansion, seed=args.seed, nested_dims=args.nested_dims,
        batch_size=args.train_batch_size, drop_mean_direction=drop_mean_direction,
    )  # fmt: skip


def _check_train_settings(args: argparse.Namespace) -> None:
    """The training options, before any work (:func:`qama.train.check_settings`)."""
    from qama.train import check_settings

    check_settings(w_nce=args.nce_weight, **_train_settings(args))


def _training_setup(args: argparse.Namespace, dataset, corpus, queries, embed_titles=None):
    """The :class:`~qama.train.TrainConfig` and InfoNCE ``pairs`` of ``qama train`` / ``qama ablate``."""
    from qama.train import training_setup

    cfg, pairs = training_setup(
        dataset, corpus, queries, args.pseudo_queries, args.pairs, args.nce_weight, args.model,
        _embeddings_folder(args), args.cache_dir, args.batch_size, not args.quiet, embed_titles,
        **_train_settings(args),
    )  # fmt: skip
    cfg.model_name = args.recorded_model or ""  # the model of the embeddings, when known (meta.json)
    return cfg, pairs


def cmd_train(args: argparse.Namespace) -> int:
    from qama.embeddings import title_embedder
    from qama.train import check_out_dir, fit

    _check_corpus_or_dataset(args)
    if args.corpus is not None and args.pairs:
        raise ValueError("--pairs takes a qrels split of --dataset; a --corpus file has no judgments")
    check_out_dir(args.out, args.overwrite)  # before loading or training anything
    _check_train_settings(args)
    _resolve_model(args)
    dataset, corpus, queries = _load_inputs(args, _reads_queries(args))
    # The titles feed the training pairs and the query sample: embedded once for both.
    titles = title_embedder(dataset, args.model, args.cache_dir, args.batch_size, not args.quiet)
    cfg, pairs = _training_setup(args, dataset, corpus, queries, titles)
    sample = _query_sample(args, dataset, corpus, queries, titles)
    fit(corpus, cfg, pairs=pairs, out_dir=args.out, overwrite=args.overwrite, query_sample=sample)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from qama._io import check_output_files, write_json
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import ablation_scorer
    from qama.evaluation.tables import ablation_columns, ablation_markdown
    from qama.train import ablate

    check_output_files(args.json, overwrite=args.overwrite)
    _check_train_settings(args)
    _resolve_model(args)
    dataset, corpus, queries = _load_inputs(args)
    evaluator = Evaluator(dataset)
    cfg, pairs = _training_setup(args, dataset, corpus, queries)
    score = ablation_scorer(corpus, queries[evaluator.rows], evaluator)
    results = ablate(corpus, score, cfg, pairs=pairs, names=args.only)
    if not _json_on_stdout(args):
        print("\n".join(ablation_markdown(results, ablation_columns(results))))
    if args.json:
        write_json(args.json, {"dataset": dataset.name, "ablations": results})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from qama.config import experiment_config
    from qama.evaluation.study import check_report_folder, run_report

    peers = [] if args.no_peers else args.peers
    config = experiment_config(
        args.config, args.preset, args.datasets, args.model, args.steps, not args.no_ablation, args.speed_vectors, peers
    )
    check_report_folder(args.out)
    results = run_report(config, args.out, command="qama " + " ".join(sys.argv[1:]), progress=not args.quiet)
    print(f"report written to {args.out / 'report.md'} ({results['seconds']:.0f} s)")
    return 0


def _store(args: argparse.Namespace, folder: Path | None, flag: str, faiss: dict[str, Any]):
    """``(uri, backend, options)`` of the store named by ``--backend/--uri`` or the index ``folder``."""
    from qama._validate import check_nprobe
    from qama.backends import store_target

    milvus = _given(args, "collection", "index_type", "nprobe")  # (the others: MilvusBackend's defaults)
    if "nprobe" in milvus:
        check_nprobe(milvus["nprobe"])
    uri, kind, options = store_target(args.uri, folder, args.backend, milvus, flag, faiss)
    if kind != "milvus" and milvus:  # an index folder has no collection, index type or lists: ignored, silently
        raise ValueError(f"{_flags(milvus)}: options of a Milvus collection; this store is an index folder ({uri})")
    return uri, kind, options


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among ``names`` that the command line gave (those whose default is None and that are not)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _flags(options: dict[str, Any]) -> str:
    """The flags of ``options`` (:func:`_given`), as the command line spells them: ``--index-type, --nprobe``."""
    return ", ".join("--" + name.replace("_", "-") for name in options)


def cmd_index(args: argparse.Namespace) -> int:
    from qama._validate import check_plan_syntax
    from qama.api import add_to_store, index_corpus, load_adapter
    from qama.backends import check_new_store
    from qama.encoders import uses_query_sample

    _check_corpus_or_dataset(args)
    if args.add:
        flags = {
            "--overwrite": args.overwrite,
            "--shard": args.shard,
            "--plan": args.plan,
            "--keep-vectors": args.keep_vectors,
            "--query-sample": args.query_sample != "auto",
        }
        given = [flag for flag, value in flags.items() if value]
        if given:  # the index's own encoder, plan and stored vectors code the documents: these would be ignored
            raise ValueError(
                f"--add adds documents to an index, coded by its own encoder and plan; it takes no {', '.join(given)}"
            )
        uri, kind, options = _store(args, args.out, "--out", {"verify": True})
        _resolve_model(args)
        dataset, corpus, _ = _load_inputs(args, queries=False)
        add_to_store(
            uri, corpus, dataset.doc_ids, dataset.titles, args.recorded_model, kind, args.adapter, not args.quiet,
            **options,
        )  # fmt: skip
        return 0
    args.plan = check_plan_syntax(args.plan or "hybrid", "--plan")  # before any work
    uri, kind, options = _store(args, args.out, "--out", {"adapter_path": args.adapter, "overwrite": args.overwrite})
    # before any work: an index folder must be new, empty, or --overwrite (with --shard: an index is appended to)
    check_new_store(uri, kind, args.overwrite, args.shard)
    _resolve_model(args)
    adapter = load_adapter(args.adapter, args.recorded_model)
    dataset, corpus, queries = _load_inputs(args, _reads_queries(args))
    ids, titles = dataset.doc_ids, dataset.titles
    if args.query_sample == "auto" and not uses_query_sample(adapter, args.plan):
        sample = None  # auto leaves an adapter's own query thresholds as they are (fit_encoder): nothing to embed
        logger.info("query thresholds: the adapter's own, fitted with it")
    else:
        sample = _query_sample(args, dataset, corpus, queries, untrained=adapter is None)
    index_corpus(
        uri, corpus, ids, titles, args.plan, adapter, sample, args.query_sample != "auto", args.recorded_model,
        args.shard, kind, args.keep_vectors, not args.quiet, **options,
    )  # fmt: skip
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from qama._io import check_output_files, write_json
    from qama._validate import check_oversample
    from qama.api import search_store
    from qama.backends import hits_text

    check_output_files(args.json, overwrite=args.overwrite)
    if args.k <= 0:  # before any work; a k larger than the index is clamped by search_store
        raise ValueError(f"k must be positive, got {args.k}")
    # the two-stage search's options, where given (the others: search_store's defaults)
    two_stage = _given(args, "oversample", "rescore")
    if args.mode == "adc" and two_stage:  # the full scan has no candidates to rescore: they would be ignored
        raise ValueError(
            f"{_flags(two_stage)}: options of the Hamming search's rescoring; --mode adc scores every code"
        )
    if "oversample" in two_stage:
        check_oversample(two_stage["oversample"])
    uri, kind, options = _store(args, args.index, "--index", {"verify": True})
    results = search_store(
        uri, args.text, args.queries, args.model, args.k, backend=kind, adapter=args.adapter, mode=args.mode,
        **two_stage, **options,
    )  # fmt: skip
    if args.json is not None:
        write_json(args.json, results)
    else:
        print(hits_text(results), end="")
    return 0


class _Deprecated(argparse.Action):
    """An old flag: still works, and says which flag replaces it (the flag of its ``dest``)."""

    def __call__(self, parser, namespace, value, option_string=None):
        print(f"qama: {option_string} is deprecated here, use --{self.dest.replace('_', '-')}", file=sys.stderr)
        setattr(namespace, self.dest, value)


class _Once(argparse.Action):
    """An option that names one thing (``--dataset``, ``--embeddings``, ``--out``): given twice is an error, not
    the last one silently (``qama report`` takes ``--dataset`` repeated; these commands read one)."""

    def __call__(self, parser, namespace, value, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} is given twice; this command takes one")
        setattr(namespace, self.dest, value)


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    from qama.backends import BACKENDS
    from qama.backends.milvus import INDEX_TYPES

    g = p.add_argument_group("backend (default: a faiss index folder on this machine)")
    g.add_argument("--backend", choices=BACKENDS, help="where the codes live (default: from --uri, else faiss)")
    g.add_argument("--uri", help="Milvus server (http://host:19530) or milvus-lite file (codes.db)")
    g.add_argument("--collection", help="Milvus collection (default: qama)")
    g.add_argument("--index-type", choices=INDEX_TYPES, help="Milvus index type (default: BIN_FLAT)")
    g.add_argument("--nprobe", type=int, help="BIN_IVF_FLAT lists searched per query (default: 16)")


def _add_input_args(p: argparse.ArgumentParser, required: bool = True, split: bool = True) -> None:
    """The options that name the data (``split``: the command judges a qrels split: ``qama eval``, ``ablate``)."""
    from qama.embeddings import DEFAULT_MODEL

    p.add_argument(
        "--dataset",
        required=required,
        action=_Once,
        help="BEIR-layout folder, cranfield (shipped), or a BEIR name to download",
    )
    if split:
        p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    model_help = "sentence-transformers model of the dataset's embeddings and of its titles (default: the "
    model_help += f"model in meta.json of --embeddings, else {DEFAULT_MODEL}; one contradicting it is refused)"
    p.add_argument("--model", action=_Once, default=None, help=model_help)
    emb_help = "folder with precomputed corpus.npy and queries.npy of --model (queries.npy only where queries are "
    emb_help += "read: eval, ablate, --pairs, a split as --query-sample; with --corpus: a .npy file)"
    p.add_argument("--embeddings", type=Path, action=_Once, help=emb_help)
    p.add_argument("--batch-size", type=int, default=64, help="embedding batch size")
    sample_help = "query-like texts whose quantiles code the queries: auto (default: the titles if any, else, for "
    sample_help += "codes without an adapter, sentences), titles, sentences (one of each of up to 2,000 documents), "
    sample_help += "none, a qrels split of --dataset (its query texts), a .npy of embeddings, "
    sample_help += "a text file (a query a line) or a .jsonl of queries"
    p.add_argument("--query-sample", default="auto", metavar="SOURCE", help=sample_help)
    p.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: $QAMA_CACHE or ~/.cache/qama)")


def _add_corpus_arg(p: argparse.ArgumentParser) -> None:
    corpus_help = "plain JSONL corpus ({_id or id, text, title?} a line) instead of --dataset; its "
    corpus_help += "--embeddings is a .npy file, one row per line"
    p.add_argument("--corpus", type=Path, action=_Once, help=corpus_help)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from qama.embeddings import PSEUDO_QUERY_MODES

    p.add_argument("--steps", type=int, help="optimiser steps (default: the training default)")
    p.add_argument("--expansion", type=int, help="FFN expansion factor k (hidden width k·d)")
    p.add_argument("--nested-dims", type=int, nargs="+", help="Matryoshka sizes (default: d, d/2, d/4)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--train-batch-size", type=int, help="corpus vectors per training step")
    p.add_argument("--keep-mean-direction", action="store_true", help="keep the corpus mean direction (default: drop)")
    pq_help = "the documents' titles as InfoNCE queries of their documents (no labels); auto (default): when the "
    pq_help += "corpus has titles and the embeddings' model is known to be --model"
    p.add_argument("--pseudo-queries", choices=PSEUDO_QUERY_MODES, default="auto", help=pq_help)
    p.add_argument("--pairs", metavar="SPLIT", help="also train InfoNCE on this qrels split's pairs (labels)")
    p.add_argument("--nce-weight", type=float, help="InfoNCE weight (default: NCE_WEIGHT_TITLES / _LABELLED)")


def build_parser() -> argparse.ArgumentParser:
    from qama.config import DatasetArgs
    from qama.search import RESCORE_MODES
    from qama.train import ABLATIONS

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="qama", description=__doc__, formatter_class=raw)
    from qama import __version__

    parser.add_argument("--version", action="version", version=f"qama {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    json_help = "write the results as JSON to this file (-: print them, in place of the text output)"

    p = sub.add_parser("eval", help="nDCG@10 of every storage format on a dataset")
    _add_input_args(p)
    p.add_argument(
        "--dims",
        type=int,
        nargs="+",
        help="embedding sizes of the baseline rows (default: d, d/2, d/4); --adapter rows are at its nested sizes",
    )
    p.add_argument("--json", type=Path, help=json_help)
    p.add_argument("--markdown", type=Path, help="write the table as Markdown to this file (-: print it)")
    p.add_argument("--overwrite", action="store_true", help="replace files already at --json / --markdown")
    p.add_argument("--adapter", action=_Once, type=Path, help="a trained adapter folder: adds its rows (format qama)")
    p.add_argument(
        "--plans",
        nargs="+",
        help="plans of the adapter rows (names or specs; default: every built-in plan that fits)",
    )
    p.add_argument("--oversample", type=int, nargs="*", default=[4], help="oversampling factors of the rescored rows")
    p.add_argument("--rescore", type=int, nargs="*", dest="oversample", action=_Deprecated, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="the full study: tables, ablations, speed, plots, report.md")
    p.add_argument("--config", type=Path, help="TOML experiment config")
    p.add_argument("--preset", help="a preset config (minilm, bert768)")
    datasets_help = "BEIR folder or name (repeatable; default: cranfield, shipped in the package)"
    p.add_argument("--dataset", dest="datasets", action=DatasetArgs, help=datasets_help)
    p.add_argument("--embeddings", action=DatasetArgs, help="precomputed embeddings of the --dataset before it")
    p.add_argument(
        "--model", action=_Once, default=None, help="sentence-transformers model (default: all-MiniLM-L6-v2)"
    )
    p.add_argument("--steps", type=int, help="training steps (overrides the config)")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablations")
    p.add_argument("--speed-vectors", type=int, help="synthetic vectors of the speed table (0: skip)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--no-peers", action="store_true", help="leave out other libraries' formats (qama.evaluation.peers)")
    peers_help = "only these peers: pq<M>, rabitq<B>, st-ubinary, st-ubinary-rescore, st-int8 (default: all)"
    g.add_argument("--peers", nargs="+", metavar="PEER", help=peers_help)
    p.add_argument("--out", type=Path, required=True, help="report folder (re-running resumes)")
    p.set_defaults(func=cmd_report, datasets=None)

    p = sub.add_parser("train", help="fit a QAMA adapter on a dataset's or a JSONL corpus's embeddings")
    _add_input_args(p, required=False, split=False)
    _add_corpus_arg(p)
    _add_train_args(p)
    p.add_argument(
        "--out", type=Path, action=_Once, required=True, help="adapter folder (config.json + model.safetensors)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ablate", help="retrain with each loss component off; nDCG@10 table")
    _add_input_args(p)
    _add_train_args(p)
    only_help = f"ablations to run: {', '.join(ABLATIONS)} (default: all)"
    p.add_argument("--only", nargs="+", choices=ABLATIONS, metavar="ABLATION", help=only_help)
    p.add_argument("--json", type=Path, help=json_help)
    p.add_argument("--overwrite", action="store_true", help="replace a file already at --json")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("index", help="encode a corpus into a persistent qama index folder or a Milvus collection")
    _add_input_args(p, required=False, split=False)
    _add_corpus_arg(p)
    p.add_argument(
        "--adapter", action=_Once, type=Path, help="trained adapter folder (default: untrained quantile thresholds)"
    )
    p.add_argument("--plan", help="plan of the codes (default: hybrid)")
    p.add_argument("--keep-vectors", action="store_true", help="also store float32 vectors for exact rescoring")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    add_help = "add the documents to the index already at --out (or --uri), coded by its own encoder and plan"
    p.add_argument("--add", action="store_true", help=add_help)
    p.add_argument("--out", type=Path, action=_Once, help="index folder to write (faiss backend)")
    _add_backend_args(p)
    p.add_argument("--shard", help="I/N: encode and load only part I of N of the corpus (N workers, one store)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="top-k documents of a qama index for query texts or embeddings")
    p.add_argument("--index", type=Path, action=_Once, help="index folder written by 'qama index' (faiss backend)")
    _add_backend_args(p)
    p.add_argument("text", nargs="*", help="query texts (embedded with the index's model)")
    p.add_argument("--queries", type=Path, help=".npy of query embeddings (nq, d) instead of texts")
    p.add_argument("--model", action=_Once, help="sentence-transformers model for query texts (default: the index's)")
    p.add_argument(
        "--adapter", action=_Once, type=Path, help="the adapter the index was built with (default: the one it names)"
    )
    p.add_argument("-k", type=int, default=10, help="documents per query (default: 10)")
    p.add_argument("--oversample", type=int, help="rescore oversample*k Hamming candidates; 0: none (default: 4)")
    p.add_argument("--rescore", choices=RESCORE_MODES, help="how candidates are rescored (default: auto)")
    p.add_argument("--mode", default="hamming", choices=["hamming", "adc"], help="adc: score every code asymmetrically")
    p.add_argument("--json", type=Path, nargs="?", const=Path("-"), help=json_help + "; a bare --json: -")
    p.add_argument("--overwrite", action="store_true", help="replace a file already at --json")
    p.set_defaults(func=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # faiss logs which SIMD build it loads
    if args.quiet:  # the bars of the Hugging Face libraries too (loading a model's weights), unless asked for
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.debug:
        return args.func(args)
    previous = _terminate_as_interrupt()
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError, RuntimeError) as e:  # bad input, unreadable files, locks, divergence
        print(f"qama: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:  # a bound missed: still one line, never a traceback
        print("qama: error: out of memory (an input asks for more than this machine has)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("qama: interrupted" if not isinstance(e, Terminated) else "qama: terminated", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop) raised where the command runs: it unwinds as Ctrl-C does,
    so what a command made and has not finished is removed or left resumable, as after an interrupt."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM raise :class:`Terminated` (in the main thread only); returns the previous handler, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
