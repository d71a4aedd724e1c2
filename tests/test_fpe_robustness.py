"""The engine at the sizes and in the degenerate cases users have: float32, d up to 4096, duplicates."""

from __future__ import annotations

import math

import pytest
import torch

from monitor.fpe import SCALAR_NAMES, FPEConfig, Projection, compute_observables

REWARD_FREE = {"drift_alignment", "reward_mean", "reward_std"}


def structured_latents(n: int, d: int, scale: float, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Low-rank structure plus noise, like sentence embeddings, float32, entries of size ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, d, generator=torch.Generator().manual_seed(99))
    z = torch.randn(n, 16, generator=gen) @ basis + 0.3 * torch.randn(n, d, generator=gen)
    return (z + shift) * scale


def assert_all_finite(scalars: dict[str, float], except_names: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    bad = {k: v for k, v in scalars.items() if k not in except_names and not math.isfinite(v)}
    assert not bad, f"non-finite scalars: {bad}"


@pytest.mark.parametrize("scale", [1e3, 1e-3])
def test_float32_large_d_every_scalar_finite(scale: float) -> None:
    """n = 512, d = 4096, float32, latents of scale 1e3 and 1e-3: every scalar finite, no NaN in δ."""
    n, d = 512, 4096
    z_ref = structured_latents(n, d, scale, seed=1)
    proj = Projection.fit(z_ref, k=8)
    prev = [structured_latents(n, d, scale, seed=s) for s in (2, 3)]
    cur = structured_latents(n, d, scale, seed=4, shift=0.05)
    rewards = torch.randn(n, generator=torch.Generator().manual_seed(5))
    obs = compute_observables(prev, cur, projection=proj, rewards=rewards, lr=1e-6, z_ref=z_ref)
    assert set(obs.scalars) == set(SCALAR_NAMES)
    assert_all_finite(obs.scalars)
    assert obs.div.dtype == torch.float32 and bool(torch.isfinite(obs.div).all())
    assert bool(torch.isfinite(obs.div_flow).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_accepted(dtype: torch.dtype) -> None:
    z_ref = structured_latents(256, 768, 1.0, seed=6)
    proj = Projection.fit(z_ref, k=8)
    obs = compute_observables(
        structured_latents(256, 768, 1.0, seed=7).to(dtype),
        structured_latents(256, 768, 1.0, seed=8).to(dtype),
        projection=proj,
        z_ref=z_ref.to(dtype),
    )
    assert_all_finite(obs.scalars, REWARD_FREE)


def test_batch_of_identical_answers_gives_finite_values() -> None:
    """256 copies of one answer (the hacked policy's normal case) after a diverse batch: all finite."""
    d = 768
    z_ref = structured_latents(256, d, 1.0, seed=9)
    proj = Projection.fit(z_ref, k=8)
    same = z_ref[0].expand(256, d).clone()
    rewards = torch.ones(256)
    for prev in (z_ref, same):  # diverse → identical, and identical → identical
        obs = compute_observables(prev, same, projection=proj, rewards=rewards, z_ref=z_ref)
        assert_all_finite(obs.scalars)
        assert bool(torch.isfinite(obs.div).all())
    # identical answers everywhere, the reward no longer pulls anywhere: C collapses (the seed's signature)
    assert obs.scalars["C"] < 1e-3
    assert obs.scalars["reward_std"] == 0.0


def test_two_distinct_answers_give_finite_values() -> None:
    d = 768
    z_ref = structured_latents(256, d, 1.0, seed=10)
    proj = Projection.fit(z_ref, k=8)
    two = torch.stack([z_ref[0], z_ref[1]])
    obs = compute_observables(z_ref, two, projection=proj, rewards=torch.tensor([1.0, 0.0]), z_ref=z_ref)
    assert_all_finite(obs.scalars)
    many = two.repeat(128, 1)  # 256 samples, two distinct values
    obs = compute_observables(two, many, projection=proj, rewards=torch.arange(256) % 2, z_ref=z_ref)
    assert_all_finite(obs.scalars)


def test_projection_of_degenerate_reference_is_finite() -> None:
    """A reference batch of identical answers: floored variances, finite coordinates."""
    z = torch.ones(64, 32) * 3.0
    proj = Projection.fit(z, k=4)
    x = proj.transform(torch.randn(10, 32))
    assert bool(torch.isfinite(x).all())
    assert proj.explained == 0.0


def test_projection_whitens_and_round_trips() -> None:
    z = structured_latents(1000, 64, 5.0, seed=11)
    proj = Projection.fit(z, k=6)
    x = proj.transform(z)
    cov = torch.cov(x.T.double(), correction=0)
    torch.testing.assert_close(cov, torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0)
    again = Projection.from_dict(proj.to_dict())
    torch.testing.assert_close(again.transform(z), x)
    # the d > n branch (Gram matrix of the samples) gives the same subspace
    small = z[:40]
    p1 = Projection.fit(small, k=3)
    p2 = Projection.fit(small.T[:64].T.contiguous(), k=3)
    torch.testing.assert_close(p1.transform(small).abs(), p2.transform(small).abs(), atol=1e-4, rtol=1e-4)


def test_projection_rejects_too_large_k() -> None:
    with pytest.raises(ValueError, match=r"k=10 must satisfy 1 <= k <= min\(n-1, d\) = 4"):
        Projection.fit(torch.randn(5, 32), k=10)


def test_bad_inputs_raise_clear_errors() -> None:
    z_ref = torch.randn(64, 32)
    proj = Projection.fit(z_ref, k=4)
    good = torch.randn(64, 32)
    nan = good.clone()
    nan[3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in 1 of 64 rows"):
        compute_observables(good, nan, projection=proj)
    with pytest.raises(ValueError, match="latent dimension 31, expected 32"):
        compute_observables(good, torch.randn(64, 31), projection=proj)
    with pytest.raises(ValueError, match="shape"):
        compute_observables(good, torch.randn(64), projection=proj)
    with pytest.raises(ValueError, match=r"rewards must have shape \(64,\)"):
        compute_observables(good, good, projection=proj, rewards=torch.randn(63))
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_observables(good, good[:1], projection=proj)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        compute_observables(good, good, projection=proj, lr=float("inf"))
    with pytest.raises(ValueError, match=r"FPEConfig\.velocity"):
        FPEConfig(velocity="exact")  # type: ignore[arg-type]


def test_ot_velocity_estimator_runs_end_to_end() -> None:
    z_ref = structured_latents(300, 128, 1.0, seed=12)
    proj = Projection.fit(z_ref, k=4)
    cfg = FPEConfig(k=4, velocity="ot")
    obs = compute_observables(z_ref, structured_latents(300, 128, 1.0, seed=13, shift=0.3), projection=proj, config=cfg)
    assert_all_finite(obs.scalars, REWARD_FREE | {"W2_ref", "KL_ref"})
    sinkhorn = compute_observables(
        z_ref,
        structured_latents(300, 128, 1.0, seed=13, shift=0.3),
        projection=proj,
        config=FPEConfig(k=4, velocity="ot", ot_exact_max=100),
    )
    # entropic plan ≈ exact plan on the smoothed scale
    assert sinkhorn.scalars["W2_step"] == pytest.approx(obs.scalars["W2_step"], rel=0.25)


def test_projection_subspace_iteration_beyond_exact_size() -> None:
    """min(n, d) > 1024: the randomized path whitens exactly and captures the top of the spectrum."""
    from monitor.fpe import projection as projection_module

    z = structured_latents(1100, 1100, 1.0, seed=15).double()
    fast = Projection.fit(z, k=8)
    x = fast.transform(z)
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(torch.cov(x.T, correction=0), eye, atol=1e-8, rtol=0)
    exact_limit = projection_module._EXACT_EIGH_MAX
    try:
        projection_module._EXACT_EIGH_MAX = 10_000
        exact = Projection.fit(z, k=8)
    finally:
        projection_module._EXACT_EIGH_MAX = exact_limit
    assert fast.explained == pytest.approx(exact.explained, rel=1e-3)
    torch.testing.assert_close(fast.variances, exact.variances, rtol=1e-3, atol=0)


def test_held_out_frame_removes_the_in_sample_bias_of_the_reference() -> None:
    """n = 256 < d = 768: a later batch of the SAME law looks shrunk in a frame fitted on the reference
    itself (KL_ref ≈ 0.1–0.2 nats); with directions and whitening from disjoint halves
    the held-out half is exactly white and the later batch's KL_ref falls below 0.05 nats."""
    from monitor.fpe.observables import observables_from_projected

    ref, later = structured_latents(256, 768, 1.0, seed=20), structured_latents(256, 768, 1.0, seed=21)
    proj, held = Projection.fit_held_out(ref, k=8)
    x_ref = proj.transform(ref[held])
    cov = torch.cov(x_ref.T.double(), correction=0)
    torch.testing.assert_close(cov, torch.eye(8, dtype=torch.float64), atol=1e-4, rtol=0)
    held_kl = observables_from_projected([], proj.transform(later), FPEConfig(), x_ref=x_ref).scalars["KL_ref"]
    in_sample = Projection.fit(ref, k=8)
    in_kl = observables_from_projected(
        [], in_sample.transform(later), FPEConfig(), x_ref=in_sample.transform(ref)
    ).scalars["KL_ref"]
    assert held_kl < 0.05 and in_kl > 0.1 and in_kl > 3 * held_kl, (held_kl, in_kl)
    with pytest.raises(ValueError, match=r"needs n >= 2\(k\+1\) = 18"):
        Projection.fit_held_out(ref[:10], k=8)


@pytest.mark.parametrize("d", [4, 768])
def test_all_zero_latents_give_finite_observables(d: int) -> None:
    """A batch of identical all-zero answers (dead units, an empty-string embedding) must not produce NaN."""
    from monitor import MonitorConfig, RLHFMonitor

    monitor = RLHFMonitor(MonitorConfig())
    for step in range(3):
        report = monitor.observe(step, torch.zeros(200, d), rewards=torch.ones(200))
    assert_all_finite(report.scalars)
    assert bool(torch.isfinite(report.div).all())
