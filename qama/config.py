"""Experiment configs for ``qama report``: a TOML file, a preset, or the command line.

A config names the model, the datasets, the nested sizes, the plans, the training settings (any
field of :class:`qama.train.TrainConfig`, loss weights included) and what else to measure::

    model = "sentence-transformers/all-MiniLM-L6-v2"
    nested_dims = [384, 192, 96]
    plans = ["2bit", "1.5bit", "1bit", "hybrid"]
    rescore = [4]
    pseudo_queries = "auto"                # documents' titles as InfoNCE queries: auto, titles or none

    [[datasets]]
    path = "scifact"                       # a BEIR name or folder
    embeddings = "emb/scifact"             # optional: precomputed corpus.npy / queries.npy

    [train]
    steps = 600
    w_ortho = 0.05

Presets (``qama report --preset NAME``) are in ``qama/presets``: ``minilm`` (the QAMA paper's
MiniLM setting, 384/192/96 on five BEIR datasets) and ``bert768`` (a 768-dimensional model,
768/384/192/96).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from qama._validate import check_regular_file
from qama.codes import DEFAULT_PLANS
from qama.embeddings import DEFAULT_MODEL, PSEUDO_QUERY_MODES
from qama.evaluation.peers import DEFAULT_PEERS, check_peers
from qama.train import TrainConfig

__all__ = ["DatasetSpec", "ExperimentConfig", "load_config", "preset_path", "PRESETS"]

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


@dataclass
class DatasetSpec:
    path: str  # BEIR name or folder
    embeddings: str | None = None  # folder with corpus.npy / queries.npy, or None to embed with the model
    split: str = "test"


@dataclass
class ExperimentConfig:
    """Everything ``qama report`` needs; stored resolved in the report folder."""

    datasets: list[DatasetSpec]
    model: str = DEFAULT_MODEL  # sentence-transformers model (embeddings are cached per model and content)
    nested_dims: list[int] = field(default_factory=list)  # Matryoshka sizes; [] = d, d/2, d/4
    plans: list[str] = field(default_factory=lambda: list(DEFAULT_PLANS))
    rescore: list[int] = field(default_factory=lambda: [4])  # oversampling factors of the rescoring rows
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields that differ from the defaults
    pseudo_queries: str = "auto"  # titles as InfoNCE queries of their documents: auto, titles or none
    ablation: bool = True  # retrain with each component off (on the first dataset)
    ablation_steps: int | None = 150  # training steps of each ablation run (None: those of [train])
    speed_vectors: int = 1_000_000  # synthetic corpus size of the speed table (0: skip; fewer if memory is short)
    speed_queries: int = 1000  # batch of queries of the speed table
    peers: list[str] = field(default_factory=lambda: list(DEFAULT_PEERS))  # other libraries' formats (evaluation.peers)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("a config needs at least one dataset")
        if not isinstance(self.datasets, list) or not all(isinstance(d, (dict, DatasetSpec)) for d in self.datasets):
            raise ValueError(f"datasets must be a list of tables ([[datasets]]), got {self.datasets!r:.60}")
        self.datasets = [d if isinstance(d, DatasetSpec) else DatasetSpec(**d) for d in self.datasets]
        check_experiment_config(self)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.train) - names)
        if unknown:
            raise ValueError(f"unknown training settings in [train]: {', '.join(unknown)}")
        self.train_config()  # validates the values
        self.peers = check_peers(self.peers)
        if self.pseudo_queries not in PSEUDO_QUERY_MODES:
            raise ValueError(
                f"pseudo_queries must be one of {', '.join(PSEUDO_QUERY_MODES)}, got {self.pseudo_queries!r}"
            )

    def train_config(self, **extra: Any) -> TrainConfig:
        settings = {"nested_dims": tuple(sorted(self.nested_dims)), "model_name": self.model, **self.train, **extra}
        return TrainConfig(**settings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**data)


#: Largest synthetic corpus of the speed table (its float32 vectors are held twice in memory).
MAX_SPEED_VECTORS = 1_000_000
MAX_SPEED_QUERIES = 100_000


def check_experiment_config(config: ExperimentConfig) -> None:
    """The type and range of every setting of a report config (before hours of work)."""
    from qama._validate import MAX_OVERSAMPLE, check_plan_syntax

    def integer(name: str, value: Any, lo: int, hi: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r:.60}")

    def int_list(name: str, value: Any, lo: int, hi: int) -> None:
        if not isinstance(value, list):
            raise ValueError(f"{name} must be a list of integers, got {value!r:.60}")
        for v in value:
            integer(name, v, lo, hi)

    for d in config.datasets:
        for key in ("path", "embeddings", "split"):
            v = getattr(d, key)
            if not (isinstance(v, str) and v) and not (key == "embeddings" and v is None):
                raise ValueError(f"datasets: {key} must be a non-empty string, got {v!r:.60}")
    if not isinstance(config.model, str) or not config.model.strip():
        raise ValueError(f"model must be a model name, got {config.model!r:.60}")
    int_list("nested_dims", config.nested_dims, 2, 65536)
    int_list("rescore", config.rescore, 1, MAX_OVERSAMPLE)
    if not isinstance(config.plans, list) or not config.plans:
        raise ValueError(f"plans must be a non-empty list of plan names or specs, got {config.plans!r:.60}")
    for p in config.plans:
        check_plan_syntax(p, "plans")
    if not isinstance(config.train, dict):
        raise ValueError(f"train must be a table of training settings, got {config.train!r:.60}")
    if not isinstance(config.ablation, bool):
        raise ValueError(f"ablation must be true or false, got {config.ablation!r:.60}")
    if config.ablation_steps is not None:
        integer("ablation_steps", config.ablation_steps, 1, 10**9)
    integer("speed_vectors", config.speed_vectors, 0, MAX_SPEED_VECTORS)
    integer("speed_queries", config.speed_queries, 1, MAX_SPEED_QUERIES)


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return path


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a TOML config; relative dataset and embedding paths are taken from the file's folder
    when they exist there."""
    path = Path(path)
    try:
        check_regular_file(path, "config file")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: invalid TOML (invalid UTF-8 at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from None
    for d in data.get("datasets", []):
        for key in ("path", "embeddings"):
            if d.get(key) and not Path(d[key]).is_absolute() and (path.parent / d[key]).exists():
                d[key] = str(path.parent / d[key])
    try:
        return ExperimentConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def experiment_config(
    config: str | Path | None = None,
    preset: str | None = None,
    datasets: list[Any] | None = None,
    model: str | None = None,
    steps: int | None = None,
    ablation: bool = True,
    speed_vectors: int | None = None,
    peers: list[str] | None = None,
) -> ExperimentConfig:
    """The config of ``qama report``: a TOML file or a preset (its datasets replaced by ``datasets``
    when given), else ``datasets`` with ``model``; then the overrides ``steps``, ``ablation``, ``peers``,
    ``speed_vectors``. Without ``model`` (or a config file naming one), the model that the
    ``meta.json`` of the datasets' precomputed embeddings names is the report's model (a preset's
    model gives way to it); a model that contradicts it is refused."""
    if config or preset:
        out = load_config(config or preset_path(str(preset)))
        if datasets:
            out.datasets = ExperimentConfig(datasets=list(datasets)).datasets
        model = model or (out.model if config else None)  # a preset's model gives way to the embeddings'
    elif datasets:
        out = ExperimentConfig(datasets=list(datasets))
    else:  # no dataset: the one shipped in the package (works offline)
        from qama.data import DEFAULT_DATASET

        out = ExperimentConfig(datasets=[DatasetSpec(path=DEFAULT_DATASET)])
    out.model = embeddings_model_of(out.datasets, model) or model or out.model
    if steps is not None:
        out.train["steps"] = steps
    out.ablation = out.ablation and ablation
    if speed_vectors is not None:
        out.speed_vectors = speed_vectors
    if peers is not None:  # [] leaves them out
        from qama.evaluation.peers import check_peers

        out.peers = check_peers(peers) if peers else []
    check_experiment_config(out)  # the values given on the command line too
    out.train_config()  # and the training settings with --steps
    return out


def embeddings_model_of(datasets: list[DatasetSpec], model: str | None) -> str | None:
    """The model the ``meta.json`` files of the datasets' precomputed embeddings name (``None``:
    none names one). Raises ``ValueError`` when two of them differ, or when ``model`` contradicts one."""
    from qama.embeddings import embeddings_model, read_embeddings_meta, same_model

    found: dict[str, str] = {}
    for spec in datasets:
        if spec.embeddings is not None:
            embeddings_model(spec.embeddings, model)  # refuses a model that contradicts meta.json
            folder = Path(spec.embeddings) if Path(spec.embeddings).is_dir() else Path(spec.embeddings).parent
            named = (read_embeddings_meta(folder) or {}).get("model")
            if named:
                found[str(spec.embeddings)] = named
    names = list(found.values())
    if any(not same_model(names[0], other) for other in names[1:]):
        raise ValueError(f"the datasets' embeddings come from different models: {found}; one report studies one model")
    return names[0] if names else None


class DatasetArgs(argparse.Action):
    """``--dataset A [--embeddings EA] --dataset B ...``: each --embeddings belongs to the --dataset before it."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option_string: str | None = None) -> None:
        specs = list(getattr(namespace, "datasets", None) or [])
        if option_string == "--dataset":
            specs.append({"path": value})
        elif not specs or "embeddings" in specs[-1]:
            parser.error("--embeddings must follow the --dataset it belongs to")
        else:
            specs[-1]["embeddings"] = value
        namespace.datasets = specs
