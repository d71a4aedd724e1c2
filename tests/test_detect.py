"""Tests of the offline and streaming phase-transition detectors (monitor.detect)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monitor.detect import (
    Detection,
    OfflineDetectorConfig,
    StreamingConfig,
    StreamingDetector,
    detect_phase_transitions,
    lagged_difference,
    robust_location_scale,
    transition_criteria,
)

N_STEPS = 300
T_STAR = 180
WATCHED = ("div_q99", "W2_step", "H", "C")


def noise_history(seed: int, n: int = N_STEPS) -> dict[str, np.ndarray]:
    """Stationary noise: C ≈ 1 ± 0.02, Ṡ ≈ 1 ± 0.1, loss ≈ 0.5 ± 0.01."""
    rng = np.random.default_rng(seed)
    return {
        "C": 1.0 + 0.02 * rng.normal(size=n),
        "S_dot": 1.0 + 0.1 * rng.normal(size=n),
        "loss": 0.5 + 0.01 * rng.normal(size=n),
    }


def transition_history(seed: int = 0, t_star: int = T_STAR) -> dict[str, np.ndarray]:
    """C drops by 0.5 (25 noise sd) at t*, Ṡ spikes by 1.0 (10 sd) for 3 steps, loss decays to a plateau."""
    hist = noise_history(seed)
    t = np.arange(N_STEPS)
    hist["C"] = hist["C"] - 0.5 * (t >= t_star)
    hist["S_dot"] = hist["S_dot"] + 1.0 * ((t >= t_star) & (t < t_star + 3))
    hist["loss"] = hist["loss"] + 2.0 * np.exp(-t / 20.0)
    return hist


# --------------------------------------------------------------------------------------------- robust helpers


def test_lagged_difference_is_a_lag_not_a_higher_order_difference() -> None:
    t = np.arange(12, dtype=float)
    x = t**2
    d = lagged_difference(x, 3)
    assert d.shape == x.shape
    assert np.all(np.isnan(d[:3]))
    np.testing.assert_allclose(d[3:], 6 * t[3:] - 9)  # x[t] - x[t-3] for x = t²
    seed_style = np.diff(x, n=3)  # the seed's call: the third-order difference, identically 0 here
    assert seed_style.shape == (9,)
    np.testing.assert_allclose(seed_style, 0.0)
    assert not np.allclose(d[3:], seed_style)


def test_lagged_difference_nan_and_bad_lag() -> None:
    d = lagged_difference([1.0, np.nan, 3.0, 4.0], 1)
    assert np.isnan(d[0]) and np.isnan(d[1]) and np.isnan(d[2])
    assert d[3] == 1.0
    with pytest.raises(ValueError, match="lag"):
        lagged_difference([1.0, 2.0], 0)


def test_robust_location_scale_constant_and_nan() -> None:
    med, scale = robust_location_scale([2.0] * 10)
    assert med == 2.0 and scale > 0  # a constant series never divides by zero
    assert scale == pytest.approx(2e-6)  # rel_floor * |median|
    assert robust_location_scale([0.0] * 5)[1] == pytest.approx(1e-12)  # abs_floor
    med, scale = robust_location_scale([1.0, np.nan, 3.0, 2.0, np.inf])
    assert med == 2.0 and scale == pytest.approx(1.4826)
    rng = np.random.default_rng(0)
    med, scale = robust_location_scale(5.0 + 2.0 * rng.normal(size=20_000))
    assert med == pytest.approx(5.0, abs=0.05) and scale == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError):
        robust_location_scale([np.nan])


# --------------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("seed", range(5))
def test_offline_finds_the_known_transition(seed: int) -> None:
    cfg = OfflineDetectorConfig()
    events = detect_phase_transitions(transition_history(seed), cfg)
    assert len(events) == 1
    assert abs(events[0] - T_STAR) <= cfg.tolerance


def test_offline_no_events_on_stationary_noise() -> None:
    for seed in range(20):
        assert detect_phase_transitions(noise_history(seed)) == [], seed
        assert detect_phase_transitions(noise_history(seed), loss_key=None) == [], seed


def test_offline_is_causal() -> None:
    hist = transition_history(1)
    full = detect_phase_transitions(hist)
    assert full
    # Every prefix gives exactly the events of the full history that lie inside it.
    for t in range(0, N_STEPS + 1, 7):
        prefix = {k: v[:t] for k, v in hist.items()}
        assert detect_phase_transitions(prefix) == [e for e in full if e < t], t
    # Altering the future (a huge spike and a collapse right after t) leaves detections <= t unchanged.
    t_cut = T_STAR + 20
    altered = {k: v.copy() for k, v in hist.items()}
    altered["S_dot"][t_cut + 1 :] = 1e6
    altered["C"][t_cut + 1 :] = -1e6
    before = [e for e in detect_phase_transitions(altered) if e <= t_cut]
    assert before == [e for e in full if e <= t_cut]
    criteria_full, criteria_alt = transition_criteria(hist), transition_criteria(altered)
    for key in criteria_full:
        np.testing.assert_array_equal(criteria_full[key][: t_cut + 1], criteria_alt[key][: t_cut + 1])


def _offset_history(c_step: int, s_step: int) -> dict[str, np.ndarray]:
    """Single-step signals: C dips for one step at c_step, Ṡ spikes for one step at s_step."""
    hist = noise_history(3)
    hist["C"][c_step] -= 0.5
    hist["S_dot"][s_step] += 1.0
    return hist


@pytest.mark.parametrize(("c_step", "s_step"), [(T_STAR, T_STAR + 2), (T_STAR + 2, T_STAR)])
def test_offline_tolerance_window(c_step: int, s_step: int) -> None:
    hist = _offset_history(c_step, s_step)
    crit = transition_criteria(hist)
    near = slice(T_STAR - 50, None)  # (the noise itself has one isolated C-drop flag at step 36)
    assert (np.flatnonzero(crit["drop"][near]) + T_STAR - 50).tolist() == [c_step]
    assert (np.flatnonzero(crit["spike"][near]) + T_STAR - 50).tolist() == [s_step]
    # Declared where the later of the two criteria occurs.
    assert detect_phase_transitions(hist, tolerance=3) == [T_STAR + 2]
    assert detect_phase_transitions(hist, tolerance=2) == [T_STAR + 2]
    assert detect_phase_transitions(hist, tolerance=1) == []
    assert detect_phase_transitions(hist, tolerance=0) == []


def test_offline_plateau_criterion_and_missing_loss() -> None:
    hist = transition_history(2)
    t = np.arange(N_STEPS)
    steep = hist.copy()
    steep["loss"] = 0.5 - 0.02 * np.maximum(0, t - 150)  # still falling fast at t*: not a plateau
    assert detect_phase_transitions(steep) == []
    assert detect_phase_transitions(steep, loss_key=None) == detect_phase_transitions(hist)
    no_loss = {k: v for k, v in steep.items() if k != "loss"}
    assert detect_phase_transitions(no_loss) == detect_phase_transitions(hist)
    assert transition_criteria(no_loss)["plateau"].all()


def test_offline_merges_one_event_and_ignores_nan() -> None:
    hist = transition_history(4)
    hist["S_dot"] = hist["S_dot"].copy()
    hist["S_dot"][T_STAR + 5] += 1.0  # a second spike while C is still dropping: same event
    hist["C"][[50, 100, T_STAR + 30]] = np.nan
    hist["loss"][120] = np.nan
    events = detect_phase_transitions(hist)
    assert len(events) == 1 and abs(events[0] - T_STAR) <= 3


def test_offline_bad_inputs() -> None:
    hist = transition_history(0)
    with pytest.raises(ValueError, match="same length"):
        detect_phase_transitions({**hist, "S_dot": hist["S_dot"][:-1]})
    with pytest.raises(ValueError, match="S_dot"):
        detect_phase_transitions({"C": hist["C"], "loss": hist["loss"]})
    with pytest.raises(ValueError, match="c_key"):
        detect_phase_transitions({"consolidation": hist["C"], "S_dot": hist["S_dot"]})
    assert detect_phase_transitions({"consolidation": hist["C"], "S_dot": hist["S_dot"]}, c_key="consolidation")
    with pytest.raises(TypeError, match="window"):
        detect_phase_transitions(hist, windw=5)
    with pytest.raises(ValueError, match="window"):
        detect_phase_transitions(hist, window=0)
    with pytest.raises(ValueError, match="1-D"):
        detect_phase_transitions({"C": np.zeros((3, 2)), "S_dot": np.zeros((3, 2))})
    assert detect_phase_transitions({"C": [], "S_dot": []}) == []


def test_offline_overrides_equal_config() -> None:
    hist = transition_history(0)
    assert detect_phase_transitions(hist, window=5) == detect_phase_transitions(hist, OfflineDetectorConfig(window=5))
    assert detect_phase_transitions(hist, OfflineDetectorConfig(window=5), tolerance=0) == detect_phase_transitions(
        hist, OfflineDetectorConfig(window=5, tolerance=0)
    )


# --------------------------------------------------------------------------------------------- streaming


def run_stream(det: StreamingDetector, values: np.ndarray, start: int = 0) -> list[Detection]:
    """Feed rows of ``values`` (shape (T, 4), columns WATCHED) as steps start, start+1, ..."""
    return [det.update(start + i, dict(zip(WATCHED, map(float, row), strict=True))) for i, row in enumerate(values)]


def first_flag(dets: list[Detection]) -> int | None:
    return next((d.step for d in dets if d.flagged), None)


@pytest.mark.parametrize("seed", range(5))
def test_streaming_mean_shift_flagged_quickly_not_before(seed: int) -> None:
    t_star = 120
    x = np.random.default_rng(seed).normal(size=(200, 4))
    x[t_star:, 1] += 10.0  # W2_step jumps by 10 noise sd
    dets = run_stream(StreamingDetector(), x)
    first = first_flag(dets)
    assert first is not None and t_star <= first <= t_star + 3
    assert dets[first].triggered == ("W2_step",)
    assert not any(d.warming_up for d in dets[20:])
    assert all(d.warming_up and math.isnan(d.scores["C"]) for d in dets[:20])


def test_streaming_direction() -> None:
    x = np.random.default_rng(0).normal(size=(150, 4))
    x[100:, 0] -= 15.0  # div_q99 (watched "up") falls
    assert first_flag(run_stream(StreamingDetector(), x)) is None
    down = StreamingConfig(watch={"div_q99": "down", "W2_step": "up", "H": "both", "C": "both"})
    assert first_flag(run_stream(StreamingDetector(down), x)) == 100


def test_streaming_no_flags_on_stationary_noise() -> None:
    for seed in range(5):
        x = np.random.default_rng(1000 + seed).normal(size=(1000, 4)) * [1.0, 0.01, 30.0, 1e-3] + [
            5,
            0.1,
            100,
            1,
        ]
        dets = run_stream(StreamingDetector(), x)
        assert not any(d.flagged for d in dets), seed
        finite = [d.max_score for d in dets if math.isfinite(d.max_score)]
        assert len(finite) == 980 and max(finite) < StreamingConfig().z_threshold


def test_streaming_ramp_caught_by_cusum_but_not_a_single_subthreshold_spike() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4))
    x[200:, 2] += 0.05 * np.arange(200)  # H drifts by 0.05 sd per step
    dets = run_stream(StreamingDetector(), x)
    first = first_flag(dets)
    assert first is not None and 200 < first <= 350
    flag = dets[first]
    assert flag.triggered == ("H",)
    assert abs(flag.scores["H"]) < StreamingConfig().z_threshold  # caught by the CUSUM, not by |z|
    assert flag.cusum["H"] == 0.0  # the CUSUM is reset after a flag

    y = rng.normal(size=(300, 4))
    y[150, 2] += 5.0  # one 5-sd spike: |z| ≈ 5 < 7 and CUSUM ≈ 4.5 < 20
    dets = run_stream(StreamingDetector(), y)
    assert first_flag(dets) is None
    assert 3.0 < dets[150].scores["H"] < StreamingConfig().z_threshold


def _same(a: Detection, b: Detection) -> bool:
    def eq(x: dict[str, float], y: dict[str, float]) -> bool:
        return x.keys() == y.keys() and all((math.isnan(x[k]) and math.isnan(y[k])) or x[k] == y[k] for k in x)

    return (a.step, a.flagged, a.triggered, a.warming_up) == (
        b.step,
        b.flagged,
        b.triggered,
        b.warming_up,
    ) and (eq(a.scores, b.scores) and eq(a.cusum, b.cusum))


def test_streaming_state_round_trip() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    x[150:, 3] += 0.08 * np.arange(50)  # a drift after the restart so that CUSUM state matters
    x[20, 0] = np.nan  # a missing value before the restart
    cfg = StreamingConfig(window=30, min_history=10)
    original = StreamingDetector(cfg)
    run_stream(original, x[:100])
    state = json.loads(json.dumps(original.state_dict()))
    assert state["last_step"] == 99 and len(state["series"]["C"]["past"]) == 30
    restored = StreamingDetector()  # default config: load_state_dict restores the saved one
    restored.load_state_dict(state)
    assert restored.config == cfg
    a, b = run_stream(original, x[100:], start=100), run_stream(restored, x[100:], start=100)
    assert any(d.flagged for d in a)
    assert all(_same(u, v) for u, v in zip(a, b, strict=True))
    with pytest.raises(ValueError):
        restored.load_state_dict({"version": 99})
    with pytest.raises(ValueError, match="state_dict"):
        restored.load_state_dict({"version": 1, "config": {}, "series": {}, "last_step": None})


def test_streaming_step_must_increase() -> None:
    det = StreamingDetector()
    det.update(5, {"C": 1.0})
    with pytest.raises(ValueError, match="increase"):
        det.update(5, {"C": 1.0})
    with pytest.raises(ValueError, match="increase"):
        det.update(3, {"C": 1.0})
    det.update(6, {"C": 1.0})


def test_streaming_nan_and_missing_values_skipped() -> None:
    det = StreamingDetector(StreamingConfig(watch={"C": "both", "H": "up"}, min_history=5, window=10))
    for step in range(5):
        det.update(step, {"C": 1.0 + 0.01 * step, "H": 2.0 + 0.01 * (step % 2)})
    d = det.update(5, {"C": math.nan, "unwatched": 3.0})  # C NaN, H missing
    assert math.isnan(d.scores["C"]) and math.isnan(d.scores["H"]) and not d.flagged
    assert len(det.state_dict()["series"]["C"]["past"]) == 5  # the NaN was not appended
    d = det.update(6, {"C": 1.05, "H": 2.0})
    assert math.isfinite(d.scores["C"]) and math.isfinite(d.scores["H"])


def test_streaming_config_validation() -> None:
    with pytest.raises(ValueError, match="watch"):
        StreamingConfig(watch={"C": "sideways"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="min_history"):
        StreamingConfig(window=10, min_history=20)
    with pytest.raises(ValueError, match="z_threshold"):
        StreamingConfig(z_threshold=0.0)
