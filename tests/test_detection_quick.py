"""Quick checks of the reward-hacking benchmark (``benchmarks/detection/``, docs/validation.md §1).

* the MMD permutation test: the unbiased MMD² matches its definition; p-values under the null are roughly
  uniform (few below α); a shifted law gives p at its floor;
* every detector on synthetic runs with a known change at step 60: it alarms within a few steps of the
  change and never on the stationary part (default thresholds, and calibrated on a stationary control);
* a reduced record + evaluate on real toy GRPO runs (2 seeds × hackable/control, 8 steps of 32 completions,
  the ``model`` embedder): the run folders, the step files, KL = 0 at step 0 (policy = reference), and the table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.detection.detectors import (
    FpmonDetector,
    MMDDetector,
    RunData,
    SeriesSpikeDetector,
    _mmd2_unbiased,
    alarm_events,
    calibrate_threshold,
    mmd_permutation_test,
    trailing_zscore,
)
from monitor.stepfile import load_step

CHANGE = 60
T = 110


def test_mmd2_matches_definition() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    sigma = 1.3

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return math.exp(-float((a - b).pow(2).sum()) / (2 * sigma**2))

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(7)) / 35
    res = mmd_permutation_test(x, y, n_permutations=10, bandwidth=sigma)
    assert res.mmd2 == pytest.approx(xx + yy - 2 * xy, abs=1e-12)
    pooled = torch.cat([x, y])
    kern = torch.exp(-torch.cdist(pooled, pooled).pow(2) / (2 * sigma**2))
    labels = torch.zeros(1, 12, dtype=torch.bool)
    labels[0, :5] = True
    assert float(_mmd2_unbiased(kern, labels)[0]) == pytest.approx(res.mmd2, abs=1e-12)


def test_mmd_null_roughly_uniform_and_shift_detected() -> None:
    g = torch.Generator().manual_seed(1)
    pvals = []
    for i in range(80):
        x, y = torch.randn(24, 4, generator=g), torch.randn(40, 4, generator=g)
        pvals.append(mmd_permutation_test(x, y, n_permutations=200, seed=i).p_value)
    p = np.array(pvals)
    # Uniform p: 5 % below 0.05 (binomial s.d. 2.4 % over 80 tests), mean 0.5 (s.d. 0.03).
    assert (p < 0.05).mean() <= 0.125
    assert 0.38 <= p.mean() <= 0.62
    assert p.min() >= 1 / 201
    for i in range(5):
        x, y = torch.randn(24, 4, generator=g) + 1.0, torch.randn(40, 4, generator=g)
        res = mmd_permutation_test(x, y, n_permutations=200, seed=i)
        assert res.p_value < 0.01, res
    with pytest.raises(ValueError, match="same d"):
        mmd_permutation_test(torch.zeros(3, 2), torch.zeros(3, 4))


def test_trailing_zscore_alarm_events_and_calibration() -> None:
    z = trailing_zscore([1.0, 2.0, 3.0, 2.0, 10.0], window=4, min_history=3)
    assert np.isnan(z[:3]).all()
    assert z[3] == pytest.approx((2.0 - 2.0) / 1.0)
    assert z[4] == pytest.approx((10.0 - 2.0) / np.std([1, 2, 3, 2], ddof=1))
    assert alarm_events([5, 6, 15, 16, 30], cooldown=10) == [5, 16, 30]
    assert calibrate_threshold([1, 2, 3, 4, np.nan, 5], 0.25) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="at least 5"):
        calibrate_threshold([1.0, np.nan], 0.01)


def synthetic_run(seed: int, change: int | None, name: str) -> RunData:
    """T steps of 64 latents (d = 16) and scalar series, stationary, with a shift at ``change``:
    half the batch moves to a new cluster that earns a high reward, KL and length jump, entropy drops."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, d = 64, 16
    centre = torch.zeros(d)
    centre[0] = 6.0
    latents, rewards, texts = [], [], []
    for t in range(T):
        z = torch.randn(n, d, generator=g)
        r = 0.5 + 0.1 * torch.randn(n, generator=g)
        if change is not None and t >= change:
            z[: n // 2] = centre + 0.3 * torch.randn(n // 2, d, generator=g)
            r[: n // 2] += 1.0
        latents.append(z)
        rewards.append(r)
        texts.append([f"answer {t}.{i}" for i in range(n)])
    jump = np.zeros(T) if change is None else (np.arange(T) >= change).astype(float)
    scalars = {
        "kl": 0.1 + 0.01 * rng.standard_normal(T) + 0.2 * jump,
        "reward_mean": np.array([float(r.mean()) for r in rewards]),
        "length": 12 + 0.3 * rng.standard_normal(T) + 4 * jump,
        "entropy": 1.0 + 0.02 * rng.standard_normal(T) - 0.4 * jump,
    }
    return RunData(
        name=name,
        kind="hackable" if change is not None else "control",
        seed=seed,
        steps=np.arange(T, dtype=np.int64),
        scalars=scalars,
        latents={"emb": latents},
        rewards=rewards,
        texts=texts,
        lrs=[1e-3] * T,
    )


@pytest.mark.parametrize(
    "detector",
    [
        FpmonDetector("emb"),
        FpmonDetector("emb", alarm_on="flag"),
        SeriesSpikeDetector("kl_spike", "kl"),
        SeriesSpikeDetector("reward_z", "reward_mean"),
        SeriesSpikeDetector("length_spike", "length"),
        SeriesSpikeDetector("entropy_drop", "entropy", sign=-1.0),
        MMDDetector("emb", n_permutations=200, max_reference=128),
    ],
    ids=lambda d: d.name,
)
def test_detector_finds_the_change_and_is_quiet_before(detector: object) -> None:
    hacked = synthetic_run(3, CHANGE, "hacked")
    control = synthetic_run(4, None, "control")
    threshold = detector.calibrate(control, 0.01)  # type: ignore[attr-defined]
    for thr in (None, threshold):
        out = detector.detect(hacked, thr)  # type: ignore[attr-defined]
        assert all(a >= CHANGE for a in out.alarms), (detector, thr, out.alarms)
        assert out.alarms and out.alarms[0] <= CHANGE + 3, (detector, thr, out.alarms)
    # the calibration run itself: at most 2 of its ~100 scores lie above their own 99 % quantile (interpolated)
    assert len(detector.detect(control, threshold).alarms) <= 2  # type: ignore[attr-defined]


def test_fpmon_detector_replays_like_a_fresh_monitor() -> None:
    from monitor.rlhf import RLHFMonitor

    run = synthetic_run(6, CHANGE, "hacked")
    det = FpmonDetector("emb")
    reports = det.replay(run)
    mon = RLHFMonitor()
    for t in range(15):
        rep = mon.observe(t, run.latents["emb"][t], rewards=run.rewards[t], texts=run.texts[t], lr=1e-3)
        assert rep.scalars == pytest.approx(reports[t].scalars, rel=1e-9, nan_ok=True)
    cal = det.calibrate(synthetic_run(7, None, "control"), 0.01)
    assert det.config.C_alert == 0.3 and det.config.detector.z_threshold == 7.0  # calibration copied, not mutated
    assert cal.detector.z_threshold != 7.0 and cal.C_alert != 0.3


def test_quick_record_and_evaluate(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("monitor.embed")
    from benchmarks.detection.run import main

    out, docs = tmp_path / "runs", tmp_path / "docs"
    argv = ["--quick", "--out", str(out), "--doc-dir", str(docs), "--seeds", "0", "1", "--steps", "8"]
    assert main([*argv, "--embedders", "model"]) == 0
    for name in ("hackable-s0", "control-s0", "hackable-s1", "control-s1"):
        files = sorted((out / name / "model").glob("step_*.safetensors"))
        assert len(files) == 8
        step0 = load_step(files[0])
        assert step0.latents.shape[0] == 32 and step0.texts and step0.prompts and step0.rewards is not None
        rows = (out / name / "scalars.csv").read_text().splitlines()
        assert len(rows) == 9
        first = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
        assert abs(float(first["kl"])) < 1e-5  # the policy equals the frozen reference before the first update
        assert float(first["reward_mean"]) == pytest.approx(float(step0.rewards.mean()), abs=1e-6)
        assert (docs / f"{name}.png").stat().st_size > 5000
    result = json.loads((docs / "results.json").read_text())
    detectors = {row["detector"] for row in result["table"]}
    assert detectors == {
        "fpmon[model]",
        "kl_spike",
        "reward_z",
        "length_spike",
        "entropy_drop",
        "mmd[model]",
        "fpmon-flag[model]",
        "fpmon-seedrule[model]",
    }
    assert {row["mode"] for row in result["table"]} == {"default", "calibrated"}
    assert all(row["control_steps"] == 16 for row in result["table"])
    assert "| detector | delay median" in (docs / "table.md").read_text()
