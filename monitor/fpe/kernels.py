"""Gaussian-kernel estimators: KDE log-density, score, Nadaraya–Watson regression and divergence.

All quantities work in the log domain and go through matrix products: a query batch x (n×k) against a
sample batch y (m×k) costs one n×m matrix of logits −‖x_i − y_j‖²/2h², never an n×m×k tensor.
Closed forms (no finite differences) for every gradient:

* log ρ̂(x) = logsumexp_j(−‖x − y_j‖²/2h²) − log m − (k/2) log(2πh²)
* s(x) = ∇ log ρ̂(x) = Σ_j w_j (y_j − x)/h²,  w = softmax_j(−‖x − y_j‖²/2h²)
* r̂(x) = Σ_j w_j r_j,  ∇r̂(x) = Σ_j w_j r_j (y_j − ȳ)/h²,  ȳ = Σ_j w_j y_j
* ∇·ṽ(x) = Σ_j w_j (y_j − ȳ)·v_j / h²  for ṽ(x) = Σ_j w_j v_j
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def scott_bandwidth(n: int, k: int, factor: float = 1.0) -> float:
    """Scott's bandwidth h = factor · n^(−1/(k+4)) for data of unit variance per coordinate."""
    if n < 1 or k < 1:
        raise ValueError(f"bandwidth needs n >= 1 and k >= 1, got n={n}, k={k}")
    return float(factor) * float(n) ** (-1.0 / (k + 4))


def pairwise_sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances ‖x_i − y_j‖², shape (n, m), through ‖a‖² + ‖b‖² − 2a·b.

    Both sides are shifted by the first sample of ``y`` first, which keeps the cancellation error small
    when the points sit far from the origin relative to their spread (and makes the distances between
    identical points exactly 0). Clamped at 0.
    """
    shift = y[:1]
    xs = x - shift
    ys = y - shift
    d2 = (xs * xs).sum(dim=1, keepdim=True) + (ys * ys).sum(dim=1)[None, :] - 2.0 * (xs @ ys.T)
    return d2.clamp_min_(0.0)


@dataclass(frozen=True)
class KernelFit:
    """Gaussian-kernel quantities of query points x (n×k) against sample points y (m×k).

    Attributes:
        log_density: log ρ̂(x_i), shape (n,), in nats per whitened unit^k.
        weights: softmax weights w_ij over the samples, shape (n, m); rows sum to 1 (zero on the
            diagonal when fitted leave-one-out).
        weighted_mean: ȳ_i = Σ_j w_ij y_j, shape (n, k).
        h: bandwidth, whitened units.
        origin: (1, k) the point the samples are centred on in the products below (the first sample):
            Σ_j w_ij (y_j − origin) is exactly 0 for a batch of identical samples, whatever the rounding
            of the weights, so a batch of duplicates has a score of exactly 0.
    """

    log_density: Tensor
    weights: Tensor
    weighted_mean: Tensor
    h: float
    origin: Tensor

    @property
    def n(self) -> int:
        return int(self.weights.shape[0])


def kernel_fit(x: Tensor, y: Tensor, h: float, leave_one_out: bool = False) -> KernelFit:
    """Fit the Gaussian kernel of bandwidth ``h`` at query points ``x`` (n×k) over samples ``y`` (m×k).

    ``leave_one_out=True`` requires ``x is y`` semantics (same points, n = m ≥ 2): each point's own
    kernel is left out of its density, score and regression.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kernel_fit needs x (n×k) and y (m×k), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not h > 0:
        raise ValueError(f"bandwidth must be > 0, got {h}")
    n, k = x.shape
    m = y.shape[0]
    logits = pairwise_sq_dists(x, y).mul_(-0.5 / (h * h))
    if leave_one_out:
        if n != m:
            raise ValueError("leave-one-out needs the query points to be the sample points (n == m)")
        if m < 2:
            raise ValueError("leave-one-out needs at least 2 samples")
        logits.fill_diagonal_(-math.inf)
        m_eff = m - 1
    else:
        m_eff = m
    lse = torch.logsumexp(logits, dim=1)
    log_norm = math.log(m_eff) + 0.5 * k * math.log(2.0 * math.pi * h * h)
    log_density = lse - log_norm
    weights = torch.exp(logits - lse[:, None])
    origin = y[:1]
    weighted_mean = origin + weights @ (y - origin)
    return KernelFit(log_density=log_density, weights=weights, weighted_mean=weighted_mean, h=float(h), origin=origin)


def kde_log_density(x: Tensor, y: Tensor, h: float, leave_one_out: bool = False, block_rows: int = 1024) -> Tensor:
    """log ρ̂(x_i) of the Gaussian KDE of ``y`` with bandwidth ``h``; shape (n,).

    Density only: the logits are reduced by logsumexp in blocks of ``block_rows`` query rows, so the peak
    memory is block_rows × m instead of n × m and no weight matrix is formed.
    """
    if not leave_one_out and x.shape[0] > block_rows:
        return torch.cat([kde_log_density(x[i : i + block_rows], y, h) for i in range(0, x.shape[0], block_rows)])
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kde_log_density needs x (n×k) and y (m×k), got {tuple(x.shape)} and {tuple(y.shape)}")
    if leave_one_out:
        return kernel_fit(x, y, h, leave_one_out=True).log_density
    k, m = x.shape[1], y.shape[0]
    logits = pairwise_sq_dists(x, y).mul_(-0.5 / (h * h))
    return torch.logsumexp(logits, dim=1) - (math.log(m) + 0.5 * k * math.log(2.0 * math.pi * h * h))


def score_from_fit(fit: KernelFit, x: Tensor) -> Tensor:
    """Score s(x_i) = ∇ log ρ̂(x_i) = (ȳ_i − x_i)/h², shape (n, k)."""
    return ((fit.weighted_mean - fit.origin) - (x - fit.origin)) / (fit.h * fit.h)


def kde_score(x: Tensor, y: Tensor, h: float, leave_one_out: bool = False) -> Tensor:
    """Closed-form score ∇ log ρ̂ of the KDE of ``y`` at ``x``; shape (n, k)."""
    return score_from_fit(kernel_fit(x, y, h, leave_one_out), x)


def kernel_smooth(fit: KernelFit, values: Tensor) -> Tensor:
    """Nadaraya–Watson smoothing Σ_j w_ij values_j; values (m,) or (m, p) → (n,) or (n, p)."""
    return fit.weights @ values


def kernel_regression_gradient(fit: KernelFit, y: Tensor, values: Tensor) -> Tensor:
    """∇r̂(x_i) of the Nadaraya–Watson regression r̂ = Σ_j w_j r_j; values (m,) → (n, k)."""
    r_hat = fit.weights @ values
    yc = y - fit.origin
    centred_mean = fit.weighted_mean - fit.origin
    return (fit.weights @ (values[:, None] * yc) - r_hat[:, None] * centred_mean) / (fit.h * fit.h)


def kernel_field_divergence(fit: KernelFit, y: Tensor, field: Tensor) -> Tensor:
    """∇·ṽ(x_i) of the smoothed field ṽ(x) = Σ_j w_j(x) field_j; field (m, k) → (n,)."""
    smoothed = fit.weights @ field
    yc = y - fit.origin
    first = fit.weights @ (yc * field).sum(dim=1)
    return (first - ((fit.weighted_mean - fit.origin) * smoothed).sum(dim=1)) / (fit.h * fit.h)
