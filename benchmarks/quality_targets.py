"""Issue 12's table: QAMA with its defaults against untrained codes, on every shared dataset, and how
well the never-worse check predicted the real change.

Usage (from the repo root; the shared benchmark data lies beside the repo)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/quality_targets.py            # seeds 0 1 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/quality_targets.py --seeds 0  # one seed
    # one dataset a process, then the table from both
    python benchmarks/quality_targets.py --datasets scifact --threads 1 --save sf.json
    python benchmarks/quality_targets.py --datasets cranfield --threads 1 --save cf.json
    python benchmarks/quality_targets.py --load sf.json cf.json
    # the same fits measured on another split's judged queries (a table of its own)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/quality_targets.py --datasets scifact --split train

Each dataset is run the way ``qama train`` + ``qama eval --adapter`` run it with their defaults:
the adapter is fitted on the corpus embeddings with the documents' titles as InfoNCE pseudo-queries
(20% of them held out for the never-worse check), its query thresholds are the titles' quantiles,
and every plan and size is served by :func:`qama.encoders.fit_encoder` (untrained codes where the check
found training lost). Rows are nDCG@10 retention against the frozen model's FP32 at full size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_targets import load, title_pseudo_queries  # noqa: E402

from qama.evaluation.metrics import paired_difference  # noqa: E402
from qama.evaluation.rows import adapter_rows, baseline_rows, calibrated_threshold_rows, set_retention  # noqa: E402
from qama.evaluation.tables import difference_text  # noqa: E402
from qama.train import NCE_WEIGHT_TITLES, TrainConfig, fit  # noqa: E402

#: (row label, format, plan, dims, rescore, target)
ROWS = [
    ("adapter FP32 output, 384", "qama", None, 384, None, 0.995),
    ("2-bit 384", "qama", "2bit", 384, None, 0.99),
    ("hybrid 384", "qama", "hybrid", 384, None, 0.98),
    ("1.5-bit 384", "qama", "1.5bit", 384, None, 0.98),
    ("1-bit 384", "qama", "1bit", 384, None, 0.95),
    ("2-bit 192", "qama", "2bit", 192, None, 0.97),
    ("2-bit 96", "qama", "2bit", 96, None, 0.92),
    ("hybrid 384 + asymmetric rescoring 4×", "qama", "hybrid", 384, 4, 0.995),
]
PLANS = ("2bit", "1.5bit", "1bit", "hybrid")


def run(name: str, seed: int, settings: dict | None = None, split: str = "test") -> dict:
    """Every figure of one dataset and seed, measured on the judged queries of ``split``; ``settings``
    override TrainConfig's defaults."""
    ev, corpus, queries = load(name, split)
    titles, docs = title_pseudo_queries(name, corpus)
    cfg = TrainConfig(progress=False, seed=seed, w_nce=NCE_WEIGHT_TITLES, **(settings or {}))
    t0 = time.perf_counter()
    adapter = fit(corpus, cfg, pairs=(titles, docs))
    seconds = time.perf_counter() - t0
    rows = baseline_rows(corpus, queries, ev, [384, 192, 96])
    rows += calibrated_threshold_rows(corpus, queries, ev, titles, [384, 192, 96])
    rows += adapter_rows(adapter, corpus, queries, ev, PLANS, (4,), titles)
    set_retention(rows)
    ret = {(r.format, r.plan, r.dims, r.rescore): r.retention for r in rows}
    # per-query retention of the symmetric code rows, for the paired comparison with untrained codes
    ref = max((r for r in rows if r.format == "fp32"), key=lambda r: r.dims).metrics["ndcg@10"]
    per_query = {
        _key((r.format, r.plan, r.dims)): (r.per_query_ndcg / ref).tolist()
        for r in rows
        if r.format in ("qama", "threshold-qcal")
        and r.plan is not None
        and r.rescore is None
        and r.per_query_ndcg is not None
    }
    check = adapter.metadata["check"]
    return {"ret": ret, "per_query": per_query, "seconds": seconds, "check": check}


def _key(k: tuple) -> str:
    return "|".join(map(str, k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "cranfield"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each fit")
    parser.add_argument("--save", type=Path, help="write the raw results here (JSON) instead of the table")
    parser.add_argument("--load", type=Path, nargs="+", help="compose the table from files written by --save")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="NAME=JSON", help="TrainConfig settings to try instead of the defaults"
    )
    parser.add_argument(
        "--split",
        default="test",
        help="measure on the judged queries of this qrels split (no fit reads them; e.g. SciFact's 809 train queries)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_training.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = datetime.datetime.now()
    load_avg = os.getloadavg()[0]
    results: dict[tuple[str, int], dict] = {}
    command = f"OMP_WAIT_POLICY=PASSIVE python benchmarks/quality_targets.py {' '.join(sys.argv[1:])}"
    runs = [{"command": command, "date": f"{started:%Y-%m-%d %H:%M}", "threads": args.threads, "load": load_avg}]
    if args.load:
        runs, splits = [], []
        for path in args.load:
            for item in json.loads(path.read_text()):
                ret = {
                    tuple(None if x == "None" else int(x) if x.isdigit() else x for x in k.split("|")): v
                    for k, v in item["ret"].items()
                }
                results[(item["name"], item["seed"])] = {**item, "ret": ret}
                if (split := item.get("split", "test")) not in splits:  # (files before --split: test)
                    splits.append(split)
                if item.get("run") and item["run"] not in runs:
                    runs.append(item["run"])
        if len(splits) > 1:  # one table is one split's queries
            parser.error(f"--load: the files measure different splits ({', '.join(splits)}); load each split apart")
        args.split = splits[0] if splits else "test"
    else:
        settings = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        results = {(n, s): run(n, s, settings, args.split) for n in args.datasets for s in args.seeds}
    if args.save:
        items = [
            {
                "name": n,
                "seed": s,
                "split": args.split,
                "run": runs[0] if runs else None,  # (a loaded item keeps its own below; files before it: none)
                **r,
                "ret": {_key(k): v for k, v in r["ret"].items()},
            }
            for (n, s), r in results.items()
        ]
        args.save.write_text(json.dumps(items))
        return
    names = tuple(dict.fromkeys(n for n, _ in results))
    args.seeds = sorted({s for _, s in results})

    def mean(name: str, key: tuple) -> float:
        return float(np.mean([results[(name, s)]["ret"][key] for s in args.seeds]))

    def cell(name: str, key: tuple, target: float | None, untrained: tuple | None) -> str:
        vals = [results[(name, s)]["ret"][key] for s in args.seeds]
        text = f"{100 * np.mean(vals):.1f}"
        if len(vals) > 1:
            text += f" ({100 * min(vals):.1f}–{100 * max(vals):.1f})"
        if untrained is not None:
            text += f" [{100 * results[(name, args.seeds[0])]['ret'][untrained]:.1f}]"
        below = (target is not None and np.mean(vals) < target) or (
            untrained is not None and np.mean(vals) < results[(name, args.seeds[0])]["ret"][untrained] - 0.005
        )
        return f"**{text}**" if below else text

    def paired(name: str, plan: str | None, dims: int) -> str:
        """Adapter − untrained codes in retention points, per query (the adapter's averaged over the seeds),
        ± its standard error over the queries; "—" for files saved before per-query figures."""
        found = [results[(name, s)].get("per_query", {}) for s in args.seeds]
        key = f"{plan}|{dims}"
        if plan is None or any(f"qama|{key}" not in f for f in found):
            return "—"
        ours = np.mean([f[f"qama|{key}"] for f in found], axis=0)
        paired = paired_difference(ours, np.asarray(found[0][f"threshold-qcal|{key}"]))
        return "—" if paired is None else difference_text(100 * paired[0], 100 * paired[1])

    with_paired = any("per_query" in r for r in results.values())

    lines = [
        "## Quality on every dataset (issue 12)" + ("" if args.split == "test" else f": {args.split} queries"),
        "",
        "Command: "
        + (
            "; ".join(f"`{r['command']}`" for r in runs) + f", then `{command}`"
            if args.load and runs
            else f"`{command}`" + (" (of `--save` runs)" if args.load else "")
        )
        + "  ",
        f"Date: {', '.join(r['date'] for r in runs) or started.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}, "
        f"{'/'.join(str(r['threads']) for r in runs) or '?'} thread(s) a fit, {platform.machine()}, load average "
        f"at start {'/'.join(format(r['load'], '.1f') for r in runs) or '?'} (shared machine); "
        f"seeds {', '.join(map(str, args.seeds))}.",
        "",
        "QAMA as `qama train` + `qama eval --adapter` run it by default (titles as pseudo-queries, 20% held out "
        "for the check, query thresholds from the titles, each plan and size served as `fit_encoder` serves it). "
        "Mean over the seeds (min–max); in brackets the untrained quantile codes of the same plan and size with "
        "their queries calibrated on the titles (`threshold-qcal`, what `qama index` builds without an adapter). "
        "Bold: below the target, or more than half a point below the untrained codes."
        + (
            " *− untrained*: the adapter's retention minus the untrained codes', query by query (the adapter's "
            "averaged over the seeds), ± its standard error over the queries; better or worse only beyond two."
            if with_paired
            else ""
        ),
        "",
        "| row | target | " + " | ".join(f"{n} | {n} − untrained" if with_paired else n for n in names) + " |",
        "|---|---|" + ("---|---|" if with_paired else "---|") * len(names),
    ]
    for label, fmt, plan, dims, rescore, target in ROWS:
        key = (fmt, plan, dims, rescore)
        untrained = ("threshold-qcal", plan, dims, None) if plan is not None and rescore is None else None
        cells = " | ".join(
            cell(n, key, target, untrained)
            + (f" | {paired(n, plan if untrained else None, dims)}" if with_paired else "")
            for n in names
        )
        lines.append(f"| {label} | ≥ {100 * target:.1f} | {cells} |")
    lines += [
        "",
        "Untrained codes with the documents' thresholds for queries (before this issue) and with the "
        "titles' quantiles (seed-independent):",
        "",
        "| row | " + " | ".join(f"{n} doc thresholds | {n} title-calibrated" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for label, _, plan, dims, rescore, _ in ROWS:
        if plan is None or rescore is not None:
            continue
        cells = []
        for n in names:
            r = results[(n, args.seeds[0])]["ret"]
            cells += [f"{100 * r[(fmt, plan, dims, None)]:.1f}" for fmt in ("threshold", "threshold-qcal")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # how well the check's known-item estimate predicted the real change (adapter - untrained)
    agree = total = 0
    lost = []
    for (n, s), res in results.items():
        for c in res["check"]["results"]:
            real = res["ret"].get(("qama", c["plan"], c["dims"], None))
            base = res["ret"].get(("threshold-qcal", c["plan"], c["dims"], None))
            if real is None or base is None:
                continue
            total += 1
            agree += (c["adapter"] - c["untrained"] > 0) == (real - base > 0)
        lost += [f"{n} seed {s}: {x}" for x in res["check"]["lost"]]
    secs = [res["seconds"] for res in results.values()]
    lines += [
        "",
        f"Fit time with the check: {min(secs):.0f}–{max(secs):.0f} s. The check's known-item estimate "
        f"(held-out titles finding their documents) had the sign of the real nDCG@10 change (adapter − untrained "
        f"title-calibrated codes, each plan and size) in {agree} of {total} cases. Plans and sizes the check "
        f"judged lost (served by untrained codes): {', '.join(lost) or 'none'}.",
    ]
    section = "\n".join(lines)
    print(section)
    old = args.out.read_text() if args.out.exists() else ""  # a new file: the section alone
    parts = old.rstrip("\n").split("\n## ")
    title = section.split("\n")[0][3:]
    at = [i for i, part in enumerate(parts) if part.split("\n")[0] == title]
    if at:
        parts[at[0]] = section[3:] + "\n"
    else:  # a new section: after the test queries' table where there is one, else first
        main_table = [i for i, part in enumerate(parts) if part.split("\n")[0] == "Quality on every dataset (issue 12)"]
        parts.insert(main_table[0] + 1 if main_table else 1, section[3:] + "\n")
    args.out.write_text("\n## ".join(p.rstrip("\n") + "\n" for p in parts))


if __name__ == "__main__":
    main()
