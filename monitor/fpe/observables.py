"""The flow's observables at one training step (DESIGN.md §3.2–§3.4).

``compute_observables(z_prev, z_cur, projection=...)`` projects the latents into the run's frozen
whitened coordinates and estimates, at the current batch: the KDE density and score, the current
velocity v (``gaussian`` or ``ot``), the diffusion D = D₀ e^(−t/τ_D)(I + γF), the model drift μ (when
rewards are given), the flux, the local relative flux divergence δ, and the scalars C, Ṡ, σ_tot, H,
T_eff, W2_step, W2_ref, KL_ref, div_max, div_q99, drift_alignment, reward_mean, reward_std.

The D₀-dependent scalars (C, σ_tot, T_eff, drift_alignment) are computed from D₀-free sufficient
statistics (:class:`FlowParts`), so a caller that calibrates D₀ later (``D0="auto"``) rescales them
exactly with :meth:`Observables.with_D0` instead of recomputing the step. They saturate at
±:data:`RATIO_BOUND` where a denominator vanishes; ``Observables.degenerate`` marks a batch of rank < k,
whose values are set by such floors (docs/estimators.md §8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .config import FPEConfig
from .gaussian import bures_w2, gaussian_fit
from .kernels import (
    kde_log_density,
    kernel_field_divergence,
    kernel_fit,
    kernel_regression_gradient,
    kernel_smooth,
    score_from_fit,
    scott_bandwidth,
)
from .projection import Projection
from .validation import check_lr, check_vector
from .velocity import gaussian_velocity, ot_velocity
from .wasserstein import w2_exact, w2_sinkhorn_debiased

NAN = float("nan")

#: names of ``Observables.scalars``, in display order
SCALAR_NAMES: tuple[str, ...] = (
    "C",
    "S_dot",
    "sigma_tot",
    "H",
    "T_eff",
    "W2_step",
    "W2_ref",
    "KL_ref",
    "div_max",
    "div_q99",
    "drift_alignment",
    "reward_mean",
    "reward_std",
)


@dataclass(frozen=True)
class FlowParts:
    """D₀-free batch averages from which the D₀-dependent scalars follow (B = I + γF, D = D₀·decay·B).

    Means are over the current samples (‖f‖_ρ² = mean_i ‖f_i‖²). NaN where an input is absent: the
    ``v_*`` terms need a previous batch, the ``mu_*`` terms need rewards.
    """

    v_sq: float  # mean ‖v‖²
    v_Bs: float  # mean ⟨v, B s⟩
    Bs_sq: float  # mean ‖B s‖²
    v_Binv_v: float  # mean vᵀ B⁻¹ v
    trace_B: float  # Tr B
    mu_sq: float  # mean ‖μ‖² (model drift)
    v_mu: float  # mean ⟨v, μ⟩
    Bs_mu: float  # mean ⟨B s, μ⟩
    decay: float  # e^(−t/τ_D)


def d0_dependent_scalars(parts: FlowParts, d0: float) -> dict[str, float]:
    """C, sigma_tot, T_eff and drift_alignment for base diffusion ``d0`` (see DESIGN.md §3.4)."""
    dscale = d0 * parts.decay
    ds_norm = dscale * math.sqrt(parts.Bs_sq)
    flow_sq = parts.v_sq + 2.0 * dscale * parts.v_Bs + dscale * dscale * parts.Bs_sq
    flow_norm = math.sqrt(max(flow_sq, 0.0)) if math.isfinite(flow_sq) else NAN
    has_mu = math.isfinite(parts.mu_sq)
    mu_norm = math.sqrt(parts.mu_sq) if has_mu else flow_norm
    return {
        "C": _ratio(mu_norm, ds_norm),
        "sigma_tot": _ratio(parts.v_Binv_v, dscale),
        "T_eff": _ratio(dscale * parts.trace_B, mu_norm),
        "drift_alignment": (
            _ratio(parts.v_mu + dscale * parts.Bs_mu, flow_norm * math.sqrt(parts.mu_sq)) if has_mu else NAN
        ),
    }


#: bound on |C|, |σ_tot|, |T_eff| and |drift_alignment|. A ratio whose denominator vanishes (a degenerate
#: batch: identical answers have a KDE score of exactly 0, so ‖D s‖ = 0; a batch the reward does not pull
#: has μ = 0) saturates here instead of at 1e300. Far above the values of a real run (C ≈ 1 once D₀ is
#: calibrated; with a fixed D₀ T_eff grows like D₀/(η · reward spread), about 1e11 at η = 1e-9 and a
#: reward spread of 1e-3), and far below the 1e100 that a JSON consumer or a chart would choke on.
RATIO_BOUND = 1e20

#: below this magnitude a numerator or denominator counts as 0 (0/0 is 0, not a ratio)
_TINY = 1e-300


def _ratio(num: float, den: float) -> float:
    """num/den, NaN if either is NaN; 0 when both vanish; saturated at ±:data:`RATIO_BOUND`."""
    if not (math.isfinite(num) and math.isfinite(den)):
        return NAN
    if abs(den) < _TINY:
        return 0.0 if abs(num) < _TINY else math.copysign(RATIO_BOUND, num)
    value = num / den
    if abs(value) > RATIO_BOUND:
        return math.copysign(RATIO_BOUND, value)
    return value


@dataclass(frozen=True)
class Observables:
    """Observables of one step.

    Attributes:
        scalars: the scalars of DESIGN.md §3.4 (keys :data:`SCALAR_NAMES`); NaN only where an input is
            absent (no previous batch, no rewards, no reference).
        div: (n,) relative local flux divergence δ_i = (∇·J)/ρ = −∂_t log ρ at the current samples, per
            unit time. Negative: mass arriving (a new attractor filling up); positive: mass leaving.
            NaN without a previous batch.
        div_flow: (n,) cross-check (∇·(ρṽ))/ρ = ∇·ṽ + ṽ·s from the kernel-smoothed velocity field.
        x: (n, k) current batch in whitened coordinates.
        log_density: (n,) leave-one-out KDE log-density at x.
        score: (n, k) leave-one-out KDE score ∇log ρ̂ at x.
        velocity: (n, k) current velocity v = J/ρ at x (NaN without a previous batch).
        model_drift: (n, k) μ = −η(∇L̂ + λ∇H), or None without rewards.
        diffusion: (k, k) D = D₀ e^(−t/τ_D)(I + γF).
        parts: D₀-free statistics; :meth:`with_D0` rescales the D₀-dependent scalars exactly.
        D0: the base diffusion used.
        h: KDE bandwidth (whitened units).
        dt_eff: time between the pooled previous window's centre and the current step, (w + 1)/2 · dt:
            the flow observables (v, δ, Ṡ, σ_tot, W2_step) describe that interval, so they lag the
            current step by about Δt_eff/2.
        rank: numerical rank of the current batch in the frame: the number of eigenvalues of its
            covariance at or above ``FPEConfig.cov_floor`` (whitened units², the reference has 1).
        degenerate: ``rank < k``: identical answers (rank 0), fewer than k + 1 distinct ones, or a batch
            flat along some direction of the frame. Its values are finite but set by the floors
            (``cov_floor`` in the Gaussian fits, :data:`RATIO_BOUND` on the ratios), not by the data;
            see docs/estimators.md §8.
    """

    scalars: dict[str, float]
    div: Tensor
    div_flow: Tensor
    x: Tensor
    log_density: Tensor
    score: Tensor
    velocity: Tensor
    model_drift: Tensor | None
    diffusion: Tensor
    parts: FlowParts
    D0: float
    h: float
    dt_eff: float
    rank: int
    degenerate: bool

    @property
    def flux(self) -> Tensor:
        """J_i = ρ̂(x_i) v_i, shape (n, k): what actually moved."""
        return torch.exp(self.log_density)[:, None] * self.velocity

    def with_D0(self, d0: float) -> Observables:
        """A copy whose D₀-dependent scalars and diffusion use base diffusion ``d0``."""
        if not d0 > 0:
            raise ValueError(f"D0 must be > 0, got {d0}")
        scalars = dict(self.scalars)
        scalars.update(d0_dependent_scalars(self.parts, d0))
        return replace(self, scalars=scalars, D0=float(d0), diffusion=self.diffusion * (d0 / self.D0))


def compute_observables(
    z_prev: Tensor | Sequence[Tensor] | None,
    z_cur: Tensor,
    projection: Projection,
    config: FPEConfig | None = None,
    rewards: Tensor | Sequence[float] | None = None,
    lr: float | None = None,
    z_ref: Tensor | None = None,
    dt: float = 1.0,
    t: float = 0.0,
    D0: float | None = None,
) -> Observables:
    """Observables of the step whose latents are ``z_cur`` (n×d).

    Args:
        z_prev: the previous batch (m×d), a list of the last w batches (pooled), or None at the first
            step (the flow observables are then NaN).
        z_cur: current latents (n×d, n ≥ 2), float16/bfloat16/float32/float64, any device.
        projection: the run's frozen :class:`Projection` (d → k).
        config: estimator settings (defaults: :class:`FPEConfig`).
        rewards: (n,) rewards of the current samples; enables the model drift μ and drift_alignment.
        lr: the trainer's learning rate η_t (1.0 when absent).
        z_ref: reference latents for W2_ref and KL_ref.
        dt: time between consecutive steps (default 1 step).
        t: the step's time, for the diffusion decay e^(−t/τ_D).
        D0: base diffusion overriding ``config.D0`` (callers that calibrated ``"auto"``).
    """
    cfg = config or FPEConfig()
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    proj = projection.to(z_cur.device)
    x = proj.transform(z_cur, name="z_cur", min_n=2)
    x_prev = [proj.transform(z, name="z_prev") for z in _as_batches(z_prev)]
    x_ref = proj.transform(z_ref, name="z_ref", min_n=2) if z_ref is not None else None
    r = check_vector(torch.as_tensor(rewards) if rewards is not None else None, name="rewards", n=x.shape[0])
    d0 = float(D0) if D0 is not None else (1.0 if cfg.D0 == "auto" else float(cfg.D0))
    lr = check_lr(lr)
    return observables_from_projected(x_prev, x, cfg, rewards=r, lr=lr, x_ref=x_ref, dt=dt, t=t, d0=d0)


def _as_batches(z_prev: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    if z_prev is None:
        return []
    if isinstance(z_prev, Tensor):
        return [z_prev]
    return list(z_prev)


def observables_from_projected(
    x_prev: Sequence[Tensor],
    x: Tensor,
    cfg: FPEConfig,
    *,
    rewards: Tensor | None = None,
    lr: float | None = None,
    x_ref: Tensor | None = None,
    dt: float = 1.0,
    t: float = 0.0,
    d0: float = 1.0,
) -> Observables:
    """:func:`compute_observables` on already projected, validated batches (x: n×k, x_prev: list of m_i×k)."""
    n, k = x.shape
    dtype, device = x.dtype, x.device
    h = scott_bandwidth(n, k, cfg.bandwidth_factor)

    # density, score, entropy (leave-one-out at the current samples)
    fit = kernel_fit(x, x, h, leave_one_out=True)
    log_rho = fit.log_density
    score = score_from_fit(fit, x)
    entropy = float(-log_rho.mean())
    rank = batch_rank(x, cfg.cov_floor)

    # diffusion shape B = I + γF, γ clipped below 1/λ_max(F)
    s64 = score.to(torch.float64)
    fisher = s64.T @ s64 / n
    lam_max = float(torch.linalg.eigvalsh(fisher)[-1])
    gamma = min(cfg.gamma, 0.99 / lam_max) if lam_max > 0 else cfg.gamma
    eye = torch.eye(k, dtype=torch.float64, device=device)
    b_mat = eye + gamma * fisher
    decay = math.exp(-t / cfg.tau_D) if math.isfinite(cfg.tau_D) else 1.0
    bs = s64 @ b_mat  # (n, k), B symmetric

    # model drift μ = −η(∇L̂ + λ∇H), L̂ = −r̂, ∇H = −ρ(1 + log ρ) s (the seed's functional gradient)
    mu: Tensor | None = None
    if rewards is not None:
        eta = 1.0 if lr is None else float(lr)
        grad_r = kernel_regression_gradient(fit, x, rewards.to(device=device, dtype=dtype)).to(torch.float64)
        lr64 = log_rho.to(torch.float64)
        grad_h = -(torch.exp(lr64) * (1.0 + lr64))[:, None] * s64
        mu = eta * (grad_r - cfg.entropy_weight * grad_h)

    # flow between the pooled previous window and the current batch
    nan_n = torch.full((n,), NAN, dtype=dtype, device=device)
    velocity = torch.full((n, k), NAN, dtype=dtype, device=device)
    div, div_flow = nan_n, nan_n.clone()
    w = len(x_prev)
    dt_eff = dt * (w + 1) / 2.0 if w else NAN
    flow: dict[str, float] = dict.fromkeys(("S_dot", "W2_step", "div_max", "div_q99"), NAN)
    if w:
        xp = torch.cat([b.to(device=device, dtype=dtype) for b in x_prev], dim=0)
        if cfg.velocity == "gaussian":
            velocity = gaussian_velocity(xp, x, dt_eff, cfg.cov_floor)
        else:
            velocity = ot_velocity(xp, x, dt_eff, h, cfg.ot_exact_max, cfg.sinkhorn_reg)
        log_rho_prev = kde_log_density(x, xp, h)
        div = -(log_rho - log_rho_prev) / dt_eff
        div_flow = kernel_field_divergence(fit, x, velocity) + (kernel_smooth(fit, velocity) * score).sum(dim=1)
        v64 = velocity.to(torch.float64)
        abs_div = div.abs()
        flow = {
            "S_dot": float((v64 * s64).sum(dim=1).mean()),
            "W2_step": math.sqrt(float(v64.pow(2).sum(dim=1).mean())) * dt,
            "div_max": float(abs_div.max()),
            "div_q99": float(torch.quantile(abs_div.to(torch.float64), 0.99)),
        }

    v64 = velocity.to(torch.float64)
    parts = FlowParts(
        v_sq=float(v64.pow(2).sum(dim=1).mean()),
        v_Bs=float((v64 * bs).sum(dim=1).mean()),
        Bs_sq=float(bs.pow(2).sum(dim=1).mean()),
        v_Binv_v=float((v64 * torch.linalg.solve(b_mat, v64.T).T).sum(dim=1).mean()),
        trace_B=float(torch.trace(b_mat)),
        mu_sq=float(mu.pow(2).sum(dim=1).mean()) if mu is not None else NAN,
        v_mu=float((v64 * mu).sum(dim=1).mean()) if mu is not None else NAN,
        Bs_mu=float((bs * mu).sum(dim=1).mean()) if mu is not None else NAN,
        decay=decay,
    )

    # reference comparisons (same bandwidth as the current KDE, so the smoothing bias cancels)
    w2_ref = kl_ref = NAN
    if x_ref is not None:
        xr = x_ref.to(device=device, dtype=dtype)
        kl_ref = float((log_rho - kde_log_density(x, xr, h)).mean())
        if cfg.w2_ref_method == "exact":
            w2_ref = w2_exact(x, xr, cfg.w2_ref_max_samples, cfg.seed)
        elif cfg.w2_ref_method == "gaussian":
            w2_ref = bures_w2(gaussian_fit(x), gaussian_fit(xr))
        else:
            w2_ref = w2_sinkhorn_debiased(x, xr, cfg.sinkhorn_reg, cfg.w2_ref_max_samples, cfg.seed)

    scalars: dict[str, float] = dict.fromkeys(SCALAR_NAMES, NAN)
    scalars.update(flow)
    scalars.update(d0_dependent_scalars(parts, d0))
    scalars["H"] = entropy
    scalars["W2_ref"] = w2_ref
    scalars["KL_ref"] = kl_ref
    if rewards is not None:
        scalars["reward_mean"] = float(rewards.mean())
        scalars["reward_std"] = float(rewards.std(correction=0))
    return Observables(
        scalars=scalars,
        div=div,
        div_flow=div_flow,
        x=x,
        log_density=log_rho,
        score=score,
        velocity=velocity,
        model_drift=mu.to(dtype) if mu is not None else None,
        diffusion=(d0 * decay) * b_mat,
        parts=parts,
        D0=d0,
        h=h,
        dt_eff=dt_eff,
        rank=rank,
        degenerate=rank < k,
    )


def batch_rank(x: Tensor, floor: float) -> int:
    """Number of eigenvalues of the (1/n) covariance of x (n×k) at or above ``floor``, in float64."""
    cov = gaussian_fit(x).cov
    return int((torch.linalg.eigvalsh(cov) >= floor).sum())
