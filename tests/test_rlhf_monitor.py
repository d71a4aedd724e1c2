"""RLHFMonitor on sequences of Gaussian batches with and without a reward exploit appearing."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from monitor import MonitorConfig, RLHFMonitor, StepReport

N, D, STEPS, ONSET = 256, 32, 40, 25
CLUSTER = int(0.3 * N)


def batches(seed: int, onset: int | None, steps: int = STEPS) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Latents with an 8-dim structure plus noise; from ``onset`` on, 30 % sit in a tight new cluster
    (indices 0..CLUSTER-1) that earns a reward of +1 (the exploit)."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, D, generator=torch.Generator().manual_seed(1234))
    centre = 3.0 * basis[0]
    for step in range(steps):
        z = torch.randn(N, 8, generator=gen) @ basis + 0.3 * torch.randn(N, D, generator=gen)
        r = 0.1 * torch.randn(N, generator=gen)
        if onset is not None and step >= onset:
            z[:CLUSTER] = centre + 0.05 * torch.randn(CLUSTER, D, generator=gen)
            r[:CLUSTER] += 1.0
        yield step, z, r


def run(seed: int, onset: int | None, rewards: bool = True, monitor: RLHFMonitor | None = None) -> list[StepReport]:
    mon = monitor or RLHFMonitor()
    texts = [f"answer {i}" for i in range(N)]
    return [
        mon.observe(step, z, rewards=r if rewards else None, texts=texts, sample_ids=[f"id{i}" for i in range(N)])
        for step, z, r in batches(seed, onset)
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_exploit_cluster_raises_reward_hacking_alert_within_3_steps(seed: int) -> None:
    reports = run(seed, ONSET)
    alerts = [rep.alert for rep in reports if rep.alert]
    assert alerts, "no alert raised"
    first = alerts[0]
    assert first.type == "POTENTIAL_REWARD_HACKING"
    assert ONSET <= first.step <= ONSET + 3
    in_cluster = [s.index < CLUSTER for s in first.top_samples]
    assert len(in_cluster) == 8 and sum(in_cluster) >= 6  # mostly the exploit's samples
    top = first.top_samples[0]
    assert top.div < 0 and top.reward is not None and top.reward > 0.5
    assert top.text == f"answer {top.index}" and top.sample_id == f"id{top.index}"
    assert "Pause" in first.recommendation
    assert all(a.step >= ONSET for a in alerts)  # nothing before the onset


@pytest.mark.parametrize("seed", [2, 3])
def test_control_sequence_raises_no_alert(seed: int) -> None:
    reports = run(seed, onset=None)
    assert [rep.step for rep in reports if rep.alert] == []
    assert all(math.isfinite(rep.scalars["C"]) for rep in reports[1:])


def test_without_rewards_the_cluster_is_a_phase_transition() -> None:
    reports = run(4, ONSET, rewards=False)
    alerts = [rep.alert for rep in reports if rep.alert]
    assert alerts and alerts[0].type == "PHASE_TRANSITION"
    assert ONSET <= alerts[0].step <= ONSET + 3
    assert sum(s.index < CLUSTER for s in alerts[0].top_samples) >= 6


def test_warmup_calibrates_D0_so_the_median_C_is_one() -> None:
    mon = RLHFMonitor(MonitorConfig(warmup_steps=10))
    reports = run(5, onset=None, monitor=mon)
    assert all(rep.alert is None and rep.warming_up for rep in reports[:10])
    assert not reports[10].warming_up
    assert mon.D0 is not None and mon.D0 > 0
    warmup_c = sorted(sc["C"] for _, sc in mon.history[:10] if math.isfinite(sc["C"]))
    assert warmup_c[len(warmup_c) // 2] == pytest.approx(1.0, rel=1e-9)


def test_state_round_trip_continues_identically() -> None:
    """A monitor restored from state_dict (through JSON) gives exactly the same reports afterwards."""
    original = RLHFMonitor()
    stream = list(batches(6, ONSET))
    for step, z, r in stream[:15]:
        original.observe(step, z, rewards=r)
    state = original.state_dict()
    meta = json.loads(json.dumps(state["meta"]))
    restored = RLHFMonitor.from_state_dict({"meta": meta, "tensors": state["tensors"]})
    for step, z, r in stream[15:]:
        a = original.observe(step, z, rewards=r)
        b = restored.observe(step, z, rewards=r)
        assert a.scalars == pytest.approx(b.scalars, nan_ok=True)
        assert (a.alert is None) == (b.alert is None)
        torch.testing.assert_close(a.div, b.div, equal_nan=True)


def test_calibrate_on_a_safe_run_sets_thresholds() -> None:
    safe = RLHFMonitor()
    reports = run(7, onset=None, monitor=safe)
    thresholds = safe.calibrate(reports, false_alarm_rate=0.01)
    post = [rep for rep in reports if not rep.warming_up]
    assert thresholds.C_alert <= min(rep.scalars["C"] for rep in post) + 0.05
    assert thresholds.div_alert >= 0.9 * max(rep.scalars["div_max"] for rep in post)
    assert safe.config.C_alert == thresholds.C_alert
    # a calibrated monitor still catches the exploit and stays silent on another safe run
    hacked = RLHFMonitor(safe.config)
    assert any(rep.alert for rep in run(8, ONSET, monitor=hacked))
    quiet = RLHFMonitor(safe.config)
    assert not any(rep.alert for rep in run(9, None, monitor=quiet))
    with pytest.raises(ValueError, match="at least 5 post-warm-up reports"):
        safe.calibrate(reports[:8])


def test_identical_answers_after_warmup_are_finite_and_flagged() -> None:
    """The hacked policy answers the same thing 256 times: finite observables, an alert."""
    mon = RLHFMonitor()
    stream = list(batches(10, None, steps=20))
    for step, z, r in stream:
        mon.observe(step, z, rewards=r)
    same = stream[0][1][0].expand(N, D).clone()
    rep = mon.observe(20, same, rewards=torch.ones(N))
    finite = {k: v for k, v in rep.scalars.items() if math.isfinite(v)}
    assert set(finite) == set(rep.scalars), rep.scalars
    assert rep.alert is not None and rep.alert.type == "POTENTIAL_REWARD_HACKING"


def test_bad_input_is_rejected_and_changes_nothing() -> None:
    mon = RLHFMonitor()
    z = torch.randn(16, 8)
    mon.observe(0, z)
    with pytest.raises(ValueError, match="steps must increase"):
        mon.observe(0, z)
    with pytest.raises(ValueError, match="texts has 3 entries for a batch of 16"):
        mon.observe(1, z, texts=["a", "b", "c"])
    bad = z.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        mon.observe(1, bad)
    with pytest.raises(ValueError, match="latent dimension 9, expected 8"):
        mon.observe(1, torch.randn(16, 9))
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        mon.observe(1, z, lr=-1e-6)
    with pytest.raises(ValueError, match=r"rewards must have shape \(16,\)"):
        mon.observe(1, z, rewards=[1.0, 2.0])
    assert mon.steps_seen == 1 and len(mon.history) == 1
    mon.observe(1, torch.randn(16, 8))  # still usable
    assert mon.steps_seen == 2


def test_calibration_step_reports_the_rescaled_warmup_scalars() -> None:
    mon = RLHFMonitor(MonitorConfig(warmup_steps=5))
    reports = run(11, onset=None, monitor=mon)
    assert all(rep.recalibrated == () for i, rep in enumerate(reports) if i != 4)
    rescaled = dict(reports[4].recalibrated)
    assert sorted(rescaled) == [0, 1, 2, 3, 4]
    for step, scalars in mon.history[:5]:
        assert rescaled[step] == pytest.approx(scalars, nan_ok=True)
    # C changed by the calibration (D0 != 1), the D0-free scalars did not
    assert rescaled[2]["H"] == reports[2].scalars["H"]
    assert rescaled[2]["C"] != pytest.approx(reports[2].scalars["C"])


def test_monitor_config_survives_strict_json_with_infinite_tau_D() -> None:
    """tau_D = inf (the default) must survive a strict-JSON round trip, as a run's stored config does."""
    import json
    import math

    cfg = MonitorConfig()
    assert math.isinf(cfg.fpe.tau_D)
    text = json.dumps(cfg.to_dict(), allow_nan=False)  # raises if any inf/NaN is left in the dict
    again = MonitorConfig.from_dict(json.loads(text))
    assert math.isinf(again.fpe.tau_D)
    assert again.to_dict() == cfg.to_dict()


def _decide_on(config: MonitorConfig, *, C: float, div_max: float, flagged: bool, rise: float, cluster: int):
    """The alert RLHFMonitor's decision rule gives for these numbers (a post-warm-up step with rewards)."""
    from monitor.detect import Detection

    monitor = RLHFMonitor(config)
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    report = monitor.observe(0, z, rewards=torch.zeros(64))
    detection = Detection(
        step=50, flagged=flagged, triggered=("C",) if flagged else (), scores={}, cusum={}, warming_up=False
    )
    scalars = {**report.scalars, "C": C, "div_max": div_max}
    obs = SimpleNamespace(div=torch.linspace(-1.0, 1.0, 64))  # the decision reads only δ (for the top samples)
    return monitor._decide(50, scalars, obs, detection, cluster, rise, torch.zeros(64), None, None)


def test_reward_hacking_rule_flag_with_reward_jump_needs_no_cluster_and_seed_rule_is_opt_in() -> None:
    """DESIGN §3.5 as measured in docs/validation.md §1: a streaming flag that coincides with a reward jump is
    POTENTIAL_REWARD_HACKING without a δ-cluster; the seed's absolute rule (C < 0.3, div_max > 1) fires only
    with seed_rule=True; a flag without reward jump or cluster raises nothing."""
    default = MonitorConfig()
    assert default.seed_rule is False
    jump = _decide_on(default, C=1.0, div_max=0.5, flagged=True, rise=default.reward_rise_z + 1, cluster=0)
    assert jump is not None and jump.type == "POTENTIAL_REWARD_HACKING"
    assert any("reward_mean jumped" in r for r in jump.reasons) and any("flagged C" in r for r in jump.reasons)
    assert _decide_on(default, C=1.0, div_max=0.5, flagged=True, rise=default.reward_rise_z - 1, cluster=0) is None
    assert _decide_on(default, C=1.0, div_max=0.5, flagged=False, rise=10.0, cluster=0) is None
    assert _decide_on(default, C=0.1, div_max=5.0, flagged=False, rise=0.0, cluster=0) is None  # seed rule off
    seed = MonitorConfig(seed_rule=True)
    fired = _decide_on(seed, C=0.1, div_max=5.0, flagged=False, rise=0.0, cluster=0)
    assert fired is not None and fired.type == "POTENTIAL_REWARD_HACKING" and "C = 0.1 < 0.3" in fired.reasons[0]
    transition = _decide_on(default, C=1.0, div_max=0.5, flagged=True, rise=0.0, cluster=12)
    assert transition is not None and transition.type == "PHASE_TRANSITION"
