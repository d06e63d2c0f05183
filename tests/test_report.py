"""qama report on tiny data: every file written, plots rendered, a re-run resumes; configs validated."""

from __future__ import annotations

import json
import shutil

import pytest

from qama.config import ExperimentConfig, load_config, preset_path
from qama.evaluation.study import run_report

PNG = b"\x89PNG\r\n\x1a\n"


def _config(root, emb, root2) -> ExperimentConfig:
    return ExperimentConfig(
        datasets=[{"path": str(root), "embeddings": str(emb)}, {"path": str(root2), "embeddings": str(emb)}],
        nested_dims=[32, 16, 8],
        plans=["2bit", "hybrid"],
        train={"steps": 3, "batch_size": 64},
        ablation_steps=2,
        speed_vectors=3000,
        speed_queries=20,
    )


def test_report_writes_everything_and_resumes(small, tmp_path):  # noqa: F811
    root, emb = small
    root2 = shutil.copytree(root, tmp_path / "ds2")
    out = tmp_path / "report"
    results = run_report(_config(root, emb, root2), out, command="test")
    for name in (
        "report.md",
        "results.json",
        "config.json",
        "retention_vs_bits.png",
        "retention_vs_dims.png",
        "storage_quality.png",
    ):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["datasets"] == ["ds", "ds2"] and set(saved["ablations"]) >= {"full", "no_matryoshka"}
    keys = {(e["format"], e["plan"], e["dims"], e["rescore"]) for e in saved["main"]}
    assert {("fp32", None, 32, None), ("qama", None, 16, None), ("qama", "hybrid", 32, 4)} <= keys
    entry = next(e for e in saved["main"] if (e["format"], e["plan"], e["dims"]) == ("fp32", None, 32))
    assert entry["mean_retention"] == 1.0 and set(entry["ndcg@10"]) == {"ds", "ds2"}
    assert [r["method"] for r in saved["speed"]][0].startswith("fp32")
    md = (out / "report.md").read_text()
    assert "## Ablations" in md and "## Storage and speed" in md and "![retention_vs_bits.png]" in md

    stages = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    adapter = (out / "adapters" / "ds" / "model.safetensors").stat().st_mtime_ns
    again = run_report(_config(root, emb, root2), out, command="test", progress=False)  # bars off: same keys
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == stages  # nothing recomputed
    assert (out / "adapters" / "ds" / "model.safetensors").stat().st_mtime_ns == adapter
    assert again["main"] == results["main"]


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="a config needs at least one dataset"):
        ExperimentConfig(datasets=[])
    with pytest.raises(ValueError, match=r"unknown training settings in \[train\]: stepz"):
        ExperimentConfig(datasets=[{"path": "x"}], train={"stepz": 3})
    with pytest.raises(ValueError, match=r"^pseudo_queries must be one of auto, titles, none, got 'all'$"):
        ExperimentConfig(datasets=[{"path": "x"}], pseudo_queries="all")
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "m"\ncolour = 1\n[[datasets]]\npath = "x"\n')
    with pytest.raises(ValueError, match=r"bad.toml: unknown config keys: colour"):
        load_config(bad)
    bad.write_text("model = \n")
    with pytest.raises(ValueError, match=r"bad.toml: invalid TOML"):
        load_config(bad)


def test_presets_load():
    cfg = load_config(preset_path("minilm"))
    assert cfg.train_config().nested_dims == (96, 192, 384) and len(cfg.datasets) == 5
    assert load_config(preset_path("bert768")).nested_dims == [768, 384, 192, 96]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset_path("nope")


def test_report_trains_with_title_pseudo_queries_when_it_has_them():
    import numpy as np

    from qama.evaluation.study import _Inputs, _train_config
    from qama.train import NCE_WEIGHT_TITLES

    config = ExperimentConfig(datasets=[{"path": "x"}], train={"steps": 3})
    pairs = (np.ones((5, 4), np.float32), np.ones((5, 4), np.float32))
    with_titles = _train_config(config, _Inputs("ds", None, None, None, pairs))
    assert with_titles.w_nce == NCE_WEIGHT_TITLES and with_titles.steps == 3
    assert with_titles.data_description == "ds corpus embeddings, 5 title pseudo-queries (no labels)"
    without = _train_config(config, _Inputs("ds", None, None, None, None))
    assert without.w_nce == 0.0 and without.data_description == "ds corpus embeddings (no labels)"
    config.train["w_nce"] = 0.3
    assert _train_config(config, _Inputs("ds", None, None, None, pairs), steps=2).w_nce == 0.3


def test_the_report_names_the_model_of_its_embeddings(tiny):
    """Issue 17: precomputed embeddings of another model: the report's config names that model, and a
    --model that contradicts meta.json is refused; a preset's model gives way to it."""
    import json as _json

    from qama.config import experiment_config

    emb = tiny.parent / "tiny-emb"
    (emb / "meta.json").write_text(_json.dumps({"model": "org/other-model", "dimension": 16}))
    spec = [{"path": str(tiny), "embeddings": str(emb)}]
    assert experiment_config(datasets=spec).model == "org/other-model"
    assert experiment_config(preset="bert768", datasets=spec).model == "org/other-model"
    with pytest.raises(ValueError, match="the embeddings are of org/other-model, but --model is org/mine"):
        experiment_config(datasets=spec, model="org/mine")


def _two_split_dataset(root, emb):
    """A ``dev`` split beside ``test`` in the ``small`` dataset: queries 30..59, each judged relevant to a
    document it is not near (its scores are far below the test split's)."""
    import numpy as np

    n_docs = len((root / "corpus.jsonl").read_text().splitlines())
    queries = [json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(60)]
    (root / "queries.jsonl").write_text("".join(queries))
    dev = "".join(f"q{i}\td{(7 * i) % n_docs}\t1\n" for i in range(30, 60))
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + dev)
    q = np.load(emb / "queries.npy")
    np.save(emb / "queries.npy", np.concatenate([q, q]))


def _split_config(root, emb, split: str, ablation: bool = False) -> ExperimentConfig:
    return ExperimentConfig(
        datasets=[{"path": str(root), "embeddings": str(emb), "split": split}],
        nested_dims=[32, 16, 8],
        plans=["2bit"],
        rescore=[],
        train={"steps": 2, "batch_size": 64, "threads": 1},
        ablation=ablation,
        ablation_steps=1,
        speed_vectors=0,
        peers=["st-int8"],
    )


def test_a_resumed_report_measures_the_split_it_is_given(small, tmp_path):  # noqa: F811
    """A report re-run on another qrels split of the same corpus reuses the adapter, but measures every
    row on the new split's queries (before: the adapter's rows, the peers' and the ablations were those
    of the earlier split, beside baselines of the new one)."""
    root, emb = small
    _two_split_dataset(root, emb)
    out = tmp_path / "report"
    run_report(_split_config(root, emb, "test", ablation=True), out, progress=False)
    adapter = (out / "adapters" / "ds" / "model.safetensors").stat().st_mtime_ns
    resumed = run_report(_split_config(root, emb, "dev", ablation=True), out, progress=False)
    fresh = run_report(_split_config(root, emb, "dev", ablation=True), tmp_path / "fresh", progress=False)
    assert (out / "adapters" / "ds" / "model.safetensors").stat().st_mtime_ns == adapter  # the fit is kept
    assert resumed["main"] == fresh["main"] and resumed["ablations"] == fresh["ablations"]
    qama = next(e for e in resumed["main"] if (e["format"], e["plan"], e["dims"]) == ("qama", "2bit", 32))
    assert qama["ndcg@10"]["ds"] < 0.5  # the dev split's queries are not near their documents


def test_a_report_refuses_two_datasets_of_one_name(small, tmp_path):  # noqa: F811
    """Stages, adapters and table columns are keyed by the dataset's name: two datasets of one name (the
    same folder on two splits, or two folders named alike) would overwrite each other's results."""
    root, emb = small
    _two_split_dataset(root, emb)
    config = _split_config(root, emb, "test")
    config.datasets.append(_split_config(root, emb, "dev").datasets[0])
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=r"^two datasets of the report are named 'ds' \(.*ds, split test; .*ds, "):
        run_report(config, out, progress=False)
    assert not out.exists()  # refused before any work
    other = shutil.copytree(root, tmp_path / "elsewhere" / "ds")
    config = _split_config(root, emb, "test")
    config.datasets.append(_split_config(other, emb, "test").datasets[0])
    with pytest.raises(ValueError, match=r"^two datasets of the report are named 'ds' "):
        run_report(config, out, progress=False)


def test_a_report_whose_training_settings_changed_after_an_interrupted_fit_fits_anew(small, tmp_path, monkeypatch):  # noqa: F811
    """A fit interrupted in a report leaves its checkpoint in the report's adapter folder; re-run with other
    training settings, the report fits anew, as for any stage whose settings changed (before: `checkpoint …
    was written with a different configuration; remove it to start anew`). Same settings: it resumes."""
    import qama.train as T

    root, emb = small
    config = _split_config(root, emb, "test")
    config.train.update(steps=4, checkpoint_every=1)
    original, calls = T.compute_losses, {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(T, "compute_losses", crash)
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        run_report(config, out, progress=False)
    monkeypatch.setattr(T, "compute_losses", original)
    assert (out / "adapters" / "ds" / "checkpoint" / "meta.json").is_file()
    config.train["steps"] = 3
    resumed = run_report(config, out, progress=False)
    fresh = run_report(config, tmp_path / "fresh", progress=False)
    assert resumed["main"] == fresh["main"]
    assert not (out / "adapters" / "ds" / "checkpoint").exists()


def test_a_report_interrupted_after_refitting_its_adapter_never_takes_it_for_the_old_settings(
    small,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """A report re-run with other training settings replaces its adapter, then records the new settings in
    ``fit-key.json``. Interrupted between the two, and run again with the old settings, the report took the
    new adapter for the old settings' (``fit-key.json`` still named them) and measured it silently. The old
    ``fit-key.json`` is now removed before the adapter is replaced: the old settings fit anew (a stage of
    theirs already saved stays valid: its key holds the settings)."""
    import qama.evaluation.study as S

    root, emb = small
    config = _split_config(root, emb, "test")
    out = tmp_path / "report"
    first = run_report(config, out, progress=False)
    config.train["lr"] = 0.05  # other settings: the adapter is fitted anew into the same folder
    original = S._save

    def crash(path, key, result):
        if path.name == "fit-key.json":
            raise KeyboardInterrupt  # after the new adapter is saved, before its settings are recorded
        return original(path, key, result)

    monkeypatch.setattr(S, "_save", crash)
    with pytest.raises(KeyboardInterrupt):
        run_report(config, out, progress=False)
    monkeypatch.setattr(S, "_save", original)
    del config.train["lr"]
    config.plans = ["1bit"]  # a stage of the old settings that is not saved yet: measured with the adapter there
    again = run_report(config, out, progress=False)
    assert again["main"] == run_report(config, tmp_path / "fresh", progress=False)["main"]
    assert first["main"] != again["main"]


def test_the_speed_table_times_coding_the_queries_with_each_qama_search(monkeypatch):
    """qama's rows of the speed table are given the float queries, as the FP32 and peer rows are: coding them is
    timed with each search (before: the queries were coded once, before any clock started)."""
    from qama.encoders import ThresholdEncoder
    from qama.evaluation.speed import speed_table

    coded: list[int] = []
    encode_queries = ThresholdEncoder.encode_queries

    def counted(self, emb):
        coded.append(len(emb))
        return encode_queries(self, emb)

    monkeypatch.setattr(ThresholdEncoder, "encode_queries", counted)
    rows = speed_table(2000, 16, 8, singles=3)
    assert [r["method"] for r in rows] == [
        "fp32 (faiss IndexFlatIP)",
        "hybrid Hamming",
        "hybrid Hamming + rescore 4x",
        "hybrid Hamming + rescore 100",
        "hybrid asymmetric full scan (adc)",
    ]
    # the three methods that search by query codes, each: a warm-up batch and single, the batch, three singles
    assert coded == [8, 1, 8, 1, 1, 1] * 3
