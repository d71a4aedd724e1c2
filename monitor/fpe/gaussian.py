"""Gaussian fits and the Bures–Wasserstein (affine optimal transport) map between them.

The k×k linear algebra runs in float64 on the input's device: it is tiny, and float32 eigenvalues of a
near-singular covariance (a batch of duplicates) would lose the floor that keeps the map finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianFit:
    """Mean (k,) and covariance (k, k) of a batch, float64."""

    mean: Tensor
    cov: Tensor


def gaussian_fit(x: Tensor) -> GaussianFit:
    """Sample mean and (biased, 1/n) covariance of x (n×k), in float64."""
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=0)
    centred = x64 - mean
    cov = centred.T @ centred / max(x64.shape[0], 1)
    return GaussianFit(mean=mean, cov=0.5 * (cov + cov.T))


def sym_power(a: Tensor, power: float, floor: float) -> Tensor:
    """a^power for a symmetric positive semi-definite matrix, eigenvalues floored at ``floor``."""
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    evals = evals.clamp_min(floor)
    return (evecs * evals.pow(power)) @ evecs.T


def bures_map_matrix(cov_from: Tensor, cov_to: Tensor, floor: float) -> Tensor:
    """Matrix A of the OT map T(x) = m_to + A (x − m_from) from N(·, cov_from) to N(·, cov_to).

    A = Σ₁^(−1/2) (Σ₁^(1/2) Σ₂ Σ₁^(1/2))^(1/2) Σ₁^(−1/2), symmetric positive definite; eigenvalues of
    both covariances are floored at ``floor`` so that degenerate batches give a finite map.
    """
    s1_half = sym_power(cov_from, 0.5, floor)
    s1_inv_half = sym_power(cov_from, -0.5, floor)
    cov_to_floored = sym_power(cov_to, 1.0, floor)
    middle = sym_power(s1_half @ cov_to_floored @ s1_half, 0.5, 0.0)
    a = s1_inv_half @ middle @ s1_inv_half
    return 0.5 * (a + a.T)


def bures_w2(fit_a: GaussianFit, fit_b: GaussianFit) -> float:
    """W2 between N(m_a, Σ_a) and N(m_b, Σ_b): ‖m_a − m_b‖² + Tr Σ_a + Tr Σ_b − 2 Tr (Σ_a^½ Σ_b Σ_a^½)^½."""
    a_half = sym_power(fit_a.cov, 0.5, 0.0)
    cross = sym_power(a_half @ fit_b.cov @ a_half, 0.5, 0.0)
    w2_sq = (fit_a.mean - fit_b.mean).pow(2).sum() + torch.trace(fit_a.cov) + torch.trace(fit_b.cov)
    w2_sq = w2_sq - 2.0 * torch.trace(cross)
    return math.sqrt(max(float(w2_sq), 0.0))
