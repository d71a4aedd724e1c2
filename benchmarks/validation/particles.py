"""Known transitions in the particle solver: detection delay and false alarms of fpmon's detectors (issue 6 §2).

Scenarios of :mod:`monitor.fpe.scenarios`, each with a transition at a known step T:

* ``new_minimum``: a deeper minimum appears at T and swallows the old one (sudden migration);
* ``barrier_crossing``: at T the barrier in front of a deeper well drops from 6 σ to 2 σ and the particles leak
  over it one by one (activated, gradual: half of them in ~30 steps);
* ``reset_escape``: a reset (seed §5.1) at T lets part of the cloud escape over a barrier;
* ``control``: ``reset_escape`` without the reset — nothing happens in 240 steps (false alarms only).

Detectors, each fed the run causally:

* ``streaming``: :class:`monitor.detect.StreamingDetector` (default config) on the solver's own observables
  (C, H, W2_step; div_q99 is not produced by the solver);
* ``offline``: :func:`monitor.detect.detect_phase_transitions` (default config: C drop + Ṡ spike + loss plateau);
* ``monitor``: :class:`monitor.RLHFMonitor` (default config, W2_ref by the Gaussian formula, no rewards) on the
  particles as latents — the estimated flow, not the solver's exact drift — counting its detector's flags
  (``monitor``) and its ``PHASE_TRANSITION`` alerts (``monitor_alert``).

A transition counts as detected when the first flag at a step ≥ T comes within ``tolerance`` steps of T; the
delay is that flag's step minus T. A false alarm is a flag before T (the control: any flag); the rate is per
1000 steps after each detector's warm-up (20 steps for the streaming and offline detectors' histories, the
monitor's 10 warm-up steps + 20).

Run: ``python -m benchmarks.validation.particles [--quick] [--seeds N]``; writes ``particles.json`` and
``particles_*.png`` to ``docs/validation/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.validation._common import DEFAULT_OUT, agg_pyplot, markdown_table, single_thread, write_json
from monitor.fpe.dynamics import FokkerPlanckDynamics
from monitor.fpe.scenarios import (
    Scenario,
    barrier_crossing_scenario,
    new_minimum_scenario,
    reset_escape_scenario,
)

DETECTORS: tuple[str, ...] = ("streaming", "offline", "monitor", "monitor_alert")
SCENARIO_NAMES: tuple[str, ...] = ("new_minimum", "barrier_crossing", "reset_escape", "control")


@dataclass(frozen=True)
class ParticleConfig:
    """Settings of the particle benchmark.

    Attributes:
        n, d: particles and latent dimension of every scenario.
        n_steps: steps per run; transition_step: T (the control has no transition).
        seeds: number of seeds per scenario (seeds 0 … seeds−1).
        tolerance: a flag at T … T + tolerance counts as the detection.
        warmup: steps excluded from the false-alarm count for the solver-history detectors (their minimum
            history); the monitor adds its own warm-up (``MonitorConfig.warmup_steps``).
        scenarios: which scenarios to run.
    """

    n: int = 256
    d: int = 4
    n_steps: int = 240
    transition_step: int = 120
    seeds: int = 8
    tolerance: int = 20
    warmup: int = 20
    scenarios: tuple[str, ...] = SCENARIO_NAMES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scenarios) - set(SCENARIO_NAMES))
        if unknown:
            raise ValueError(f"unknown scenario(s) {unknown}; choose from {list(SCENARIO_NAMES)}")
        if self.seeds < 1 or self.tolerance < 0:
            raise ValueError("ParticleConfig.seeds must be >= 1 and tolerance >= 0")
        if not self.warmup + 30 < self.transition_step < self.n_steps:
            raise ValueError("ParticleConfig needs warmup + 30 < transition_step < n_steps")


QUICK = ParticleConfig(n=128, n_steps=100, transition_step=60, seeds=1, scenarios=("new_minimum", "control"))


def make_scenario(name: str, cfg: ParticleConfig, seed: int) -> Scenario:
    """The named scenario at ``cfg``'s size with ``seed``."""
    kwargs: dict[str, Any] = {"n": cfg.n, "d": cfg.d, "seed": seed, "n_steps": cfg.n_steps}
    factories: dict[str, Callable[..., Scenario]] = {
        "new_minimum": new_minimum_scenario,
        "barrier_crossing": barrier_crossing_scenario,
    }
    if name in factories:
        return factories[name](transition_step=cfg.transition_step, **kwargs)
    sc = reset_escape_scenario(reset_step=cfg.transition_step, **kwargs)
    if name == "control":
        return dataclasses.replace(sc, name="control", reset_at=())
    return sc


class _RecordingLoss:
    """Wraps a scenario's loss and keeps a copy of the particles of every call (one call per solver step)."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
        self.loss_fn = loss_fn
        self.frames: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        self.frames.append(z.detach().clone())
        return self.loss_fn(z, t)


def run_particles(sc: Scenario, seed: int) -> tuple[dict[str, list[Any]], list[torch.Tensor]]:
    """``train_epoch`` over the scenario (resets included), also returning the particles of every step.

    Returns (histories of ``FokkerPlanckDynamics.train_epoch``, particles z_0 … z_{n_steps−1}, each (n, d) as
    measured by that step, after a reset that fires at it).
    """
    recorder = _RecordingLoss(sc.dynamics.loss_fn)
    recorded = dataclasses.replace(sc, dynamics=FokkerPlanckDynamics(recorder, sc.dynamics.config))
    _, hist = recorded.run(seed=seed)
    if len(recorder.frames) != sc.n_steps:
        raise RuntimeError(f"expected one loss call per step ({sc.n_steps}), got {len(recorder.frames)}")
    return hist, recorder.frames


def flags_streaming(hist: dict[str, list[Any]]) -> list[int]:
    from monitor.detect import StreamingDetector

    det = StreamingDetector()
    n = len(hist["C"])
    return [k for k in range(n) if det.update(k, {key: hist[key][k] for key in ("C", "H", "W2_step")}).flagged]


def flags_offline(hist: dict[str, list[Any]]) -> list[int]:
    from monitor.detect import detect_phase_transitions

    return [int(k) for k in detect_phase_transitions({k: hist[k] for k in ("C", "S_dot", "loss")})]


def flags_monitor(frames: Sequence[torch.Tensor]) -> tuple[list[int], list[int], dict[str, list[float]]]:
    """RLHFMonitor (defaults, no rewards) over the particle frames: (detector flags, PT alerts, scalars)."""
    from monitor import MonitorConfig, RLHFMonitor
    from monitor.fpe import FPEConfig

    mon = RLHFMonitor(MonitorConfig(fpe=FPEConfig(w2_ref_method="gaussian")))
    flags, alerts = [], []
    series: dict[str, list[float]] = {"C": [], "div_q99": [], "W2_step": [], "H": []}
    for k, z in enumerate(frames):
        rep = mon.observe(k, z)
        if rep.detection is not None and rep.detection.flagged:
            flags.append(k)
        if rep.alert is not None and rep.alert.type == "PHASE_TRANSITION":
            alerts.append(k)
        for key in series:
            series[key].append(float(rep.scalars.get(key, math.nan)))
    return flags, alerts, series


def score(flags: Sequence[int], transition: int | None, tolerance: int, start: int, n_steps: int) -> dict[str, Any]:
    """Delay (None if missed), false alarms before the transition (after ``start``) and their rate per 1000 steps."""
    end = transition if transition is not None else n_steps
    false = [f for f in flags if start <= f < end]
    after = [f for f in flags if transition is not None and f >= transition]
    delay = after[0] - transition if after and transition is not None and after[0] - transition <= tolerance else None
    return {"delay": delay, "false_alarms": len(false), "steps_watched": max(0, end - start)}


def run_benchmark(cfg: ParticleConfig, out_dir: Path | None, plot: bool = True) -> dict[str, Any]:
    """All scenarios × seeds × detectors; returns (and writes, with ``out_dir``) per-run scores and a summary."""
    from monitor import MonitorConfig

    mon_warm = MonitorConfig().warmup_steps + cfg.warmup
    per_run: list[dict[str, Any]] = []
    examples: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name in cfg.scenarios:
        for seed in range(cfg.seeds):
            sc = make_scenario(name, cfg, seed)
            hist, frames = run_particles(sc, seed)
            transition = None if name == "control" else sc.transition_step
            fl = {"streaming": flags_streaming(hist), "offline": flags_offline(hist)}
            fl["monitor"], fl["monitor_alert"], mon_series = flags_monitor(frames)
            row: dict[str, Any] = {"scenario": name, "seed": seed, "flags": fl}
            for det, flags in fl.items():
                start = mon_warm if det.startswith("monitor") else cfg.warmup
                row[det] = score(flags, transition, cfg.tolerance, start, cfg.n_steps)
            per_run.append(row)
            if seed == 0:
                examples[name] = {"history": hist, "monitor": mon_series, "flags": fl, "transition": transition}
    summary = summarise(cfg, per_run)
    result = {
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "runs": per_run,
        "examples": examples,
        "seconds": time.perf_counter() - t0,
    }
    if out_dir is not None:
        write_json(out_dir / "particles.json", result)
        if plot:
            plot_examples(cfg, examples, out_dir / "particles_runs.png")
    return result


def summarise(cfg: ParticleConfig, per_run: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, detector): detection rate, delay median/max, false alarms and their rate."""
    rows = []
    for name in cfg.scenarios:
        runs = [r for r in per_run if r["scenario"] == name]
        for det in DETECTORS:
            delays = [r[det]["delay"] for r in runs if r[det]["delay"] is not None]
            false = sum(r[det]["false_alarms"] for r in runs)
            watched = sum(r[det]["steps_watched"] for r in runs)
            rows.append(
                {
                    "scenario": name,
                    "detector": det,
                    "runs": len(runs),
                    "detected": None if name == "control" else len(delays),
                    "delay_median": statistics.median(delays) if delays else None,
                    "delay_max": max(delays) if delays else None,
                    "false_alarms": false,
                    "false_per_1000": 1000.0 * false / watched if watched else math.nan,
                    "runs_with_false_alarm": sum(r[det]["false_alarms"] > 0 for r in runs),
                }
            )
    return rows


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    header = ["scenario", "detector", "runs", "detected ≤ tol", "delay median", "delay max"]
    header += ["false alarms", "per 1000 steps", "runs with a false alarm"]
    rows = [
        [
            r["scenario"],
            r["detector"],
            r["runs"],
            r["detected"],
            r["delay_median"],
            r["delay_max"],
            r["false_alarms"],
            r["false_per_1000"],
            r["runs_with_false_alarm"],
        ]
        for r in summary
    ]
    return markdown_table(header, rows)


def plot_examples(cfg: ParticleConfig, examples: dict[str, dict[str, Any]], path: Path) -> Path:
    """Seed 0 of each scenario: solver C, H, W2_step and the monitor's C, with each detector's flags."""
    plt = agg_pyplot()
    cols = (("C", "solver C"), ("H", "solver H"), ("W2_step", "solver W2_step"), ("monitor:C", "monitor C"))
    names = list(examples)
    fig, axes = plt.subplots(len(names), len(cols), figsize=(14, 2.4 * len(names)), squeeze=False, sharex=True)
    marks = {"streaming": ("v", "tab:red"), "offline": ("^", "tab:green"), "monitor": ("o", "tab:purple")}
    for row, name in enumerate(names):
        ex = examples[name]
        for col, (key, label) in enumerate(cols):
            ax = axes[row][col]
            ys = ex["monitor"]["C"] if key == "monitor:C" else ex["history"][key]
            ax.plot(np.arange(len(ys)), ys, lw=0.9, color="tab:blue")
            if key in ("C", "monitor:C"):
                ax.set_yscale("log")
            if ex["transition"] is not None:
                ax.axvline(ex["transition"], color="k", lw=0.8, ls="--")
            finite = [v for v in ys if math.isfinite(v)]
            top = max(finite) if finite else 1.0
            for det, (marker, color) in marks.items():
                for f in ex["flags"][det]:
                    ax.plot([f], [top], marker=marker, color=color, ms=5, ls="none")
            if row == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    axes[-1][0].set_xlabel("step")
    fig.suptitle("Seed 0: dashed = known transition; flags ▼ streaming, ▲ offline, ● RLHFMonitor detector")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, two scenarios, 100 steps (seconds)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per scenario (default 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for particles.json and PNGs")
    args = parser.parse_args(argv)
    single_thread()
    cfg = QUICK if args.quick else ParticleConfig()
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=args.seeds)
    result = run_benchmark(cfg, args.out / "quick" if args.quick else args.out)
    print(format_table(result["summary"]))
    print(f"\n{result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
