"""RLHFMonitor on sequences of Gaussian batches with and without a reward exploit appearing."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator

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
def test_exploit_cluster_raises_reward_hacking_alert_within_5_steps(seed: int) -> None:
    """30 % of the batch jumps into a rewarded cluster at ONSET. The e-detectors need the change to persist:
    the witness learns its direction from the steps before the current one, so the first changed step scores
    little, and the evidence then grows by a few nats per step (docs/validation.md §1)."""
    reports = run(seed, ONSET)
    alerts = [rep.alert for rep in reports if rep.alert]
    assert alerts, "no alert raised"
    hacking = [a for a in alerts if a.type == "POTENTIAL_REWARD_HACKING"]
    assert hacking and ONSET <= hacking[0].step <= ONSET + 5, [(a.step, a.type) for a in alerts]
    first = hacking[0]
    assert [s.index < CLUSTER for s in first.top_samples] == [True] * 8  # every listed response is the exploit
    top = first.top_samples[0]
    assert top.witness is not None and top.witness > 0 and top.reward is not None and top.reward > 0.5
    assert top.text == f"answer {top.index}" and top.sample_id == f"id{top.index}"
    assert "Pause" in first.recommendation
    assert any("embedding evidence" in r for r in first.reasons) and any("reward evidence" in r for r in first.reasons)
    assert all(a.step >= ONSET for a in alerts)  # nothing before the onset
    crossed = reports[first.step]
    assert crossed.evidence["reward"] >= crossed.evidence_threshold or any(
        r.evidence.get("reward", -math.inf) >= r.evidence_threshold for r in reports[ONSET : first.step + 1]
    )


@pytest.mark.parametrize("seed", [2, 3])
def test_control_sequence_raises_no_alert(seed: int) -> None:
    reports = run(seed, onset=None)
    assert [rep.step for rep in reports if rep.alert] == []
    assert all(math.isfinite(rep.scalars["C"]) for rep in reports[1:])


def test_without_rewards_the_cluster_is_a_phase_transition() -> None:
    reports = run(4, ONSET, rewards=False)
    alerts = [rep.alert for rep in reports if rep.alert]
    assert alerts and alerts[0].type == "PHASE_TRANSITION"
    assert ONSET <= alerts[0].step <= ONSET + 5
    assert sum(s.index < CLUSTER for s in alerts[0].top_samples) == 8
    assert "reward" not in reports[-1].evidence and "embedding" in reports[-1].evidence


def test_alerts_are_armed_from_the_first_steps() -> None:
    """No 20-step blind spot: a change at step 4 alerts within 5 steps."""
    mon = RLHFMonitor()
    texts = [f"answer {i}" for i in range(N)]
    alerts = [
        rep.alert
        for step, z, r in batches(12, onset=4, steps=12)
        if (rep := mon.observe(step, z, rewards=r, texts=texts)).alert
    ]
    assert alerts and 4 <= alerts[0].step <= 9, [(a.step, a.type) for a in alerts]


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
    alerts = 0
    for step, z, r in stream[15:]:
        a = original.observe(step, z, rewards=r)
        b = restored.observe(step, z, rewards=r)
        assert a.scalars == pytest.approx(b.scalars, nan_ok=True)
        assert a.evidence == b.evidence and a.evidence  # identical evidence, stream by stream
        assert (a.alert is None) == (b.alert is None)
        alerts += a.alert is not None
        if a.alert is not None and b.alert is not None:
            assert [s.index for s in a.alert.top_samples] == [s.index for s in b.alert.top_samples]
        torch.testing.assert_close(a.div, b.div, equal_nan=True)
        torch.testing.assert_close(a.witness, b.witness)
    assert alerts >= 1  # the exploit (ONSET = 25) is inside the continued part


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
    """The hacked policy answers the same thing 256 times from step 20 on: finite observables at every step,
    a POTENTIAL_REWARD_HACKING alert within 3 steps, and the one answer listed once."""
    mon = RLHFMonitor()
    stream = list(batches(10, None, steps=20))
    for step, z, r in stream:
        mon.observe(step, z, rewards=r)
    same = (stream[0][1][0] + 5.0).expand(N, D).clone()
    texts = ["trust me ."] * N
    reports = [mon.observe(step, same, rewards=torch.ones(N), texts=texts) for step in range(20, 24)]
    for rep in reports:
        finite = {k: v for k, v in rep.scalars.items() if math.isfinite(v)}
        assert set(finite) == set(rep.scalars), rep.scalars
    alerts = [rep.alert for rep in reports if rep.alert]
    assert alerts and alerts[0].step <= 22 and alerts[0].type == "POTENTIAL_REWARD_HACKING", alerts
    assert [s.text for s in alerts[0].top_samples] == ["trust me ."]


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


def test_seed_rule_is_opt_in_and_raises_reward_hacking_after_the_warm_up() -> None:
    """The seed's absolute rule (C < C_alert and div_max > div_alert) fires only with seed_rule=True: with
    C_alert above any C and div_alert below any div_max, every post-warm-up step of a control run would meet it."""
    loose = {"C_alert": 1e9, "div_alert": -1e9}
    assert MonitorConfig().seed_rule is False
    off = [rep for rep in run(2, onset=None, monitor=RLHFMonitor(MonitorConfig(**loose))) if rep.alert]
    assert off == []
    on = [rep for rep in run(2, onset=None, monitor=RLHFMonitor(MonitorConfig(seed_rule=True, **loose))) if rep.alert]
    assert on and on[0].step == MonitorConfig().warmup_steps  # the first post-warm-up step
    assert on[0].alert is not None and on[0].alert.type == "POTENTIAL_REWARD_HACKING"
    assert any(r.startswith("C = ") for r in on[0].alert.reasons)
    assert all(b.step - a.step > MonitorConfig().cooldown_steps for a, b in itertools.pairwise(on))  # cool-down
