"""Theorems 3 and 4 of the seed (§5.2, §6.2) checked numerically with the particle solver.

Theorem 3 (reset exploration radius): the seed claims E‖z(t*+Δt) − z(t*)‖ ≥ √(2dβΔt) after a reset with
diffusion boost β. Its Itô-isometry step gives the RMS radius √E‖Δz‖² ≥ √(2dβΔt) for pure diffusion, but its
Jensen step goes the wrong way (E‖Δz‖ ≤ √E‖Δz‖²; DESIGN.md §3.6). Measured here:

* pure diffusion (zero loss, γ = 0, base D₀ = 1e-6): RMS/√(2dβΔt) (theory: √(1 + D₀/β) ≈ 1) and mean/√(2dβΔt)
  (theory: E[χ_d]/√d < 1, the chi ratio) for d ∈ {1, 2, 8, 32};
* with a confining drift (harmonic well ½k‖z‖², η = 1, the practical case: a reset inside a basin): the RMS
  radius against the exact Euler–Maruyama prediction and against √(2dβΔt), for θΔt = ηkΔt ∈ {0.1 … 2}.

Theorem 4 (exponential KL decay for a convex loss): claims KL(ρ_t‖ρ*) ≤ KL(ρ_0‖ρ*) e^(−σt) with
σ = 2D₀/(κ + D₁/λ), κ the Hessian's upper bound. Measured on the convex quadratic ½(κ₁z₁² + κ₂z₂²)
(κ = (1, 4)), constant isotropic D, the seed's λ = 1e-3, for η ∈ {1, 1e-2, 1e-4} (dt = 0.05/(ηκ_max)): ρ_t stays
Gaussian, so KL is computed in closed form from the particles' Gaussian fit against the chain's exact stationary
law N(0, D/(θ_i(1 − θ_i dt/2))). Reported: the fitted late slope of log KL against −2ηκ_min (the Bakry–Émery
rate of this OU process), the worst ratio KL(t)/(KL₀e^(−2ηκ_min t)), and the seed's σ with the first time its
bound is violated.

Run: ``python -m benchmarks.validation.theorems [--quick]``; writes ``theorems.json`` and ``theorems_*.png``
to ``docs/validation/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.validation._common import DEFAULT_OUT, agg_pyplot, markdown_table, single_thread, write_json
from monitor.fpe.dynamics import FokkerPlanckDynamics


@dataclass(frozen=True)
class TheoremConfig:
    """Sizes of the checks.

    Attributes:
        n3: particles per Theorem 3 run (relative noise of the RMS radius ≈ 1/√(2 n d)).
        dims3: latent dimensions of the pure-diffusion check.
        betas3: diffusion boosts β_reset.
        boost_steps: steps of the boost (Δt = boost_steps · dt3); dt3: time step.
        theta_dts: θΔt values of the confining-drift check (d = 4, β = 3).
        n4: particles of the Theorem 4 runs; etas4: learning rates η; steps4: steps per run.
    """

    n3: int = 20_000
    dims3: tuple[int, ...] = (1, 2, 8, 32)
    betas3: tuple[float, ...] = (2.0, 5.0)
    boost_steps: int = 10
    dt3: float = 0.01
    theta_dts: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    n4: int = 4_000
    etas4: tuple[float, ...] = (1.0, 1e-2, 1e-4)
    steps4: int = 200


QUICK = TheoremConfig(
    n3=4000, dims3=(2, 8), betas3=(3.0,), theta_dts=(0.1, 1.0), n4=1000, etas4=(1.0, 1e-4), steps4=120
)


def chi_ratio(d: int) -> float:
    """E[χ_d]/√d = √2 Γ((d+1)/2) / (Γ(d/2) √d): mean over RMS radius of an isotropic Gaussian in d dims."""
    return math.exp(0.5 * math.log(2.0) + math.lgamma((d + 1) / 2) - math.lgamma(d / 2)) / math.sqrt(d)


def _zero_loss(z: Tensor, t: float) -> Tensor:
    return z.sum(dim=1) * 0.0


@dataclass(frozen=True)
class _Harmonic:
    stiffness: tuple[float, ...]

    def __call__(self, z: Tensor, t: float) -> Tensor:
        k = torch.tensor(self.stiffness, dtype=z.dtype, device=z.device)
        return 0.5 * (k * z * z).sum(dim=1)


def reset_radius(
    d: int, beta: float, n: int, boost_steps: int, dt: float, stiffness: float = 0.0, seed: int = 0
) -> dict[str, float]:
    """Reset the particles, run the boosted steps, and measure the radii ‖z(t*+Δt) − z(t*)‖.

    With ``stiffness`` 0 the loss is zero (pure diffusion); else ½k‖z‖² with η = 1. Returns the RMS and mean
    radius, the seed's bound √(2dβΔt), and the exact prediction of the RMS radius for the chain
    z ← (1 − θdt)z + √(2(D₀+β)dt)ξ: (c^m − 1)² v₀ + 2(D₀+β)dt(1 − c^{2m})/(1 − c²) per coordinate, c = 1 − θdt
    (v₀ the per-coordinate variance of the particles after the reset).
    """
    d0 = 1e-6
    loss = _Harmonic((stiffness,) * d) if stiffness > 0 else _zero_loss
    dyn = FokkerPlanckDynamics(
        loss,
        eta_0=1.0,
        tau_eta=math.inf,
        lambda_reg=0.0,
        gamma=0.0,
        D_0=d0,
        tau_D=math.inf,
        beta_reset=beta,
        reset_boost_steps=boost_steps,
    )
    gen = torch.Generator().manual_seed(seed)
    sigma0 = math.sqrt(d0 / stiffness) if stiffness > 0 else 1.0  # the base stationary spread in the well
    z = sigma0 * torch.randn((n, d), generator=gen, dtype=torch.float64)
    z_reset = dyn.apply_reset(z, gen)
    z_t = z_reset
    for k in range(boost_steps):
        z_t = dyn.step(z_t, k * dt, dt, gen)
    radius = (z_t - z_reset).norm(dim=1)
    delta_t = boost_steps * dt
    bound = math.sqrt(2 * d * beta * delta_t)
    dtot = d0 + beta
    c = 1.0 - stiffness * dt
    v0 = float(z_reset.pow(2).mean())
    if stiffness > 0:
        per_coord = (c**boost_steps - 1.0) ** 2 * v0 + 2 * dtot * dt * (1 - c ** (2 * boost_steps)) / (1 - c * c)
    else:
        per_coord = 2 * dtot * delta_t
    return {
        "d": d,
        "beta": beta,
        "delta_t": delta_t,
        "theta_dt": stiffness * delta_t,
        "rms": float(radius.pow(2).mean().sqrt()),
        "mean": float(radius.mean()),
        "bound": bound,
        "rms_predicted": math.sqrt(d * per_coord),
        "chi_ratio": chi_ratio(d),
    }


def theorem3(cfg: TheoremConfig) -> dict[str, Any]:
    """Both Theorem 3 checks; rows with ``rms/bound``, ``mean/bound`` and their predictions."""
    diffusion = []
    for d in cfg.dims3:
        for beta in cfg.betas3:
            r = reset_radius(d, beta, cfg.n3, cfg.boost_steps, cfg.dt3, seed=d)
            diffusion.append(r | {"rms_over_bound": r["rms"] / r["bound"], "mean_over_bound": r["mean"] / r["bound"]})
    drift = []
    d, beta = 4, 3.0
    for theta_dt in cfg.theta_dts:
        stiffness = theta_dt / (cfg.boost_steps * cfg.dt3)
        r = reset_radius(d, beta, cfg.n3, cfg.boost_steps, cfg.dt3, stiffness=stiffness, seed=100)
        drift.append(r | {"rms_over_bound": r["rms"] / r["bound"], "rms_over_predicted": r["rms"] / r["rms_predicted"]})
    return {"pure_diffusion": diffusion, "confining_drift": drift}


def gaussian_kl_to_diag(z: Tensor, var_star: Tensor) -> float:
    """KL(N(m, S) ‖ N(0, diag(var_star))) for the Gaussian fit (m, S) of the particles z (n, d), float64."""
    z = z.to(torch.float64)
    m = z.mean(dim=0)
    s = torch.cov(z.T).reshape(z.shape[1], z.shape[1])
    inv = 1.0 / var_star
    d = z.shape[1]
    logdet_s = float(torch.linalg.slogdet(s)[1])
    return 0.5 * (
        float((inv * torch.diagonal(s)).sum())
        + float((m * m * inv).sum())
        - d
        + float(torch.log(var_star).sum())
        - logdet_s
    )


def kl_decay(eta: float, n: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """One Theorem 4 run: KL(t) of the particles to the stationary law on ½(z₁² + 4z₂²), D = 1, λ = 1e-3.

    dt = 0.05/(η κ_max); the start is N((3σ*₁, 3σ*₂), (2σ*)²) (KL₀ ≈ 10). Returns t, KL(t), the fitted slope
    of log KL over the steps where KL is between 50 times the sampling floor (d(d+3)/(4n)) and KL₀/e², the
    Bakry–Émery rate 2ηκ_min, the seed's σ = 2D/(κ_max + D/λ) and the first time KL exceeds KL₀e^(−σt).
    """
    kappa = (1.0, 4.0)
    diff, lam = 1.0, 1e-3
    dt = 0.05 / (eta * max(kappa))
    dyn = FokkerPlanckDynamics(
        _Harmonic(kappa), eta_0=eta, tau_eta=math.inf, lambda_reg=lam, gamma=0.0, D_0=diff, tau_D=math.inf
    )
    theta = torch.tensor([eta * k for k in kappa], dtype=torch.float64)
    var_star = diff / (theta * (1.0 - 0.5 * theta * dt))
    gen = torch.Generator().manual_seed(seed)
    sd = var_star.sqrt()
    z = (3.0 * sd + 2.0 * sd * torch.randn((n, 2), generator=gen, dtype=torch.float64)).to(torch.float64)
    times, kls = [], []
    for k in range(steps + 1):
        times.append(k * dt)
        kls.append(gaussian_kl_to_diag(z, var_star))
        if k < steps:
            z = dyn.step(z, k * dt, dt, gen)
    t_arr, kl_arr = np.asarray(times), np.asarray(kls)
    floor = 2 * (2 + 3) / (4 * n)
    sel = (kl_arr > 50 * floor) & (kl_arr < kl_arr[0] / math.e**2)
    slope = float(np.polyfit(t_arr[sel], np.log(kl_arr[sel]), 1)[0]) if sel.sum() >= 3 else math.nan
    rate = 2 * eta * min(kappa)
    sigma_seed = 2 * diff / (max(kappa) + diff / lam)
    valid = kl_arr > 10 * floor
    be_ratio = float(np.max(kl_arr[valid] / (kl_arr[0] * np.exp(-rate * t_arr[valid]))))
    seed_bound = kl_arr[0] * np.exp(-sigma_seed * t_arr)
    violated = np.nonzero(kl_arr > seed_bound * 1.05)[0]
    return {
        "eta": eta,
        "dt": dt,
        "t": times,
        "kl": kls,
        "kl0": kls[0],
        "fit_points": int(sel.sum()),
        "slope": slope,
        "rate_bakry_emery": rate,
        "slope_over_rate": -slope / rate if math.isfinite(slope) else math.nan,
        "max_kl_over_be_bound": be_ratio,
        "sigma_seed": sigma_seed,
        "seed_bound_first_violation_t": float(t_arr[violated[0]]) if violated.size else None,
        "sampling_floor": floor,
    }


def theorem4(cfg: TheoremConfig) -> list[dict[str, Any]]:
    return [kl_decay(eta, cfg.n4, cfg.steps4) for eta in cfg.etas4]


def run_all(cfg: TheoremConfig, out_dir: Path | None, plot: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = {"config": asdict(cfg), "theorem3": theorem3(cfg), "theorem4": theorem4(cfg)}
    result["seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        write_json(out_dir / "theorems.json", result)
        if plot:
            plot_results(result, out_dir)
    return result


def plot_results(result: dict[str, Any], out_dir: Path) -> list[Path]:
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["theorem3"]["pure_diffusion"]
    dims = sorted({r["d"] for r in rows})
    for beta in sorted({r["beta"] for r in rows}):
        sub = [r for r in rows if r["beta"] == beta]
        axes[0].plot([r["d"] for r in sub], [r["rms_over_bound"] for r in sub], "o-", label=f"RMS, β={beta:g}")
        axes[0].plot([r["d"] for r in sub], [r["mean_over_bound"] for r in sub], "s--", label=f"mean, β={beta:g}")
    axes[0].plot(dims, [chi_ratio(d) for d in dims], "k:", label="E[χ_d]/√d (theory, mean)")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("d")
    axes[0].set_ylabel("radius / √(2dβΔt)")
    axes[0].set_title("Theorem 3, pure diffusion")
    axes[0].legend(fontsize=7)
    drift = result["theorem3"]["confining_drift"]
    x = [r["theta_dt"] for r in drift]
    axes[1].plot(x, [r["rms_over_bound"] for r in drift], "o-", label="measured RMS / √(2dβΔt)")
    axes[1].plot(x, [r["rms_predicted"] / r["bound"] for r in drift], "k:", label="exact chain prediction")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set_xlabel("θΔt (well stiffness × boost duration)")
    axes[1].set_title("Theorem 3 inside a harmonic well (d=4, β=3)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths = [out_dir / "theorems_thm3.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in result["theorem4"]:
        t = np.asarray(run["t"]) * run["rate_bakry_emery"]
        ax.semilogy(t, run["kl"], label=f"η={run['eta']:g}: measured")
        ax.semilogy(
            t,
            run["kl0"] * np.exp(-run["sigma_seed"] * np.asarray(run["t"])),
            ":",
            label=f"η={run['eta']:g}: seed bound",
        )
    ax.semilogy(t, result["theorem4"][0]["kl0"] * np.exp(-t), "k--", label="KL₀ e^(−2ηκ_min t)")
    ax.set_xlabel("t × 2ηκ_min")
    ax.set_ylabel("KL(ρ_t ‖ ρ*)")
    ax.set_title("Theorem 4 on ½(z₁² + 4z₂²), D = 1, λ = 1e-3")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "theorems_thm4.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def format_tables(result: dict[str, Any]) -> str:
    t3 = result["theorem3"]
    rows = [
        [r["d"], r["beta"], r["delta_t"], r["rms_over_bound"], r["mean_over_bound"], r["chi_ratio"]]
        for r in t3["pure_diffusion"]
    ]
    a = markdown_table(["d", "β", "Δt", "RMS / √(2dβΔt)", "mean / √(2dβΔt)", "E[χ_d]/√d"], rows)
    rows = [
        [r["theta_dt"], r["rms_over_bound"], r["rms_predicted"] / r["bound"], r["rms_over_predicted"]]
        for r in t3["confining_drift"]
    ]
    b = markdown_table(["θΔt", "RMS / √(2dβΔt)", "predicted / √(2dβΔt)", "RMS / predicted"], rows)
    rows = [
        [
            r["eta"],
            r["slope"],
            -r["rate_bakry_emery"],
            r["slope_over_rate"],
            r["max_kl_over_be_bound"],
            r["sigma_seed"],
            r["seed_bound_first_violation_t"],
            r["t"][-1],
        ]
        for r in result["theorem4"]
    ]
    header = ["η", "fitted d log KL/dt", "−2ηκ_min", "ratio", "max KL/(KL₀e^(−2ηκ_min t))", "seed σ"]
    c = markdown_table([*header, "seed bound violated at t", "t_end"], rows)
    return "\n\n".join([a, b, c])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer dimensions, smaller n (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for theorems.json and PNGs")
    args = parser.parse_args(argv)
    single_thread()
    cfg = QUICK if args.quick else TheoremConfig()
    result = run_all(cfg, args.out / "quick" if args.quick else args.out)
    print(format_tables(result))
    print(f"\n{result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
