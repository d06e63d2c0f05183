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
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qama._io import atomic_open, check_creatable, fingerprint, folder_lock, write_json
from qama.config import ExperimentConfig
from qama.evaluation.plots import plot_all
from qama.evaluation.rows import Row, baseline_rows, set_retention
from qama.evaluation.speed import speed_size, speed_table
from qama.evaluation.tables import ablation_columns, ablation_markdown, main_table

__all__ = ["run_report", "check_report_folder"]

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
        return fingerprint(self.corpus)

    @functools.cached_property
    def eval_key(self) -> str:
        """Fingerprint of what a row is measured on: the judged queries' embeddings, their judgments
        (the split's qrels) and the documents' ids. Part of the key of every stage that scores."""
        dataset = self.evaluator.dataset
        return _key([fingerprint(self.judged), dataset.split, dataset.qrels, dataset.doc_ids])


def _load(config: ExperimentConfig, spec, progress: bool = True) -> _Inputs:
    from qama.data import load_dataset
    from qama.embeddings import dataset_embeddings, title_pairs
    from qama.evaluation.metrics import Evaluator

    dataset = load_dataset(spec.path, split=spec.split)
    corpus, queries = dataset_embeddings(dataset, config.model, spec.embeddings, progress=progress)
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


def _pairs_key(data: _Inputs) -> list:
    return [] if data.pairs is None else [fingerprint(data.pairs[0]), fingerprint(data.pairs[1])]


def _dataset_stage(config: ExperimentConfig, spec, data: _Inputs, out: Path, bar: tqdm) -> list[Row]:
    from qama.adapter import QamaAdapter
    from qama.evaluation.rows import adapter_rows
    from qama.train import fit

    name, corpus, judged, evaluator = data.name, data.corpus, data.judged, data.evaluator
    dims = config.nested_dims or None

    # "fp32 at full size": the rows hold that reference even where dims leave it out (a stage saved before does not)
    key = _key([spec, dims, "baselines", "fp32 at full size", data.corpus_key, data.eval_key])
    path = out / "stages" / f"{name}-baselines.json"
    bar.set_description(f"{name}: baselines")
    rows = _cached(path, key) or _save(path, key, [r.to_dict() for r in baseline_rows(corpus, judged, evaluator, dims)])
    bar.update(1)

    train_cfg = _train_config(config, data, progress=not bar.disable)
    adapter_dir = out / "adapters" / name
    fit_key = _key([_settings(train_cfg), data.corpus_key, *_pairs_key(data)])
    bar.set_description(f"{name}: fitting the adapter")
    if _cached(adapter_dir / "fit-key.json", fit_key) is None:
        _drop_stale_checkpoint(adapter_dir, fit_key)
        # The adapter there is about to be replaced: its settings' record goes first (else a run interrupted
        # after the save, before the new record, leaves the new adapter under the old settings' key).
        (adapter_dir / "fit-key.json").unlink(missing_ok=True)
        _save(adapter_dir / "fitting-key.json", fit_key, True)  # the settings of the checkpoints to come
        fit(corpus, train_cfg, pairs=data.pairs, out_dir=adapter_dir, overwrite=True)  # the report's own folder
        _save(adapter_dir / "fit-key.json", fit_key, True)
    adapter = QamaAdapter.load(adapter_dir)
    bar.update(1)

    key = _key([fit_key, config.plans, config.rescore, "qama", data.eval_key])
    path = out / "stages" / f"{name}-qama.json"
    bar.set_description(f"{name}: evaluating the adapter")
    qama = _cached(path, key)
    if qama is None:
        qama = _save(
            path,
            key,
            [r.to_dict() for r in adapter_rows(adapter, corpus, judged, evaluator, config.plans, config.rescore)],
        )
    if config.peers:  # other libraries' formats, at the full dimension (qama.evaluation.peers)
        from qama.evaluation.peers import peer_rows

        key = _key([spec, config.peers, data.corpus_key, data.eval_key, "peers"])
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


def _drop_stale_checkpoint(adapter_dir: Path, fit_key: str) -> None:
    """Remove the checkpoint of an interrupted fit of the report's adapter folder when it was written for
    other settings or data (``fitting-key.json``): the fit is a stage whose settings changed, done anew."""
    from qama.train import CHECKPOINT_DIR

    marker = adapter_dir / "fitting-key.json"
    if not marker.is_file() or _cached(marker, fit_key) is not None:
        return
    # (``checkpoint.old``: the checkpoint a write killed between its renames left, which fit would resume)
    for ckpt in (adapter_dir / CHECKPOINT_DIR, adapter_dir / f"{CHECKPOINT_DIR}.old"):
        if ckpt.is_dir() and not ckpt.is_symlink():
            logger.info("the settings of %s changed since its fit was interrupted: fitting anew", adapter_dir)
            shutil.rmtree(ckpt)


def _ablation_stage(config: ExperimentConfig, data: _Inputs, out: Path, bar: tqdm) -> dict[str, dict[str, float]]:
    from qama.evaluation.rows import ablation_scorer
    from qama.train import ABLATIONS, ALL_TERMS, ablate

    corpus = data.corpus
    steps = {"steps": config.ablation_steps} if config.ablation_steps else {}
    cfg = _train_config(config, data, progress=not bar.disable, **steps)
    score = ablation_scorer(corpus, data.judged, data.evaluator)

    results = {}
    for name in ABLATIONS:
        bar.set_description(f"{data.name}: ablation {name}")
        key = _key([_settings(cfg), ALL_TERMS, name, data.corpus_key, data.eval_key, *_pairs_key(data)])
        path = out / "stages" / f"ablation-{data.name}-{name}.json"
        results[name] = _cached(path, key) or _save(
            path, key, ablate(corpus, score, cfg, names=[name], pairs=data.pairs)[name]
        )
        bar.update(1)
    return results


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
    from qama.evaluation.peers import summary

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
    check_creatable(out)
    if out.is_dir() and not (out / "stages").is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out}: the folder is not empty and holds no qama report; write the report to a new or empty folder"
        )


def _dataset_name(spec) -> str:
    """The name :func:`qama.data.load_dataset` gives the dataset of ``spec`` (its folder's, or the BEIR name)."""
    from qama.data import dataset_name

    return dataset_name(spec.path)


def check_dataset_names(config: ExperimentConfig) -> None:
    """Refuse two datasets of one name: a report keys its stages, adapters and table columns by the
    dataset's name, so one would overwrite the other's results (the same folder on two splits too)."""
    seen: dict[str, Any] = {}
    for spec in config.datasets:
        name = _dataset_name(spec)
        if name in seen:
            first = seen[name]
            raise ValueError(
                f"two datasets of the report are named {name!r} ({first.path}, split {first.split}; {spec.path}, "
                f"split {spec.split}): a report keeps its results by dataset name; study them in separate reports"
            )
        seen[name] = spec


def run_report(
    config: ExperimentConfig, out: str | os.PathLike, command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the study of ``config`` into the folder ``out``; returns ``results.json``'s content.

    ``progress``: a bar over the stages, and one over each fit's steps. One report at a time writes
    ``out``: a second is refused at once with :class:`~qama.errors.FolderLockedError`."""
    out = Path(out)
    check_dataset_names(config)
    check_report_folder(out)
    (out / "stages").mkdir(parents=True, exist_ok=True)  # marks the folder as a report's, for re-runs
    with folder_lock(out, "another qama report is running in this folder; wait for it or choose another --out"):
        return _run_report(config, out, command, progress)


def _run_report(config: ExperimentConfig, out: Path, command: str, progress: bool) -> dict[str, Any]:
    """:func:`run_report` in the folder ``out``, checked and locked."""
    write_json(out / "config.json", config.to_dict())
    start = time.perf_counter()
    from qama.train import ABLATIONS

    total = 3 * len(config.datasets) + (len(ABLATIONS) if config.ablation else 0) + bool(config.speed_vectors) + 1
    bar = tqdm(total=total, desc="qama report", unit="stage", disable=not progress)
    rows_by_dataset: dict[str, list[Row]] = {}
    first: _Inputs | None = None
    for spec in config.datasets:
        bar.set_description(f"{spec.path}: embeddings")
        data = _load(config, spec, progress)
        if data.name in rows_by_dataset:  # a name _dataset_name did not foresee
            raise ValueError(f"two datasets of the report are named {data.name!r}; study them in separate reports")
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
        setting = [
            config.speed_vectors,
            config.speed_queries,
            d,
            platform.node(),
            "aligned rows",
            "adc",
            "queries coded",
        ]
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
