"""Each loss term on hand-made tensors: a value computable by hand and a gradient that flows."""

from __future__ import annotations

import math

import pytest
import torch

from qama import losses as L


def test_cosine_matrix_hand_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    s = L.cosine_matrix(a)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, r, 0.0], [r, 1.0, r], [0.0, r, 1.0]])
    assert torch.allclose(s, expected, atol=1e-6)


def test_hamming_similarity_counts_differing_bits() -> None:
    a = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    assert L.hamming_similarity(a, b).tolist() == [[0.5, 1.0]]  # 2 of 4 bits differ; identical


def test_hamming_similarity_soft_bits_is_expected_distance_and_has_gradient() -> None:
    a = torch.tensor([[0.5, 1.0]], requires_grad=True)
    b = torch.tensor([[0.5, 0.0]])
    s = L.hamming_similarity(a, b)
    # expected distance: 0.5·0.5 + 0.5·0.5 (first bit) + 1 (second bit) = 1.5 of 2 bits
    assert s.item() == pytest.approx(1 - 1.5 / 2)
    s.sum().backward()
    assert a.grad is not None and torch.count_nonzero(a.grad) > 0


def test_row_standardize_ignores_diagonal() -> None:
    s = torch.tensor([[9.0, 1.0, 2.0, 3.0]] * 4)  # a 4x4 matrix whose first row's off-diagonal is 1, 2, 3
    out = L.row_standardize(s)
    sd = math.sqrt(2 / 3)
    assert out[0].tolist() == pytest.approx([0.0, -1 / sd, 0.0, 1 / sd], abs=1e-4)


def test_similarity_mse_zero_when_equal_and_four_when_reversed() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 6)
    s = x + x.T
    assert L.similarity_mse(s, s).item() == pytest.approx(0.0, abs=1e-6)
    # standardised rows have unit variance: (z − (−z))² = 4z² averages 4
    assert L.similarity_mse(s, -s).item() == pytest.approx(4.0, rel=1e-4)
    # without standardisation it is the plain mean over off-diagonal entries
    a, b = torch.zeros(3, 3), torch.full((3, 3), 2.0)
    assert L.similarity_mse(a, b, standardize=False).item() == pytest.approx(4.0)


def test_symmetric_kl_hand_value_and_gradient() -> None:
    s_x = torch.tensor([[0.0, math.log(3.0)]])  # P = (1/4, 3/4)
    s_y = torch.zeros(1, 2, requires_grad=True)  # Q = (1/2, 1/2)
    kl_pq = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    kl_qp = 0.5 * math.log(2.0) + 0.5 * math.log(2 / 3)
    value = L.symmetric_kl(s_x, s_y, temperature=1.0, standardize=False)
    assert value.item() == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-5)
    value.backward()
    assert torch.count_nonzero(s_y.grad) > 0
    assert L.symmetric_kl(s_x, s_x, standardize=False).item() == pytest.approx(0.0, abs=1e-7)


def test_rank_loss_hand_values() -> None:
    s_x = torch.tensor([[0.0, 0.9, 0.1]])
    j, k = torch.tensor([[1]]), torch.tensor([[2]])
    flat = torch.zeros(1, 3, requires_grad=True)
    value = L.rank_loss(s_x, flat, j, k, sharpness=5.0, standardize=False)
    assert value.item() == pytest.approx(math.log(2.0))  # softplus(0)
    value.backward()
    assert flat.grad[0, 1] < 0 < flat.grad[0, 2]  # raise s_01, lower s_02
    right = torch.tensor([[0.0, 1.0, 0.0]])
    assert L.rank_loss(s_x, right, j, k, 5.0, False).item() == pytest.approx(math.log1p(math.exp(-5.0)))
    ties = torch.tensor([[0.0, 0.5, 0.5]])
    assert L.rank_loss(ties, right, j, k, 5.0, False).item() == 0.0  # tied teacher: no signal


def test_info_nce_hand_values() -> None:
    s = torch.zeros(1, 2, requires_grad=True)
    value = L.info_nce(s, torch.tensor([0]), temperature=1.0, exclude_self=False)
    assert value.item() == pytest.approx(math.log(2.0))
    value.backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]
    # square matrix, in-batch neighbours: the diagonal is not a candidate
    sq = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    assert L.info_nce(sq, torch.tensor([1, 2, 0]), 1.0).item() == pytest.approx(math.log(2.0))


def test_nearest_neighbours_skips_self() -> None:
    s = torch.tensor([[1.0, 0.2, 0.5], [0.2, 1.0, 0.1], [0.5, 0.1, 1.0]])
    assert L.nearest_neighbours(s).tolist() == [2, 0, 0]


def test_orthogonality_zero_for_uncorrelated_levels_and_one_for_copies() -> None:
    a = torch.tensor([1.0, -1.0, 1.0, -1.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])
    z = torch.stack([a, b], dim=1).requires_grad_(True)  # two levels of one dimension each
    assert L.orthogonality(z, (1, 2)).item() == pytest.approx(0.0, abs=1e-5)
    copy = torch.stack([a, 2 * a], dim=1).requires_grad_(True)
    value = L.orthogonality(copy, (1, 2))
    assert value.item() == pytest.approx(1.0, abs=1e-5)
    w = torch.stack([a, a + 0.5 * b], dim=1).requires_grad_(True)
    L.orthogonality(w, (1, 2)).backward()
    assert torch.count_nonzero(w.grad) > 0


def test_information_bottleneck_hand_value() -> None:
    z = torch.ones(3, 2, requires_grad=True)
    # x0 = 0, α = 1: each term is |z| = 1; weights 1/2 and 2/2; sum 1.5 over 2 dimensions -> 0.75
    value = L.information_bottleneck(z, x0=0.0, alpha=1.0)
    assert value.item() == pytest.approx(0.75, rel=1e-5)
    value.backward()
    assert z.grad[0, 1] > z.grad[0, 0] > 0  # later dimensions pay more


def test_variance_control_hand_value() -> None:
    z = torch.stack([torch.zeros(4), torch.tensor([-2.0, 2.0, -2.0, 2.0])], dim=1).requires_grad_(True)
    # dimension 0: std 0 -> (1 − 0)² = 1; dimension 1: std ≫ floor -> 0; mean 0.5
    value = L.variance_control(z, floor=0.5)
    assert value.item() == pytest.approx(0.5)
    z2 = torch.tensor([[0.1, 0.0], [-0.1, 0.0], [0.1, 0.0], [-0.1, 0.0]], requires_grad=True)
    L.variance_control(z2, floor=0.5).backward()
    assert torch.count_nonzero(z2.grad[:, 0]) == 4


def test_quantization_regularizer_hand_values() -> None:
    thr = torch.tensor([[0.0]])
    lo, hi, scale = torch.tensor([-1.0]), torch.tensor([1.0]), torch.tensor([1.0])
    on_boundary = torch.tensor([[0.0]], requires_grad=True)
    assert L.quantization_regularizer(on_boundary, thr, lo, hi, scale, margin=0.1).item() == pytest.approx(1.0)
    inside = torch.tensor([[0.1]], requires_grad=True)
    value = L.quantization_regularizer(inside, thr, lo, hi, scale, margin=0.1)
    assert value.item() == pytest.approx(math.exp(-1.0), rel=1e-5)
    value.backward()
    assert -inside.grad.item() > 0  # a descent step moves the value away from the threshold
    outside = torch.tensor([[3.0]], requires_grad=True)
    value = L.quantization_regularizer(outside, thr, lo, hi, scale, margin=0.1, range_weight=1.0)
    assert value.item() == pytest.approx(math.exp(-30.0) + 4.0, rel=1e-5)  # (3 − 1)² out of range
    value.backward()
    assert -outside.grad.item() < 0  # a descent step moves the value back into range
