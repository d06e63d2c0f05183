"""QAMA loss terms as pure functions on tensors.

Every term takes tensors and returns a scalar tensor, so each one can be tested on hand-made
inputs and switched off on its own (:class:`qama.train.TrainConfig` holds one weight per term; a
weight of 0 switches a term off and it is not computed). The trainer sums the weighted terms and
logs each one by name.

Similarity matrices are in-batch ``(B, B)`` matrices. The teacher's ``s_x`` is the cosine matrix of
the frozen embeddings; the student's ``s_y`` is the cosine matrix of the adapter's prefix (continuous)
or the Hamming similarity of its codes (quantised, :func:`hamming_similarity`). Cosine and Hamming
similarities live on different scales, so the similarity losses compare *row-standardised*
matrices (each row, diagonal left out, shifted to mean 0 and scaled to standard deviation 1): what
search needs is the order within a row, not the absolute value.

Terms (name: function):

- ``mse``: :func:`similarity_mse`, mean squared difference of the standardised matrices;
- ``kl``: :func:`symmetric_kl`, ½[KL(P_x‖P_y) + KL(P_y‖P_x)], ``P = row-softmax(S/τ)``;
- ``rank``: :func:`rank_loss`, sampled triplets ``(i, j, k)``: the teacher's order of ``s_ij`` and
  ``s_ik`` should hold for the student, through ``softplus(−t·sign·(y_ij − y_ik))``;
- ``nce``: :func:`info_nce`, InfoNCE with given positives (query-document pairs or the teacher's
  nearest in-batch neighbour);
- ``ortho``: :func:`orthogonality`, correlation of each nested level's new dimensions with the
  dimensions of earlier levels;
- ``bottleneck``: :func:`information_bottleneck`, ``Σ_i (i/n)·(z_i²/(x0+|z_i|))^α``;
- ``variance``: :func:`variance_control`, penalty on dimensions whose batch standard deviation falls
  below a floor;
- ``quant``: :func:`quantization_regularizer`, pushes values away from the thresholds and inside the
  valid range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "cosine_matrix",
    "hamming_similarity",
    "row_standardize",
    "similarity_mse",
    "symmetric_kl",
    "rank_loss",
    "info_nce",
    "nearest_neighbours",
    "orthogonality",
    "information_bottleneck",
    "variance_control",
    "quantization_regularizer",
]


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``(A, m)``, ``(B, m)`` -> ``(A, B)`` cosine similarities (``b = a`` when left out)."""
    a = F.normalize(a, dim=-1, eps=1e-8)
    b = a if b is None else F.normalize(b, dim=-1, eps=1e-8)
    return a @ b.T


def hamming_similarity(bits_a: torch.Tensor, bits_b: torch.Tensor | None = None) -> torch.Tensor:
    """``1 − Hamming/n_bits`` between rows of ``(A, n)``, ``(B, n)`` bit matrices.

    Written as ``|a| + |b| − 2·a·b``, which is the Hamming distance for 0/1 bits and its expectation
    for independent soft bits in [0, 1], so gradients flow through soft or straight-through bits.
    """
    bits_b = bits_a if bits_b is None else bits_b
    n = bits_a.shape[1]
    dist = bits_a.sum(1, keepdim=True) + bits_b.sum(1)[None, :] - 2 * bits_a @ bits_b.T  # (A, B)
    return 1 - dist / n


def _off_diagonal(s: torch.Tensor) -> torch.Tensor:
    """Mask, True off the diagonal of a square ``(B, B)`` matrix (all True if not square)."""
    mask = torch.ones_like(s, dtype=torch.bool)
    if s.shape[0] == s.shape[1]:
        mask.fill_diagonal_(False)
    return mask


def row_standardize(s: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each row shifted to mean 0 and scaled to standard deviation 1 over its off-diagonal entries.

    The diagonal (self-similarity) of a square matrix is set to 0 and left out of the statistics.
    """
    mask = _off_diagonal(s)
    n = mask.sum(1, keepdim=True)
    mean = (s * mask).sum(1, keepdim=True) / n
    var = (((s - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (s - mean) / (var + eps).sqrt() * mask


def similarity_mse(s_x: torch.Tensor, s_y: torch.Tensor, standardize: bool = True) -> torch.Tensor:
    """Mean squared difference of two similarity matrices (off-diagonal entries).

    With ``standardize`` both are row-standardised first, so the value is ``2·(1 − mean row correlation)``.
    """
    if standardize:
        s_x, s_y = row_standardize(s_x), row_standardize(s_y)
    mask = _off_diagonal(s_x)
    return ((s_x - s_y) ** 2 * mask).sum() / mask.sum()


def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=1).masked_fill(~mask, 0.0)


def symmetric_kl(
    s_x: torch.Tensor, s_y: torch.Tensor, temperature: float = 0.5, standardize: bool = True
) -> torch.Tensor:
    """½[KL(P_x‖P_y) + KL(P_y‖P_x)] of the row distributions ``P = softmax(S/τ)``, mean over rows.

    The diagonal of a square matrix is left out of the distributions.
    """
    if standardize:
        s_x, s_y = row_standardize(s_x), row_standardize(s_y)
    mask = _off_diagonal(s_x)
    lp_x = _masked_log_softmax(s_x / temperature, mask)
    lp_y = _masked_log_softmax(s_y / temperature, mask)
    p_x, p_y = lp_x.exp() * mask, lp_y.exp() * mask
    kl_xy = (p_x * (lp_x - lp_y)).sum(1)
    kl_yx = (p_y * (lp_y - lp_x)).sum(1)
    return 0.5 * (kl_xy + kl_yx).mean()


def rank_loss(
    s_x: torch.Tensor,
    s_y: torch.Tensor,
    j: torch.Tensor,
    k: torch.Tensor,
    sharpness: float = 5.0,
    standardize: bool = True,
) -> torch.Tensor:
    """Rank preservation on triplets ``(i, j[i, t], k[i, t])``: ``mean softplus(−t·sign(x_ij − x_ik)·(y_ij − y_ik))``.

    ``j`` and ``k`` are ``(B, T)`` column indices (T triplets per anchor row). Triplets whose teacher
    similarities tie count for nothing. ``softplus(−u)`` is ``−log σ(u)``: the loss of the
    differentiable ordering ``σ((y_ij − y_ik)·t)``.
    """
    if standardize:
        s_x, s_y = row_standardize(s_x), row_standardize(s_y)
    sign = torch.sign(s_x.gather(1, j) - s_x.gather(1, k))  # (B, T)
    margin = s_y.gather(1, j) - s_y.gather(1, k)  # (B, T)
    return (F.softplus(-sharpness * sign * margin) * sign.abs()).sum() / sign.abs().sum().clamp_min(1.0)


def info_nce(
    s_y: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = 0.05,
    exclude_self: bool = True,
    standardize: bool = False,
) -> torch.Tensor:
    """InfoNCE ``−log exp(s_p/τ) / Σ_c exp(s_c/τ)`` over the columns of ``s_y`` ``(A, B)``, mean over rows.

    ``positives`` ``(A,)`` gives the positive column of each row. With ``exclude_self`` (in-batch
    neighbours: rows and columns are the same items) the diagonal is left out of the candidates;
    leave it in for query-document pairs, where the diagonal holds the positives.
    """
    if standardize:
        s_y = row_standardize(s_y)
    logits = s_y / temperature
    if exclude_self:
        logits = logits.masked_fill(~_off_diagonal(s_y), float("-inf"))
    return F.cross_entropy(logits, positives)


def nearest_neighbours(s_x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` index of each row's most similar other row of a square similarity matrix."""
    return s_x.masked_fill(~_off_diagonal(s_x), float("-inf")).argmax(dim=1)


def orthogonality(z: torch.Tensor, nested_dims: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Inter-level orthogonality: ``Σ_{l≥2} Σ_{j<l} RMS(corr(Δ_l, E_j))``.

    ``Δ_l`` are the new dimensions of level ``l`` (``z[:, d_{l-1}:d_l]``), ``E_j`` the dimensions up to
    level ``j`` (``z[:, :d_j]``); ``corr`` is the matrix of Pearson correlations over the batch. The RMS
    (Frobenius norm over √entries) keeps levels of different sizes comparable.
    """
    zc = z - z.mean(0)
    zc = zc / zc.norm(dim=0).clamp_min(1e-8)  # unit columns: dot products are correlations
    total = z.new_zeros(())
    for level in range(1, len(nested_dims)):
        new = zc[:, nested_dims[level - 1] : nested_dims[level]]  # (B, Δ)
        for j in range(level):
            prev = zc[:, : nested_dims[j]]  # (B, d_j)
            c = new.T @ prev  # (Δ, d_j)
            total = total + (c.pow(2).mean() + 1e-12).sqrt()
    return total


def information_bottleneck(z: torch.Tensor, x0: float = 0.1, alpha: float = 0.3) -> torch.Tensor:
    """Progressive bottleneck ``mean_batch Σ_i (i/n)·(z_i²/(x0+|z_i|))^α``, weights rising with the index.

    ``z`` should be on a unit scale (the trainer divides by the typical standard deviation).
    """
    n = z.shape[1]
    w = torch.arange(1, n + 1, dtype=z.dtype, device=z.device) / n  # (n,)
    a = z.abs()
    return ((a * a / (x0 + a) + 1e-12).pow(alpha) * w).sum(1).mean() / n


def variance_control(z: torch.Tensor, floor: float = 0.5) -> torch.Tensor:
    """Mean over dimensions of ``(ReLU(floor − σ_d)/floor)²``, σ_d the batch standard deviation.

    Zero while every dimension's spread is above the floor; the trainer multiplies it by the
    slowly growing schedule ``max(0.2, (e^{t/T} − 1)/(e − 1))``.
    """
    sd = z.std(0)
    return (F.relu(floor - sd) / floor).pow(2).mean()


def quantization_regularizer(
    v: torch.Tensor,
    thresholds: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: torch.Tensor,
    margin: float = 0.1,
    range_weight: float = 1.0,
) -> torch.Tensor:
    """``mean[exp(−min_i |v − θ_i|/(margin·s)) + λ·(ReLU(lo − v)² + ReLU(v − hi)²)/s²]``.

    ``v`` ``(B, n)`` values; ``thresholds`` ``(n, t)``; ``lo``, ``hi``, ``scale`` ``(n,)``: valid range and
    typical spread ``s`` of each value. The first part pushes values away from decision boundaries,
    the second keeps them inside ``[lo, hi]`` (smooth, zero inside).
    """
    s = scale.clamp_min(1e-8)
    gap = (v[:, :, None] - thresholds[None]).abs().min(dim=2).values  # (B, n)
    boundary = torch.exp(-gap / (margin * s))
    outside = (F.relu(lo - v) ** 2 + F.relu(v - hi) ** 2) / s**2
    return (boundary + range_weight * outside).mean()
