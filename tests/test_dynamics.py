"""Tests of the particle solver (monitor.fpe.dynamics) and its scenarios (monitor.fpe.scenarios).

Fixed seeds throughout; every statistical tolerance is stated next to its noise level.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from monitor.fpe.dynamics import HISTORY_KEYS, DynamicsConfig, FokkerPlanckDynamics
from monitor.fpe.kernels import kde_log_density, kde_score
from monitor.fpe.scenarios import Scenario, new_minimum_scenario, reset_escape_scenario

INF = math.inf


def zero_loss(z: Tensor, t: float) -> Tensor:
    """A constant loss: its gradient is zero (the loss does not even depend on z)."""
    return torch.zeros(z.shape[0], dtype=z.dtype)


def quadratic_loss(z: Tensor, t: float) -> Tensor:
    return 0.5 * z.pow(2).sum(dim=1)


def small_decoder(d: int = 3, p: int = 5, seed: int = 0) -> tuple[torch.nn.Module, Tensor]:
    torch.manual_seed(seed)
    decoder = torch.nn.Sequential(torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, p))
    target = torch.randn(p)
    return decoder, target


# ── 1. Theorem 3, RMS form ──────────────────────────────────────────────────


def test_reset_radius_obeys_theorem3_in_rms_form_and_mean_radius_is_below_it() -> None:
    """Zero drift, γ = 0, tiny D₀: after a reset the particles diffuse with D_tot = β_reset + D₀.

    ‖Δz‖² / (2 D_tot Δt) is χ²_d, so RMS = sqrt(2 d D_tot Δt) exactly in expectation (n = 4000, d = 2:
    relative noise of the RMS 0.8 %, tolerance 3 %), while the mean radius is smaller by the chi ratio
    E[χ_d]/√d = Γ((d+1)/2)√2 / (Γ(d/2)√d) = 0.886 at d = 2 — the seed's Jensen step (mean radius ≥
    sqrt(2dβΔt)) goes the wrong way.
    """
    n, d, dt, steps, beta, d0 = 4000, 2, 0.01, 10, 3.0, 1e-6
    dyn = FokkerPlanckDynamics(
        zero_loss, lambda_reg=0.0, gamma=0.0, D_0=d0, tau_D=INF, beta_reset=beta, reset_boost_steps=steps
    )
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((n, d), generator=gen, dtype=torch.float64)
    z_reset = dyn.apply_reset(z, gen)
    assert dyn.boost_steps_left == steps
    z_t = z_reset
    for k in range(steps):
        z_t = dyn.step(z_t, k * dt, dt, gen)
    assert dyn.boost_steps_left == 0
    radius = (z_t - z_reset).norm(dim=1)
    predicted = math.sqrt(2 * d * (beta + d0) * steps * dt)
    rms = float(radius.pow(2).mean().sqrt())
    mean_radius = float(radius.mean())
    assert rms == pytest.approx(predicted, rel=0.03)
    chi_ratio = math.sqrt(2) * math.gamma((d + 1) / 2) / math.gamma(d / 2) / math.sqrt(d)
    assert chi_ratio == pytest.approx(math.sqrt(math.pi) / 2)
    assert mean_radius < rms
    assert mean_radius / rms == pytest.approx(chi_ratio, abs=0.015)
    assert mean_radius < 0.95 * predicted  # the seed's "E‖Δz‖ ≥ sqrt(2dβΔt)" is false
    # the boost is over: the next step only has the tiny base diffusion
    z_next = dyn.step(z_t, steps * dt, dt, gen)
    assert float((z_next - z_t).norm(dim=1).pow(2).mean().sqrt()) < 1e-3


def test_apply_reset_replaces_alpha_fraction_in_place() -> None:
    dyn = FokkerPlanckDynamics(quadratic_loss, alpha_reset=0.25, reset_boost_steps=4)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn((200, 3), generator=gen)
    z_new = dyn.apply_reset(z, gen)
    changed = (z_new != z).any(dim=1)
    assert z_new.shape == z.shape and z_new.dtype == z.dtype
    assert int(changed.sum()) == 50
    assert torch.equal(z_new[~changed], z[~changed])
    assert dyn.boost_steps_left == 4
    # a batch of identical particles (zero covariance) resets to the same point, finitely
    same = torch.ones((10, 3))
    assert torch.equal(dyn.apply_reset(same, gen), same)


def test_reset_draws_follow_expanded_covariance() -> None:
    """α = 1 replaces every particle by N(mean, 1.5 Cov); n = 20000: covariance error ~1 %, tolerance 5 %."""
    dyn = FokkerPlanckDynamics(quadratic_loss, alpha_reset=1.0)
    gen = torch.Generator().manual_seed(2)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    z = torch.randn((20000, 2), generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + 3.0
    z_new = dyn.apply_reset(z, gen)
    centred = z - z.mean(dim=0)
    emp = centred.T @ centred / z.shape[0]
    new_cov = torch.cov(z_new.T, correction=0)
    torch.testing.assert_close(new_cov, 1.5 * emp, rtol=0.05, atol=0.05)
    torch.testing.assert_close(z_new.mean(dim=0), z.mean(dim=0), rtol=0, atol=0.05)


# ── 2. one Cholesky per step ────────────────────────────────────────────────


def test_exactly_one_cholesky_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = torch.linalg.cholesky

    def counting(a: Tensor, *args: object, **kwargs: object) -> Tensor:
        calls.append(tuple(a.shape))
        return real(a, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.linalg, "cholesky", counting)
    decoder, target = small_decoder()
    dyn = FokkerPlanckDynamics.from_decoder(decoder, target, gamma=0.5)
    for n in (16, 300):
        calls.clear()
        z0 = torch.randn((n, 3), generator=torch.Generator().manual_seed(n))
        dyn.train_epoch(z0, n_steps=7, dt=0.01, reset_at=[2])
        assert len(calls) == 7, f"n={n}: {len(calls)} factorisations for 7 steps"
        assert all(shape == (3, 3) for shape in calls)  # one d×d matrix, never one per particle
        calls.clear()
        dyn.step(z0, 0.0, 0.01, torch.Generator().manual_seed(0))
        assert len(calls) == 1


# ── 3. diffusion: symmetric positive definite, γ clipped ───────────────────


def test_diffusion_spd_and_gamma_clipped() -> None:
    decoder, target = small_decoder()
    z = torch.randn((128, 3), generator=torch.Generator().manual_seed(3))
    d0, tau_d, t = 0.7, 2.0, 1.0
    scale = d0 * math.exp(-t / tau_d)
    huge = FokkerPlanckDynamics.from_decoder(decoder, target, gamma=1e6, D_0=d0, tau_D=tau_d)
    dmat = huge.diffusion(z, t)
    assert torch.equal(dmat, dmat.T)
    evals = torch.linalg.eigvalsh(dmat.double())
    assert float(evals.min()) >= scale * (1 - 1e-6)
    assert float(evals.max()) <= 2.0 * scale
    assert float(evals.max()) == pytest.approx(1.99 * scale, rel=1e-5)  # γ_eff = 0.99/λ_max(F)
    torch.linalg.cholesky(dmat)  # positive definite
    # small γ: no clipping, D = D₀ e^(−t/τ_D)(I + γF) exactly
    small = FokkerPlanckDynamics.from_decoder(decoder, target, gamma=1e-3, D_0=d0, tau_D=tau_d)
    fisher = small.fisher(z, t)
    assert float(torch.linalg.eigvalsh(fisher.double())[-1]) * 1e-3 < 0.99
    torch.testing.assert_close(small.diffusion(z, t), scale * (torch.eye(3) + 1e-3 * fisher))
    # a reset adds β_reset·I for the boost
    before = small.diffusion(z, t)
    small.apply_reset(z, torch.Generator().manual_seed(0))
    torch.testing.assert_close(small.diffusion(z, t) - before, 3.0 * torch.eye(3))


def test_fisher_is_mean_outer_product_of_per_sample_gradients() -> None:
    decoder, target = small_decoder()
    dyn = FokkerPlanckDynamics.from_decoder(decoder, target)
    z = torch.randn((64, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    decoder.double()
    g = torch.stack([torch.func.grad(lambda x: ((decoder(x) - target.double()) ** 2).mean())(zi) for zi in z])
    torch.testing.assert_close(dyn.loss_gradient(z, 0.0), g)
    torch.testing.assert_close(dyn.fisher(z, 0.0), g.T @ g / 64)
    assert all(p.grad is None for p in decoder.parameters())  # the decoder is never trained


# ── 4. Ornstein–Uhlenbeck check of the solver ───────────────────────────────


def test_ornstein_uhlenbeck_stationary_covariance() -> None:
    """Drift −θz (loss ½(θ/η₀)‖z‖²), constant D: the covariance tends to D/θ · I.

    Euler–Maruyama's stationary variance is D / (θ(1 − θ dt/2)): an O(dt) bias of +5.3 % at θ dt = 0.1,
    resolved here. n = 4000, d = 4, averaged over the last 60 of 140 steps (the start-up transient has
    decayed by 0.81^80 ≈ 5e-8): noise ≈ 0.4 %, tolerance 2 %.
    """
    theta, d0, dt, n, d, eta = 1.0, 0.5, 0.1, 4000, 4, 0.01

    def loss(z: Tensor, t: float) -> Tensor:
        return 0.5 * (theta / eta) * z.pow(2).sum(dim=1)

    dyn = FokkerPlanckDynamics(loss, eta_0=eta, tau_eta=INF, lambda_reg=0.0, gamma=0.0, D_0=d0, tau_D=INF)
    torch.testing.assert_close(dyn.drift(torch.ones(2, d), 5.0), -theta * torch.ones(2, d))
    gen = torch.Generator().manual_seed(5)
    z = torch.zeros((n, d), dtype=torch.float64)
    covs = []
    for k in range(140):
        z = dyn.step(z, k * dt, dt, gen)
        if k >= 80:
            covs.append(torch.cov(z.T, correction=0))
    cov = torch.stack(covs).mean(dim=0)
    var_em = d0 / (theta * (1 - theta * dt / 2))
    var_sde = d0 / theta
    mean_var = float(torch.diagonal(cov).mean())
    assert mean_var == pytest.approx(var_em, rel=0.02)
    assert abs(mean_var / var_sde - 1) > 0.03  # the O(dt) bias is real and of the predicted size
    torch.testing.assert_close(torch.diagonal(cov), torch.full((d,), var_em, dtype=torch.float64), rtol=0.04, atol=0)
    off = cov - torch.diag(torch.diagonal(cov))
    assert float(off.abs().max()) < 0.03 * var_em


# ── 5. entropy gradient in the log domain ──────────────────────────────────


def direct_entropy_gradient(z: Tensor, h: float) -> Tensor:
    """Reference: explicit kernel sums with the (2πh²)^(d/2) normaliser, leave-one-out, in z's dtype."""
    n, d = z.shape
    diff = z[None, :, :] - z[:, None, :]  # z_j − z_i, (n, n, d): fine for a reference at small n
    kern = torch.exp(-diff.pow(2).sum(dim=-1) / (2 * h * h))
    kern.fill_diagonal_(0.0)
    norm = (n - 1) * torch.tensor(2 * math.pi * h * h, dtype=z.dtype) ** (d / 2)
    rho = kern.sum(dim=1) / norm
    grad_rho = (kern[:, :, None] * diff).sum(dim=1) / (h * h) / norm
    return -grad_rho * (1.0 + torch.log(rho))[:, None]


def test_entropy_gradient_matches_direct_formula_small_d() -> None:
    dyn = FokkerPlanckDynamics(zero_loss)
    z = torch.randn((300, 3), generator=torch.Generator().manual_seed(6))
    h = dyn.bandwidth(z)
    assert h == pytest.approx(300 ** (-1 / 7) * float(z.double().var(dim=0, correction=0).mean().sqrt()))
    ref = direct_entropy_gradient(z.double(), h)
    out32 = dyn.entropy_gradient(z)
    out64 = dyn.entropy_gradient(z.double())
    assert out32.dtype == torch.float32 and out32.shape == (300, 3)
    torch.testing.assert_close(out64, ref, rtol=1e-9, atol=1e-12)
    scale = float(ref.abs().max())
    assert float((out32.double() - ref).abs().max()) < 1e-4 * scale


def test_entropy_gradient_finite_in_float32_at_d64() -> None:
    """d = 64, spread 0.08: the normaliser (2πh²)^(d/2) = e^(−108) underflows to 0 in float32, so the
    seed's formula gives inf/NaN; the log-domain one is finite and matches float64 to 1e-4 (relative to
    its max, ≈ 1e34). Spread 3: the normaliser overflows; the true values (≈ 1e-70) round to 0 in float32.
    """
    dyn = FokkerPlanckDynamics(zero_loss)
    gen = torch.Generator().manual_seed(7)
    z = 0.08 * torch.randn((256, 64), generator=gen)
    h = dyn.bandwidth(z)
    assert float(torch.tensor(2 * math.pi * h * h, dtype=torch.float32) ** 32) == 0.0
    assert not bool(torch.isfinite(direct_entropy_gradient(z, h)).all())  # the seed's way, float32
    out = dyn.entropy_gradient(z)
    ref = direct_entropy_gradient(z.double(), h)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(ref).all())
    scale = float(ref.abs().max())
    assert scale > 1e30
    assert float((out.double() - ref).abs().max()) < 1e-4 * scale

    wide = 3.0 * torch.randn((256, 64), generator=gen)
    h_wide = dyn.bandwidth(wide)
    assert math.isinf(float(torch.tensor(2 * math.pi * h_wide**2, dtype=torch.float32) ** 32))
    out_wide = dyn.entropy_gradient(wide)
    ref_wide = dyn.entropy_gradient(wide.double())
    assert bool(torch.isfinite(out_wide).all())
    assert float(ref_wide.abs().max()) < 1e-60
    torch.testing.assert_close(out_wide, ref_wide.float(), rtol=0, atol=1e-38)
    # identical particles: the bandwidth floor keeps everything finite
    assert bool(torch.isfinite(dyn.entropy_gradient(torch.ones((32, 64)))).all())


def test_drift_combines_loss_and_entropy_gradients() -> None:
    decoder, target = small_decoder()
    dyn = FokkerPlanckDynamics.from_decoder(decoder, target, eta_0=0.3, tau_eta=4.0, lambda_reg=0.2)
    z = torch.randn((100, 3), generator=torch.Generator().manual_seed(8))
    t = 2.0
    assert dyn.learning_rate(t) == pytest.approx(0.3 / 1.5)
    expected = -dyn.learning_rate(t) * (dyn.loss_gradient(z, t) + 0.2 * dyn.entropy_gradient(z))
    torch.testing.assert_close(dyn.drift(z, t), expected)


# ── train_epoch: histories, determinism, resets ─────────────────────────────


def test_train_epoch_histories_are_consistent_and_deterministic() -> None:
    decoder, target = small_decoder()
    dyn = FokkerPlanckDynamics.from_decoder(decoder, target, eta_0=0.5, gamma=0.2, lambda_reg=0.01)
    z0 = torch.randn((80, 3), generator=torch.Generator().manual_seed(9))
    z1, hist = dyn.train_epoch(z0, n_steps=12, dt=0.05, seed=3, reset_at=[5])
    z2, hist2 = dyn.train_epoch(z0, n_steps=12, dt=0.05, seed=3, reset_at=[5])
    z3, _ = dyn.train_epoch(z0, n_steps=12, dt=0.05, seed=4, reset_at=[5])
    assert torch.equal(z1, z2) and hist == hist2
    assert not torch.equal(z1, z3)
    assert set(hist) == set(HISTORY_KEYS)
    assert hist["resets"] == [5]
    assert all(len(hist[k]) == 12 for k in HISTORY_KEYS if k != "resets")
    assert hist["t"] == pytest.approx([0.05 * k for k in range(12)])
    assert all(math.isfinite(v) for k in HISTORY_KEYS if k != "resets" for v in hist[k])
    assert min(hist["sigma_tot"]) >= 0
    # step 0 is measured at z0, t = 0, without boost
    fresh = FokkerPlanckDynamics.from_decoder(decoder, target, eta_0=0.5, gamma=0.2, lambda_reg=0.01)
    assert hist["C"][0] == pytest.approx(fresh.consolidation_ratio(z0, 0.0), rel=1e-6)
    mu, dmat = fresh.drift(z0, 0.0).double(), fresh.diffusion(z0, 0.0).double()
    s = kde_score(z0, z0, fresh.bandwidth(z0), leave_one_out=True).double()
    v = mu - s @ dmat
    assert hist["S_dot"][0] == pytest.approx(float((v * s).sum(dim=1).mean()), rel=1e-4)
    assert hist["sigma_tot"][0] == pytest.approx(
        float((v * torch.linalg.solve(dmat, v.T).T).sum(dim=1).mean()), rel=1e-4
    )
    h0 = -float(kde_log_density(z0, z0, fresh.bandwidth(z0), leave_one_out=True).double().mean())
    assert hist["H"][0] == pytest.approx(h0, rel=1e-5)
    with torch.no_grad():
        loss0 = float(((decoder(z0) - target) ** 2).mean())
    assert hist["loss"][0] == pytest.approx(loss0, rel=1e-5)


def test_auto_reset_trigger_with_warmup_and_refractory_boost() -> None:
    dyn = FokkerPlanckDynamics(quadratic_loss, auto_reset=True, C_threshold=1e12, reset_warmup=3, reset_boost_steps=2)
    z0 = torch.randn((50, 2), generator=torch.Generator().manual_seed(10))
    _, hist = dyn.train_epoch(z0, n_steps=10, dt=0.01, reset_at=[1])
    # reset at 1 (boost for steps 1, 2); trigger at 3 → reset at 4 (boost 4, 5); trigger at 5 → 6; ...; the
    # trigger at the last step (9) does not fire
    assert hist["resets"] == [1, 4, 6, 8]
    _, quiet = FokkerPlanckDynamics(quadratic_loss, C_threshold=1e12).train_epoch(z0, n_steps=10)
    assert quiet["resets"] == []


def test_progress_bar_runs() -> None:
    dyn = FokkerPlanckDynamics(quadratic_loss)
    z, hist = dyn.train_epoch(torch.randn(20, 2), n_steps=3, progress=True)
    assert z.shape == (20, 2) and len(hist["C"]) == 3


# ── 6. scenarios ───────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def new_minimum_run() -> tuple[Scenario, Tensor, dict[str, list[float]]]:
    sc = new_minimum_scenario()
    z, hist = sc.run()
    return sc, z, hist


def _pre_stats(hist: dict[str, list[float]], key: str, stop: int) -> tuple[float, float]:
    x = torch.tensor(hist[key][10:stop], dtype=torch.float64)
    return float(x.mean()), float(x.std())


def test_new_minimum_scenario_stationary_then_sharp_transition(
    new_minimum_run: tuple[Scenario, Tensor, dict[str, list[float]]],
) -> None:
    sc, z, hist = new_minimum_run
    T = sc.transition_step
    assert (sc.n_steps, T, sc.z_init.shape) == (240, 120, (256, 4))
    # before: stationary (the two halves of steps 10..119 agree within one standard deviation)
    for key in ("C", "S_dot", "H", "W2_step", "loss"):
        std = _pre_stats(hist, key, T)[1]
        first, second = _pre_stats(hist, key, 65)[0], float(torch.tensor(hist[key][65:T]).double().mean())
        assert abs(first - second) < std, key
    # at the switch, in pre-switch standard deviations (seeds 0–9 in brackets): C and W2_step jump at once by
    # > 15 (20–38) while no pre-switch value exceeds 5 (≤ 4.1); S_dot drops by > 4 (4.9–10; it is
    # heavier-tailed: pre-switch values reach −4.4); H rises by > 4 within 5 steps (4.7–7.0; pre ≤ 2.8)
    c_mean, c_std = _pre_stats(hist, "C", T)
    assert hist["C"][T] > c_mean + 15 * c_std
    assert max(hist["C"][10:T]) < c_mean + 5 * c_std
    w_mean, w_std = _pre_stats(hist, "W2_step", T)
    assert hist["W2_step"][T] > w_mean + 15 * w_std
    assert max(hist["W2_step"][10:T]) < w_mean + 5 * w_std
    s_mean, s_std = _pre_stats(hist, "S_dot", T)
    assert hist["S_dot"][T] < s_mean - 4 * s_std
    h_mean, h_std = _pre_stats(hist, "H", T)
    assert max(hist["H"][T : T + 6]) > h_mean + 4 * h_std
    assert max(hist["H"][10:T]) < h_mean + 4 * h_std
    assert hist["loss"][T] < hist["loss"][T - 1] - 200
    # after: the particles sit in the new well
    b = sc.dynamics.loss_fn.b.float()  # type: ignore[attr-defined]
    assert float((z.mean(dim=0) - b).norm()) < 0.3
    assert bool(((z - b).norm(dim=1) < z.norm(dim=1)).all())
    depth = sc.dynamics.loss_fn.depth  # type: ignore[attr-defined]
    assert max(hist["loss"][140:]) < -depth + 5
    # and the new regime is stationary again, with a wider cloud (higher H) and a slower flow
    post_h = torch.tensor(hist["H"][180:]).double()
    assert float(post_h.mean()) > h_mean + 3 * h_std
    assert float(torch.tensor(hist["W2_step"][180:]).mean()) < w_mean - 5 * w_std


def test_streaming_detector_flags_new_minimum_without_false_alarm(
    new_minimum_run: tuple[Scenario, Tensor, dict[str, list[float]]],
) -> None:
    detect = pytest.importorskip("monitor.detect")
    sc, _, hist = new_minimum_run
    detector = detect.StreamingDetector()
    flagged = []
    for k in range(sc.n_steps):
        scalars = {key: hist[key][k] for key in hist if key not in ("t", "resets")}
        if detector.update(k, scalars).flagged:
            flagged.append(k)
    T = sc.transition_step
    assert flagged, "the detector never flagged"
    assert min(flagged) >= T, f"false alarm(s) before the transition: {[k for k in flagged if k < T]}"
    assert min(flagged) <= T + 5


def test_reset_escape_scenario_needs_the_reset() -> None:
    sc = reset_escape_scenario(reset_step=40, n_steps=62)
    b = sc.dynamics.loss_fn.b.float()  # type: ignore[attr-defined]
    z, hist = sc.run()
    T = sc.transition_step
    assert hist["resets"] == [T] == list(sc.reset_at)
    escaped = int(((z - b).norm(dim=1) < 4.0).sum())
    assert escaped > 0.15 * z.shape[0]
    w_mean, w_std = _pre_stats(hist, "W2_step", T)
    assert hist["W2_step"][T] > w_mean + 20 * w_std  # the boost
    assert hist["C"][T] < 0.5 * min(hist["C"][10:T])  # the seed's consolidation collapse at the reset
    z_ctrl, hist_ctrl = dataclasses.replace(sc, reset_at=()).run()
    assert hist_ctrl["resets"] == []
    assert int(((z_ctrl - b).norm(dim=1) < 4.0).sum()) == 0


# ── 7. configuration errors ─────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eta_0", -1.0),
        ("eta_0", math.nan),
        ("tau_eta", 0.0),
        ("lambda_reg", -1e-3),
        ("D_0", 0.0),
        ("D_0", INF),
        ("tau_D", -5.0),
        ("gamma", -0.1),
        ("alpha_reset", 0.0),
        ("alpha_reset", 1.5),
        ("beta_reset", -1.0),
        ("reset_cov_factor", 0.0),
        ("reset_boost_steps", -1),
        ("reset_boost_steps", 2.5),
        ("auto_reset", "yes"),
        ("C_threshold", -1.0),
        ("reset_warmup", -2),
        ("bandwidth_factor", 0.0),
        ("gamma", "0.1"),
    ],
)
def test_bad_config_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DynamicsConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=field):
        FokkerPlanckDynamics(quadratic_loss, **{field: value})


def test_config_defaults_are_the_seeds() -> None:
    cfg = DynamicsConfig()
    assert (cfg.eta_0, cfg.tau_eta, cfg.lambda_reg, cfg.D_0, cfg.tau_D, cfg.gamma) == (
        0.01,
        1000.0,
        1e-3,
        1.0,
        500.0,
        0.05,
    )
    assert (cfg.alpha_reset, cfg.beta_reset, cfg.reset_cov_factor, cfg.C_threshold) == (0.2, 3.0, 1.5, 0.5)
    dyn = FokkerPlanckDynamics(quadratic_loss, cfg, D_0=2.0)
    assert dyn.config.D_0 == 2.0 and dyn.config.gamma == 0.05


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError, match="unknown DynamicsConfig field"):
        FokkerPlanckDynamics(quadratic_loss, D0=1.0)
    dyn = FokkerPlanckDynamics(quadratic_loss)
    z = torch.randn(10, 2)
    with pytest.raises(ValueError, match="reset_at"):
        dyn.train_epoch(z, n_steps=5, reset_at=[5])
    with pytest.raises(ValueError, match="dt"):
        dyn.train_epoch(z, n_steps=5, dt=0.0)
    with pytest.raises(ValueError, match="per-sample losses"):
        FokkerPlanckDynamics(lambda z, t: z.pow(2).sum()).drift(z, 0.0)
    with pytest.raises(ValueError, match="shape"):
        dyn.drift(torch.randn(10), 0.0)
    with pytest.raises(ValueError, match="transition_step"):
        new_minimum_scenario(transition_step=300)
