"""W2 distances between two batches of projected latents (POT for the transport problems)."""

from __future__ import annotations

import math

import ot
import torch
from torch import Tensor

from .kernels import pairwise_sq_dists


def subsample(x: Tensor, max_samples: int, seed: int) -> Tensor:
    """At most ``max_samples`` rows of x, drawn without replacement with a fixed seed (deterministic)."""
    n = x.shape[0]
    if n <= max_samples:
        return x
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:max_samples].to(x.device)
    return x.index_select(0, idx)


def w2_exact(x: Tensor, y: Tensor, max_samples: int = 512, seed: int = 0) -> float:
    """Empirical W2 between x (n×k) and y (m×k): exact OT (network simplex) on ≤ max_samples each."""
    xs = subsample(x, max_samples, seed).to(torch.float64)
    ys = subsample(y, max_samples, seed + 1).to(torch.float64)
    cost = pairwise_sq_dists(xs, ys).cpu().numpy()
    a = ot.unif(xs.shape[0])
    b = ot.unif(ys.shape[0])
    return math.sqrt(max(float(ot.emd2(a, b, cost, numItermax=10_000_000)), 0.0))


def w2_sinkhorn_debiased(x: Tensor, y: Tensor, reg: float = 0.05, max_samples: int = 2048, seed: int = 0) -> float:
    """√ of the debiased Sinkhorn divergence S(x, y) = OT_ε(x, y) − ½OT_ε(x, x) − ½OT_ε(y, y).

    ε = ``reg`` × the median squared distance between the batches; runs on the inputs' device.
    """
    xs = subsample(x, max_samples, seed).to(torch.float64)
    ys = subsample(y, max_samples, seed + 1).to(torch.float64)
    cxy = pairwise_sq_dists(xs, ys)
    eps = reg * float(cxy.median().clamp_min(1e-12))

    def ot_eps(c: Tensor) -> float:
        a = torch.full((c.shape[0],), 1.0 / c.shape[0], dtype=c.dtype, device=c.device)
        b = torch.full((c.shape[1],), 1.0 / c.shape[1], dtype=c.dtype, device=c.device)
        value = ot.sinkhorn2(a, b, c, eps, method="sinkhorn_log", numItermax=2000, stopThr=1e-7, warn=False)
        return float(value)

    div = ot_eps(cxy) - 0.5 * ot_eps(pairwise_sq_dists(xs, xs)) - 0.5 * ot_eps(pairwise_sq_dists(ys, ys))
    return math.sqrt(max(div, 0.0))
