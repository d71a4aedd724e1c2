"""Particle solver of the seed's Fokker–Planck learning dynamics (seed §3–§5, §12.1; DESIGN.md §3.5).

n particles z_i ∈ R^d (latents) follow the Itô SDE

    dz = μ(z, t) dt + √(2 D(t)) dW,
    μ = −η(t) [∇L(z, t) + λ ∇H],           η(t) = η₀ / (1 + t/τ_η),
    D(t) = D₀ e^(−t/τ_D) (I + γ_eff F) (+ β_reset I for ``reset_boost_steps`` steps after a reset),

integrated by Euler–Maruyama, z ← z + μ dt + √(2 dt) ξ Lᵀ with ξ ~ N(0, I) and L = cholesky(D). D is one
d×d matrix for the whole batch (it does not depend on the particle), so a step costs ONE Cholesky
factorisation, whatever n is. The probability density ρ of the particles obeys ∂ρ/∂t = −∇·(μρ − D∇ρ).

Estimators (all closed form, log domain, through :mod:`monitor.fpe.kernels`):

* ρ̂ and its score s = ∇log ρ̂: leave-one-out Gaussian KDE of the particles, bandwidth
  h = c · n^(−1/(d+4)) · σ_rms with σ_rms the RMS spread of the particles per coordinate.
* ∇H: the seed's functional gradient −∇ρ (1 + log ρ) with ∇ρ = ρ s (no finite differences, no
  (2πh²)^(d/2) normaliser outside the log). Note that this quantity is not scale-free: its size follows
  ρ itself (∝ length^(−d−1)) and its sign flips where ρ = 1/e, so λ has to be chosen for the units of z.
* F: the seed's decoder Fisher (§4.3), F = mean_i g_i g_iᵀ of the per-sample loss gradients g_i.
* γ_eff = min(γ, 0.99/λ_max(F)) (seed Prop. 2), so every eigenvalue of I + γ_eff F lies in [1, 1.99].

Units: z in latent units, t and dt in SDE time units (step k runs at t = k·dt), η in latent units² per
loss unit per time, D in latent units² per time.

Differences from the seed's JAX code (DESIGN.md §3.6): one Cholesky per step instead of one per
particle; closed-form scores instead of finite differences over n×n×d tensors; log-domain KDE (no
overflow of the normaliser at d = 64); C made dimensionless with the score; the entropy production
uses the current velocity v = μ − D s (not J·∇log ρ averaged over ρ); resets replace particles in place
(the others keep their identity and order) and draw from N(mean, factor·Cov) through a symmetric square
root (no factorisation that fails on a rank-deficient covariance).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .gaussian import gaussian_fit, sym_power
from .kernels import kernel_fit, score_from_fit

LossFn = Callable[[Tensor, float], Tensor]

#: keys of the histories returned by :meth:`FokkerPlanckDynamics.train_epoch`
HISTORY_KEYS: tuple[str, ...] = ("t", "C", "S_dot", "sigma_tot", "H", "loss", "W2_step", "resets")

_TINY = 1e-300
_HUGE = 1e300


@dataclass(frozen=True)
class DynamicsConfig:
    """Settings of :class:`FokkerPlanckDynamics`; defaults are the seed's (§12.1).

    Attributes:
        eta_0: η₀, initial learning rate of the drift μ = −η(t)[∇L + λ∇H]. Default 0.01.
        tau_eta: τ_η of η(t) = η₀/(1 + t/τ_η), in SDE time units (``inf``: constant η). Default 1000.
        lambda_reg: λ, weight of the entropy gradient in the drift. Default 1e-3.
        D_0: base diffusion D₀ of D = D₀ e^(−t/τ_D)(I + γF), latent units² per time. Default 1.
        tau_D: τ_D, diffusion decay time in SDE time units (``inf``: no decay). Default 500.
        gamma: γ, Fisher coupling of the diffusion; clipped at run time to 0.99/λ_max(F). Default 0.05.
        alpha_reset: α, fraction of the particles a reset replaces, 0 < α ≤ 1. Default 0.2.
        beta_reset: β_reset, diffusion boost β_reset·I added for ``reset_boost_steps`` steps after a
            reset. Default 3.
        reset_cov_factor: the replaced particles are drawn from N(mean, factor · Cov). Default 1.5.
        reset_boost_steps: how many steps the boost lasts after a reset. Default 10.
        auto_reset: the seed's trigger: in ``train_epoch``, reset when C < ``C_threshold`` at a step
            ≥ ``reset_warmup`` (not while a boost is still active). Default False.
        C_threshold: C below which the automatic trigger fires. Default 0.5.
        reset_warmup: first step at which the automatic trigger may fire. Default 10.
        bandwidth_factor: c in the KDE bandwidth h = c · n^(−1/(d+4)) · σ_rms. Default 1.
    """

    eta_0: float = 0.01
    tau_eta: float = 1000.0
    lambda_reg: float = 1e-3
    D_0: float = 1.0
    tau_D: float = 500.0
    gamma: float = 0.05
    alpha_reset: float = 0.2
    beta_reset: float = 3.0
    reset_cov_factor: float = 1.5
    reset_boost_steps: int = 10
    auto_reset: bool = False
    C_threshold: float = 0.5
    reset_warmup: int = 10
    bandwidth_factor: float = 1.0

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"DynamicsConfig.{name} must be a number, got {value!r}")
            return float(value)

        def positive(name: str, allow_inf: bool = False, hint: str = "") -> None:
            value = number(name)
            if not (value > 0 and (allow_inf or math.isfinite(value))):
                what = "> 0 (inf allowed)" if allow_inf else "a finite number > 0"
                raise ValueError(f"DynamicsConfig.{name} must be {what}, got {value!r}{hint}")

        def non_negative(name: str, hint: str = "") -> None:
            value = number(name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"DynamicsConfig.{name} must be a finite number >= 0, got {value!r}{hint}")

        def count(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DynamicsConfig.{name} must be an integer >= 0, got {value!r}")

        non_negative("eta_0", "; use 0 for pure diffusion")
        positive("tau_eta", allow_inf=True, hint="; use inf for a constant learning rate")
        non_negative("lambda_reg", "; use 0 to switch the entropy term off")
        positive("D_0", hint="; the Cholesky factor of D needs a positive base diffusion")
        positive("tau_D", allow_inf=True, hint="; use inf for no diffusion decay")
        non_negative("gamma", "; use 0 for isotropic diffusion")
        alpha = number("alpha_reset")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"DynamicsConfig.alpha_reset must lie in (0, 1] (a fraction), got {alpha!r}")
        non_negative("beta_reset", "; use 0 for a reset without diffusion boost")
        positive("reset_cov_factor")
        count("reset_boost_steps")
        if not isinstance(self.auto_reset, bool):
            raise ValueError(f"DynamicsConfig.auto_reset must be True or False, got {self.auto_reset!r}")
        non_negative("C_threshold")
        count("reset_warmup")
        positive("bandwidth_factor", hint="; 1 is Scott's rule")


@dataclass(frozen=True)
class _Evaluation:
    """Everything one step needs at (z, t); float64 for the d×d matrices."""

    losses: Tensor  # (n,) per-sample loss
    grads: Tensor  # (n, d) per-sample loss gradients
    drift: Tensor  # (n, d) μ, dtype of z
    diffusion: Tensor  # (d, d) D, float64
    log_density: Tensor | None  # (n,) leave-one-out log ρ̂, when the KDE was needed
    score: Tensor | None  # (n, d) leave-one-out score, when the KDE was needed


class FokkerPlanckDynamics:
    """Euler–Maruyama particle solver of dz = −η(t)[∇L + λ∇H] dt + √(2D) dW with resets (seed §12.1).

    Args:
        loss_fn: ``loss_fn(z, t)`` → per-sample losses (n,) for particles z (n×d) at SDE time t. The
            loss of sample i must depend on z_i only (no coupling through the batch, e.g. no BatchNorm in
            training mode): ∇L is taken by autograd of the sum of the per-sample losses.
        config: settings (default :class:`DynamicsConfig`); ``overrides`` replace single fields, e.g.
            ``FokkerPlanckDynamics(loss, D_0=0.5)``.

    The object carries one piece of state: the number of steps the post-reset diffusion boost still
    lasts (:attr:`boost_steps_left`), set by :meth:`apply_reset` and counted down by :meth:`step`.
    :meth:`train_epoch` starts from no boost.
    """

    def __init__(self, loss_fn: LossFn, config: DynamicsConfig | None = None, **overrides: Any) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be a callable loss_fn(z, t) -> (n,), got {type(loss_fn).__name__}")
        cfg = config if config is not None else DynamicsConfig()
        if not isinstance(cfg, DynamicsConfig):
            raise TypeError(f"config must be a DynamicsConfig or None, got {type(cfg).__name__}")
        if overrides:
            known = {f.name for f in dataclasses.fields(DynamicsConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown DynamicsConfig field(s) {unknown}; valid fields: {sorted(known)}")
            cfg = dataclasses.replace(cfg, **overrides)
        self.loss_fn = loss_fn
        self.config = cfg
        self.boost_steps_left = 0

    @classmethod
    def from_decoder(
        cls,
        decoder: torch.nn.Module,
        target: Tensor,
        config: DynamicsConfig | None = None,
        **overrides: Any,
    ) -> FokkerPlanckDynamics:
        """The seed's model: per-sample loss L_i = mean over outputs of (decoder(z_i) − target)².

        ``target`` has the shape of one decoded sample (broadcast to all particles) or of the whole
        decoded batch (n, ...). Only the latents move; the decoder's parameters are never updated (their
        ``.grad`` is left untouched).
        """
        target = target.detach()

        def loss_fn(z: Tensor, t: float) -> Tensor:
            out = decoder(z)
            diff = out - target.to(device=out.device, dtype=out.dtype)
            return diff.pow(2).reshape(z.shape[0], -1).mean(dim=1)

        return cls(loss_fn, config, **overrides)

    # ── schedules and estimators ──────────────────────────────────────────

    def learning_rate(self, t: float) -> float:
        """η(t) = η₀ / (1 + t/τ_η) (η₀ for τ_η = inf)."""
        cfg = self.config
        return cfg.eta_0 / (1.0 + t / cfg.tau_eta)

    def diffusion_scale(self, t: float) -> float:
        """D₀ e^(−t/τ_D), the isotropic part of D at time t."""
        cfg = self.config
        return cfg.D_0 * math.exp(-t / cfg.tau_D)

    def bandwidth(self, z: Tensor) -> float:
        """KDE bandwidth h = c · n^(−1/(d+4)) · σ_rms, σ_rms = sqrt(mean_i ‖z_i − z̄‖² / d).

        σ_rms is floored at sqrt(eps of the dtype) · max(1, RMS of z̄'s coordinates), so that a batch of
        identical particles still gets a positive bandwidth.
        """
        n, d = z.shape
        z64 = z.detach().to(torch.float64)
        mean = z64.mean(dim=0)
        spread = math.sqrt(float((z64 - mean).pow(2).sum(dim=1).mean()) / d)
        floor = math.sqrt(torch.finfo(z.dtype).eps) * max(1.0, math.sqrt(float(mean.pow(2).mean())))
        return self.config.bandwidth_factor * float(n) ** (-1.0 / (d + 4)) * max(spread, floor)

    def _kde(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Leave-one-out log ρ̂ (n,) and score s = ∇log ρ̂ (n, d) at the particles."""
        if z.shape[0] < 2:
            raise ValueError("the KDE needs at least 2 particles (leave-one-out)")
        zd = z.detach()
        fit = kernel_fit(zd, zd, self.bandwidth(zd), leave_one_out=True)
        return fit.log_density, score_from_fit(fit, zd)

    def _loss_and_grads(self, z: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """Per-sample losses (n,) and their gradients g_i = ∇_{z_i} L_i (n, d), detached."""
        _check_particles(z)
        with torch.enable_grad():
            zz = z.detach().clone().requires_grad_(True)
            losses = self.loss_fn(zz, float(t))
            if not isinstance(losses, Tensor) or losses.shape != (z.shape[0],):
                shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
                raise ValueError(f"loss_fn must return per-sample losses, shape ({z.shape[0]},); got {shape}")
            grad: Tensor | None = None
            if losses.requires_grad:
                (grad,) = torch.autograd.grad(losses.sum(), zz, allow_unused=True)
        if grad is None:  # a loss that does not depend on z
            grad = torch.zeros_like(z)
        return losses.detach(), grad.detach().to(z.dtype)

    def loss_gradient(self, z: Tensor, t: float) -> Tensor:
        """∇L at each particle, (n, d), by autograd of the sum of the per-sample losses."""
        return self._loss_and_grads(z, t)[1]

    def entropy_gradient(self, z: Tensor) -> Tensor:
        """The seed's ∇H = −∇ρ (1 + log ρ) at the particles, (n, d), with ∇ρ = ρ s (log domain).

        Computed as −exp(log ρ̂)(1 + log ρ̂) s with the leave-one-out KDE: the factor is formed in
        float64 from log ρ̂ (never from (2πh²)^(d/2)), so it is finite in float32 at d = 64. Values that a
        float dtype cannot hold (|∇H| beyond ~3e38 in float32, i.e. a density beyond that range)
        saturate at ±finfo.max instead of becoming inf.
        """
        _check_particles(z)
        log_rho, score = self._kde(z)
        return _entropy_gradient(log_rho, score, z.dtype)

    def drift(self, z: Tensor, t: float) -> Tensor:
        """μ = −η(t) [∇L + λ∇H], (n, d), latent units per time."""
        return self._evaluate(z, t, need_kde=False).drift

    def fisher(self, z: Tensor, t: float) -> Tensor:
        """F = mean_i g_i g_iᵀ of the per-sample loss gradients (seed §4.3), (d, d), dtype of z."""
        grads = self._loss_and_grads(z, t)[1]
        return _fisher(grads).to(z.dtype)

    def diffusion(self, z: Tensor, t: float) -> Tensor:
        """D = D₀ e^(−t/τ_D)(I + γ_eff F) (+ β_reset I while a reset boost is active), (d, d), dtype of z.

        γ_eff = min(γ, 0.99/λ_max(F)): the eigenvalues of D lie in [1, 1.99] · D₀ e^(−t/τ_D) (plus the
        boost). Symmetric positive definite.
        """
        grads = self._loss_and_grads(z, t)[1]
        return self._diffusion_from_grads(grads, t).to(z.dtype)

    def _diffusion_from_grads(self, grads: Tensor, t: float) -> Tensor:
        cfg = self.config
        d = grads.shape[1]
        eye = torch.eye(d, dtype=torch.float64, device=grads.device)
        fisher = _fisher(grads)
        gamma = cfg.gamma
        if gamma > 0:
            lam_max = float(torch.linalg.eigvalsh(fisher)[-1])
            if lam_max > 0:
                gamma = min(gamma, 0.99 / lam_max)
        dmat = self.diffusion_scale(t) * (eye + gamma * fisher)
        if self.boost_steps_left > 0:
            dmat = dmat + cfg.beta_reset * eye
        return 0.5 * (dmat + dmat.T)

    def _evaluate(self, z: Tensor, t: float, need_kde: bool) -> _Evaluation:
        """Losses, gradients, drift, diffusion and (if needed or λ > 0) the KDE at (z, t)."""
        cfg = self.config
        losses, grads = self._loss_and_grads(z, t)
        log_rho: Tensor | None = None
        score: Tensor | None = None
        if need_kde or cfg.lambda_reg > 0:
            log_rho, score = self._kde(z)
        total = grads
        if cfg.lambda_reg > 0:
            assert log_rho is not None and score is not None
            total = grads + cfg.lambda_reg * _entropy_gradient(log_rho, score, z.dtype)
        drift = -self.learning_rate(t) * total
        diffusion = self._diffusion_from_grads(grads, t)
        return _Evaluation(losses, grads, drift, diffusion, log_rho, score)

    # ── time stepping and resets ──────────────────────────────────────────

    def step(self, z: Tensor, t: float, dt: float, generator: torch.Generator | None = None) -> Tensor:
        """One Euler–Maruyama step: z + μ dt + √(2 dt) ξ Lᵀ, L = cholesky(D) (one factorisation).

        Args:
            z: particles (n, d) at time t.
            t: SDE time.
            dt: time step (> 0).
            generator: source of the Gaussian noise ξ (n, d); on z's device.

        Returns the particles at t + dt; counts the post-reset boost down by one step.
        """
        _check_dt(dt)
        ev = self._evaluate(z, t, need_kde=False)
        return self._advance(z, ev, torch.linalg.cholesky(ev.diffusion), dt, generator)

    def _advance(
        self, z: Tensor, ev: _Evaluation, chol: Tensor, dt: float, generator: torch.Generator | None
    ) -> Tensor:
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        z_new = z.detach() + ev.drift * dt + math.sqrt(2.0 * dt) * (noise @ chol.T.to(z.dtype))
        if self.boost_steps_left > 0:
            self.boost_steps_left -= 1
        return z_new

    def apply_reset(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Seed §5.1: ρ ← (1 − α)ρ + α N(mean, factor·Cov), and start the diffusion boost.

        A random subset of max(1, round(α n)) particles (chosen with ``generator``) is replaced by draws
        from N(z̄, reset_cov_factor · Cov(z)) (1/n covariance, symmetric square root: rank-deficient
        covariances are fine); the other particles keep their values and positions in the batch. Sets
        :attr:`boost_steps_left` to ``reset_boost_steps``. Returns a new (n, d) tensor.
        """
        _check_particles(z)
        cfg = self.config
        n, d = z.shape
        n_reset = min(n, max(1, round(cfg.alpha_reset * n)))
        fit = gaussian_fit(z.detach())
        root = sym_power(cfg.reset_cov_factor * fit.cov, 0.5, 0.0)
        idx = torch.randperm(n, generator=generator, device=z.device)[:n_reset]
        xi = torch.randn((n_reset, d), generator=generator, dtype=z.dtype, device=z.device)
        draws = fit.mean.to(z.dtype) + xi @ root.to(z.dtype)
        z_new = z.detach().clone()
        z_new[idx] = draws
        self.boost_steps_left = cfg.reset_boost_steps
        return z_new

    # ── observables ───────────────────────────────────────────────────────

    def consolidation_ratio(self, z: Tensor, t: float) -> float:
        """C = ‖μ‖_ρ / ‖D s‖_ρ, ‖f‖_ρ² = mean_i ‖f_i‖², s the KDE score (DESIGN.md §3.4); dimensionless."""
        ev = self._evaluate(z, t, need_kde=True)
        assert ev.score is not None
        return _metrics(ev, None)["C"]

    def train_epoch(
        self,
        z_init: Tensor,
        n_steps: int = 100,
        dt: float = 0.01,
        seed: int = 0,
        reset_at: Sequence[int] = (),
        progress: bool = False,
    ) -> tuple[Tensor, dict[str, list[Any]]]:
        """Run ``n_steps`` Euler–Maruyama steps from ``z_init`` (n×d) and record the histories.

        Step k runs at t = k·dt. Its observables are measured at the particles z_k (after a reset that
        fires at k), before the step moves them to z_{k+1}:

        * ``t``: k·dt; ``loss``: mean per-sample loss;
        * ``C``: ‖μ‖_ρ/‖D s‖_ρ; ``S_dot``: mean_i v_i·s_i with v = μ − D s the current velocity of the
          SDE (= −dH/dt); ``sigma_tot``: mean_i v_iᵀ D⁻¹ v_i ≥ 0; ``H``: −mean_i log ρ̂_loo(z_i);
        * ``W2_step``: sqrt(mean_i ‖z_{k+1,i} − z_{k,i}‖²), the RMS displacement of the particles in step
          k (drift and Brownian increments);
        * ``resets``: the step indices k at which a reset replaced particles before step k: the entries
          of ``reset_at`` and, with ``auto_reset``, k + 1 for each step k ≥ ``reset_warmup`` with
          C < ``C_threshold`` and no boost left (a trigger at the last step does not fire).

        One Cholesky factorisation per step serves both the noise and σ_tot. Deterministic for a given
        ``seed`` (a ``torch.Generator`` on z's device drives the noise and the resets). ``progress``
        shows a tqdm bar. Returns the final particles and the histories.
        """
        _check_particles(z_init)
        _check_dt(dt)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
        resets_wanted = _check_reset_steps(reset_at, n_steps)
        cfg = self.config
        gen = torch.Generator(device=z_init.device)
        gen.manual_seed(int(seed))
        self.boost_steps_left = 0
        hist: dict[str, list[Any]] = {key: [] for key in HISTORY_KEYS}
        z = z_init.detach().clone()
        steps: Iterable[int] = range(n_steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="FPE dynamics", unit="step")
        pending_auto = False
        for k in steps:
            t = k * dt
            if k in resets_wanted or pending_auto:
                z = self.apply_reset(z, gen)
                hist["resets"].append(k)
                pending_auto = False
            ev = self._evaluate(z, t, need_kde=True)
            chol = torch.linalg.cholesky(ev.diffusion)
            metrics = _metrics(ev, chol)
            z_new = self._advance(z, ev, chol, dt, gen)
            w2 = math.sqrt(float((z_new - z).to(torch.float64).pow(2).sum(dim=1).mean()))
            z = z_new
            hist["t"].append(t)
            for key, value in metrics.items():
                hist[key].append(value)
            hist["loss"].append(float(ev.losses.to(torch.float64).mean()))
            hist["W2_step"].append(w2)
            if (
                cfg.auto_reset
                and k >= cfg.reset_warmup
                and k + 1 < n_steps
                and self.boost_steps_left == 0
                and metrics["C"] < cfg.C_threshold
            ):
                pending_auto = True
        return z, hist


# ── helpers ──────────────────────────────────────────────────────────────


def _check_particles(z: Tensor) -> None:
    if not isinstance(z, Tensor) or z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"particles must be a tensor of shape (n, d) with n, d >= 1, got {shape}")
    if not z.is_floating_point():
        raise ValueError(f"particles must be a floating tensor (float32/float64), got {z.dtype}")


def _check_dt(dt: float) -> None:
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")


def _check_reset_steps(reset_at: Sequence[int], n_steps: int) -> set[int]:
    out: set[int] = set()
    for k in reset_at:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n_steps:
            raise ValueError(f"reset_at entries must be step indices in [0, {n_steps}), got {k!r}")
        out.add(k)
    return out


def _fisher(grads: Tensor) -> Tensor:
    """mean_i g_i g_iᵀ in float64, (d, d)."""
    g64 = grads.to(torch.float64)
    fisher = g64.T @ g64 / max(g64.shape[0], 1)
    return 0.5 * (fisher + fisher.T)


def _entropy_gradient(log_rho: Tensor, score: Tensor, dtype: torch.dtype) -> Tensor:
    """−exp(log ρ)(1 + log ρ) s, formed in float64 and saturated to the range of ``dtype``."""
    lr64 = log_rho.to(torch.float64)
    factor = -torch.exp(lr64.clamp(max=700.0)) * (1.0 + lr64)
    out = factor[:, None] * score.to(torch.float64)
    big = torch.finfo(dtype).max
    return out.clamp(-big, big).to(dtype)


def _ratio(num: float, den: float) -> float:
    """num/den without a division by zero: 0 when both vanish, 1e300 when only the denominator does."""
    if not (math.isfinite(num) and math.isfinite(den)):
        return math.nan
    if abs(den) < _TINY:
        return 0.0 if abs(num) < _TINY else math.copysign(_HUGE, num)
    return num / den


def _metrics(ev: _Evaluation, chol: Tensor | None) -> dict[str, float]:
    """C, S_dot, sigma_tot (if ``chol`` is given) and H at the evaluated particles."""
    assert ev.score is not None and ev.log_density is not None
    s64 = ev.score.to(torch.float64)
    mu64 = ev.drift.to(torch.float64)
    ds = s64 @ ev.diffusion  # D symmetric: (D s_i)ᵀ = s_iᵀ D
    v = mu64 - ds
    mu_norm = math.sqrt(float(mu64.pow(2).sum(dim=1).mean()))
    out = {
        "C": _ratio(mu_norm, math.sqrt(float(ds.pow(2).sum(dim=1).mean()))),
        "S_dot": float((v * s64).sum(dim=1).mean()),
        "H": float(-ev.log_density.to(torch.float64).mean()),
    }
    if chol is not None:
        dinv_v = torch.cholesky_solve(v.T, chol).T
        out["sigma_tot"] = float((v * dinv_v).sum(dim=1).mean())
    return out
