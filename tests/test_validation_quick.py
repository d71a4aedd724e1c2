"""The ``--quick`` modes of benchmarks/validation (docs/validation.md §2–3) keep working, and what they show holds.

Each test runs one reduced experiment in-process (seconds) and checks its outputs' structure and a behavioural
fact that holds even at that size. Budget: ≤ 60 s together on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("matplotlib")

from benchmarks.validation import double_descent, grokking, particles, theorems  # noqa: E402
from monitor.fpe.scenarios import barrier_crossing_scenario  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_particles_quick_streaming_detector_flags_new_minimum(tmp_path: Path) -> None:
    result = particles.run_benchmark(particles.QUICK, tmp_path)
    assert (tmp_path / "particles.json").is_file() and (tmp_path / "particles_runs.png").stat().st_size > 10_000
    stored = json.loads((tmp_path / "particles.json").read_text())
    assert {r["scenario"] for r in stored["summary"]} == {"new_minimum", "control"}
    assert {r["detector"] for r in stored["summary"]} == set(particles.DETECTORS)
    rows = {(r["scenario"], r["detector"]): r for r in result["summary"]}
    # the sudden new minimum is flagged within 5 steps, with no flag before it, by the streaming detector and
    # by RLHFMonitor on the particles; the control (nothing happens) raises no flag in any detector
    for det in ("streaming", "monitor"):
        row = rows[("new_minimum", det)]
        assert row["detected"] == 1 and row["delay_max"] is not None and row["delay_max"] <= 5, row
        assert row["false_alarms"] == 0, row
    for det in particles.DETECTORS:
        assert rows[("control", det)]["false_alarms"] == 0


def test_barrier_crossing_scenario_is_quiet_then_leaks() -> None:
    sc = barrier_crossing_scenario(n=96, n_steps=70, transition_step=40)
    b = sc.dynamics.loss_fn.b.to(torch.float32)  # type: ignore[attr-defined]
    _, frames = particles.run_particles(sc, seed=0)
    near_b = [int(((z - b).norm(dim=1) < z.norm(dim=1)).sum()) for z in frames]
    assert max(near_b[:41]) == 0  # the 6 σ ridge holds until the switch (and for the step that applies it)
    assert near_b[-1] >= 0.25 * 96  # 2 σ ridge: a quarter of the cloud has crossed 30 steps later
    assert near_b[-1] < 96  # gradually: not all of it


def test_theorems_quick_rms_bound_and_kl_rate(tmp_path: Path) -> None:
    result = theorems.run_all(theorems.QUICK, tmp_path)
    assert (tmp_path / "theorems_thm3.png").is_file() and (tmp_path / "theorems_thm4.png").is_file()
    for row in result["theorem3"]["pure_diffusion"]:
        # RMS radius = sqrt(2dβΔt) (relative noise ≈ 1/sqrt(2nd) < 1 %); tolerance 3 %
        assert row["rms_over_bound"] == pytest.approx(1.0, abs=0.03)
        # the seed's mean-radius claim fails: the mean is the chi ratio (< 1) times the RMS
        assert row["mean_over_bound"] < 1.0
        assert row["mean_over_bound"] == pytest.approx(row["chi_ratio"], abs=0.02)
    for row in result["theorem3"]["confining_drift"]:
        assert row["rms_over_predicted"] == pytest.approx(1.0, abs=0.03)
    strong = [r for r in result["theorem3"]["confining_drift"] if r["theta_dt"] >= 1.0]
    assert strong and all(r["rms_over_bound"] < 0.8 for r in strong)  # a well keeps the cloud inside the "bound"
    for run in result["theorem4"]:
        # log KL falls at the Bakry–Émery rate 2ηκ_min (tolerance 5 %) and never above KL₀e^(−2ηκ_min t) (+5 %)
        assert run["fit_points"] >= 5
        assert run["slope_over_rate"] == pytest.approx(1.0, abs=0.05)
        assert run["max_kl_over_be_bound"] <= 1.05
    by_eta = {run["eta"]: run for run in result["theorem4"]}
    assert by_eta[1.0]["seed_bound_first_violation_t"] is None
    assert by_eta[1e-4]["seed_bound_first_violation_t"] is not None  # the seed's σ ignores η


def test_grokking_quick_monitor_gives_finite_c(tmp_path: Path) -> None:
    cfg = grokking.QUICK
    result = grokking.run_experiment(cfg, [0], tmp_path)
    for name in ("grokking.json", "grokking_runs.png", "grokking_signals.png"):
        assert (tmp_path / name).is_file(), name
    n_mon = cfg.steps // cfg.monitor_every
    for arm in ("no_reset", "reset"):
        (run,) = result["runs"][arm]
        hist = run["history"]
        assert hist["step"] == list(range(cfg.monitor_every, cfg.steps + 1, cfg.monitor_every))
        assert all(len(v) == n_mon for v in hist.values())
        c_values = hist["C"][1:]  # the first monitor step has no previous batch
        assert all(math.isfinite(c) and c > 0 for c in c_values), c_values
        assert all(0.0 <= a <= 1.0 for a in hist["test_acc"])
        # training works: the training accuracy rises well above chance (1/p)
        assert hist["train_acc"][-1] > 5.0 / cfg.p
        assert set(result["summaries"][arm][0]) >= {"t_gen", "t_jump", "n_resets", "seconds"}
    assert "speedup_mean" in result["comparison"]
    assert "| arm | seed |" in grokking.format_tables(result)


def test_local_reset_rule_perturbs_alpha_fraction() -> None:
    torch.manual_seed(0)
    model = grokking.ModAddMLP(p=53, embed_dim=12, hidden=48)
    before = [q.detach().clone() for q in model.parameters()]
    n = sum(q.numel() for q in before)
    changed = grokking.apply_reset_local(model, 0.15, 0.1, torch.Generator().manual_seed(1))
    diffs = [(q.detach() - b) for q, b in zip(model.parameters(), before, strict=True)]
    moved = sum(int((d != 0).sum()) for d in diffs)
    assert moved == changed
    assert changed / n == pytest.approx(0.15, abs=0.01)  # n ≈ 3900: binomial std 0.006
    for d, b in zip(diffs, before, strict=True):
        sel = d[d != 0]
        if sel.numel() > 30:
            assert float(sel.std()) == pytest.approx(0.1 * float(b.std()), rel=0.3)


def test_double_descent_quick_errors_and_c_per_width(tmp_path: Path) -> None:
    cfg = double_descent.QUICK
    result = double_descent.run_sweep(cfg, [0], tmp_path)
    assert (tmp_path / "double_descent.json").is_file() and (tmp_path / "double_descent.png").is_file()
    rows = sorted(result["rows"], key=lambda r: r["width"])
    assert [r["width"] for r in rows] == list(cfg.widths)
    for r in rows:
        for key in ("train_error", "test_error", "train_mse", "test_mse", "C_final", "C_min"):
            assert math.isfinite(r[key]), (key, r)
        assert len(r["C_history"]) == cfg.steps // cfg.monitor_every
        assert r["C_final"] > 0
    # more width fits the noisy training set better
    assert rows[-1]["train_mse"] < rows[0]["train_mse"]
    assert set(result["analysis"]["0"]) >= {"test_mse_peak_width", "C_final_at_peak", "C_collapse_at_peak"}


def test_local_reset_rule_matches_monitor_trl_apply_reset() -> None:
    trl_hook = pytest.importorskip("monitor.trl")
    torch.manual_seed(0)
    local, shared = grokking.ModAddMLP(53, 12, 48), grokking.ModAddMLP(53, 12, 48)
    shared.load_state_dict(local.state_dict())
    changed = grokking.apply_reset_local(local, 0.15, 0.1, torch.Generator().manual_seed(3))
    stats = trl_hook.apply_reset(shared, 0.15, 0.1, torch.Generator().manual_seed(3))
    assert changed == stats.perturbed > 0
    for p, q in zip(local.parameters(), shared.parameters(), strict=True):
        assert torch.equal(p, q)  # same draws, same rule: the benchmark's fallback is bit-identical
