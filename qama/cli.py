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
import sys
import time
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger("qama")


def _load_inputs(args: argparse.Namespace):
    """The dataset and its ``(corpus, queries)`` embeddings, from ``--embeddings`` or ``--model``."""
    from qama.data import load_dataset
    from qama.embeddings import dataset_embeddings

    dataset = load_dataset(args.dataset, split=args.split, cache_dir=args.cache_dir)
    logger.info("%r", dataset)
    corpus, queries = dataset_embeddings(dataset, args.model, args.embeddings, args.cache_dir, args.batch_size)
    return dataset, corpus, queries


def cmd_eval(args: argparse.Namespace) -> int:
    from qama._io import atomic_open, write_json
    from qama.evaluate import Evaluator
    from qama.table import baseline_rows, set_retention, to_markdown

    start = time.perf_counter()
    dataset, corpus, queries = _load_inputs(args)
    evaluator = Evaluator(dataset)
    judged = queries[evaluator.rows]
    dims = args.dims or None
    rows = baseline_rows(corpus, judged, evaluator, dims)
    if args.adapter:
        from qama.adapter import QamaAdapter
        from qama.rescore import adapter_rows

        adapter = QamaAdapter.load(args.adapter)
        adapter.check_input(corpus, "corpus embeddings")
        rows += adapter_rows(adapter, corpus, judged, evaluator, args.plans, args.rescore)
    for r in rows:
        r.dataset = dataset.name
    set_retention(rows)
    table = to_markdown(rows)
    print(table, end="")
    if args.json:
        write_json(args.json, {"dataset": dataset.name, "split": dataset.split, "rows": [r.to_dict() for r in rows]})
    if args.markdown:
        with atomic_open(args.markdown, "w") as f:
            f.write(table)
    logger.info("evaluated %d formats in %.1f s", len(rows), time.perf_counter() - start)
    return 0


def _training_setup(args: argparse.Namespace, dataset, corpus, queries):
    """The :class:`~qama.train.TrainConfig` and the InfoNCE ``pairs`` of ``qama train`` / ``qama ablate``:
    title pseudo-queries (``--pseudo-queries titles``) and qrels pairs (``--pairs SPLIT``), together."""
    import numpy as np

    from qama.data import load_dataset
    from qama.embeddings import title_pairs
    from qama.train import NCE_WEIGHT_LABELLED, NCE_WEIGHT_TITLES, TrainConfig

    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "expansion": args.expansion,
            "seed": args.seed,
            "nested_dims": args.nested_dims,
            "batch_size": args.train_batch_size,
            "drop_mean_direction": False if args.keep_mean_direction else None,
        }.items()
        if v is not None
    }
    q_parts, d_parts, sources = [], [], []
    titles = title_pairs(
        dataset,
        corpus,
        args.pseudo_queries,
        args.model,
        args.embeddings,
        args.cache_dir,
        args.batch_size,
        not args.quiet,
    )
    if titles is not None:
        q_parts.append(titles[0])
        d_parts.append(titles[1])
        sources.append(f"{len(titles[0])} title pseudo-queries")
    if args.pairs:
        q_rows, d_rows = load_dataset(dataset.path, split=args.pairs).relevant_pairs()
        q_parts.append(queries[q_rows])
        d_parts.append(corpus[d_rows])
        sources.append(f"{len(q_rows)} {args.pairs!r} qrels pairs")
    pairs = (np.concatenate(q_parts), np.concatenate(d_parts)) if q_parts else None
    if pairs is not None:
        default = NCE_WEIGHT_LABELLED if args.pairs else NCE_WEIGHT_TITLES
        overrides["w_nce"] = default if args.nce_weight is None else args.nce_weight
        logger.info("InfoNCE (weight %g) on %s", overrides["w_nce"], ", ".join(sources))
    labels = "labels" if args.pairs else "no labels"
    cfg = TrainConfig(
        model_name=args.model if not args.embeddings else str(args.embeddings),
        data_description=", ".join([f"{dataset.name} corpus embeddings", *sources]) + f" ({labels})",
        progress=not args.quiet,
        **overrides,
    )
    return cfg, pairs


def cmd_train(args: argparse.Namespace) -> int:
    from qama.train import check_out_dir, fit

    check_out_dir(args.out, args.overwrite)  # before loading or training anything
    dataset, corpus, queries = _load_inputs(args)
    cfg, pairs = _training_setup(args, dataset, corpus, queries)
    fit(corpus, cfg, pairs=pairs, out_dir=args.out, overwrite=args.overwrite)
    logger.info("adapter saved to %s", args.out)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from qama._io import write_json
    from qama.evaluate import Evaluator
    from qama.rescore import adapter_rows
    from qama.train import ablate

    dataset, corpus, queries = _load_inputs(args)
    evaluator = Evaluator(dataset)
    judged = queries[evaluator.rows]

    def score(adapter) -> dict[str, float]:
        rows = adapter_rows(adapter, corpus, judged, evaluator, ("2bit", "hybrid"), oversamples=())
        return {f"{r.plan}@{r.dims}": r.metrics["ndcg@10"] for r in rows if r.plan is not None}

    cfg, pairs = _training_setup(args, dataset, corpus, queries)
    results = ablate(corpus, score, cfg, pairs=pairs, names=args.only)
    columns = sorted(
        {c for figures in results.values() for c in figures}, key=lambda c: (c.split("@")[0], -int(c.split("@")[1]))
    )
    print("| ablation | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, figures in results.items():
        print(f"| {name} | " + " | ".join(f"{figures.get(c, float('nan')):.4f}" for c in columns) + " |")
    if args.json:
        write_json(args.json, {"dataset": dataset.name, "ablations": results})
    return 0


class _DatasetAction(argparse.Action):
    """``--dataset A [--embeddings EA] --dataset B ...``: each --embeddings belongs to the --dataset before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        specs = list(getattr(namespace, "datasets", None) or [])
        if option_string == "--dataset":
            specs.append({"path": value})
        elif not specs or "embeddings" in specs[-1]:
            parser.error("--embeddings must follow the --dataset it belongs to")
        else:
            specs[-1]["embeddings"] = value
        namespace.datasets = specs


def cmd_report(args: argparse.Namespace) -> int:
    from qama.config import ExperimentConfig, load_config, preset_path
    from qama.report import check_report_folder, run_report

    if args.config or args.preset:
        config = load_config(args.config or preset_path(args.preset))
        if args.datasets:
            config.datasets = ExperimentConfig(datasets=args.datasets).datasets
    elif args.datasets:
        config = ExperimentConfig(datasets=args.datasets, **({"model": args.model} if args.model else {}))
    else:
        raise ValueError("qama report needs --config FILE, --preset NAME or at least one --dataset")
    if args.steps is not None:
        config.train["steps"] = args.steps
    if args.no_ablation:
        config.ablation = False
    if args.speed_vectors is not None:
        config.speed_vectors = args.speed_vectors
    check_report_folder(args.out)
    results = run_report(config, args.out, command="qama " + " ".join(sys.argv[1:]), progress=not args.quiet)
    print(f"report written to {args.out / 'report.md'} ({results['seconds']:.0f} s)")
    return 0


def _read_jsonl_corpus(path: Path) -> tuple[list[str], list[str], list[str]]:
    """``(ids, titles, texts)`` of a plain JSONL corpus: one ``{"_id" or "id", "text", "title"?}`` a line."""
    import json

    ids, titles, texts = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                doc_id = str(doc.get("_id", doc.get("id")))
                text = str(doc["text"])
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise ValueError(f"{path}:{n}: expected a JSON object with an id and a text ({e})") from None
            ids.append(doc_id)
            titles.append(str(doc.get("title", "")))
            texts.append(f"{titles[-1]} {text}".strip())
    return ids, titles, texts


def _load_encoder_adapter(path: Path, plan, fit_emb=None):
    """The trained adapter at ``path`` at ``plan`` as a :class:`qama.search.Encoder`, its centroids
    fitted on ``fit_emb`` (the corpus being indexed)."""
    from qama.adapter import QamaAdapter
    from qama.search import AdapterEncoder

    return AdapterEncoder(QamaAdapter.load(path), plan, fit_emb=fit_emb)


def cmd_index(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from qama.codes import make_plan
    from qama.index import QamaIndex
    from qama.search import ThresholdEncoder

    start = time.perf_counter()
    if (args.corpus is None) == (args.dataset is None):
        raise ValueError("give either --dataset or --corpus")
    if not _use_milvus(args):  # before any work: the folder must be new, empty, or an index to --overwrite
        from qama.index import check_new_index_folder

        if args.out is None:
            raise ValueError("give --out (an index folder), or --backend milvus --uri URI")
        check_new_index_folder(args.out, args.overwrite)
    if args.corpus:
        ids, titles, texts = _read_jsonl_corpus(args.corpus)
        if args.embeddings:
            from qama._io import load_npy
            from qama.embeddings import check_embeddings

            corpus = check_embeddings(load_npy(args.embeddings), len(ids), str(args.embeddings))
        else:
            from qama.embeddings import encode, load_model

            corpus = encode(load_model(args.model), texts, batch_size=args.batch_size)
    else:
        dataset, corpus, _ = _load_inputs(args)
        ids, titles = dataset.doc_ids, dataset.titles
    if args.adapter:
        encoder = _load_encoder_adapter(args.adapter, args.plan, fit_emb=np.asarray(corpus, dtype=np.float32))
    else:
        logger.info("no --adapter: fitting untrained quantile thresholds (%s) on the corpus", args.plan)
        encoder = ThresholdEncoder.fit(corpus, make_plan(args.plan, corpus.shape[1]))
    if args.shard:  # this worker's part of the corpus (the encoder above is fitted on all of it)
        from qama.backends import parse_shard, shard_range

        part = shard_range(len(ids), *parse_shard(args.shard))
        corpus, ids, titles = (
            corpus[part.start : part.stop],
            ids[part.start : part.stop],
            titles[part.start : part.stop],
        )
        logger.info("shard %s: documents %d-%d of %d", args.shard, part.start, part.stop - 1, part.stop - part.start)
    if _use_milvus(args):
        return _index_milvus(args, encoder, corpus, ids, titles)
    with tqdm(total=len(corpus), desc="encoding", unit="doc", disable=args.quiet) as bar:
        index = QamaIndex.create(
            args.out,
            encoder,
            np.asarray(corpus, dtype=np.float32),
            ids,
            titles=titles if any(titles) else None,
            keep_vectors=args.keep_vectors,
            adapter_path=args.adapter,
            overwrite=args.overwrite,
            progress=bar.update,
            meta={"model": None if args.embeddings else args.model},
        )
    logger.info("%r in %.1f s; %s bytes on disk", index, time.perf_counter() - start, sum(index.disk_bytes().values()))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from qama.index import QamaIndex

    if _use_milvus(args):
        return _search_milvus(args)
    if args.index is None:
        raise ValueError("give --index (an index folder), or --backend milvus --uri URI")
    index = QamaIndex.open_with_adapter(args.index, args.adapter)
    if len(index) == 0:
        raise ValueError(f"{args.index}: the index is empty")
    if args.k <= 0:
        raise ValueError(f"k must be positive, got {args.k}")
    if args.k > len(index):
        logger.warning("k=%d is larger than the index (%d documents): returning all of them", args.k, len(index))
    if args.queries is not None:
        from qama._io import load_npy

        queries = np.atleast_2d(load_npy(args.queries)).astype(np.float32)
        labels = [str(i) for i in range(len(queries))]
    else:
        if not args.text:
            raise ValueError("give query text or --queries FILE.npy")
        if not all(t.strip() for t in args.text):
            raise ValueError("a query is empty")
        from qama.embeddings import encode, load_model

        model = args.model or index.manifest.get("meta", {}).get("model")
        if not model:
            raise ValueError(f"{args.index}: the index does not name its model; pass --model")
        queries = encode(load_model(model), list(args.text), progress=False)
        labels = list(args.text)
    scores, rows = index.search(queries, args.k, oversample=args.oversample, rescore=args.rescore, mode=args.mode)
    results = [
        {
            "query": label,
            "hits": [
                {"id": index.doc_id(int(r)), "title": index.title(int(r)), "score": float(s)}
                for s, r in zip(srow, rrow, strict=True)
                if r >= 0
            ],
        }
        for label, srow, rrow in zip(labels, scores, rows, strict=True)
    ]
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for res in results:
            print(f"query: {res['query']}")
            for rank, hit in enumerate(res["hits"], 1):
                title = f"  {hit['title']}" if hit["title"] else ""
                print(f"{rank:4d}. {hit['score']:9.4f}  {hit['id']}{title}")
    return 0


def _use_milvus(args: argparse.Namespace) -> bool:
    from qama.backends import backend_kind

    return args.backend == "milvus" or (args.uri is not None and backend_kind(args.uri, args.backend) == "milvus")


def _milvus_options(args: argparse.Namespace) -> dict:
    if args.uri is None:
        raise ValueError("--backend milvus needs --uri (http://host:19530 or a milvus-lite file.db)")
    return {"collection": args.collection, "index_type": args.index_type, "nprobe": args.nprobe}


def _index_milvus(args: argparse.Namespace, encoder, corpus, ids: list[str], titles: list[str]) -> int:
    """``qama index --backend milvus``: upsert this worker's documents into the collection."""
    from tqdm.auto import tqdm

    from qama.backends import open_backend

    meta = {"model": None if args.embeddings else args.model}
    opts = _milvus_options(args)
    backend = open_backend(
        args.uri, "milvus", encoder, True, keep_vectors=args.keep_vectors, dim=corpus.shape[1], meta=meta, **opts
    )
    with backend, tqdm(total=len(corpus), desc="loading", unit="doc", disable=args.quiet) as bar:
        backend.add(corpus, ids, titles=titles if any(titles) else None, progress=bar.update)
        logger.info("%r: %d documents after this load", backend, backend.count())
    return 0


def _search_milvus(args: argparse.Namespace) -> int:
    """``qama search --backend milvus``: the same output as for an index folder."""
    if args.mode != "hamming":
        raise ValueError(f"--mode {args.mode} needs a local index (--index); Milvus searches Hamming codes")
    import json

    import numpy as np

    from qama.backends import open_backend

    adapter = None
    if args.adapter:
        from qama.adapter import QamaAdapter

        adapter = QamaAdapter.load(args.adapter)
    with open_backend(args.uri, "milvus", adapter=adapter, **_milvus_options(args)) as backend:
        if args.queries is not None:
            from qama._io import load_npy

            queries = np.atleast_2d(load_npy(args.queries)).astype(np.float32)
            labels = [str(i) for i in range(len(queries))]
        elif args.text:
            from qama.embeddings import encode, load_model

            model = args.model or backend.manifest.get("meta", {}).get("model")
            if not model:
                raise ValueError(f"collection {args.collection!r} does not name its model; pass --model")
            queries, labels = encode(load_model(model), list(args.text), progress=False), list(args.text)
        else:
            raise ValueError("give query text or --queries FILE.npy")
        scores, ids = backend.search(queries, args.k, oversample=args.oversample, rescore=args.rescore)
        results = [
            {
                "query": label,
                "hits": [
                    {"id": d, "title": backend.title(d), "score": float(s)} for s, d in zip(sr, ir, strict=True) if d
                ],
            }
            for label, sr, ir in zip(labels, scores, ids, strict=True)
        ]
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    for res in [] if args.json else results:
        print(f"query: {res['query']}")
        for rank, hit in enumerate(res["hits"], 1):
            print(f"{rank:4d}. {hit['score']:9.4f}  {hit['id']}" + (f"  {hit['title']}" if hit["title"] else ""))
    return 0


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backend (default: a faiss index folder on this machine)")
    g.add_argument(
        "--backend", choices=["faiss", "milvus"], help="where the codes live (default: from --uri, else faiss)"
    )
    g.add_argument("--uri", help="Milvus server (http://host:19530) or milvus-lite file (codes.db)")
    g.add_argument("--collection", default="qama", help="Milvus collection (default: qama)")
    g.add_argument("--index-type", default="BIN_FLAT", choices=["BIN_FLAT", "BIN_IVF_FLAT"], help="Milvus index type")
    g.add_argument("--nprobe", type=int, default=16, help="BIN_IVF_FLAT lists searched per query (default: 16)")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    from qama.embeddings import DEFAULT_MODEL

    p.add_argument("--dataset", required=True, help="BEIR-layout folder, or a BEIR dataset name to download")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"sentence-transformers model that embeds the dataset (unless --embeddings) and title pseudo-queries "
        f"(default: {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--embeddings", type=Path, help="folder with precomputed corpus.npy and queries.npy (of the same --model)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="embedding batch size")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: $QAMA_CACHE or ~/.cache/qama)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from qama.embeddings import PSEUDO_QUERY_MODES

    p.add_argument("--steps", type=int, help="optimiser steps (default: the training default)")
    p.add_argument("--expansion", type=int, help="FFN expansion factor k (hidden width k·d)")
    p.add_argument("--nested-dims", type=int, nargs="+", help="Matryoshka sizes (default: d, d/2, d/4)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--train-batch-size", type=int, help="corpus vectors per training step")
    p.add_argument(
        "--keep-mean-direction",
        action="store_true",
        help="keep the corpus mean direction (dropped by default: queries and documents differ along it)",
    )
    p.add_argument(
        "--pseudo-queries",
        choices=PSEUDO_QUERY_MODES,
        default="auto",
        help="the documents' titles, embedded with --model, as InfoNCE queries of their documents (no labels); "
        "auto (default): when the corpus has titles and the embeddings' model is known to be --model",
    )
    p.add_argument(
        "--pairs",
        metavar="SPLIT",
        help="also train InfoNCE on this qrels split's query-document pairs (labels, e.g. train; default: none)",
    )
    p.add_argument(
        "--nce-weight",
        type=float,
        help="InfoNCE weight (default: qama.train.NCE_WEIGHT_TITLES, or NCE_WEIGHT_LABELLED with --pairs)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qama", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="nDCG@10 of every storage format on a dataset")
    _add_input_args(p)
    p.add_argument("--dims", type=int, nargs="+", help="embedding sizes to evaluate (default: d, d/2, d/4)")
    p.add_argument("--json", type=Path, help="write the table as JSON {'rows': [...]}")
    p.add_argument("--markdown", type=Path, help="write the table as Markdown")
    p.add_argument("--adapter", type=Path, help="a trained adapter folder: adds its rows (format qama)")
    p.add_argument(
        "--plans",
        nargs="+",
        default=["2bit", "1.5bit", "1bit", "0.5bit", "hybrid"],
        help="plans of the adapter rows (built-in names or SIZE:BITS specs)",
    )
    p.add_argument(
        "--rescore",
        type=int,
        nargs="*",
        default=[4],
        help="oversampling factors of the rescoring rows of the adapter (default: 4)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="the full study: tables, ablations, speed, plots, report.md")
    p.add_argument("--config", type=Path, help="TOML experiment config")
    p.add_argument("--preset", help="a preset config (minilm, bert768)")
    p.add_argument("--dataset", dest="datasets", action=_DatasetAction, help="BEIR folder or name (repeatable)")
    p.add_argument("--embeddings", action=_DatasetAction, help="precomputed embeddings of the --dataset before it")
    p.add_argument("--model", default=None, help="sentence-transformers model (default: all-MiniLM-L6-v2)")
    p.add_argument("--steps", type=int, help="training steps (overrides the config)")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablations")
    p.add_argument("--speed-vectors", type=int, help="synthetic vectors of the speed table (0: skip)")
    p.add_argument("--out", type=Path, required=True, help="report folder (re-running resumes)")
    p.set_defaults(func=cmd_report, datasets=None)

    p = sub.add_parser("train", help="fit a QAMA adapter on a dataset's corpus embeddings")
    _add_input_args(p)
    _add_train_args(p)
    p.add_argument("--out", type=Path, required=True, help="adapter folder (config.json + model.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ablate", help="retrain with each loss component off; nDCG@10 table")
    _add_input_args(p)
    _add_train_args(p)
    p.add_argument("--only", nargs="+", help="ablations to run (default: all)")
    p.add_argument("--json", type=Path, help="write the results as JSON")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("index", help="encode a corpus into a persistent qama index folder")
    _add_input_args(p)
    p.set_defaults(dataset=None)
    for action in p._actions:
        if action.dest == "dataset":
            action.required = False
    p.add_argument("--corpus", type=Path, help="plain JSONL corpus ({_id, text, title?} a line) instead of --dataset")
    p.add_argument("--adapter", type=Path, help="trained adapter folder (default: untrained quantile thresholds)")
    p.add_argument("--plan", default="hybrid", help="plan of the codes (default: hybrid)")
    p.add_argument("--keep-vectors", action="store_true", help="also store float32 vectors for exact rescoring")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    p.add_argument("--out", type=Path, help="index folder to write (faiss backend)")
    _add_backend_args(p)
    p.add_argument("--shard", help="I/N: encode and load only part I of N of the corpus (N workers, one store)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="top-k documents of a qama index for query texts or embeddings")
    p.add_argument("--index", type=Path, help="index folder written by 'qama index' (faiss backend)")
    _add_backend_args(p)
    p.add_argument("text", nargs="*", help="query texts (embedded with the index's model)")
    p.add_argument("--queries", type=Path, help=".npy of query embeddings (nq, d) instead of texts")
    p.add_argument("--model", help="sentence-transformers model for query texts (default: the index's)")
    p.add_argument("--adapter", type=Path, help="the adapter the index was built with (if any)")
    p.add_argument("-k", type=int, default=10, help="documents per query (default: 10)")
    p.add_argument("--oversample", type=int, default=4, help="rescore oversample*k Hamming candidates; 0: none")
    p.add_argument("--rescore", default="auto", choices=["auto", "asymmetric", "vectors"])
    p.add_argument(
        "--mode",
        default="hamming",
        choices=["hamming", "adc"],
        help="hamming (default): Hamming search, then --oversample rescoring; adc: every code scored "
        "asymmetrically against the float query (no Hamming stage; --oversample, --rescore unused; --index only)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # faiss logs which SIMD build it loads
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError, RuntimeError) as e:  # bad input, unreadable files, locks, divergence
        print(f"qama: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qama: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
