"""Current velocity v = J/ρ of the flow between the previous and the current batch.

Both estimators return v at the current samples, in whitened units per unit time:
v_i = (x_i − T⁻¹(x_i)) / Δt, where T maps the previous density onto the current one.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor

from .gaussian import bures_map_matrix, gaussian_fit
from .kernels import kernel_fit, kernel_smooth, pairwise_sq_dists


def gaussian_velocity(x_prev: Tensor, x_cur: Tensor, dt: float, cov_floor: float) -> Tensor:
    """Bures–Wasserstein velocity: the affine OT map between the Gaussian fits of the two batches.

    x_prev (m×k), x_cur (n×k) → v (n×k). T⁻¹(x) = m′ + A(x − m) with A the OT map matrix from
    N(m, Σ) (current) to N(m′, Σ′) (previous). Sees global motion and spreading only.
    """
    prev, cur = gaussian_fit(x_prev), gaussian_fit(x_cur)
    a_back = bures_map_matrix(cur.cov, prev.cov, cov_floor)
    x64 = x_cur.to(torch.float64)
    pre_image = prev.mean + (x64 - cur.mean) @ a_back
    return ((x64 - pre_image) / dt).to(x_cur.dtype)


def ot_plan(x_prev: Tensor, x_cur: Tensor, exact_max: int, sinkhorn_reg: float) -> Tensor:
    """Optimal transport plan (m×n, float64) between uniform weights on x_prev and x_cur.

    Exact network simplex (POT ``ot.emd``) up to ``exact_max`` samples on either side, log-domain
    Sinkhorn with regularisation ``sinkhorn_reg`` × median cost beyond.
    """
    m, n = x_prev.shape[0], x_cur.shape[0]
    cost = pairwise_sq_dists(x_prev.to(torch.float64), x_cur.to(torch.float64))
    a = torch.full((m,), 1.0 / m, dtype=torch.float64, device=cost.device)
    b = torch.full((n,), 1.0 / n, dtype=torch.float64, device=cost.device)
    if max(m, n) <= exact_max:
        plan = ot.emd(a.cpu().numpy(), b.cpu().numpy(), cost.cpu().numpy(), numItermax=10_000_000)
        return torch.from_numpy(np.asarray(plan)).to(cost.device)
    reg = sinkhorn_reg * float(cost.median().clamp_min(1e-12))
    plan_t = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", numItermax=2000, stopThr=1e-7, warn=False)
    return torch.as_tensor(plan_t)


def ot_velocity(x_prev: Tensor, x_cur: Tensor, dt: float, h: float, exact_max: int, sinkhorn_reg: float) -> Tensor:
    """OT velocity: barycentric projection of the OT plan, then kernel smoothing of the displacements.

    x_prev (m×k), x_cur (n×k) → v (n×k). The raw per-point displacements carry the matching noise of
    empirical OT (∝ n^(−1/k)); smoothing with the KDE kernel of bandwidth ``h`` averages it over
    neighbours.
    """
    plan = ot_plan(x_prev, x_cur, exact_max, sinkhorn_reg)  # (m, n)
    col_mass = plan.sum(dim=0).clamp_min(1e-300)
    pre_image = (plan.T @ x_prev.to(torch.float64)) / col_mass[:, None]  # (n, k)
    raw = (x_cur.to(torch.float64) - pre_image) / dt
    fit = kernel_fit(x_cur.to(torch.float64), x_cur.to(torch.float64), h, leave_one_out=False)
    return kernel_smooth(fit, raw).to(x_cur.dtype)
