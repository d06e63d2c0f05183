"""The adapter: start, thresholds, quantiser, codes, persistence and input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qama.adapter import AdapterConfig, DimensionError, PairMerge, QamaAdapter
from qama.codes import make_plan, pack
from qama.quantize import plan_values


def _embeddings(n: int = 200, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_config_defaults_and_validation() -> None:
    assert AdapterConfig(dim=384).nested_dims == (96, 192, 384)
    assert AdapterConfig(dim=768, nested_dims=(96, 192, 384, 768)).nested_dims == (96, 192, 384, 768)
    with pytest.raises(ValueError, match=r"nested_dims must be ascending, distinct, positive and end at dim=16"):
        AdapterConfig(dim=16, nested_dims=(8, 4, 16))
    with pytest.raises(ValueError, match=r"nested_dims must be even \(0.5-bit merges pairs\), got \(5, 16\)"):
        AdapterConfig(dim=16, nested_dims=(5, 16))
    with pytest.raises(ValueError, match=r"init must be one of identity, pca, pca_blocks, got 'random'"):
        AdapterConfig(dim=16, init="random")


def test_untrained_adapter_is_identity_and_prefixes_nest() -> None:
    x = _embeddings()
    adapter = QamaAdapter(AdapterConfig(dim=16, expansion=2, init="identity", drop_mean_direction=False))
    adapter.init_linear(x)  # no-op for the identity start
    z = adapter.transform(x)
    assert z.dtype == np.float32 and np.allclose(z, x, atol=1e-6)
    assert np.array_equal(adapter.transform(x, 8), z[:, :8])


def test_pca_start_orders_variance() -> None:
    x = _embeddings() * np.linspace(0.1, 2.0, 16, dtype=np.float32)
    adapter = QamaAdapter(AdapterConfig(dim=16, init="pca"))
    adapter.init_linear(x)
    var = adapter.transform(x).var(axis=0)
    assert np.all(np.diff(var) <= 1e-6)  # principal axes: variance falls with the index


def test_pca_blocks_start_nests_principal_subspaces() -> None:
    x = _embeddings(n=300) * np.linspace(2.0, 0.1, 16, dtype=np.float32)
    adapter = QamaAdapter(AdapterConfig(dim=16, nested_dims=(4, 8, 16), init="pca_blocks", drop_mean_direction=False))
    adapter.init_linear(x)
    w = adapter.skip.weight.detach().numpy().astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)

    def in_span(rows: np.ndarray, k: int) -> bool:  # rows lie in the span of the top-k principal axes
        return np.allclose(rows @ vt[:k].T @ vt[:k], rows, atol=1e-5)

    assert in_span(w[:4], 4) and in_span(w[4:8], 8) and not in_span(w[4:8], 4)
    assert in_span(w[8:], 8)  # the last level re-projects the top 8 axes
    assert np.allclose(w @ w.T, np.block([[np.eye(8), w[:8] @ w[8:].T], [w[8:] @ w[:8].T, np.eye(8)]]), atol=1e-5)


@pytest.mark.parametrize("init", ["identity", "pca", "pca_blocks"])
def test_start_drops_the_corpus_mean_direction(init: str) -> None:
    x = _embeddings(n=300) + 0.5  # a common offset: every vector leans toward (1, ..., 1)
    u = x.mean(0) / np.linalg.norm(x.mean(0))
    adapter = QamaAdapter(AdapterConfig(dim=16, nested_dims=(4, 8, 16), init=init))
    adapter.init_linear(x)
    w = adapter.skip.weight.detach().numpy()
    assert np.abs(w @ u).max() < 1e-5  # the mean direction maps to 0 ...
    shifted = x + np.float32(3.0) * u.astype(np.float32)
    # ... so moving along it changes nothing
    assert np.allclose(adapter.transform(shifted), adapter.transform(x), atol=1e-5)
    if init == "identity":  # and everything orthogonal to it passes unchanged
        assert np.allclose(w, np.eye(16) - np.outer(u, u), atol=1e-6)
    centred = QamaAdapter(AdapterConfig(dim=16, init="identity"))
    centred.init_linear(x - x.mean(0))  # no mean direction to drop: the identity start stays whole
    assert np.allclose(centred.skip.weight.detach().numpy(), np.eye(16), atol=1e-6)


def test_thresholds_start_at_corpus_quantiles() -> None:
    x = _embeddings(n=401)
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.calibrate(x)
    assert np.allclose(adapter.thr_2bit.numpy(), np.quantile(x, [0.25, 0.5, 0.75], axis=0).T, atol=1e-6)
    assert np.allclose(adapter.thr_1_5bit.numpy(), np.quantile(x, [1 / 3, 2 / 3], axis=0).T, atol=1e-6)
    assert np.allclose(adapter.thr_1bit.numpy()[:, 0], np.median(x, axis=0), atol=1e-6)
    merged = adapter.values(x, "0.5bit")
    assert np.allclose(adapter.thr_0_5bit.numpy()[:, 0], np.median(merged, axis=0), atol=1e-5)


def test_ema_update_moves_thresholds_by_one_minus_momentum() -> None:
    x = _embeddings()
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.calibrate(x)
    before = adapter.thr_2bit.clone()
    batch = torch.from_numpy(x[:50] + 1.0)  # every batch quantile is 1 higher... roughly
    batch_thr = adapter.batch_statistics(batch)["thr_2bit"]
    adapter.update_statistics(batch, momentum=0.9)
    assert torch.allclose(adapter.thr_2bit, 0.9 * before + 0.1 * batch_thr, atol=1e-6)


def test_pair_merge_starts_as_scaled_sum() -> None:
    merge = PairMerge(hidden=4)
    pairs = torch.tensor([[[1.0, 2.0], [-1.0, 0.5]]])
    assert torch.allclose(merge(pairs), torch.tensor([[3.0, -0.5]]) / 2**0.5)


def test_quantizer_and_codes_agree_with_qama_quantize() -> None:
    x = _embeddings(n=300)
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.calibrate(x)
    for spec, dim in [("2bit", 16), ("1.5bit", 8), ("1bit", 16), ("hybrid", 16), ("hybrid", 8)]:
        plan = make_plan(spec, dim)
        values = adapter.values(x, spec, dim)
        assert values.shape == (300, plan.n_values)
        q = adapter.quantizer(spec, dim)
        assert q.thresholds.shape == (plan.n_values, 3) and q.centroids.shape == (plan.n_values, 4)
        levels = q.levels(values)
        # each value's levels are balanced: its thresholds are its own quantiles on x
        for j, n_levels in enumerate(plan.value_levels):
            counts = np.bincount(levels[:, j], minlength=n_levels)
            assert counts.min() >= 300 // n_levels - 2
        codes = adapter.encode(x, spec, dim)
        assert codes.dtype == np.uint8 and codes.shape == (300, plan.code_size)
        assert np.array_equal(codes, pack(levels, plan))
    # without 0.5-bit segments, values are exactly qama.quantize.plan_values of the transform
    plan = make_plan("25%:2,25%:1.5,50%:1", 16)
    assert np.array_equal(adapter.values(x, plan), plan_values(adapter.transform(x), plan))


def test_straight_through_bits_are_exact_forward_with_gradient() -> None:
    x = torch.from_numpy(_embeddings(n=64))
    adapter = QamaAdapter(AdapterConfig(dim=16))
    adapter.calibrate(x.numpy())
    adapter.fc2.weight.data.normal_(0, 0.01)  # make the FFN path live so W1 gets gradient too
    z = adapter(x)
    plan = make_plan("hybrid", 16)
    ste = torch.cat([b for b, _ in adapter.plan_levels(z, plan, temperature=0.3, hard=True)], 1)
    exact = torch.cat([b for b, _ in adapter.plan_levels(z, plan, temperature=0.0)], 1)
    assert torch.allclose(ste.detach(), exact, atol=1e-6) and ste.shape == (64, plan.n_bits)
    soft = torch.cat([b for b, _ in adapter.plan_levels(z, plan, temperature=0.3, hard=False)], 1)
    assert soft.min() > 0 and soft.max() < 1
    ste.sum().backward()
    assert torch.count_nonzero(adapter.fc1.weight.grad) > 0
    assert torch.count_nonzero(adapter.skip.weight.grad) > 0


def test_save_load_round_trip(tmp_path) -> None:
    x = _embeddings()
    adapter = QamaAdapter(AdapterConfig(dim=16, model_name="tiny"), {"data": {"description": "random"}})
    adapter.fc2.weight.data.normal_(0, 0.05)
    adapter.merge.fc2.weight.data.normal_(0, 0.5)
    adapter.calibrate(x)
    adapter.save(tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["adapter"]["nested_dims"] == [4, 8, 16] and config["data"]["description"] == "random"
    loaded = QamaAdapter.load(tmp_path / "ad")
    assert np.array_equal(loaded.transform(x), adapter.transform(x))
    for spec in ("2bit", "hybrid"):
        assert np.array_equal(loaded.encode(x, spec), adapter.encode(x, spec))
    assert loaded.config == adapter.config


def test_two_interrupted_saves_in_a_row_leave_the_adapter_loadable(tmp_path, monkeypatch) -> None:
    """A save interrupted after its weights, before its config, leaves the config naming the previous
    weights (kept as ``model.safetensors.prev``). A second save then moved the unrecorded weights over
    ``.prev``: interrupted in turn before its config, no file held the weights the config names (the
    adapter no longer loaded). ``.prev`` is kept when it holds the recorded weights."""
    import qama.adapter as A

    x = _embeddings()
    adapters = []
    for seed in range(3):
        torch.manual_seed(seed)
        adapter = QamaAdapter(AdapterConfig(dim=16))
        adapter.fc2.weight.data.normal_(0, 0.05)
        adapter.calibrate(x)
        adapters.append(adapter)
    adapters[0].save(tmp_path / "ad")
    real_write_json, real_atomic_open = A.write_json, A.atomic_open

    def no_config(path, obj):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "write_json", no_config)
    with pytest.raises(KeyboardInterrupt):
        adapters[1].save(tmp_path / "ad")  # new weights written, the config still names the first's

    def no_weights(path, mode="wb"):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "atomic_open", no_weights)
    with pytest.raises(KeyboardInterrupt):
        adapters[2].save(tmp_path / "ad")  # interrupted before its weights are written
    monkeypatch.setattr(A, "write_json", real_write_json)
    monkeypatch.setattr(A, "atomic_open", real_atomic_open)
    loaded = QamaAdapter.load(tmp_path / "ad")
    assert np.array_equal(loaded.transform(x), adapters[0].transform(x))
    adapters[2].save(tmp_path / "ad")  # a save that completes
    assert np.array_equal(QamaAdapter.load(tmp_path / "ad").transform(x), adapters[2].transform(x))
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["config.json", "model.safetensors"]


def test_load_missing_folder_says_what_is_missing(tmp_path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"config.json not found: an adapter folder holds config.json and model"
    ):
        QamaAdapter.load(tmp_path)


def test_bad_inputs_raise_clear_errors() -> None:
    adapter = QamaAdapter(AdapterConfig(dim=16, model_name="m"))
    with pytest.raises(
        DimensionError,
        match=r"^embeddings have dimension 8, but the adapter was trained for 16-dimensional embeddings of m$",
    ):
        adapter.transform(np.zeros((3, 8), dtype=np.float32))
    bad = _embeddings(n=5)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"^embeddings contain NaN or inf values \(first at row 2\)$"):
        adapter.transform(bad)
    with pytest.raises(ValueError, match=r"^dim must be an even number in 2..16, got 7$"):
        adapter.transform(_embeddings(n=5), 7)


@pytest.mark.parametrize("plan", ["2bit", "1.5bit", "1bit", "0.5bit", "hybrid"])
def test_no_rows_encode_to_no_codes(plan: str) -> None:
    """``qama.encode(adapter, emb[:0])`` of a plan with 0.5-bit values raised torch's ``cannot reshape
    tensor of 0 elements into shape [0, -1, 2] …``."""
    import qama

    adapter = QamaAdapter(AdapterConfig(dim=16))
    p = adapter.plan(plan)
    empty = _embeddings(n=5)[:0]
    assert adapter.values(empty, plan).shape == (0, p.n_values)
    codes = qama.encode(adapter, empty, plan)
    assert codes.shape == (0, p.code_size) and codes.dtype == np.uint8
    assert adapter.encode(empty, plan, 8, queries=True).shape == (0, adapter.plan(plan, 8).code_size)
