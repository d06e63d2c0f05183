"""``qama report``: the full study for one model and several datasets, as tables and pictures.

For each dataset: embed (cached), evaluate the baselines, fit an adapter (saved; an interrupted fit
resumes from its checkpoint), evaluate every nested size × plan with and without rescoring. Then
the ablations (on the first dataset), a speed table, the plots, ``report.md`` and ``results.json``.
Every finished stage is saved in the report folder, so a re-run resumes where the last one stopped;
a stage whose settings changed is computed anew.

    report = run_report(config, "report/")
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qama._io import atomic_open, write_json
from qama.config import ExperimentConfig
from qama.rescore import ablation_columns
from qama.speed import speed_size, speed_table
from qama.table import Row, ablation_markdown, baseline_rows, set_retention

__all__ = ["run_report", "speed_table", "plot_all", "main_table"]

logger = logging.getLogger(__name__)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _settings(cfg: Any) -> dict[str, Any]:
    """Training settings that change the adapter (not whether a progress bar is shown)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "progress"}


def _cached(path: Path, key: str) -> Any | None:
    """The saved result of a stage, if it was made with the same settings."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("discarding unreadable %s", path)
        return None
    if not isinstance(saved, dict) or "result" not in saved:
        logger.warning("discarding malformed %s", path)
        return None
    return saved["result"] if saved.get("key") == key else None


def _save(path: Path, key: str, result: Any) -> Any:
    write_json(path, {"key": key, "result": result})
    return result


def _rows_from_dicts(dicts: list[dict]) -> list[Row]:
    names = {f.name for f in dataclasses.fields(Row)}
    rows = []
    for d in dicts:
        metrics = {m: d[m] for m in ("ndcg@10", "recall@100", "mrr@10")}
        rows.append(Row(**{k: v for k, v in d.items() if k in names and k != "metrics"}, metrics=metrics))
    return rows


# ---------------------------------------------------------------------------- stages
@dataclasses.dataclass
class _Inputs:
    """One dataset of the study, loaded once: its judged queries and their evaluator."""

    name: str
    corpus: np.ndarray
    judged: np.ndarray
    evaluator: Any
    pairs: tuple[np.ndarray, np.ndarray] | None = None  # title pseudo-queries and their documents

    @functools.cached_property
    def corpus_key(self) -> str:
        """Fingerprint of the whole corpus: part of the key of every stage that depends on it."""
        return _fingerprint(self.corpus)


def _load(config: ExperimentConfig, spec) -> _Inputs:
    from qama.data import load_dataset
    from qama.embeddings import dataset_embeddings, title_pairs
    from qama.evaluate import Evaluator

    dataset = load_dataset(spec.path, split=spec.split)
    corpus, queries = dataset_embeddings(dataset, config.model, spec.embeddings)
    evaluator = Evaluator(dataset)
    pairs = title_pairs(dataset, corpus, config.pseudo_queries, config.model, spec.embeddings, progress=False)
    return _Inputs(dataset.name, corpus, queries[evaluator.rows], evaluator, pairs)


def _train_config(config: ExperimentConfig, data: _Inputs, **extra: Any):
    """The config's training settings; with title pseudo-queries, InfoNCE on (unless [train] sets it)."""
    from qama.train import info_nce_setup

    _, w_nce, source = info_nce_setup(data.name, data.pairs, weight=config.train.get("w_nce"))
    if w_nce is not None:
        extra = {"w_nce": w_nce, **extra}
    return config.train_config(data_description=source, **extra)


def _fingerprint(array: np.ndarray, chunk: int = 1 << 16) -> str:
    """SHA-256 of the whole array's content (and shape): a changed corpus never reuses a stale stage."""
    h = hashlib.sha256(str((array.shape, str(array.dtype))).encode())
    for i in range(0, len(array), chunk):
        h.update(np.ascontiguousarray(array[i : i + chunk]).tobytes())
    return h.hexdigest()


def _pairs_key(data: _Inputs) -> list:
    return [] if data.pairs is None else [_fingerprint(data.pairs[0]), _fingerprint(data.pairs[1])]


def _dataset_stage(config: ExperimentConfig, spec, data: _Inputs, out: Path, bar: tqdm) -> list[Row]:
    from qama.adapter import QamaAdapter
    from qama.rescore import adapter_rows
    from qama.train import fit

    name, corpus, judged, evaluator = data.name, data.corpus, data.judged, data.evaluator
    dims = config.nested_dims or None

    key = _key([spec, dims, "baselines", data.corpus_key])
    path = out / "stages" / f"{name}-baselines.json"
    bar.set_description(f"{name}: baselines")
    rows = _cached(path, key) or _save(path, key, [r.to_dict() for r in baseline_rows(corpus, judged, evaluator, dims)])
    bar.update(1)

    train_cfg = _train_config(config, data, progress=not bar.disable)
    adapter_dir = out / "adapters" / name
    fit_key = _key([_settings(train_cfg), data.corpus_key, *_pairs_key(data)])
    bar.set_description(f"{name}: fitting the adapter")
    if _cached(adapter_dir / "fit-key.json", fit_key) is None:
        fit(corpus, train_cfg, pairs=data.pairs, out_dir=adapter_dir, overwrite=True)  # the report's own folder
        _save(adapter_dir / "fit-key.json", fit_key, True)
    adapter = QamaAdapter.load(adapter_dir)
    bar.update(1)

    key = _key([fit_key, config.plans, config.rescore, "qama"])
    path = out / "stages" / f"{name}-qama.json"
    bar.set_description(f"{name}: evaluating the adapter")
    qama = _cached(path, key)
    if qama is None:
        qama = _save(
            path,
            key,
            [r.to_dict() for r in adapter_rows(adapter, corpus, judged, evaluator, config.plans, config.rescore)],
        )
    if config.peers:  # other libraries' formats, at the full dimension (qama.peers)
        from qama.peers import peer_rows

        key = _key([spec, config.peers, corpus.shape, float(corpus[:64].sum()), "peers"])
        path = out / "stages" / f"{name}-peers.json"
        bar.set_description(f"{name}: peers")
        peers = _cached(path, key)
        if peers is None:
            peers = _save(path, key, [r.to_dict() for r in peer_rows(corpus, judged, evaluator, config.peers)])
        qama = qama + peers
    bar.update(1)
    out_rows = _rows_from_dicts(rows + qama)
    for r in out_rows:
        r.dataset = name
    set_retention(out_rows)
    return out_rows


def _ablation_stage(config: ExperimentConfig, data: _Inputs, out: Path, bar: tqdm) -> dict[str, dict[str, float]]:
    from qama.rescore import ablation_scorer
    from qama.train import ABLATIONS, ALL_TERMS, ablate

    corpus = data.corpus
    steps = {"steps": config.ablation_steps} if config.ablation_steps else {}
    cfg = _train_config(config, data, progress=not bar.disable, **steps)
    score = ablation_scorer(corpus, data.judged, data.evaluator)

    results = {}
    for name in ABLATIONS:
        bar.set_description(f"{data.name}: ablation {name}")
        key = _key([_settings(cfg), ALL_TERMS, name, data.corpus_key, *_pairs_key(data)])
        path = out / "stages" / f"ablation-{data.name}-{name}.json"
        results[name] = _cached(path, key) or _save(
            path, key, ablate(corpus, score, cfg, names=[name], pairs=data.pairs)[name]
        )
        bar.update(1)
    return results


def main_table(rows_by_dataset: dict[str, list[Row]]) -> list[dict]:
    """One row per storage format: nDCG@10 per dataset, their mean and the mean retention."""
    table: dict[tuple, dict] = {}
    for name, rows in rows_by_dataset.items():
        for r in rows:
            key = (r.format, r.plan, r.dims, r.rescore)
            entry = table.setdefault(
                key,
                {
                    "format": r.format,
                    "plan": r.plan,
                    "dims": r.dims,
                    "rescore": r.rescore,
                    "bits_per_dim": r.bits_per_dim,
                    "bytes_per_vector": r.bytes_per_vector,
                    "mb_per_million": r.mb_per_million,
                    "ndcg@10": {},
                    "retention": {},
                },
            )
            entry["ndcg@10"][name] = r.metrics["ndcg@10"]
            entry["retention"][name] = r.retention
    out = []
    for entry in table.values():
        entry["mean_ndcg@10"] = float(np.mean(list(entry["ndcg@10"].values())))
        entry["mean_retention"] = float(np.mean([v for v in entry["retention"].values() if v is not None]))
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- plots
def config_rescore(main: list[dict]) -> list[int]:
    """The rescoring factors present in the main table (1 when there are none)."""
    return sorted({e["rescore"] for e in main if e["rescore"]}) or [1]


def plot_all(main: list[dict], out: Path) -> list[Path]:
    """Retention vs bits/dim, retention vs dims, and the storage–quality frontier, as PNG files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'qama[report]'") from e

    out.mkdir(parents=True, exist_ok=True)
    sym = [e for e in main if e["rescore"] is None]
    qama = [e for e in sym if e["format"] == "qama" and e["plan"] is not None]
    thr = [e for e in sym if e["format"] == "threshold"]
    floats = [e for e in sym if e["plan"] is None and e["format"] in ("fp32", "fp16", "int8")]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dims in sorted({e["dims"] for e in qama}, reverse=True):
        pts = sorted((e["bits_per_dim"], 100 * e["mean_retention"]) for e in qama if e["dims"] == dims)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"QAMA {dims} dims")
    for dims in sorted({e["dims"] for e in thr}, reverse=True):
        pts = sorted((e["bits_per_dim"], 100 * e["mean_retention"]) for e in thr if e["dims"] == dims)
        ax.scatter(*zip(*pts, strict=True), marker="x", label=f"threshold (untrained) {dims} dims")
    ax.set(
        xlabel="stored bits per dimension",
        ylabel="nDCG@10 retention vs FP32 (%)",
        title="Retention vs bits per dimension (symmetric Hamming)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(out / "retention_vs_bits.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fmt, plan, label in [("fp32", None, "FP32 truncated"), ("qama", None, "QAMA adapter FP32")] + [
        ("qama", p, f"QAMA {p}") for p in sorted({e["plan"] for e in qama})
    ]:
        pts = sorted((e["dims"], 100 * e["mean_retention"]) for e in sym if e["format"] == fmt and e["plan"] == plan)
        if pts:
            line = ax.plot(*zip(*pts, strict=True), marker="o", label=label, linestyle="--" if fmt == "fp32" else "-")
            rescored = sorted(
                (e["dims"], 100 * e["mean_retention"])
                for e in main
                if e["format"] == fmt
                and e["plan"] == plan
                and plan is not None
                and e["rescore"]
                and e["rescore"] == max(config_rescore(main))
            )
            if rescored:  # the same plan rescored: same colour, dotted
                ax.plot(
                    *zip(*rescored, strict=True),
                    marker="x",
                    linestyle=":",
                    color=line[0].get_color(),
                    label=f"{label} + rescore {max(config_rescore(main))}x",
                )
    ax.set(xlabel="dimensions (nested prefix)", ylabel="nDCG@10 retention vs FP32 (%)", title="Retention vs dimensions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    paths.append(out / "retention_vs_dims.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {
        "float (fp32/fp16/int8)": floats,
        "threshold (untrained)": thr,
        "QAMA": qama,
        "QAMA + rescoring": [e for e in main if e["format"] == "qama" and e["rescore"] and e["plan"]],
    }
    for (label, entries), marker in zip(groups.items(), "s^ox", strict=True):
        if entries:
            ax.scatter(
                [e["bytes_per_vector"] for e in entries],
                [100 * e["mean_retention"] for e in entries],
                marker=marker,
                label=label,
                alpha=0.8,
            )
    from qama.peers import plot_peers

    plot_peers(ax, main)
    ax.set_xscale("log")
    ax.set(
        xlabel="bytes per vector (log scale)", ylabel="nDCG@10 retention vs FP32 (%)", title="Storage–quality frontier"
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    paths.append(out / "storage_quality.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- report.md
def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _markdown(results: dict[str, Any]) -> str:
    names = results["datasets"]
    lines = [
        f"# qama report: {results['config']['model']}",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}",
        f"- machine: {results['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        f"- time: {results['seconds']:.0f} s",
        "",
        *_summary(results),
        "## Main table (nDCG@10; retention = share of FP32 at full size, mean over datasets)",
        "",
        "| format | plan | dims | rescore | bits/dim | bytes/vec | MB/1M | "
        + " | ".join(names)
        + " | mean | retention |",
        "|" + "---|" * (9 + len(names)),
    ]
    for e in results["main"]:
        cells = [
            e["format"],
            _fmt(e["plan"]),
            e["dims"],
            _fmt(e["rescore"]),
            f"{e['bits_per_dim']:g}",
            e["bytes_per_vector"],
            f"{e['mb_per_million']:g}",
        ]
        cells += [_fmt(e["ndcg@10"].get(n)) for n in names]
        cells += [_fmt(e["mean_ndcg@10"]), _fmt(e["mean_retention"], pct=True)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    if results.get("ablations"):
        abl = results["ablations"]
        cols = ablation_columns(abl)
        steps = results["config"]["ablation_steps"] or results["config"]["train"].get("steps", "default")
        lines += [
            "",
            f"## Ablations ({results['ablation_dataset']}, nDCG@10, symmetric Hamming, {steps} training steps each;"
            " 'full' has every regulariser on, each row switches one off)",
            "",
            *ablation_markdown(abl, cols, _fmt),
        ]
    if results.get("speed"):
        lines += [
            "",
            f"## Storage and speed ({results['speed_setting']})",
            "",
            "| method | bytes/vec | batch q/s | × FP32 | single ms/query | × FP32 |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["speed"]:
            lines.append(
                f"| {r['method']} | {r['bytes_per_vector']} | {r['batch_qps']:.0f} | {r['batch_speedup']:.2f} |"
                f" {r['single_ms']:.2f} | {r['single_speedup']:.2f} |"
            )
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(lines) + "\n"


def _summary(results: dict[str, Any]) -> list[str]:
    from qama.peers import summary

    return summary(results["main"], results.get("speed"))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("qama", "torch", "numpy", "faiss-cpu", "sentence-transformers", "pytrec-eval-terrier"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_report_folder(out: Path) -> None:
    """Refuse a report folder that holds anything but an earlier report (which a re-run resumes)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and not (out / "stages").is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out}: the folder is not empty and holds no qama report; write the report to a new or empty folder"
        )


def run_report(
    config: ExperimentConfig, out: str | os.PathLike, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the study of ``config`` into the folder ``out``; returns ``results.json``'s content.

    ``progress``: a bar over the stages, and one over each fit's steps."""
    out = Path(out)
    check_report_folder(out)
    (out / "stages").mkdir(parents=True, exist_ok=True)  # marks the folder as a report's, for re-runs
    write_json(out / "config.json", config.to_dict())
    start = time.perf_counter()
    from qama.train import ABLATIONS

    total = 3 * len(config.datasets) + (len(ABLATIONS) if config.ablation else 0) + bool(config.speed_vectors) + 1
    bar = tqdm(total=total, desc="qama report", unit="stage", disable=not progress)
    rows_by_dataset: dict[str, list[Row]] = {}
    first: _Inputs | None = None
    for spec in config.datasets:
        bar.set_description(f"{spec.path}: embeddings")
        data = _load(config, spec)
        first = first or data  # the ablations run on the first dataset
        rows_by_dataset[data.name] = _dataset_stage(config, spec, data, out, bar)
    ablations = _ablation_stage(config, first, out, bar) if config.ablation and first is not None else {}
    speed, speed_setting = [], ""
    if config.speed_vectors:
        d = next(iter(rows_by_dataset.values()))[0].dims
        config.speed_vectors = speed_size(config.speed_vectors, d)
        speed_setting = (
            f"{config.speed_vectors:,} synthetic vectors of {d} dims, {config.speed_queries} queries, "
            f"top-10, faiss threads {_faiss_threads()}"
        )
        bar.set_description("speed table")
        setting = [config.speed_vectors, config.speed_queries, d, platform.node(), "aligned rows", "adc"]
        key = _key([*setting, config.peers])
        speed = _cached(out / "stages" / "speed.json", key) or _save(
            out / "stages" / "speed.json",
            key,
            speed_table(config.speed_vectors, d, config.speed_queries, peers=tuple(config.peers)),
        )
        bar.update(1)
    main = main_table(rows_by_dataset)
    bar.set_description("plots")
    plots = [p.name for p in plot_all(main, out)]
    bar.update(1)
    bar.close()
    results = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "versions": _versions(),
        "seconds": time.perf_counter() - start,
        "config": config.to_dict(),
        "datasets": list(rows_by_dataset),
        "rows": {name: [r.to_dict() for r in rows] for name, rows in rows_by_dataset.items()},
        "main": main,
        "ablation_dataset": next(iter(rows_by_dataset)) if ablations else None,
        "ablations": ablations,
        "speed_setting": speed_setting,
        "speed": speed,
        "plots": plots,
    }
    write_json(out / "results.json", results)
    with atomic_open(out / "report.md", "w") as f:
        f.write(_markdown(results))
    return results


def _faiss_threads() -> int:
    import faiss

    return faiss.omp_get_max_threads()
