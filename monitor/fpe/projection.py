"""Whitened PCA projection P: R^d → R^k, fitted once on a reference batch and frozen for a run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .validation import check_latents

#: eigenvalue floor of the reference covariance, relative to its largest eigenvalue
_REL_EIG_FLOOR = 1e-6


@dataclass(frozen=True)
class Projection:
    """x = (z − mean) @ components / sqrt(variances): unit variance in each of the k coordinates.

    Attributes:
        mean: (d,) reference mean, float64.
        components: (d, k) orthonormal principal directions, float64.
        variances: (k,) reference variances along them (floored), float64, in latent units².
        explained: fraction of the reference batch's total variance the k directions carry (0…1).
    """

    mean: Tensor
    components: Tensor
    variances: Tensor
    explained: float

    @property
    def d(self) -> int:
        return int(self.components.shape[0])

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, z_ref: Tensor, k: int = 8) -> Projection:
        """Fit on reference latents ``z_ref`` (n×d, any float dtype); needs 1 ≤ k ≤ min(n − 1, d).

        Works in float64 on the input's device: an exact eigendecomposition of the smaller Gram matrix up
        to min(n, d) = 1024, randomized subspace iteration with a Rayleigh–Ritz step beyond (the k
        coordinates are then exactly uncorrelated with unit variance on the reference, along directions
        that capture the top of the spectrum). A degenerate reference (duplicates, zero spread) gets
        floored variances instead of a division by zero: its coordinates are then the reference scale,
        not a whitening.
        """
        z = check_latents(z_ref, name="z_ref")
        n, d = z.shape
        if n < 2:
            raise ValueError(f"Projection.fit needs at least 2 reference samples, got {n}")
        if not 1 <= k <= min(n - 1, d):
            raise ValueError(
                f"Projection.fit: k={k} must satisfy 1 <= k <= min(n-1, d) = {min(n - 1, d)} "
                f"for a reference batch of n={n} samples in d={d} dimensions; lower k or pass more samples"
            )
        z64 = z.to(torch.float64)
        mean = z64.mean(dim=0)
        centred = z64 - mean
        scale = centred.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
        centred = centred / scale  # O(1) entries: the Gram products neither overflow nor underflow
        evals, comps, total = _top_eigenpairs(centred, k)
        evals = evals.clamp_min(0.0)
        explained = float(evals.sum() / total) if float(total) > 0 else 0.0
        variances = evals * scale**2
        floor = max(float(variances[0]) * _REL_EIG_FLOOR, _absolute_floor(z64))
        variances = variances.clamp_min(floor)
        return cls(
            mean=mean.contiguous(),
            components=comps.contiguous(),
            variances=variances.contiguous(),
            explained=explained,
        )

    @classmethod
    def fit_held_out(cls, z_ref: Tensor, k: int = 8, seed: int = 0) -> tuple[Projection, Tensor]:
        """Directions from one half of ``z_ref``, mean and whitening from the other half.

        With n ≲ d the top principal directions of a batch partly fit that batch's own noise: the batch
        has more variance along them than any other batch of the same distribution, so later batches look
        shrunk in the frame (a spurious entropy drop, a W2 and KL to the reference that are far from 0
        when nothing changed). Measuring the mean and variances on held-out rows removes that bias: the
        held-out half is, along the fitted directions, just like a future batch. Returns the projection
        and the indices (into ``z_ref``) of the held-out rows, on which the coordinates are exactly
        uncorrelated with unit variance — use them as the reference sample. Needs n ≥ 2(k + 1).
        """
        z = check_latents(z_ref, name="z_ref")
        n, d = z.shape
        if n < 2 * (k + 1):
            raise ValueError(f"fit_held_out needs n >= 2(k+1) = {2 * (k + 1)} samples, got {n}; use Projection.fit")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen).to(z.device)
        fit_rows, held_rows = order[: n // 2], order[n // 2 :]
        directions = cls.fit(z[fit_rows], k=min(k, d)).components  # (d, k) orthonormal
        held = z[held_rows].to(torch.float64)
        mean = held.mean(dim=0)
        coords = (held - mean) @ directions  # (n/2, k)
        cov = coords.T @ coords / coords.shape[0]
        evals, rot = torch.linalg.eigh(0.5 * (cov + cov.T))
        evals, rot = evals.flip(0), rot.flip(1)
        total = float((held - mean).pow(2).sum() / held.shape[0])
        floor = max(float(evals[0].clamp_min(0.0)) * _REL_EIG_FLOOR, _absolute_floor(held))
        projection = cls(
            mean=mean.contiguous(),
            components=(directions @ rot).contiguous(),
            variances=evals.clamp_min(floor).contiguous(),
            explained=float(evals.clamp_min(0.0).sum()) / total if total > 0 else 0.0,
        )
        return projection, held_rows

    def transform(self, z: Tensor, *, name: str = "latents", min_n: int = 1) -> Tensor:
        """Project latents z (n×d) to whitened coordinates (n×k), float32 (float64 if z is float64).

        Validates z first (shape, dtype, finiteness, d, at least ``min_n`` rows; errors use ``name``).
        """
        z = check_latents(z, name=name, dim=self.d, min_n=min_n)
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
        device = z.device
        w = (self.components / self.variances.sqrt()).to(device=device, dtype=dtype)
        mean = self.mean.to(device=device, dtype=dtype)
        return (z.to(dtype) - mean) @ w

    def to(self, device: torch.device | str) -> Projection:
        """The same projection with its tensors on ``device``."""
        return Projection(
            mean=self.mean.to(device),
            components=self.components.to(device),
            variances=self.variances.to(device),
            explained=self.explained,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists of floats) for JSON or a database column; exact round trip."""
        return {
            "mean": self.mean.cpu().tolist(),
            "components": self.components.cpu().tolist(),
            "variances": self.variances.cpu().tolist(),
            "explained": self.explained,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Projection:
        """Inverse of :meth:`to_dict`."""
        try:
            mean = torch.tensor(data["mean"], dtype=torch.float64)
            comps = torch.tensor(data["components"], dtype=torch.float64)
            variances = torch.tensor(data["variances"], dtype=torch.float64)
            explained = float(data["explained"])
        except KeyError as exc:
            raise ValueError(f"Projection.from_dict: missing key {exc.args[0]!r}") from exc
        if comps.ndim != 2 or mean.shape != (comps.shape[0],) or variances.shape != (comps.shape[1],):
            raise ValueError("Projection.from_dict: inconsistent shapes of mean, components and variances")
        return cls(mean=mean, components=comps, variances=variances, explained=explained)


#: above this min(n, d), the projection uses randomized subspace iteration instead of a full eigh
_EXACT_EIGH_MAX = 1024


def _top_eigenpairs(centred: Tensor, k: int, iters: int = 8, oversample: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k eigenvalues (descending) and eigenvectors (d×k) of the covariance of ``centred`` (n×d, float64),
    and the total variance. Deterministic (fixed seed for the subspace iteration's start)."""
    n, d = centred.shape
    if min(n, d) > _EXACT_EIGH_MAX:
        p = min(k + oversample, min(n, d))
        gen = torch.Generator(device="cpu").manual_seed(0)
        q = torch.randn(d, p, generator=gen, dtype=torch.float64).to(centred.device)
        for _ in range(iters):
            q, _ = torch.linalg.qr(centred.T @ (centred @ q))
        b = centred @ q
        evals, vecs = torch.linalg.eigh(b.T @ b / n)
        evals, vecs = evals.flip(0)[:k], vecs.flip(1)[:, :k]
        return evals, q @ vecs, centred.pow(2).sum() / n
    if n <= d:
        gram = centred @ centred.T / n  # (n, n), same nonzero spectrum as the covariance
        evals, evecs = torch.linalg.eigh(gram)
        evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        comps = centred.T @ evecs
        norms = comps.norm(dim=0)
        # directions of zero variance: fall back to an orthonormal completion
        comps = torch.where(norms > 1e-12, comps / norms.clamp_min(1e-300), torch.zeros_like(comps))
        return evals, _orthonormal_completion(comps), torch.trace(gram)
    cov = centred.T @ centred / n
    evals, evecs = torch.linalg.eigh(cov)
    return evals.flip(0)[:k], evecs.flip(1)[:, :k], torch.trace(cov)


def _absolute_floor(z64: Tensor) -> float:
    """Variance floor for a degenerate reference: 1e-6 of the mean squared latent entry; 1 for an all-zero
    reference (no scale to keep: any unit works, and 1/√floor must stay finite in float32)."""
    ms = float(z64.pow(2).mean())
    if not math.isfinite(ms) or ms == 0.0:
        return 1.0
    return max(ms * 1e-6, 1e-300)


def _orthonormal_completion(comps: Tensor) -> Tensor:
    """Replace the zero columns of ``comps`` (d×k) so that all columns are orthonormal."""
    zero = comps.norm(dim=0) < 0.5
    if not bool(zero.any()):
        return comps
    d = comps.shape[0]
    basis = comps[:, ~zero]
    eye = torch.eye(d, dtype=comps.dtype, device=comps.device)
    out = comps.clone()
    candidates = iter(range(d))
    for col in torch.nonzero(zero).flatten().tolist():
        for j in candidates:
            v = eye[:, j]
            if basis.shape[1]:
                v = v - basis @ (basis.T @ v)
            if float(v.norm()) > 1e-6:
                v = v / v.norm()
                out[:, col] = v
                basis = torch.cat([basis, v[:, None]], dim=1)
                break
    return out
