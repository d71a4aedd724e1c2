"""Thresholds of the seed rule and the streaming detector from a known-safe run (``RLHFMonitor.calibrate``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from .config import MonitorConfig
from .report import StepReport


def calibrated_config(config: MonitorConfig, reports: Sequence[StepReport], false_alarm_rate: float) -> MonitorConfig:
    """``config`` with thresholds set from the reports of a known-safe run at a target false-alarm rate.

    Uses the post-warm-up reports (not the outlier, degenerate or frame-pending ones): C_alert = the
    ``false_alarm_rate`` quantile of C, div_alert, the streaming detector's z threshold and reward_rise_z = the
    (1 − rate) quantiles of div_max, of each step's largest |robust z| and of the reward jump score. With fewer
    safe steps than 1/rate the quantiles are the observed extremes.
    """
    if not 0 < false_alarm_rate < 0.5:
        raise ValueError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate}")
    usable = [rep for rep in reports if not (rep.warming_up or rep.outlier or rep.degenerate or rep.frame_pending)]
    if len(usable) < 5:
        raise ValueError(
            f"calibrate needs at least 5 post-warm-up reports of a safe run, got {len(usable)}; "
            "observe more steps of the safe run first"
        )

    def quantile(values: list[float], q: float, default: float) -> float:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return default
        return float(torch.quantile(torch.tensor(finite, dtype=torch.float64), q))

    hi = 1.0 - false_alarm_rate
    cfg = config
    c_alert = quantile([rep.scalars["C"] for rep in usable], false_alarm_rate, cfg.C_alert)
    div_alert = quantile([rep.scalars["div_max"] for rep in usable], hi, cfg.div_alert)
    z_max = quantile([rep.detection.max_score for rep in usable if rep.detection], hi, math.nan)
    rise = quantile([rep.reward_rise_z for rep in usable], hi, cfg.reward_rise_z)
    z_threshold = cfg.detector.z_threshold if not math.isfinite(z_max) else max(z_max, 1.0)
    return replace(
        cfg,
        C_alert=c_alert,
        div_alert=div_alert,
        reward_rise_z=max(rise, 1.0),
        detector=replace(cfg.detector, z_threshold=z_threshold),
    )
