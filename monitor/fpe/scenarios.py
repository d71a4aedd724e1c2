"""Ready-made particle-solver scenarios with a KNOWN transition time (DESIGN.md §3.5, §5).

Each :class:`Scenario` bundles a :class:`~monitor.fpe.dynamics.FokkerPlanckDynamics`, initial particles
drawn from (approximately) the stationary distribution of the first regime, and the step at which the
regime changes, so that detectors can be scored by their delay and their false alarms::

    sc = new_minimum_scenario()
    z, hist = sc.run()                       # hist["C"], hist["W2_step"], ... per step
    # the drift changes at step sc.transition_step

Each scenario run takes about 0.5–3 s on 2 busy CPU cores at the defaults (n = 256, d = 4, 240 steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .dynamics import DynamicsConfig, FokkerPlanckDynamics


@dataclass(frozen=True)
class Scenario:
    """A particle run with a known transition.

    Attributes:
        name: short identifier.
        dynamics: the solver (its ``loss_fn`` carries the scenario's parameters).
        z_init: initial particles (n, d), float32.
        n_steps: number of steps of the run.
        dt: time step (SDE time units); step k runs at t = k·dt.
        transition_step: the first step whose dynamics differ from the first regime (the loss switches, or
            the reset fires, at the start of this step).
        description: what happens, in words, with the parameters.
        reset_at: steps at which :meth:`run` fires resets (empty for a scenario without resets).
        seed: seed of the run's noise (:meth:`run` default).
    """

    name: str
    dynamics: FokkerPlanckDynamics
    z_init: Tensor
    n_steps: int
    dt: float
    transition_step: int
    description: str
    reset_at: tuple[int, ...] = ()
    seed: int = 0

    def run(self, seed: int | None = None, progress: bool = False) -> tuple[Tensor, dict[str, list[Any]]]:
        """``dynamics.train_epoch`` over the scenario (its resets included); returns (z_final, histories)."""
        return self.dynamics.train_epoch(
            self.z_init,
            n_steps=self.n_steps,
            dt=self.dt,
            seed=self.seed if seed is None else seed,
            reset_at=self.reset_at,
            progress=progress,
        )


@dataclass(frozen=True)
class TwoWellLoss:
    """Per-sample loss of the scenarios, a callable ``loss(z, t) -> (n,)``.

    L_a = ½ k_a ‖z − a‖² (the old well), L_b = ½ k_b ‖z − b‖² − depth (a deeper well at b). Before
    ``t_switch`` the loss is L_a alone; from ``t_switch`` on it is min(L_a, L_b). ``t_switch = -inf``
    means both wells exist from the start. The boundary {L_a = L_b} is a ridge (a cusp barrier): a
    particle on the a side feels only the a well, one that crosses it slides to b.
    """

    a: Tensor
    b: Tensor
    k_a: float
    k_b: float
    depth: float
    t_switch: float

    def __call__(self, z: Tensor, t: float) -> Tensor:
        a = self.a.to(device=z.device, dtype=z.dtype)
        loss_a = 0.5 * self.k_a * (z - a).pow(2).sum(dim=1)
        if t < self.t_switch:
            return loss_a
        b = self.b.to(device=z.device, dtype=z.dtype)
        loss_b = 0.5 * self.k_b * (z - b).pow(2).sum(dim=1) - self.depth
        return torch.minimum(loss_a, loss_b)


def _stationary_variance(theta: float, d0: float, gamma: float, k: float, dt: float) -> float:
    """Per-coordinate variance of the Euler–Maruyama chain in a harmonic well with drift −θ(z − a).

    The Fisher term makes D = D₀(1 + γ k² σ²) (F ≈ k² σ² I in the well), and the discrete chain has
    σ² = D / (θ (1 − θ dt/2)); solved for σ².
    """
    return d0 / (theta * (1.0 - 0.5 * theta * dt) - d0 * gamma * k * k)


def _wells(d: int, distance: float) -> tuple[Tensor, Tensor]:
    a = torch.zeros(d, dtype=torch.float64)
    b = torch.full((d,), distance / math.sqrt(d), dtype=torch.float64)
    return a, b


def _check_common(n: int, d: int, dt: float, distance: float, k_a: float, k_b: float) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, d)) or n < 2 or d < 1:
        raise ValueError(f"need integers n >= 2 and d >= 1, got n={n!r}, d={d!r}")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    if not (distance > 0 and k_a > 0 and k_b > 0):
        raise ValueError(f"distance, k_a and k_b must be > 0, got distance={distance}, k_a={k_a}, k_b={k_b}")


def _initial_particles(n: int, d: int, var: float, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (math.sqrt(var) * torch.randn((n, d), generator=gen, dtype=torch.float64)).to(torch.float32)


def new_minimum_scenario(
    n: int = 256,
    d: int = 4,
    seed: int = 0,
    transition_step: int = 120,
    n_steps: int = 240,
    dt: float = 0.1,
    distance: float = 8.0,
    k_a: float = 7.0,
    k_b: float = 2.5,
    config: DynamicsConfig | None = None,
) -> Scenario:
    """At ``transition_step`` a new, deeper minimum appears far away; the particles migrate to it.

    Loss :class:`TwoWellLoss`: L_a = ½ k_a ‖z‖² until the switch, then min(L_a, L_b) with
    L_b = ½ k_b ‖z − b‖² − depth, b = ``distance`` · (1, …, 1)/√d and depth = 2 k_b ‖b‖², so that
    L_b ≤ L_a on the whole ball ‖z‖ ≤ ‖b‖: the new basin swallows the old minimum and every particle
    slides to b. Dynamics: the seed's model with η₀ = 1 and τ_η = τ_D = inf (the first regime is exactly
    stationary), the seed's other defaults (D₀ = 1, γ = 0.05, λ = 1e-3, KDE bandwidth factor 1), unless
    ``config`` is given. The particles start from the chain's stationary law in the first well,
    N(0, σ_a² I) (σ_a² ≈ 0.48 at the defaults).

    Why these defaults: η₀ k_a dt = 0.7 makes consecutive steps of the first regime nearly independent
    (the cloud's covariance has lag-1 autocorrelation (1 − 0.7)² ≈ 0.09), as consecutive batches of an
    RLHF run are. A slower first well makes H and C autocorrelated, and a streaming detector that scores
    each value against a trailing window then false-alarms: with the detector's default config, at
    η₀ k_a dt = 0.1, 0.2, 0.5, 0.6 (k_b adjusted) 13, 5, 4, 5 of 30 seeds had a flag before the switch,
    at 0.7 none of 90. η₀ k_b dt = 0.25 makes the migration take ~10 steps; the new well is wider, so H
    rises (pass k_b > k_a for a collapse onto a narrow minimum, keeping η₀ k_b dt < 1). The price of the
    coarse step: the chain's stationary variance is 1/(1 − η₀ k_a dt/2) ≈ 1.5 times the SDE's, so the
    SDE's current velocity v = μ − D s is not zero there and S_dot sits at an offset (≈ +3) before the
    switch (≈ −2 in the slower new well).

    Measured at the defaults (n = 256, d = 4, seed 0): mean ± std over steps 10–119 | values at steps
    120, 121, 122, 125, 130 | mean ± std over steps 200–239:

    ========= ============== ====================================== ==============
    C         1.38 ± 0.09    4.12, 3.50, 2.86, 1.71, 1.17           1.00 ± 0.04
    S_dot     3.1 ± 1.5      −9.3, −4.3, −2.9, −1.4, −1.3           −2.0 ± 0.5
    sigma_tot 13.8 ± 1.4     210, 120, 70, 16, 6.1                  3.95 ± 0.26
    H         4.01 ± 0.10    3.79, 4.27, 4.53, 4.60, 4.73           4.56 ± 0.06
    W2_step   1.50 ± 0.04    2.22, 1.81, 1.53, 1.16, 1.07           1.03 ± 0.02
    loss      5.6 ± 0.3      −238, −272, −291, −312, −317           −317.0 ± 0.1
    ========= ============== ====================================== ==============

    The streaming detector (``monitor.detect.StreamingDetector``, default config, fed these histories)
    flagged step 120 and no earlier step in each of seeds 0–89.

    Args:
        n, d: number of particles and latent dimension.
        seed: seed of the initial particles and of the run's noise (``Scenario.seed``).
        transition_step: first step with the new minimum (0 < transition_step < n_steps).
        n_steps: length of the run.
        dt: time step.
        distance: ‖b − a‖ in latent units.
        k_a, k_b: stiffness of the old and of the new well (k_b > k_a makes the new well narrower;
            keep η₀ k dt < 1 for a non-oscillating chain).
        config: dynamics settings replacing the scenario's (η₀ = 1, τ_η = τ_D = inf, seed defaults).
    """
    _check_steps(transition_step, n_steps)
    _check_common(n, d, dt, distance, k_a, k_b)
    cfg = config if config is not None else DynamicsConfig(eta_0=1.0, tau_eta=math.inf, tau_D=math.inf)
    if not cfg.eta_0 * max(k_a, k_b) * dt < 1.0:
        raise ValueError(
            f"η₀·k·dt = {cfg.eta_0 * max(k_a, k_b) * dt:.3g} must be < 1 for a stable, non-oscillating chain"
        )
    var_a = _stationary_variance(cfg.eta_0 * k_a, cfg.D_0, cfg.gamma, k_a, dt)
    if not var_a > 0:
        raise ValueError("the first well has no stationary law for these settings; lower D_0 or gamma")
    a, b = _wells(d, distance)
    depth = 2.0 * k_b * distance**2
    loss = TwoWellLoss(a=a, b=b, k_a=k_a, k_b=k_b, depth=depth, t_switch=(transition_step - 0.5) * dt)
    description = (
        f"one well at a=0 (k_a={k_a:g}) until step {transition_step}, then a deeper (depth {depth:g}) well "
        f"(k_b={k_b:g}) at distance {distance:g} swallows it and the particles migrate there; n={n}, d={d}, "
        f"dt={dt:g}, eta_0={cfg.eta_0:g}, D_0={cfg.D_0:g}, gamma={cfg.gamma:g}, lambda={cfg.lambda_reg:g}; "
        f"stationary sigma_a^2={var_a:.3g}"
    )
    return Scenario(
        name="new_minimum",
        dynamics=FokkerPlanckDynamics(loss, cfg),
        z_init=_initial_particles(n, d, var_a, seed),
        n_steps=n_steps,
        dt=dt,
        transition_step=transition_step,
        description=description,
        seed=seed,
    )


def reset_escape_scenario(
    n: int = 256,
    d: int = 4,
    seed: int = 0,
    reset_step: int = 120,
    n_steps: int = 240,
    dt: float = 0.1,
    distance: float = 8.0,
    k_a: float = 7.0,
    k_b: float = 2.5,
    crossing_sigmas: float = 2.0,
    config: DynamicsConfig | None = None,
) -> Scenario:
    """Particles sit in a well behind a barrier that only the post-reset diffusion boost carries them over.

    Loss :class:`TwoWellLoss` with both wells present from the start: min(L_a, L_b), the ridge
    {L_a = L_b} crossing the a–b axis at distance r from a, with r = ``crossing_sigmas`` · σ_boost where
    σ_boost² is the stationary variance of the first well under the boosted diffusion D + β_reset I. At
    base diffusion (D₀ = 0.3) the cloud's σ_a is about r/6: no particle reaches the ridge in 240 steps.
    At ``reset_step`` a reset fires (``Scenario.reset_at``): α = 20 % of the particles are redrawn from
    N(mean, 1.5 Cov) and the diffusion is boosted by β_reset = 3 for 10 steps, which widens the cloud to
    σ_boost (seed §5.2 / Theorem 3 in its RMS form) and lets a fraction of it cross the ridge and slide to
    b. ``dataclasses.replace(scenario, reset_at=())`` is the control run without reset.

    Dynamics: η₀ = 1, τ_η = τ_D = inf, D₀ = 0.3, the seed's other defaults, unless ``config`` is given.
    Measured at the defaults: no particle reaches b without the reset; with it, 88–96 of the 256
    particles (seeds 0–5) end in the b well, all within ~15 steps of ``reset_step``. Seed 0: mean ± std
    over steps 10–119 | values at steps 120, 121, 125, 130, 131, 135 (the boost lasts steps 120–129) |
    mean ± std over steps 200–239:

    ========= ============== ====================================== ==============
    C         1.37 ± 0.07    0.14, 1.17, 1.99, 17.5, 12.4, 13.2     15.7 ± 0.3
    S_dot     3.1 ± 1.2      −199, −3.1, 3.8, 10.2, 5.5, 2.2        1.72 ± 0.08
    H         0.76 ± 0.09    0.76, 4.97, 5.90, 6.64, 5.29, 4.48     4.57 ± 0.03
    W2_step   0.66 ± 0.02    1.68, 2.02, 2.10, 1.25, 0.91, 0.66     0.62 ± 0.01
    loss      1.11 ± 0.05    1.12, 9.0, 7.7, −0.4, −8.0, −12.0      −12.5 ± 0.05
    ========= ============== ====================================== ==============

    C collapses at the reset (the seed's signature: the boost inflates D), then stays large once the
    cloud is bimodal, because a single Scott bandwidth over the whole cloud oversmooths two separated
    clusters (‖D s‖ is underestimated); H is high for the same reason.

    Args:
        n, d, seed, n_steps, dt, distance, k_a, k_b, config: as in :func:`new_minimum_scenario`.
        reset_step: the step at which the reset fires (= ``transition_step``).
        crossing_sigmas: distance of the ridge from a in units of σ_boost.
    """
    _check_steps(reset_step, n_steps)
    _check_common(n, d, dt, distance, k_a, k_b)
    if not crossing_sigmas > 0:
        raise ValueError(f"crossing_sigmas must be > 0, got {crossing_sigmas}")
    cfg = config if config is not None else DynamicsConfig(eta_0=1.0, tau_eta=math.inf, tau_D=math.inf, D_0=0.3)
    if not cfg.eta_0 * max(k_a, k_b) * dt < 1.0:
        raise ValueError(
            f"η₀·k·dt = {cfg.eta_0 * max(k_a, k_b) * dt:.3g} must be < 1 for a stable, non-oscillating chain"
        )
    theta_a = cfg.eta_0 * k_a
    var_a = _stationary_variance(theta_a, cfg.D_0, cfg.gamma, k_a, dt)
    if not var_a > 0:
        raise ValueError("the first well has no stationary law for these settings; lower D_0 or gamma")
    d_boost = cfg.D_0 * (1.0 + cfg.gamma * k_a * k_a * var_a) + cfg.beta_reset
    var_boost = d_boost / (theta_a * (1.0 - 0.5 * theta_a * dt))
    r = crossing_sigmas * math.sqrt(var_boost)
    if not r < distance:
        raise ValueError(f"the ridge (r={r:.3g}) must lie between the wells (distance={distance}); raise distance")
    depth = 0.5 * k_b * (distance - r) ** 2 - 0.5 * k_a * r * r
    if not depth > 0:
        raise ValueError(f"the b well must be the deeper one (depth={depth:.3g}); raise distance or lower k_b")
    a, b = _wells(d, distance)
    loss = TwoWellLoss(a=a, b=b, k_a=k_a, k_b=k_b, depth=depth, t_switch=-math.inf)
    description = (
        f"well at a=0 (k_a={k_a:g}, sigma_a={math.sqrt(var_a):.3g}) behind a ridge at r={r:.3g} from a "
        f"deeper well (depth {depth:.3g}, k_b={k_b:g}) at distance {distance:g}; a reset at step "
        f"{reset_step} (alpha={cfg.alpha_reset:g}, beta={cfg.beta_reset:g} for {cfg.reset_boost_steps} "
        f"steps, sigma_boost={math.sqrt(var_boost):.3g}) lets part of the cloud escape; n={n}, d={d}, "
        f"dt={dt:g}, eta_0={cfg.eta_0:g}, D_0={cfg.D_0:g}"
    )
    return Scenario(
        name="reset_escape",
        dynamics=FokkerPlanckDynamics(loss, cfg),
        z_init=_initial_particles(n, d, var_a, seed),
        n_steps=n_steps,
        dt=dt,
        transition_step=reset_step,
        description=description,
        reset_at=(reset_step,),
        seed=seed,
    )


@dataclass(frozen=True)
class BarrierLoss:
    """Per-sample loss of :func:`barrier_crossing_scenario`, a callable ``loss(z, t) -> (n,)``.

    min(L_a, L_b) with L_a = ½ k_a ‖z − a‖² and L_b = ½ k_b ‖z − b‖² − depth(t), depth(t) =
    ``depth_before`` for t < ``t_switch`` and ``depth_after`` from then on. Lowering L_b moves the ridge
    {L_a = L_b} towards a: the barrier between the wells drops but does not vanish, so particles cross it
    one by one by thermal activation (unlike :class:`TwoWellLoss` in :func:`new_minimum_scenario`, whose new
    basin swallows the old minimum at once).
    """

    a: Tensor
    b: Tensor
    k_a: float
    k_b: float
    depth_before: float
    depth_after: float
    t_switch: float

    def __call__(self, z: Tensor, t: float) -> Tensor:
        a = self.a.to(device=z.device, dtype=z.dtype)
        b = self.b.to(device=z.device, dtype=z.dtype)
        depth = self.depth_before if t < self.t_switch else self.depth_after
        loss_a = 0.5 * self.k_a * (z - a).pow(2).sum(dim=1)
        loss_b = 0.5 * self.k_b * (z - b).pow(2).sum(dim=1) - depth
        return torch.minimum(loss_a, loss_b)


def barrier_crossing_scenario(
    n: int = 256,
    d: int = 4,
    seed: int = 0,
    transition_step: int = 120,
    n_steps: int = 240,
    dt: float = 0.1,
    distance: float = 8.0,
    k_a: float = 7.0,
    k_b: float = 2.5,
    sigmas_before: float = 6.0,
    sigmas_after: float = 2.0,
    config: DynamicsConfig | None = None,
) -> Scenario:
    """At ``transition_step`` the barrier in front of a deeper well drops; particles cross it one by one.

    Loss :class:`BarrierLoss`: both wells exist throughout; the ridge {L_a = L_b} crosses the a–b axis at
    ``sigmas_before`` · σ_a from a until the switch (no particle reaches it: a 6 σ event per particle and
    step), then at ``sigmas_after`` · σ_a (σ_a² the chain's stationary variance in the first well, the
    same as :func:`new_minimum_scenario`'s). After the switch each particle's projection on the a–b axis
    exceeds the ridge with probability ≈ 1 − Φ(``sigmas_after``) ≈ 2.3 % per step (consecutive steps are
    nearly independent, η₀ k_a dt = 0.7), so the cloud leaks into the b well over tens of steps: an
    activated, gradual transition — the hard case for a detector, unlike the sudden one of
    :func:`new_minimum_scenario`. Dynamics as in :func:`new_minimum_scenario` (η₀ = 1, τ_η = τ_D = inf,
    the seed's other defaults) unless ``config`` is given.

    Measured at the defaults (seed 0, counting particles nearer b than a): none before the switch; 37 of
    256 ten steps after it, half about 30 steps after it, 213 (83 %) at step 240.

    Args:
        n, d, seed, transition_step, n_steps, dt, distance, k_a, k_b, config: as in
            :func:`new_minimum_scenario`.
        sigmas_before, sigmas_after: distance of the ridge from a, in units of σ_a, before and after the
            switch (``sigmas_before`` > ``sigmas_after`` > 0).
    """
    _check_steps(transition_step, n_steps)
    _check_common(n, d, dt, distance, k_a, k_b)
    if not sigmas_before > sigmas_after > 0:
        raise ValueError(f"need sigmas_before > sigmas_after > 0, got {sigmas_before} and {sigmas_after}")
    cfg = config if config is not None else DynamicsConfig(eta_0=1.0, tau_eta=math.inf, tau_D=math.inf)
    if not cfg.eta_0 * max(k_a, k_b) * dt < 1.0:
        raise ValueError(
            f"η₀·k·dt = {cfg.eta_0 * max(k_a, k_b) * dt:.3g} must be < 1 for a stable, non-oscillating chain"
        )
    var_a = _stationary_variance(cfg.eta_0 * k_a, cfg.D_0, cfg.gamma, k_a, dt)
    if not var_a > 0:
        raise ValueError("the first well has no stationary law for these settings; lower D_0 or gamma")
    sigma_a = math.sqrt(var_a)
    r_before, r_after = sigmas_before * sigma_a, sigmas_after * sigma_a
    if not r_before < distance:
        raise ValueError(f"the ridge (r={r_before:.3g}) must lie between the wells (distance={distance}); raise it")

    def depth_for(r: float) -> float:  # L_a(r) = L_b(r) on the axis
        return 0.5 * k_b * (distance - r) ** 2 - 0.5 * k_a * r * r

    a, b = _wells(d, distance)
    loss = BarrierLoss(
        a=a,
        b=b,
        k_a=k_a,
        k_b=k_b,
        depth_before=depth_for(r_before),
        depth_after=depth_for(r_after),
        t_switch=(transition_step - 0.5) * dt,
    )
    description = (
        f"wells at a=0 (k_a={k_a:g}, sigma_a={sigma_a:.3g}) and b at distance {distance:g} (k_b={k_b:g}); the "
        f"ridge moves from {r_before:.3g} ({sigmas_before:g} sigma_a) to {r_after:.3g} ({sigmas_after:g} sigma_a) "
        f"from a at step {transition_step}, and particles leak over it; n={n}, d={d}, dt={dt:g}, "
        f"eta_0={cfg.eta_0:g}, D_0={cfg.D_0:g}"
    )
    return Scenario(
        name="barrier_crossing",
        dynamics=FokkerPlanckDynamics(loss, cfg),
        z_init=_initial_particles(n, d, var_a, seed),
        n_steps=n_steps,
        dt=dt,
        transition_step=transition_step,
        description=description,
        seed=seed,
    )


def _check_steps(transition_step: int, n_steps: int) -> None:
    for name, value in (("transition_step", transition_step), ("n_steps", n_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 < transition_step < n_steps:
        raise ValueError(f"need 0 < transition_step < n_steps, got {transition_step} and {n_steps}")


__all__ = [
    "BarrierLoss",
    "Scenario",
    "TwoWellLoss",
    "barrier_crossing_scenario",
    "new_minimum_scenario",
    "reset_escape_scenario",
]
