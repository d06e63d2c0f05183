"""Fit QAMA adapters (corpus embeddings only; + title pseudo-queries; + SciFact's train qrels) and
print nDCG@10 retention against the targets.

Usage (from the repo root; the shared benchmark data lies beside the repo)::

    python benchmarks/train_targets.py                     # SciFact + Cranfield, default TrainConfig, seeds 0 1 2
    python benchmarks/train_targets.py --ablate            # ... and the ablation table (SciFact)
    python benchmarks/train_targets.py --steps 300 --out benchmarks/RESULTS_training.md

Retention is nDCG@10 of symmetric Hamming search (queries quantised too) over nDCG@10 of the frozen
model's FP32 cosine at full size. Each dataset gets its own adapters, fitted on its corpus (the
titles are embedded with the default model, offline copy when the hub is unreachable, cached);
"transfer" applies the SciFact adapters to Cranfield (thresholds recalibrated on Cranfield's corpus,
which needs no labels). Each figure is the mean over the seeds (``--seeds``): one run's retention
moves by ±2 points from seed to seed on 300 (SciFact) or 225 (Cranfield) judged queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qama.adapter import AdapterConfig, QamaAdapter  # noqa: E402
from qama.codes import hamming_distances  # noqa: E402
from qama.data import load_dataset  # noqa: E402
from qama.embeddings import DEFAULT_MODEL, load_embeddings, title_pairs  # noqa: E402
from qama.evaluation.metrics import Evaluator  # noqa: E402
from qama.train import (  # noqa: E402
    ABLATIONS,
    ALL_TERMS,
    NCE_WEIGHT_LABELLED,
    NCE_WEIGHT_TITLES,
    TrainConfig,
    ablate,
    fit,
)

SHARED = ROOT.parent / "shared"
EMB = SHARED / "embeddings" / "all-MiniLM-L6-v2"

#: (row label, plan or "fp", nested size, target retention or None)
TARGETS: list[tuple[str, str, int, float | None]] = [
    ("384 2-bit", "2bit", 384, 0.99),
    ("384 hybrid", "hybrid", 384, 0.98),
    ("384 1.5-bit", "1.5bit", 384, 0.98),
    ("384 1-bit", "1bit", 384, 0.95),
    ("192 2-bit", "2bit", 192, 0.97),
    ("96 2-bit", "2bit", 96, 0.92),
    ("192 FP32 (adapter)", "fp", 192, 0.99),
    ("384 FP32 (adapter)", "fp", 384, None),
    ("96 FP32 (adapter)", "fp", 96, None),
    ("192 hybrid", "hybrid", 192, None),
    ("96 hybrid", "hybrid", 96, None),
]


def load(name: str, split: str = "test") -> tuple[Evaluator, np.ndarray, np.ndarray]:
    """Evaluator, corpus and judged-query embeddings of a shared dataset (the queries of ``split``'s qrels)."""
    ds = load_dataset(SHARED / "datasets" / name, split)
    corpus, queries = load_embeddings(EMB / name, ds)
    return Evaluator(ds), corpus, queries[ds.eval_query_rows]


def title_pseudo_queries(name: str, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(title embeddings, their documents' embeddings)``, as ``qama train --pseudo-queries titles`` makes them."""
    ds = load_dataset(SHARED / "datasets" / name, "test")
    return title_pairs(ds, corpus, "titles", DEFAULT_MODEL, EMB / name, progress=False)


def train_qrels_pairs(name: str, corpus: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(query, relevant document)`` embeddings of the dataset's train qrels (labels), or None without them."""
    if not (SHARED / "datasets" / name / "qrels" / "train.tsv").is_file():
        return None
    ds = load_dataset(SHARED / "datasets" / name, "train")
    _, queries = load_embeddings(EMB / name, ds)
    q_rows, d_rows = ds.relevant_pairs()
    return queries[q_rows], corpus[d_rows]


def ndcg(ev: Evaluator, scores: np.ndarray) -> float:
    return ev.from_scores(scores)["ndcg@10"]


def score(
    adapter: QamaAdapter, plan: str, dim: int, corpus: np.ndarray, queries: np.ndarray, calibrated: bool = False
) -> np.ndarray:
    """``(n_queries, n_docs)`` scores: cosine of the prefixes ("fp") or minus the Hamming distance
    (with ``calibrated``, queries coded by the adapter's query thresholds)."""
    if plan == "fp":
        zc, zq = adapter.transform(corpus, dim), adapter.transform(queries, dim)
        zc /= np.linalg.norm(zc, axis=1, keepdims=True)
        zq /= np.linalg.norm(zq, axis=1, keepdims=True)
        return zq @ zc.T
    q_codes = adapter.encode(queries, plan, dim, queries=calibrated)
    return -hamming_distances(q_codes, adapter.encode(corpus, plan, dim)).astype(np.float32)


def table(
    adapter: QamaAdapter, ev: Evaluator, corpus: np.ndarray, queries: np.ndarray, base: float
) -> dict[str, float]:
    return {label: ndcg(ev, score(adapter, plan, dim, corpus, queries)) / base for label, plan, dim, _ in TARGETS}


def untrained(corpus: np.ndarray) -> QamaAdapter:
    """Identity adapter with quantile thresholds: the untrained baseline in the model's coordinates."""
    adapter = QamaAdapter(AdapterConfig(dim=corpus.shape[1]))
    adapter.calibrate(corpus)
    return adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="override TrainConfig.steps")
    parser.add_argument("--ablate", action="store_true", help="also run the ablations on SciFact")
    parser.add_argument(
        "--ablate-steps", type=int, default=None, help="steps of each ablation run (default: as --steps)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds to average")
    parser.add_argument("--skip-targets", action="store_true", help="only the ablations (with --ablate)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_training.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    cfg = TrainConfig(progress=False)
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    data = {name: load(name) for name in ("scifact", "cranfield")}
    bases = {name: ndcg(ev, q @ c.T) for name, (ev, c, q) in data.items()}
    command = "python benchmarks/train_targets.py " + " ".join(sys.argv[1:])
    header = [
        f"Command: `{command.strip()}`  ",
        f"Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {platform.machine()}, load average at start {os.getloadavg()[0]:.1f} (shared machine)  ",
        f"FP32 nDCG@10 (frozen all-MiniLM-L6-v2, full size): SciFact {bases['scifact']:.4f}, "
        f"Cranfield {bases['cranfield']:.4f}",
        "",
    ]
    sections = []
    if not args.skip_targets:
        sections.append(targets_section(cfg, data, bases, header, args.seeds))
    if args.ablate:
        acfg = dataclasses.replace(cfg, **ALL_TERMS, w_nce=NCE_WEIGHT_TITLES)  # the defaults: titles on
        acfg = dataclasses.replace(acfg, steps=args.ablate_steps) if args.ablate_steps else acfg
        pairs = title_pseudo_queries("scifact", data["scifact"][1])
        sections.append(ablation_section(acfg, data["scifact"], bases["scifact"], header, pairs))
    old = args.out.read_text() if args.out.exists() else "# QAMA training: targets and ablations\n"
    parts = old.rstrip("\n").split("\n## ")  # each section replaced where it stands, new ones appended
    for section in sections:
        title = section.split("\n")[0][3:]
        at = [i for i, part in enumerate(parts) if part.split("\n")[0] == title]
        if at:
            parts[at[0]] = section[3:] + "\n"
        else:
            parts.append(section[3:] + "\n")
    text = "\n## ".join(p.rstrip("\n") + "\n" for p in parts)
    print("\n\n".join(sections))
    args.out.write_text(text)


def initial(corpus: np.ndarray, drop_mean_direction: bool = True, seed: int = 0) -> QamaAdapter:
    """The default start (pca_blocks) with quantile thresholds, before any training step."""
    config = AdapterConfig(dim=corpus.shape[1], init="pca_blocks", drop_mean_direction=drop_mean_direction)
    adapter = QamaAdapter(config)
    adapter.init_linear(corpus, seed)
    adapter.calibrate(corpus)
    return adapter


def cell(values: list[float]) -> str:
    """Mean retention over seeds, with the range when there is more than one seed."""
    mean = f"{100 * float(np.mean(values)):.1f}%"
    return mean if len(values) == 1 else f"{mean} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def targets_section(cfg: TrainConfig, data: dict, bases: dict[str, float], header: list[str], seeds: list[int]) -> str:
    # (column suffix, InfoNCE weight, pairs of a dataset or None): corpus only, + title pseudo-queries, + train qrels
    variants = [
        ("QAMA", 0.0, lambda name, c: None),
        ("QAMA + titles", NCE_WEIGHT_TITLES, title_pseudo_queries),
        ("QAMA + train qrels", NCE_WEIGHT_LABELLED, train_qrels_pairs),
    ]
    pairs = {(name, v): get(name, c) for name, (_, c, _) in data.items() for v, _, get in variants}
    cols: dict[str, list[dict[str, float]]] = {}
    times: dict[str, list[float]] = {}
    for seed in seeds:
        adapters: dict[tuple[str, str], QamaAdapter] = {}
        for name, (ev, c, q) in data.items():
            if seed == seeds[0]:
                cols[f"{name} untrained"] = [table(untrained(c), ev, c, q, bases[name])]
            cols.setdefault(f"{name} start", []).append(table(initial(c, True, seed), ev, c, q, bases[name]))
            for variant, w_nce, _ in variants:
                p = pairs[(name, variant)]
                if variant != "QAMA" and p is None:
                    continue
                t0 = time.perf_counter()
                adapters[(name, variant)] = fit(c, dataclasses.replace(cfg, seed=seed, w_nce=w_nce), pairs=p)
                times.setdefault(f"{name} {variant}", []).append(time.perf_counter() - t0)
                cols.setdefault(f"{name} {variant}", []).append(table(adapters[(name, variant)], ev, c, q, bases[name]))
                logging.info("%s %s seed %d fitted in %.0f s", name, variant, seed, times[f"{name} {variant}"][-1])
        ev, c, q = data["cranfield"]
        for variant in ("QAMA", "QAMA + titles"):
            with tempfile.TemporaryDirectory() as tmp:
                transfer = QamaAdapter.load(adapters[("scifact", variant)].save(Path(tmp) / "adapter"))
            transfer.calibrate(c)
            cols.setdefault(f"SciFact {variant} → Cranfield", []).append(table(transfer, ev, c, q, bases["cranfield"]))
    n_pairs = {f"{n} {v}": len(p[0]) for (n, v), p in pairs.items() if p is not None}
    lines = [
        "## Targets",
        "",
        *header,
        f"Fit time ({cfg.steps} steps, batch {cfg.batch_size}, expansion {cfg.expansion}): "
        + ", ".join(f"{k} {min(v):.0f}–{max(v):.0f} s" for k, v in times.items()),
        "",
        "Retention = nDCG@10 / FP32 nDCG@10 at full size; codes are symmetric (queries quantised too), searched by "
        "Hamming distance. *untrained*: the model's own coordinates, quantile thresholds. *start*: the adapter's "
        "pca_blocks start (without the corpus mean direction) before training. *QAMA*: fitted on the dataset's own "
        "corpus embeddings only. *QAMA + titles*: the same, plus InfoNCE (weight "
        f"{NCE_WEIGHT_TITLES}) between each document and its title's embedding as a pseudo-query: no labels, "
        "the corpus's own texts (`qama train --pseudo-queries titles`). *QAMA + train qrels*: InfoNCE (weight "
        f"{NCE_WEIGHT_LABELLED}) on SciFact's labelled train pairs (`--pairs train`; supervised, not the "
        "targets' setting). *SciFact … → Cranfield*: the SciFact adapter, thresholds recalibrated on Cranfield's "
        "corpus. Pairs: " + ", ".join(f"{k} {v}" for k, v in n_pairs.items()) + ". "
        f"Seeds {', '.join(map(str, seeds))} (the start's random rotations and the training batches): "
        "mean, and (min–max) over the seeds.",
        "",
        "| row | target | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for label, _, _, target in TARGETS:
        cells = " | ".join(cell([run[label] for run in runs]) for runs in cols.values())
        lines.append(f"| {label} | {'≥' + format(target * 100, '.0f') + '%' if target else '—'} | {cells} |")
    return "\n".join(lines)


def ablation_section(cfg: TrainConfig, scifact: tuple, base: float, header: list[str], pairs=None) -> str:
    ev, c, q = scifact
    rows = [r for r in TARGETS if r[1] in ("2bit", "hybrid")]

    def evaluate(adapter: QamaAdapter) -> dict[str, float]:
        return {label: ndcg(ev, score(adapter, plan, dim, c, q)) / base for label, plan, dim, _ in rows}

    t0 = time.perf_counter()
    res = ablate(c, evaluate, cfg, pairs=pairs)
    lines = [
        "## Ablations",
        "",
        *header,
        f"SciFact; reference 'full' = defaults (title pseudo-queries, InfoNCE weight {cfg.w_nce}) with every "
        f"regulariser on ({ALL_TERMS}); retrained with one "
        f"component switched off at a time, {cfg.steps} steps each "
        f"({time.perf_counter() - t0:.0f} s for all runs). Retention of nDCG@10, symmetric Hamming codes.",
        "",
        "| ablation | " + " | ".join(r[0] for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for name in ABLATIONS:
        lines.append(f"| {name} | " + " | ".join(f"{res[name][r[0]] * 100:.1f}%" for r in rows) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
