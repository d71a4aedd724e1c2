"""Sample scores for the e-detectors: which of a step's samples exceed what a past window makes typical.

Two kinds of score, both fitted on past steps only and both in {0, 1} per sample:

* :func:`witness_exceedance`, for embeddings: a Gaussian-kernel MMD witness ``w(y) = m_B(y) − m_A(y)``
  (``m_S(y)`` the mean kernel between ``y`` and the points of ``S``) between a *base* window ``A`` (what the
  step is compared with) and a *recent* window ``B`` (the direction the run has been moving in). A sample
  scores 1 when its witness exceeds the conformal ``(1 − β)`` quantile of the leave-one-out witness over the
  base points, so a sample drawn like the base exceeds with probability about ``β``.
* :func:`value_exceedance`, for scalars (rewards, proxy − judge gaps): 1 when the value exceeds the
  conformal ``(1 − β)`` quantile of the base window's values.

Shapes: latents are (n, d) float tensors on any device; scores come back as (n,) float32 tensors on the
same device. The kernel's ``gamma`` is in 1 / (latent units)².
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def median_gamma(x: Tensor, max_points: int = 512) -> float:
    """``1 / median(‖x_i − x_j‖²)`` over distinct pairs of (at most ``max_points`` of) the rows of ``x``.

    The median heuristic for a Gaussian kernel ``exp(−gamma ‖a − b‖²)``. Falls back to 1.0 when every
    pair coincides.
    """
    pts = x[:max_points].to(torch.float32)
    d2 = torch.cdist(pts, pts).pow(2)
    iu = torch.triu_indices(pts.shape[0], pts.shape[0], offset=1, device=pts.device)
    vals = d2[iu[0], iu[1]]
    med = float(vals.median()) if vals.numel() else 0.0
    return 1.0 / med if med > 0 and math.isfinite(med) else 1.0


def conformal_quantile(values: Tensor, beta: float) -> float:
    """The ``⌈(1 − β)(m + 1)⌉``-th smallest of ``m`` values (``+inf`` when that rank exceeds ``m``).

    A new value exchangeable with the ``m`` exceeds it with probability at most ``β``.
    """
    m = values.numel()
    rank = math.ceil((1.0 - beta) * (m + 1))
    if rank > m or m == 0:
        return math.inf
    return float(torch.sort(values.flatten().to(torch.float64)).values[rank - 1])


def witness(y: Tensor, base: Tensor, recent: Tensor, gamma: float) -> Tensor:
    """``w(y) = m_recent(y) − m_base(y)`` for each row of ``y`` (n,), Gaussian kernel, float32."""
    y32, a, b = y.to(torch.float32), base.to(torch.float32), recent.to(torch.float32)
    m_b = torch.exp(-gamma * torch.cdist(y32, b).pow(2)).mean(dim=1)
    m_a = torch.exp(-gamma * torch.cdist(y32, a).pow(2)).mean(dim=1)
    return m_b - m_a


def witness_exceedance(
    y: Tensor, base: Tensor, recent: Tensor, gamma: float, beta: float
) -> tuple[Tensor, Tensor, float]:
    """Scores of the step ``y`` (n, d) against ``base`` (m, d) in the direction of ``recent`` (r, d).

    Returns:
        ``(scores, w, tau)``: scores (n,) float32 in {0, 1} (1: ``w(y_i) > tau``); the witness ``w`` (n,)
        of the step's samples (larger: more like the recent direction, less like the base), used to rank
        them as evidence; and ``tau``, the conformal ``(1 − β)`` quantile of the base's leave-one-out witness.
    """
    if base.shape[0] < 2:
        raise ValueError(f"the base window needs at least 2 samples, got {base.shape[0]}")
    a, b = base.to(torch.float32), recent.to(torch.float32)
    k_aa = torch.exp(-gamma * torch.cdist(a, a).pow(2))
    m = a.shape[0]
    loo_a = (k_aa.sum(dim=1) - torch.diagonal(k_aa)) / (m - 1)
    w_base = torch.exp(-gamma * torch.cdist(a, b).pow(2)).mean(dim=1) - loo_a
    tau = conformal_quantile(w_base, beta)
    w = witness(y, a, b, gamma)
    return (w > tau).to(torch.float32), w, tau


def value_exceedance(values: Tensor, base: Tensor, beta: float) -> tuple[Tensor, float]:
    """``(scores, tau)``: 1 where ``values`` (n,) exceed the conformal ``(1 − β)`` quantile ``tau`` of ``base``."""
    tau = conformal_quantile(base, beta)
    return (values.to(torch.float64) > tau).to(torch.float32), tau


def block_means(scores: Tensor, blocks: int) -> list[float]:
    """Means of ``scores`` (n,) over ``min(blocks, n)`` contiguous, nearly equal blocks (in order)."""
    n = scores.numel()
    k = max(1, min(blocks, n))
    return [float(part.mean()) for part in torch.tensor_split(scores.flatten().to(torch.float64).cpu(), k)]
