"""fpmon's detectors in the benchmark: ``RLHFMonitor`` replayed over a recorded run, its per-step evidence and
alerts cached (:class:`TraceStore`), and the detector variants read from one replay (see
``benchmarks/detection/detectors.py`` for the list)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from monitor.detect.streams import EMBEDDING_STREAMS
from monitor.rlhf import MonitorConfig, RLHFMonitor

from .detectors import AlertRecord, DetectorOutput, RunData, hits


@dataclass(frozen=True)
class FpmonTrace:
    """``RLHFMonitor`` replayed over one run: what the benchmark keeps of its reports (JSON-serialisable).

    Attributes:
        steps: (T,) the run's steps.
        evidence: key of ``report.evidence`` -> (T,) natural-log e-detector statistic after each step (NaN where
            the report had no such key).
        threshold: ``report.evidence_threshold`` = log(1/α) (nats).
        alerts: every alert raised, in step order.
    """

    steps: list[int]
    evidence: dict[str, list[float]]
    threshold: float
    alerts: list[AlertRecord]

    def to_dict(self) -> dict[str, Any]:
        ev = {k: [None if not math.isfinite(v) else round(v, 4) for v in vals] for k, vals in self.evidence.items()}
        alerts = [{"step": a.step, "type": a.type, "top": list(a.top)} for a in self.alerts]
        return {"steps": self.steps, "evidence": ev, "threshold": self.threshold, "alerts": alerts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FpmonTrace:
        ev = {k: [math.nan if v is None else float(v) for v in vals] for k, vals in data["evidence"].items()}
        alerts = [AlertRecord(int(a["step"]), str(a["type"]), tuple(a["top"])) for a in data["alerts"]]
        return cls([int(s) for s in data["steps"]], ev, float(data["threshold"]), alerts)


MonitorFactory = Callable[[MonitorConfig], Any]
"""Builds the monitor a replay feeds (``RLHFMonitor``; tests pass a fake with the same ``observe``)."""


def replay_run(
    run: RunData, config: MonitorConfig, judge: bool, embedder: str = "model", factory: MonitorFactory = RLHFMonitor
) -> FpmonTrace:
    """Feed ``run``'s steps in order to a fresh monitor: latents, training rewards, texts, sample ids, learning
    rates and, with ``judge``, the judge's rewards as ``reference_rewards``."""
    if embedder not in run.latents:
        raise KeyError(f"run {run.name} has no latents {embedder!r}; recorded: {sorted(run.latents)}")
    if judge and not run.judge:
        raise ValueError(f"run {run.name} has no judge rewards (samples.jsonl) for a replay with the judge")
    monitor = factory(config)
    evidence: dict[str, list[float]] = {}
    alerts: list[AlertRecord] = []
    threshold = math.nan
    for t, step in enumerate(run.steps):
        report = monitor.observe(
            int(step),
            run.latents[embedder][t].to(torch.float32),
            rewards=run.rewards[t] if run.rewards else None,
            texts=run.texts[t] if run.texts else None,
            lr=run.lrs[t] if run.lrs else None,
            sample_ids=run.sample_ids[t] if run.sample_ids else None,
            reference_rewards=run.judge[t] if judge else None,
        )
        threshold = float(report.evidence_threshold)
        for key in set(evidence) | set(report.evidence):
            evidence.setdefault(key, [math.nan] * t).append(float(report.evidence.get(key, math.nan)))
        if report.alert is not None:
            top = tuple(int(s.index) for s in report.alert.top_samples)
            alerts.append(AlertRecord(int(step), str(report.alert.type), top))
    return FpmonTrace([int(s) for s in run.steps], evidence, threshold, alerts)


@dataclass
class TraceStore:
    """Replays shared by the fpmon detectors, one per (run, replay key) (``evaluate.py`` fills it from its disk
    cache and its worker processes; a missing replay is computed here).

    Attributes:
        factory: builds the replayed monitor.
        traces: (run name, :meth:`key`) -> the replay.
    """

    factory: MonitorFactory = RLHFMonitor
    traces: dict[tuple[str, str], FpmonTrace] = field(default_factory=dict, repr=False)

    @staticmethod
    def key(config: MonitorConfig, judge: bool, embedder: str) -> str:
        """A short hash of what a replay depends on besides the run."""
        blob = json.dumps({"config": config.to_dict(), "judge": judge, "embedder": embedder}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def get(self, run: RunData, config: MonitorConfig, judge: bool, embedder: str) -> FpmonTrace:
        key = (run.name, self.key(config, judge, embedder))
        if key not in self.traces:
            self.traces[key] = replay_run(run, config, judge, embedder, self.factory)
        return self.traces[key]


FpmonAlarm = Literal["alert", "embedding", "reward"]


@dataclass
class FpmonDetector:
    """A detector read off an ``RLHFMonitor`` replay of the run (see the module docstring for the variants).

    Attributes:
        label: the detector's name.
        config: the monitor's settings.
        judge: pass the judge's rewards as ``reference_rewards``.
        alarm_on: ``"alert"`` (any alert), ``"embedding"`` / ``"reward"`` (that combined evidence ≥ log(1/α)).
        embedder: key of ``RunData.latents``.
        store: the shared replays.
    """

    label: str
    config: MonitorConfig = field(default_factory=MonitorConfig)
    judge: bool = False
    alarm_on: FpmonAlarm = "alert"
    embedder: str = "model"
    store: TraceStore = field(default_factory=TraceStore)

    def __post_init__(self) -> None:
        if self.alarm_on not in ("alert", "embedding", "reward"):
            raise ValueError(f"alarm_on must be 'alert', 'embedding' or 'reward', got {self.alarm_on!r}")
        if not self.judge:  # without a judge the gap stream never runs: one replay for every such variant
            streams = tuple(s for s in self.config.evidence.streams if s != "judge_gap")
            self.config = replace(self.config, evidence=replace(self.config.evidence, streams=streams))

    @property
    def name(self) -> str:
        return self.label

    def trace(self, run: RunData) -> FpmonTrace:
        return self.store.get(run, self.config, self.judge, self.embedder)

    def calibrate(self, controls: Sequence[RunData], false_alarm_rate: float) -> None:
        """Not calibrated: the e-detectors' threshold log(1/α) sets their false-alarm rate."""
        return None

    def detect(self, run: RunData, threshold: float | None = None) -> DetectorOutput:
        trace = self.trace(run)
        used = {"alpha": self.config.evidence.alpha, "log_threshold": trace.threshold}
        if self.alarm_on == "alert":
            alerts = {a.step: a for a in trace.alerts}
            return DetectorOutput(self.name, run.name, sorted(alerts), used, alerts, alerting=True)
        series = np.asarray(trace.evidence.get(self.alarm_on, [math.nan] * len(trace.steps)))
        fired = np.isfinite(series) & (series >= trace.threshold)
        return DetectorOutput(self.name, run.name, hits(np.asarray(trace.steps, dtype=np.int64), fired), used)


def fpmon_detectors(config: MonitorConfig, store: TraceStore, embedder: str = "model") -> list[FpmonDetector]:
    """fpmon, fpmon+judge, one ablation per embedding stream (that stream + the reward rise), the embedding
    evidence alone (``fpmon-embedding``) and the reward-rise e-detector alone (``reward_e``)."""

    def with_streams(streams: tuple[str, ...]) -> MonitorConfig:
        return replace(config, evidence=replace(config.evidence, streams=streams))

    own = config.evidence.streams
    rise = own if "reward_rise" in own else (*own, "reward_rise")
    dets = [
        FpmonDetector("fpmon", config, embedder=embedder, store=store),
        FpmonDetector("fpmon+judge", config, judge=True, embedder=embedder, store=store),
    ]
    dets += [
        FpmonDetector(f"fpmon[{s}]", with_streams((s, "reward_rise")), embedder=embedder, store=store)
        for s in EMBEDDING_STREAMS
    ]
    dets += [
        FpmonDetector("fpmon-embedding", config, alarm_on="embedding", embedder=embedder, store=store),
        FpmonDetector("reward_e", with_streams(rise), alarm_on="reward", embedder=embedder, store=store),
    ]
    return dets
