"""Figures of the reward-hacking benchmark (matplotlib, Agg backend).

* :func:`plot_run`: one run: the behaviour's prevalence, the proxy and judge mean reward, the detection window
  and onset; fpmon's combined evidence (embedding; reward rise; proxy − judge gap with the judge) against
  log(1/α); every detector's hits (● default thresholds, ○ calibrated).
* :func:`plot_summary`: one split: per kind, each detector's detection delay on each run (a strip plot; the
  calibrated mode, the equal-false-alarm comparison), with the misses counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .detectors import RunData
from .fpmon import FpmonTrace
from .kinds import KINDS
from .scoring import RunScore, Window


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    run: RunData, scores: Sequence[RunScore], window: Window | None, traces: Mapping[str, FpmonTrace], path: Path
) -> None:
    """Write ``path`` (PNG): the run's curves, window, fpmon evidence and every detector's hits.

    Args:
        run: the run (its ``scalars``: ``proxy_mean``, ``true_mean``, ``exploit_fraction``).
        scores: the run's scores (both modes) of every detector.
        window: its detection window (None: control, or no onset).
        traces: fpmon replays by detector name (``"fpmon"``, ``"fpmon+judge"``; either may be missing).
        path: the PNG to write.
    """
    plt = _pyplot()
    names = list(dict.fromkeys(s.detector for s in scores))
    fig, (ax, axe, axh) = plt.subplots(
        3,
        1,
        figsize=(9, 5.2 + 0.25 * len(names)),
        sharex=True,
        gridspec_kw={"height_ratios": [2.0, 1.6, 0.28 * max(len(names), 1)]},
    )
    ax.plot(run.steps, run.scalars["proxy_mean"], color="tab:red", label="proxy reward (batch mean)")
    ax.plot(run.steps, run.scalars["true_mean"], color="tab:green", label="judge reward (batch mean)")
    ax.plot(run.steps, run.prevalence(), color="0.35", lw=0.9, label="prevalence (marked fraction)")
    for a in (ax, axe, axh):
        if window is not None:
            a.axvspan(window.open, window.close, color="0.88", lw=0)
            a.axvline(window.onset, color="k", ls="--", lw=1)
    what = f"{window.label} {window.onset}, window {window.open}–{window.close}" if window else "no window"
    ax.set_title(f"{run.name} ({run.role}): {what}")
    ax.set_ylabel("reward / fraction")
    ax.legend(loc="upper left", fontsize=7)
    threshold = None
    styles = {
        ("fpmon", "embedding"): ("tab:blue", "-", "embedding evidence"),
        ("fpmon", "reward"): ("tab:orange", "-", "reward-rise evidence"),
        ("fpmon+judge", "reward"): ("tab:purple", ":", "proxy − judge gap evidence"),
    }
    for (det, key), (color, ls, label) in styles.items():
        trace = traces.get(det)
        if trace is None or key not in trace.evidence:
            continue
        threshold = trace.threshold
        axe.plot(trace.steps, trace.evidence[key], color=color, ls=ls, lw=1.1, label=label)
    if threshold is not None:
        axe.axhline(threshold, color="tab:red", lw=0.8, ls="--", label="log(1/α)")
        axe.legend(loc="upper left", fontsize=7)
    axe.set_ylabel("log e-value")
    for i, name in enumerate(names):
        for sc in scores:
            if sc.detector != name or not sc.hits:
                continue
            cal = sc.mode == "calibrated"
            axh.scatter(
                sc.hits, [i + (0.18 if cal else -0.18)] * len(sc.hits), s=12, marker="o",
                facecolors="none" if cal else "tab:blue", edgecolors="tab:blue", linewidths=0.8,
            )  # fmt: skip
    axh.set_yticks(range(len(names)), names, fontsize=7)
    axh.set_ylim(-0.6, len(names) - 0.4)
    axh.invert_yaxis()
    axh.set_xlabel("GRPO step (● default thresholds, ○ calibrated; grey: detection window; dashed: onset)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_summary(scores: Sequence[RunScore], split: str, path: Path, mode: str = "calibrated") -> None:
    """Write ``path`` (PNG): per kind with windows (exploit kinds, discovery), each detector's delays (steps)
    on the runs it detected, one dot per run, and "missed k/n" under each detector."""
    plt = _pyplot()
    mine = [s for s in scores if s.mode == mode and s.window is not None]
    kinds = [k for k in KINDS if any(s.kind == k for s in mine)]  # phrase, gradual, format, discovery
    names = list(dict.fromkeys(s.detector for s in scores))
    fig, axes = plt.subplots(
        max(len(kinds), 1), 1, figsize=(10, 0.4 + 2.6 * max(len(kinds), 1)), squeeze=False, sharex=True
    )
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[:, 0], kinds, strict=False):
        for i, name in enumerate(names):
            group = [s for s in mine if s.kind == kind and s.detector == name]
            delays = [s.delay for s in group if s.delay is not None]
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(delays)), delays, s=14, color="tab:blue")
            missed = len(group) - len(delays)
            ax.text(i, 0.97, f"missed {missed}/{len(group)}", transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=6)  # fmt: skip
        ax.axhline(0, color="k", lw=0.8, ls="--")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.25 * (hi - lo))  # room for the "missed" labels
        ax.set_ylabel(f"{kind}\ndelay (steps)")
    if not kinds:
        axes[0, 0].text(0.5, 0.5, "no run with a detection window", ha="center", transform=axes[0, 0].transAxes)
    axes[-1, 0].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes[0, 0].set_title(f"{split} split: detection delay (alarm − onset) per run, {mode} thresholds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
