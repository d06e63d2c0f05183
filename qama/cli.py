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
    from qama.embeddings import embed_dataset, load_embeddings

    dataset = load_dataset(args.dataset, split=args.split, cache_dir=args.cache_dir)
    logger.info("%r", dataset)
    if args.embeddings:
        corpus, queries = load_embeddings(args.embeddings, dataset)
    else:
        corpus, queries = embed_dataset(dataset, args.model, cache_dir=args.cache_dir, batch_size=args.batch_size)
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


def _add_input_args(p: argparse.ArgumentParser) -> None:
    from qama.embeddings import DEFAULT_MODEL

    p.add_argument("--dataset", required=True, help="BEIR-layout folder, or a BEIR dataset name to download")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default: test)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=DEFAULT_MODEL, help=f"sentence-transformers model (default: {DEFAULT_MODEL})")
    src.add_argument("--embeddings", type=Path, help="folder with precomputed corpus.npy and queries.npy")
    p.add_argument("--batch-size", type=int, default=64, help="embedding batch size")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: $QAMA_CACHE or ~/.cache/qama)")


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
    p.set_defaults(func=cmd_eval)
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
    except (ValueError, OSError) as e:  # DataError, EmbeddingError, plan errors, unreadable files
        print(f"qama: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qama: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
