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

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from qama.embeddings import DEFAULT_MODEL, PSEUDO_QUERY_MODES
from qama.peers import DEFAULT_PEERS, check_peers
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
    plans: list[str] = field(default_factory=lambda: ["2bit", "1.5bit", "1bit", "hybrid"])
    rescore: list[int] = field(default_factory=lambda: [4])  # oversampling factors of the rescoring rows
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields that differ from the defaults
    pseudo_queries: str = "auto"  # titles as InfoNCE queries of their documents: auto, titles or none
    ablation: bool = True  # retrain with each component off (on the first dataset)
    ablation_steps: int | None = 150  # training steps of each ablation run (None: those of [train])
    speed_vectors: int = 1_000_000  # synthetic corpus size of the speed table (0: skip; fewer if memory is short)
    speed_queries: int = 1000  # batch of queries of the speed table
    peers: list[str] = field(default_factory=lambda: list(DEFAULT_PEERS))  # other libraries' formats (qama.peers)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("a config needs at least one dataset")
        self.datasets = [d if isinstance(d, DatasetSpec) else DatasetSpec(**d) for d in self.datasets]
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
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
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
