"""The bit layout: round trips at every precision and dimension, code sizes, Hamming = level L1."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qama.codes import BITS, Plan, Segment, hamming_distances, make_plan, pack, prefix_plan, unpack

BITS_LIST = sorted(BITS)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """Random plans of 1-4 segments, any precision, dimensions not necessarily multiples of 8."""
    segments = []
    for _ in range(draw(st.integers(1, 4))):
        bits = draw(st.sampled_from(BITS_LIST))
        dims = draw(st.integers(1, 70))
        if bits == 0.5:
            dims = 2 * max(1, dims // 2)
        segments.append(Segment(dims, bits))
    return Plan("random", tuple(segments))


@st.composite
def plan_and_levels(draw: st.DrawFn, max_rows: int = 6) -> tuple[Plan, np.ndarray]:
    plan = draw(plans())
    n = draw(st.integers(0, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    levels = np.random.default_rng(seed).integers(0, plan.value_levels, size=(n, plan.n_values))
    return plan, levels


@settings(max_examples=150, deadline=None)
@given(plan_and_levels(), st.sampled_from([1, 8]))
def test_pack_unpack_round_trip(pl: tuple[Plan, np.ndarray], align: int) -> None:
    plan, levels = pl
    codes = pack(levels, plan, chunk=4, align=align)
    assert codes.dtype == np.uint8
    assert codes.shape == (len(levels), plan.row_size(align))
    assert plan.code_size == -(-plan.n_bits // 8)
    np.testing.assert_array_equal(unpack(codes, plan), levels)
    # padding bits and bytes are zero
    bits = np.unpackbits(codes, axis=-1)
    assert not bits[:, plan.n_bits :].any()


@settings(max_examples=150, deadline=None)
@given(plan_and_levels(max_rows=5))
def test_hamming_is_l1_level_distance(pl: tuple[Plan, np.ndarray]) -> None:
    plan, levels = pl
    codes = pack(levels, plan, align=8)
    expected = np.abs(levels[:, None, :] - levels[None, :, :]).sum(axis=-1)
    np.testing.assert_array_equal(hamming_distances(codes, codes), expected)


@pytest.mark.parametrize("name", ["2bit", "1.5bit", "1bit", "0.5bit", "hybrid"])
@pytest.mark.parametrize("dim", [8, 12, 18, 96, 100, 384])
def test_builtin_plans_every_dimension(name: str, dim: int) -> None:
    try:
        plan = make_plan(name, dim)
    except ValueError:
        assert name in ("0.5bit", "hybrid")  # only these need even / quarter-even dimensions
        return
    bits_per_value = {"2bit": 3, "1.5bit": 2, "1bit": 1, "0.5bit": 1}
    if name != "hybrid":
        n_values = dim // 2 if name == "0.5bit" else dim
        assert plan.n_bits == n_values * bits_per_value[name]
    levels = np.random.default_rng(dim).integers(0, plan.value_levels, size=(7, plan.n_values))
    np.testing.assert_array_equal(unpack(pack(levels, plan), plan), levels)


def test_code_sizes() -> None:
    hybrid = make_plan("hybrid", 384)
    assert (hybrid.n_bits, hybrid.code_size, hybrid.row_size(8)) == (624, 78, 80)
    assert make_plan("2bit", 384).code_size == 144
    assert make_plan("1bit", 384).code_size == 48
    assert make_plan("1bit", 12).code_size == 2 and make_plan("1bit", 12).row_size(8) == 8
    assert 1536 / hybrid.row_size(8) >= 19


def test_thermometer_codebook() -> None:
    plan = make_plan("2bit", 1)
    assert [np.unpackbits(pack(np.array([[lv]]), plan))[:3].tolist() for lv in range(4)] == [
        [0, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
    ]  # bit i (i-th in the stream) is set iff level > i


def test_pack_refuses_bad_levels() -> None:
    plan = make_plan("1.5bit", 4)
    with pytest.raises(ValueError, match="out of range"):
        pack(np.array([[0, 1, 2, 3]]), plan)
    with pytest.raises(ValueError, match="shape"):
        pack(np.zeros((2, 3), dtype=int), plan)
    with pytest.raises(ValueError, match="uint8"):
        unpack(np.zeros((2, 0), dtype=np.uint8), plan)


def test_pack_refuses_levels_that_are_not_whole_numbers() -> None:
    """A float level 0.5 set the bits of level 1, 1.7 those of level 2, and NaN none: packed silently
    (the range check passed them). Whole levels of any dtype pack as their integers."""
    plan = make_plan("2:2,2:1", 4)
    ints = np.array([[0, 3, 1, 0], [2, 1, 0, 1]])
    for levels in (ints.astype(np.float64), ints.astype(np.uint8), ints.astype(np.float32)):
        np.testing.assert_array_equal(pack(levels, plan), pack(ints, plan))
    for bad in (0.5, 1.7, np.nan):
        levels = ints.astype(np.float64)
        levels[1, 0] = bad
        with pytest.raises(ValueError, match="levels must be whole numbers for plan '2:2,2:1', got float64 levels"):
            pack(levels, plan)
    with pytest.raises(ValueError, match="out of range"):
        pack(np.where(ints == 3, np.inf, ints), plan)


def test_prefix_plan_is_code_prefix() -> None:
    plan = make_plan("hybrid", 384)
    levels = np.random.default_rng(1).integers(0, plan.value_levels, size=(5, plan.n_values))
    codes = pack(levels, plan)
    for dims, nbytes in ((96, 36), (192, 60)):
        prefix, n = prefix_plan(plan, dims)
        assert n == nbytes
        np.testing.assert_array_equal(pack(levels[:, : prefix.n_values], prefix), codes[:, :n])
    with pytest.raises(ValueError, match="segment boundary"):
        prefix_plan(plan, 100)
    with pytest.raises(ValueError, match="whole bytes"):
        prefix_plan(Plan("p", (Segment(3, 1.0), Segment(5, 1.0))), 3)


def test_hamming_distances_bound_their_temporary_memory(monkeypatch) -> None:
    """The XOR of 256 rows of ``a`` with all of ``b`` was made at once (``(256, len(b), w)`` bytes, twice:
    2 GB for mteb's similarity of 300 queries with 50,000 documents of 78 bytes, 60 MB of result)."""
    import tracemalloc

    import qama.codes as C

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (64, 13), dtype=np.uint8), rng.integers(0, 256, (3000, 13), dtype=np.uint8)
    expected = np.bitwise_count(a[:, None, :] ^ b[None, :, :]).sum(-1)
    monkeypatch.setattr(C, "DISTANCE_BLOCK_BYTES", 1 << 16, raising=False)
    tracemalloc.start()
    try:
        got = hamming_distances(a, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert peak < 64 * 3000 * 4 + 8 * (1 << 16), peak  # the result and a few blocks (before: 2 x 2.5 MB)
    assert hamming_distances(a, b[:0]).shape == (64, 0) and hamming_distances(a[:0], b).shape == (0, 3000)
