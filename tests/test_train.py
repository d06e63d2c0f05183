"""The training loop: determinism, resume, schedules, switches and bad input."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import qama.train as T
from qama.adapter import DimensionError, QamaAdapter, mean_direction
from qama.codes import make_plan
from qama.train import ALL_TERMS, TrainConfig, ablate, fit, loss_schedules, lr_factor
from tests.conftest import interrupted_fit


def _embeddings(n: int = 96, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Every loss term on, so determinism and resume cover all of them.
TINY = TrainConfig(
    steps=6,
    batch_size=32,
    warmup_steps=2,
    progress=False,
    checkpoint_every=2,
    w_rank=0.5,
    w_nce=0.5,
    w_mse=1.0,
    **ALL_TERMS,
)


def _state(adapter: QamaAdapter) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in adapter.state_dict().items()}


def test_fit_changes_the_adapter_and_is_deterministic() -> None:
    x = _embeddings()
    a, b = _state(fit(x, TINY)), _state(fit(x, TINY))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["fc2.weight"], 0.0)  # training moved the FFN off its zero start
    c = _state(fit(x, dataclasses.replace(TINY, seed=1)))
    assert not np.array_equal(a["fc2.weight"], c["fc2.weight"])


def test_fit_saves_and_interrupted_run_resumes_to_the_same_adapter(tmp_path, monkeypatch) -> None:
    x = _embeddings()
    reference = _state(fit(x, TINY))
    interrupted_fit(monkeypatch, x, TINY, tmp_path / "ad", at_call=5)
    assert (tmp_path / "ad" / "checkpoint" / "meta.json").is_file()  # written after step 4
    resumed = fit(x, TINY, out_dir=tmp_path / "ad")
    state = _state(resumed)
    assert all(np.allclose(state[k], reference[k], atol=1e-6) for k in reference)
    assert not (tmp_path / "ad" / "checkpoint").exists()  # removed once the adapter is saved
    loaded = QamaAdapter.load(tmp_path / "ad")
    assert np.array_equal(loaded.encode(x, "hybrid"), resumed.encode(x, "hybrid"))
    assert loaded.metadata["training"]["steps"] == 6 and loaded.metadata["data"]["n_vectors"] == 96


def test_a_checkpoint_write_killed_between_its_renames_resumes_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    """A checkpoint is swapped in by two renames (``checkpoint`` to ``checkpoint.old``, ``checkpoint.tmp`` to
    ``checkpoint``): killed between them, the folder holds no ``checkpoint``. The next run resumes
    ``checkpoint.old`` (before: it started again at step 0, and its first checkpoint removed the old one)."""
    import os

    x = _embeddings()
    reference = _state(fit(x, TINY))
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst):
        if str(src).endswith("checkpoint.tmp"):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint (step 4): the first one is already checkpoint.old
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        fit(x, TINY, out_dir=tmp_path / "ad")
    monkeypatch.setattr(os, "replace", real_replace)
    out = tmp_path / "ad"
    assert not (out / "checkpoint").exists() and (out / "checkpoint.old" / "meta.json").is_file()
    steps = []
    original = T.compute_losses
    monkeypatch.setattr(T, "compute_losses", lambda *a, **k: steps.append(a[3]) or original(*a, **k))
    state = _state(fit(x, TINY, out_dir=out))
    assert steps == [2, 3, 4, 5]  # resumed at step 2, the checkpoint that was in place
    assert all(np.allclose(state[k], reference[k], atol=1e-6) for k in reference)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_a_checkpoint_is_on_disk_before_it_replaces_the_previous_one(tmp_path, monkeypatch) -> None:
    """A checkpoint's files are fsynced, and its folder, before the renames that make it the checkpoint,
    and the adapter folder after them, before the previous checkpoint is removed (before: nothing was
    fsynced, so a power cut could leave a renamed checkpoint with empty or cut files, the previous gone)."""
    import os
    import shutil
    import stat

    events: list = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, shutil.rmtree

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else st.st_size))
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", Path(dst).name))

    def rmtree(p, *args, **kwargs):
        if Path(p).exists():
            events.append(("remove", Path(p).name))
        real_rmtree(p, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    T._save_checkpoint(tmp_path / "checkpoint", QamaAdapter(T.AdapterConfig(dim=8)), _opt(), 2, TINY)
    first = events[:]
    assert first[:3] == [("fsync", first[0][1]), ("fsync", first[1][1]), ("fsync", "folder")], first
    assert first[0][1] > 0 and first[1][1] > 0  # state.safetensors and meta.json, whole
    assert first[3:] == [("rename", "checkpoint"), ("fsync", "folder")], first
    events.clear()
    T._save_checkpoint(tmp_path / "checkpoint", QamaAdapter(T.AdapterConfig(dim=8)), _opt(), 4, TINY)
    assert events[2:] == [
        ("fsync", "folder"),
        ("rename", "checkpoint.old"),
        ("rename", "checkpoint"),
        ("fsync", "folder"),
        ("remove", "checkpoint.old"),
    ], events


def _opt() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("cut", ["half", "empty", "missing"])
def test_a_checkpoint_whose_state_is_cut_short_is_refused_with_its_name(tmp_path, monkeypatch, cut) -> None:
    """A checkpoint's ``state.safetensors`` truncated (a power cut), empty or missing: one ``ValueError`` that
    names it and says how to start anew (before: safetensors' own ``SafetensorError``, a traceback in
    ``qama train``), and the checkpoint is left as it was."""
    x = _embeddings()
    interrupted_fit(monkeypatch, x, TINY, tmp_path, at_call=5)
    state = tmp_path / "checkpoint" / "state.safetensors"
    blob = state.read_bytes()
    if cut == "missing":
        state.unlink()
    else:
        state.write_bytes(blob[: len(blob) // 2] if cut == "half" else b"")
    message = f"{state}: " + ("file not found" if cut == "missing" else "unreadable or truncated checkpoint")
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        fit(x, TINY, out_dir=tmp_path)
    assert str(e.value).endswith(f"; remove {tmp_path / 'checkpoint'} to start anew")
    assert (tmp_path / "checkpoint" / "meta.json").is_file()


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, monkeypatch) -> None:
    x = _embeddings()
    interrupted_fit(monkeypatch, x, TINY, tmp_path, at_call=4)
    with pytest.raises(ValueError, match="was written with a different configuration; remove it to start anew"):
        fit(x, dataclasses.replace(TINY, lr=0.5), out_dir=tmp_path)


def test_resume_refuses_a_checkpoint_of_other_training_data(tmp_path, monkeypatch) -> None:
    """A checkpoint holds a fingerprint of the corpus and pairs it was written for: the same config on
    another corpus (or other pairs) is refused (before: resumed silently, an adapter trained partly on
    the other corpus, its weights up to 0.8 off the adapter of an uninterrupted run)."""
    x, y = _embeddings(seed=0), _embeddings(seed=1)
    interrupted_fit(monkeypatch, x, TINY, tmp_path / "a", at_call=5)
    message = r"checkpoint .*checkpoint was written for other training data \(the corpus or the pairs differ\)"
    with pytest.raises(ValueError, match=message + "; remove it to start anew$"):
        fit(y, TINY, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=message):
        fit(x, TINY, pairs=(y[:40], x[:40]), out_dir=tmp_path / "a")
    assert (tmp_path / "a" / "checkpoint" / "meta.json").is_file()  # left for the run it belongs to
    reference = _state(fit(x, TINY))
    state = _state(fit(x, TINY, out_dir=tmp_path / "a"))  # its own corpus resumes it
    assert all(np.allclose(state[k], reference[k], atol=1e-6) for k in reference)


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def test_loss_schedules_ramp() -> None:
    assert loss_schedules(0, 100) == {"quant": pytest.approx(0.2), "variance": pytest.approx(0.2)}
    end = loss_schedules(100, 100)
    assert end["quant"] == pytest.approx(1.0) and end["variance"] == pytest.approx(1.0)
    assert loss_schedules(50, 100)["variance"] == pytest.approx(max(0.2, (math.exp(0.5) - 1) / (math.e - 1)))


def test_switched_off_terms_are_not_computed() -> None:
    x = torch.from_numpy(_embeddings(n=32))
    adapter = QamaAdapter(T.AdapterConfig(dim=32))
    adapter.calibrate(x.numpy())
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(
        w_ortho=0.0,
        w_bottleneck=0.0,
        w_variance=0.0,
        w_quant=0.0,
        w_kl=0.0,
        w_mse=1.0,
        matryoshka=False,
        train_plans=("2bit",),
        batch_size=32,
    )
    parts = T.compute_losses(adapter, x, cfg, 0, gen, 1.0)
    assert sorted(parts) == ["mse@32/2bit", "mse@32/fp"]
    full = T.compute_losses(adapter, x, TrainConfig(batch_size=32, **ALL_TERMS), 0, gen, 1.0)
    assert {"ortho", "bottleneck", "variance", "quant", "kl@8/hybrid", "kl@8/fp"} <= set(full)
    assert all(torch.isfinite(v) for v in full.values())


def test_a_training_plan_is_left_out_at_a_nested_size_it_does_not_fit() -> None:
    # 40 dims nest as 10/20/40; hybrid has no plan at 10 or 20 (2.5 dimensions a segment; 5 to merge in
    # pairs): training failed at its first step (so did the defaults of a 312-dimensional model, hybrid at 78)
    x = _embeddings(d=40)
    adapter = QamaAdapter(T.AdapterConfig(dim=40))
    adapter.calibrate(x)
    gen = torch.Generator().manual_seed(0)
    cfg = TrainConfig(batch_size=32, w_mse=1.0, w_kl=0.0, w_rank=0.0, w_nce=0.0)
    parts = T.compute_losses(adapter, torch.from_numpy(x[:32]), cfg, 0, gen, 1.0)
    assert sorted(k for k in parts if k.startswith("mse@")) == [
        "mse@10/1bit", "mse@10/2bit", "mse@10/fp", "mse@20/1bit", "mse@20/2bit", "mse@20/fp",
        "mse@40/1bit", "mse@40/2bit", "mse@40/fp", "mse@40/hybrid",
    ]  # fmt: skip
    trained = fit(x, dataclasses.replace(TINY, checkpoint_every=0), pairs=(_embeddings(n=20, d=40, seed=1), x[:20]))
    assert trained.encode(x, "hybrid").shape == (len(x), make_plan("hybrid", 40).code_size)


def test_a_model_whose_sizes_no_hybrid_plan_fits_trains_an_adapter_without_hybrid() -> None:
    """A 300-dimensional model (GloVe averages) nests as 150/300, a 100-dimensional one as 50/100: hybrid
    fits none of their sizes. The adapter is trained for the plans that fit (before: `plans: 'hybrid' fits
    none of the sizes 150, 300 (...)` before training, with no option of `qama train` to avoid it)."""
    x = _embeddings(n=40, d=100)
    trained = fit(x, dataclasses.replace(TINY, steps=2, checkpoint_every=0))
    assert trained.config.plans == ("2bit", "1.5bit", "1bit") and trained.config.nested_dims == (50, 100)
    assert trained.encode(x, "2bit").shape == (40, make_plan("2bit", 100).code_size)
    assert "mse@100/2bit" in T.compute_losses(trained, torch.from_numpy(x[:32]), TINY, 0, torch.Generator(), 1.0)


def test_teacher_cosines_come_from_the_teacher_argument() -> None:
    """A student equal to its teacher has zero similarity loss: the start without the mean direction
    matches a teacher without it (what fit passes), not the raw embeddings."""
    x_np = _embeddings(n=32) + np.float32(0.3)
    x_np /= np.linalg.norm(x_np, axis=1, keepdims=True)
    x = torch.from_numpy(x_np)
    u = torch.from_numpy(mean_direction(x_np).astype(np.float32))
    projected = x - (x @ u)[:, None] * u[None]
    adapter = QamaAdapter(T.AdapterConfig(dim=32, init="identity"))  # drops the mean direction
    adapter.init_linear(x_np)
    assert torch.allclose(adapter(x), projected, atol=1e-5)
    cfg = TrainConfig(batch_size=32, quantized_weight=0.0, matryoshka=False, w_variance=0.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert float(T.compute_losses(adapter, x, cfg, 0, gen, 1.0, teacher=projected)["kl@32/fp"]) < 1e-6
        assert float(T.compute_losses(adapter, x, cfg, 0, gen, 1.0)["kl@32/fp"]) > 1e-3


def test_pairs_feed_info_nce() -> None:
    x = _embeddings()
    q = _embeddings(n=20, seed=1)
    adapter = fit(x, dataclasses.replace(TINY, checkpoint_every=0), pairs=(q, x[:20]))
    assert adapter.metadata["data"]["n_pairs"] == 20
    with pytest.raises(ValueError, match=r"^pairs are used only by the InfoNCE term, which is off: set w_nce > 0$"):
        fit(x, dataclasses.replace(TINY, w_nce=0.0), pairs=(q, x[:20]))
    # a third array was ignored, silently; one array of the corpus was read as rows
    with pytest.raises(ValueError, match=r"^pairs must be \(queries, documents\), two arrays; got 3$"):
        fit(x, TINY, pairs=(q, x[:20], x[:20]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^pairs must be \(queries, documents\), two arrays; got {len(x)}$"):
        fit(x, TINY, pairs=x)  # type: ignore[arg-type]


def test_pair_info_nce_scores_prefixes_and_codes_against_the_paired_document() -> None:
    """With pairs, InfoNCE is computed on the continuous prefix and on every training plan's codes,
    with the i-th document as the i-th query's positive: pairs that match (query = its document)
    score lower than the same vectors mismatched, and gradients reach the adapter through the codes."""
    x = torch.from_numpy(_embeddings(n=32))
    adapter = QamaAdapter(T.AdapterConfig(dim=32, nested_dims=(16, 32)))
    adapter.init_linear(x.numpy())
    adapter.calibrate(x.numpy())
    cfg = TrainConfig(batch_size=32, w_kl=0.0, w_nce=1.0, w_variance=0.0, train_plans=("2bit",))
    gen = torch.Generator().manual_seed(0)
    matched = T.compute_losses(adapter, x, cfg, 0, gen, 1.0, pairs=(x[:16], x[:16]))
    assert sorted(matched) == ["nce@16/2bit", "nce@16/fp", "nce@32/2bit", "nce@32/fp"]
    shuffled = T.compute_losses(adapter, x, cfg, 0, gen, 1.0, pairs=(x[:16], x[:16].roll(1, 0)))
    for name in matched:
        assert matched[name].item() < shuffled[name].item(), name
    matched["nce@32/2bit"].backward()
    assert adapter.fc2.weight.grad is not None and adapter.fc2.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors() -> None:
    x = _embeddings()
    bad = x.copy()
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"^embeddings contain NaN or inf values \(first at row 3\)$"):
        fit(bad, TINY)
    with pytest.raises(
        ValueError,
        match=r"^embeddings: 10 vectors are fewer than one batch \(32\); lower batch_size \(qama train "
        r"--train-batch-size\) or give more vectors$",
    ):
        fit(x[:10], TINY)
    with pytest.raises(DimensionError, match=r"^pair queries have dimension 8, but the adapter expects 32$"):
        fit(x, TINY, pairs=(np.ones((4, 8), np.float32), x[:4]))
    with pytest.raises(DimensionError, match=r"^embeddings must be a 2-D array \(n, d\), got shape \(96,\)$"):
        fit(x[:, 0], TINY)
    with pytest.raises(ValueError, match=r"^relax must be 'ste' or 'soft', got 'hard'$"):
        TrainConfig(relax="hard")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"temperature": 0.0}, "temperature must be positive, got 0.0"),
        ({"temperature_end": 0.0}, "temperature_end must be positive, got 0.0"),
        ({"kl_temperature": 0.0}, "kl_temperature must be positive, got 0.0"),
        ({"nce_temperature": 0.0}, "nce_temperature must be positive, got 0.0"),
        ({"ema_momentum": 5.0}, "ema_momentum must be in 0..1, got 5.0"),
    ],
)
def test_temperatures_and_the_ema_momentum_are_checked_with_the_config(setting, message) -> None:
    """Before: a temperature of 0 ended training with a ZeroDivisionError traceback (`qama report` with
    `temperature = 0.0` in [train], after embedding and the baselines) or a TrainingError at the first step;
    a momentum of 5 moved the thresholds away from the batch's quantiles, silently."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        TrainConfig(**setting)


def test_ablate_runs_each_switch(monkeypatch) -> None:
    x = _embeddings()
    seen = []

    def evaluate(adapter: QamaAdapter) -> dict[str, float]:
        seen.append(adapter.metadata["training"])
        return {"steps": float(adapter.metadata["training"]["steps"])}

    cfg = dataclasses.replace(TINY, steps=2, checkpoint_every=0)
    out = ablate(x, evaluate, cfg, names=["full", "no_matryoshka", "no_quantization"])
    assert list(out) == ["full", "no_matryoshka", "no_quantization"]
    assert [s["matryoshka"] for s in seen] == [True, False, True]
    assert [s["w_quant"] for s in seen] == [cfg.w_quant, cfg.w_quant, 0.0]
    with pytest.raises(ValueError, match="unknown ablation 'nope'"):
        ablate(x, evaluate, cfg, names=["nope"])


def test_teacher_neighbours_and_neighbour_batches() -> None:
    x = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.05]]), dim=1
    )
    nb = T.teacher_neighbours(x, 1)
    assert nb[:, 0].tolist() == [1, 0, 3, 2, 2]
    # a capped candidate pool still never returns a row as its own neighbour
    capped = T.teacher_neighbours(x, 1, max_candidates=4)
    assert all(capped[i, 0] != i for i in range(5))
    cfg = TrainConfig(batch_size=5, neighbour_group=2)
    idx = T.sample_batch(5, cfg, torch.Generator().manual_seed(0), nb)
    assert len(idx) == 5
    pairs = idx[:4].reshape(2, 2)
    assert all(nb[s, 0] == n for s, n in pairs.tolist())  # each seed followed by its neighbour
    with pytest.raises(ValueError, match=r"^neighbour_group must be in 1..batch_size, got 0$"):
        TrainConfig(neighbour_group=0)


@pytest.mark.slow
def test_scifact_start_and_short_fit_improve_nested_codes() -> None:
    """On SciFact: the adapter's start and a short fit beat the model's own coordinates at 96 dims."""
    from pathlib import Path

    from qama.codes import hamming_distances
    from qama.data import load_dataset
    from qama.embeddings import load_embeddings
    from qama.evaluation.metrics import Evaluator

    shared = Path(__file__).resolve().parents[2] / "shared"
    if not (shared / "embeddings" / "all-MiniLM-L6-v2" / "scifact" / "corpus.npy").is_file():
        pytest.skip(f"shared benchmark data not found at {shared}")
    ds = load_dataset(shared / "datasets" / "scifact", "test")
    corpus, queries = load_embeddings(shared / "embeddings" / "all-MiniLM-L6-v2" / "scifact", ds)
    queries = queries[ds.eval_query_rows]
    ev = Evaluator(ds)

    def ndcg_2bit_96(adapter: QamaAdapter) -> float:
        dist = hamming_distances(adapter.encode(queries, "2bit", 96), adapter.encode(corpus, "2bit", 96))
        return ev.from_scores(-dist.astype(np.float32))["ndcg@10"]

    own = QamaAdapter(T.AdapterConfig(dim=384, init="identity"))
    own.calibrate(corpus)
    fitted = fit(corpus, TrainConfig(steps=60, progress=False))
    assert ndcg_2bit_96(fitted) > ndcg_2bit_96(own) + 0.03


def test_a_training_plan_left_out_at_a_nested_size_is_logged_once_not_at_every_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # compute_losses runs at every step: `qama train` logs at INFO, so a 312-dimensional model wrote
    # "skipping plan hybrid at 78 dimensions" (and at 156) at every one of its steps
    x = _embeddings(d=40)
    adapter = QamaAdapter(T.AdapterConfig(dim=40))
    adapter.calibrate(x)
    cfg = TrainConfig(batch_size=32, w_mse=1.0, w_kl=0.0, w_rank=0.0, w_nce=0.0, train_plans=("2bit", "hybrid"))
    with caplog.at_level("INFO", logger="qama"):
        for step in range(5):
            T.compute_losses(adapter, torch.from_numpy(x[:32]), cfg, step, torch.Generator().manual_seed(0), 1.0)
    skipped = [r.getMessage() for r in caplog.records if "skipping plan" in r.getMessage()]
    assert len(skipped) <= 2  # at 10 and at 20 dimensions, once each


def test_a_fit_whose_never_worse_check_cannot_run_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A corpus without titles (no pairs) or with too few for a held-out set: the fit says the check was not
    run and that the adapter serves every plan and size unchecked (before: nothing was said, as if it passed)."""
    x = _embeddings(200)
    cfg = dataclasses.replace(TINY, checkpoint_every=0, w_nce=0.5)
    expected = (
        "never-worse check: not run ({}): every plan and size will be served by the adapter's codes, unchecked "
        "against untrained codes; `qama eval --adapter` on judged queries measures them"
    )
    for pairs, why in [(None, "no pseudo-query pairs"), ((x[:50], x[:50]), "50 pairs, fewer than 100")]:
        caplog.clear()
        with caplog.at_level("INFO", logger="qama"):
            adapter = fit(x, cfg, pairs=pairs)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("never-worse check")]
        assert said == [expected.format(why)] and "check" not in adapter.metadata
    caplog.clear()
    with caplog.at_level("INFO", logger="qama"):
        fit(x, dataclasses.replace(cfg, check=False))  # switched off: nothing to say
        fit(x, cfg, pairs=(x[:100], x[:100]))  # 20 held out: the check runs and says its own summary
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("never-worse check")]
    assert len(said) == 1 and not said[0].startswith("never-worse check: not run")


def test_the_check_of_a_corpus_a_little_over_its_search_size_searches_that_many(monkeypatch) -> None:
    """A corpus over ``CHECK_CORPUS_MAX`` documents with fewer than that besides the held-out targets (20,500 with
    1,000 held out): the check searches ``CHECK_CORPUS_MAX`` documents, the targets among them (before: a
    ``ValueError`` drawing 20,000 of the 19,500 others, at the end of the fit, and no adapter saved)."""
    import qama.check

    monkeypatch.setattr(qama.check, "CHECK_CORPUS_MAX", 150)
    x = _embeddings(160)
    adapter = fit(x, dataclasses.replace(TINY, checkpoint_every=0, check=False))
    rows = np.arange(0, 40, 2)  # 20 held-out targets: 140 others, fewer than 150
    searched = []
    known_item_gains = qama.check.known_item_gains

    def recorded(codes, query_codes, targets):
        searched.append((codes, targets))
        return known_item_gains(codes, query_codes, targets)

    monkeypatch.setattr(qama.check, "known_item_gains", recorded)
    results = qama.check.never_worse_check(adapter, x, x[rows], rows, None, ("2bit",))
    assert [(r.plan, r.dims) for r in results] == [("2bit", 32), ("2bit", 16), ("2bit", 8)]
    assert [len(codes) for codes, _ in searched] == [150] * 6
    plan = make_plan("2bit", 32)
    np.testing.assert_array_equal(searched[0][0][searched[0][1]], adapter.encode(x[rows], plan))


def test_an_ablation_scores_the_adapters_own_codes_where_its_check_lost(small) -> None:
    """The ablation score measures the fitted adapter's codes at every plan and size, also where its never-worse
    check lost (before: untrained codes there, the figure of no training at all, so that switching a term off
    that wrecked a size read as costing nothing)."""
    from qama.data import load_dataset
    from qama.embeddings import load_embeddings
    from qama.evaluation.metrics import Evaluator
    from qama.evaluation.rows import ablation_scorer, code_row

    root, emb = small
    ds = load_dataset(root)
    corpus, queries = load_embeddings(emb, ds)
    ev = Evaluator(ds)
    adapter = fit(corpus, dataclasses.replace(TINY, checkpoint_every=0))
    adapter.metadata["check"] = {"lost": ["2bit@32"]}
    judged = queries[ev.rows]
    plan = make_plan("2bit", 32)
    own = code_row("qama", "2bit", 32, adapter.encode(corpus, plan), adapter.encode(judged, plan, queries=True), ev)
    score = ablation_scorer(corpus, judged, ev)(adapter)
    assert score["2bit@32"] == own.metrics["ndcg@10"]


def test_an_infonce_weight_without_pairs_is_said_not_used(caplog):
    """``qama train --nce-weight 2 --pseudo-queries none`` (or a corpus without titles): the weight was
    ignored, silently."""
    from qama.train import info_nce_setup

    with caplog.at_level("WARNING"):
        assert info_nce_setup("tiny", None, None, "", 2.0) == (None, None, "tiny corpus embeddings (no labels)")
    assert [r.getMessage() for r in caplog.records] == [
        "InfoNCE weight 2 not used: tiny has no title pseudo-queries or labelled pairs"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        info_nce_setup("tiny", None, None, "", None)
    assert not caplog.records
