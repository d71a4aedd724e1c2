"""RLHFMonitor: per-step observables, streaming detection and alerts for an RLHF run (DESIGN.md §3.5).

``RLHFMonitor.observe(step, latents, rewards=None, texts=None, lr=None)`` is fed one batch of response
latents per training step and returns a :class:`StepReport`. It keeps everything needed between steps:
the run's frozen projection (fitted on an explicit reference batch, or on the first batch — the first
batches pooled when the first has fewer than 2k + 2 samples), the previous ``pool_window`` projected
batches, the calibrated D₀, the streaming detector's state, the run's latent scale and the alert
cool-downs. ``state_dict()`` / ``from_state_dict()`` make a restarted monitor continue exactly.

A bad step cannot poison the run (docs/estimators.md §8 says why each choice; each flag is also an entry
of ``scalars``). An *outlier* (latents far outside the run's scale, ``MonitorConfig.outlier_factor``) is
processed, not refused — refusing would have to happen at ingest, before the worker has the run's state —
with NaN observables, no alert and no trace in the state: the next step computes exactly what it would
have without it. A *degenerate* batch (rank < k in the frame) gets bounded values and is scored against
the noise bands but kept out of them and out of the D₀ calibration. Until the run has seen 2k + 2 samples
its steps are *frame pending*: kept for the frame, which is then fitted on all of them together.

Alerts come from anytime-valid e-detectors (``monitor.detect.streams``, armed from the third step, no
warm-up; ``monitor.rlhf.decide`` turns their crossings into alerts):

* ``POTENTIAL_REWARD_HACKING`` (needs rewards): the embedding evidence (the responses moving away from the
  run's lagged window and reference faster than ordinary learning) and the reward evidence (the reward rise,
  or the proxy − judge gap when ``reference_rewards`` are given) have both crossed ``1/α``, within
  ``pairing_steps`` of each other; optionally (``seed_rule``, off by default) the seed's absolute rule.
* ``PHASE_TRANSITION``: the embedding evidence crossed.

The FPE observables, the streaming detector (``report.detection``, the transition marks) and the δ-cluster
are computed as before; docs/validation.md §1 measures what each contributes to detection.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from ..detect import Detection, StreamingDetector, robust_location_scale
from ..detect.streams import EvidenceStep, EvidenceTracker
from ..fpe.observables import FlowParts, Observables, d0_dependent_scalars, observables_from_projected
from ..fpe.projection import Projection
from ..fpe.validation import check_latents, check_lr, check_vector
from .calibration import calibrated_config
from .config import MonitorConfig, Thresholds
from .decide import Latches, decide, evidence_reasons, make_alert, seed_rule_reason, top_samples
from .guards import LatentScale, degenerate_note, frame_samples, median_row_norm, outlier_report, pending_report
from .report import RECOMMENDATIONS, Alert, StepReport

#: version of :meth:`RLHFMonitor.state_dict`'s meta; :meth:`RLHFMonitor.from_state_dict` reads it, versions 1
#: (before the outlier, degenerate and frame-pending state) and 2 (before the evidence streams), refuses others
_STATE_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)


class RLHFMonitor:
    """Watches an RLHF run one batch of response latents at a time (see the module docstring).

    Example::

        monitor = RLHFMonitor()
        for step, (latents, rewards, texts) in enumerate(batches):
            report = monitor.observe(step, latents, rewards=rewards, texts=texts, lr=scheduler_lr)
            if report.alert:
                print(report.alert.type, [s.text for s in report.alert.top_samples])
    """

    def __init__(self, config: MonitorConfig | None = None, reference: Tensor | None = None) -> None:
        self.config = config or MonitorConfig()
        self.projection: Projection | None = None
        self._x_ref: Tensor | None = None
        self._prev: deque[Tensor] = deque(maxlen=self.config.fpe.pool_window)
        self.D0: float | None = None if self.config.fpe.D0 == "auto" else float(self.config.fpe.D0)
        self._calibration: list[tuple[int, FlowParts, dict[str, float]]] = []
        self.detector = StreamingDetector(self.config.detector)
        self._div_q99: deque[float] = deque(maxlen=self.config.detector.window)
        self._reward_mean: deque[float] = deque(maxlen=self.config.detector.window)
        self.evidence = EvidenceTracker(self.config.evidence)
        self._latches = Latches()
        self._last_step: int | None = None
        self._scale = LatentScale(self.config.outlier_factor)
        self._pending: list[Tensor] = []  # raw latents of the steps seen before the frame exists
        self._uncounted: set[int] = set()  # calibration entries of degenerate steps: rescaled, no vote
        self.steps_seen = 0  # accepted steps (outliers excluded)
        self.steps_observed = 0  # accepted steps with observables (what the warm-up counts)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.alerts: list[Alert] = []
        if reference is not None:
            self.set_reference(reference)

    # ------------------------------------------------------------------ reference and projection
    def set_reference(self, z_ref: Tensor) -> None:
        """Fit the run's frozen projection on reference latents (n×d) and keep them for W2_ref/KL_ref.

        k = min(``fpe.k``, n − 1, d): an explicit reference is used as given. Batches seen while the frame
        was pending enter the pooled window, projected.
        """
        if self.projection is not None:
            raise RuntimeError("the reference is already set: the projection is frozen for the whole run")
        z = check_latents(z_ref, name="reference latents", min_n=2, dim=self._input_dim())
        self._fit_frame(z)
        self._flush_pending()
        self.evidence.set_reference(z)
        self.evidence.ref_at = self.evidence.seen

    def _fit_frame(self, z: Tensor) -> None:
        """The frame (held-out when n ≥ max(2(k + 1), 32)) and the reference sample, from latents z (n×d)."""
        n = z.shape[0]
        k = min(self.config.fpe.k, n - 1, z.shape[1])
        if self.config.held_out_reference and n >= max(2 * (k + 1), 32):
            self.projection, held = Projection.fit_held_out(z, k=k, seed=self.config.fpe.seed)
            x_ref = self.projection.transform(z[held])
        else:
            self.projection = Projection.fit(z, k=k)
            x_ref = self.projection.transform(z)
        if x_ref.shape[0] > self.config.max_reference_samples:
            gen = torch.Generator().manual_seed(self.config.fpe.seed)
            idx = torch.randperm(x_ref.shape[0], generator=gen)[: self.config.max_reference_samples]
            x_ref = x_ref[idx.to(x_ref.device)]
        self._x_ref = x_ref

    def _flush_pending(self) -> None:
        """Project the batches kept while the frame was pending into the pooled window, oldest first."""
        assert self.projection is not None
        for z in self._pending:
            self._prev.append(self.projection.transform(z, min_n=2).detach())
        self._pending = []

    def _input_dim(self) -> int | None:
        if self.projection is not None:
            return self.projection.d
        return int(self._pending[0].shape[1]) if self._pending else None

    @property
    def warming_up(self) -> bool:
        return self.steps_observed < self.config.warmup_steps

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            C_alert=self.config.C_alert,
            div_alert=self.config.div_alert,
            z_threshold=self.config.detector.z_threshold,
            reward_rise_z=self.config.reward_rise_z,
        )

    # ------------------------------------------------------------------ the step
    def observe(
        self,
        step: int,
        latents: Tensor,
        rewards: Tensor | Sequence[float] | None = None,
        texts: Sequence[str] | None = None,
        lr: float | None = None,
        sample_ids: Sequence[str] | None = None,
        dt: float = 1.0,
        reference_rewards: Tensor | Sequence[float] | None = None,
    ) -> StepReport:
        """Process the responses of training step ``step`` (strictly increasing).

        Args:
            latents: (n, d) embeddings of the step's responses, n ≥ 2.
            rewards: (n,) rewards of those responses (enables POTENTIAL_REWARD_HACKING).
            texts: n response texts, carried by alerts for the reviewer.
            lr: the trainer's learning rate η_t at this step.
            sample_ids: n identifiers of the responses.
            dt: time since the previous observed step, in steps (e.g. the probe interval).
            reference_rewards: (n,) a second reward of the same responses that does not drive training (a
                held-out judge): enables the proxy − judge gap stream, which then is the reward evidence.
        """
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"steps must increase: got step {step} after step {self._last_step}")
        z = check_latents(latents, name="latents", min_n=2, dim=self._input_dim())
        n = z.shape[0]
        r = check_vector(torch.as_tensor(rewards) if rewards is not None else None, name="rewards", n=n)
        rr = check_vector(
            torch.as_tensor(reference_rewards) if reference_rewards is not None else None, name="reference_rewards", n=n
        )
        if rr is not None and r is None:
            raise ValueError("reference_rewards need rewards: pass the training rewards of the same responses too")
        lr = check_lr(lr)
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive finite number of steps, got {dt}")
        for name, seq in (("texts", texts), ("sample_ids", sample_ids)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for a batch of {n} latents; pass one per sample")
        norm = median_row_norm(z)
        ratio = self._scale.ratio(norm)
        if self._scale.is_outlier(ratio):
            return self._outlier_report(step, n, r, ratio)
        ev = self.evidence.observe(z, r, rr)
        if self.projection is None:
            need = frame_samples(self.config.fpe.k, z.shape[1])
            have = n + sum(int(b.shape[0]) for b in self._pending)
            if have < need:
                report = self._pending_report(step, z, r, norm, have, need)
                return self._with_evidence(report, ev, None, r, texts, sample_ids)
            self._fit_frame(torch.cat([*self._pending, z]) if self._pending else z)
            self._flush_pending()
        assert self.projection is not None and self._x_ref is not None
        x = self.projection.transform(z, min_n=2)

        obs = observables_from_projected(
            list(self._prev),
            x,
            self.config.fpe,
            rewards=r,
            lr=lr,
            x_ref=self._x_ref,
            dt=dt,
            t=float(step),
            d0=self.D0 if self.D0 is not None else 1.0,
        )
        self._prev.append(x.detach())
        self._last_step = step
        self.steps_seen += 1
        self.steps_observed += 1
        scalars = dict(obs.scalars)
        degenerate = obs.degenerate
        if not degenerate:
            self._scale.accept(norm)
        notes: tuple[str, ...] = ()
        if degenerate:  # bounded values, scored against the noise bands but kept out of them
            scalars["degenerate"] = 1.0
            scalars["batch_rank"] = float(obs.rank)
            notes = (degenerate_note(obs.rank, x.shape[1]),)
        self.history.append((step, scalars))

        detection: Detection | None = None
        recalibrated: tuple[tuple[int, dict[str, float]], ...] = ()
        if self.D0 is None:  # D0="auto": calibrated at the last warm-up step, then the detector catches up
            self._calibration.append((step, obs.parts, scalars))
            if degenerate:
                self._uncounted.add(step)
            if self.steps_observed >= self.config.warmup_steps:
                entries = [(s, sc) for s, _, sc in self._calibration]
                detection = self._finish_calibration()  # rescales the entries' dicts in place
                recalibrated = tuple((s, dict(sc)) for s, sc in entries)
        elif degenerate:
            detection = self.detector.score(step, scalars)
        else:
            detection = self.detector.update(step, scalars)
        warming = self.steps_observed <= self.config.warmup_steps
        rise = self._reward_rise(scalars)
        cluster = self._cluster_size(obs) if not warming else 0
        seed_reason = None if warming or r is None else seed_rule_reason(self.config, scalars)
        if not degenerate:
            self._remember(scalars)
        report = StepReport(
            step=step,
            scalars=dict(scalars),  # a snapshot: the calibration later rescales the history's dicts
            div=obs.div.detach().to("cpu", torch.float32),
            detection=detection,
            alert=None,
            top_samples=(),
            recommendation=RECOMMENDATIONS["none"],
            warming_up=warming,
            cluster_size=cluster,
            reward_rise_z=rise,
            recalibrated=recalibrated,
            degenerate=degenerate,
            notes=notes,
        )
        return self._with_evidence(report, ev, seed_reason, r, texts, sample_ids)

    def _with_evidence(
        self,
        report: StepReport,
        ev: EvidenceStep,
        seed_reason: str | None,
        rewards: Tensor | None,
        texts: Sequence[str] | None,
        sample_ids: Sequence[str] | None,
    ) -> StepReport:
        """The report with the step's evidence, its top samples and the alert the evidence (or the seed rule)
        raises, if any."""
        cfg = self.config
        kind, crossings = decide(
            report.step, ev, self._latches, cfg.evidence.pairing_steps, cfg.cooldown_steps, rewards is not None
        )
        reasons = evidence_reasons(ev, cfg.evidence.alpha, crossings if kind == "POTENTIAL_REWARD_HACKING" else {})
        if seed_reason is not None and kind is None:
            last = self._latches.last_alert.get("POTENTIAL_REWARD_HACKING")
            if last is None or report.step - last > cfg.cooldown_steps:
                kind = "POTENTIAL_REWARD_HACKING"
                self._latches.last_alert[kind] = report.step
        if seed_reason is not None:
            reasons.append(seed_reason)
        by_reward = ev.reward_scores if kind == "POTENTIAL_REWARD_HACKING" else None
        samples = top_samples(cfg.top_k, ev.witness, report.div, rewards, texts, sample_ids, by_reward)
        alert: Alert | None = None
        if kind is not None:
            alert = make_alert(kind, report.step, report.scalars, reasons, samples)
            self.alerts.append(alert)
        return replace(
            report,
            alert=alert,
            top_samples=samples,
            recommendation=RECOMMENDATIONS[kind or "none"],
            evidence=dict(ev.log_values),
            evidence_threshold=ev.log_threshold,
            witness=ev.witness,
        )

    def rebaseline(self) -> None:
        """A reviewer dismissed an alert as benign: the run's current behaviour becomes the evidence streams'
        baseline (``EvidenceTracker.rebaseline``), so the same change does not alert again."""
        self.evidence.rebaseline()
        self._latches.embedding = self._latches.reward = None

    def _outlier_report(self, step: int, n: int, rewards: Tensor | None, ratio: float) -> StepReport:
        """A step far outside the run's scale: the state is left untouched but the step number."""
        self._last_step = step
        report = outlier_report(step, n, rewards, ratio, self.config.outlier_factor, self.warming_up)
        self.history.append((step, dict(report.scalars)))
        return report

    def _pending_report(
        self, step: int, z: Tensor, rewards: Tensor | None, norm: float, have: int, need: int
    ) -> StepReport:
        """A step seen before the frame exists: its latents are kept for the frame."""
        self._pending.append(z.detach())
        self._scale.accept(norm)
        self._last_step = step
        self.steps_seen += 1
        report = pending_report(step, z.shape[0], rewards, have, need)
        self.history.append((step, dict(report.scalars)))
        self._remember(report.scalars)
        return report

    # ------------------------------------------------------------------ calibration on a safe run
    def calibrate(self, reports: Sequence[StepReport], false_alarm_rate: float = 0.001) -> Thresholds:
        """Set the seed rule's and the streaming detector's thresholds from the reports of a known-safe run at a
        target false-alarm rate (:func:`~monitor.rlhf.calibration.calibrated_config`); applies and returns them.
        The e-detectors need no calibration: their false-alarm level is ``config.evidence.alpha``."""
        self.config = calibrated_config(self.config, reports, false_alarm_rate)
        self.detector.config.z_threshold = self.config.detector.z_threshold
        return self.thresholds

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything a restarted monitor needs: ``{"meta": JSON-serialisable dict, "tensors": {...}}``.

        The tensors (projection, reference, previous projected batches, the raw batches kept while the frame
        is pending) suit safetensors; the meta holds the config, D₀, detector state, trailing windows, the
        latent scale and cool-downs. The step history and the alerts are not part of the state (storage
        keeps them).
        """
        evidence_state = self.evidence.state_dict()
        meta = {
            "version": _STATE_VERSION,
            "config": self.config.to_dict(),
            "projection": {"explained": self.projection.explained} if self.projection is not None else None,
            "D0": self.D0,
            "calibration": [[step, asdict(parts), scalars] for step, parts, scalars in self._calibration],
            "detector": self.detector.state_dict(),
            "div_q99": list(self._div_q99),
            "reward_mean": list(self._reward_mean),
            "latches": self._latches.to_dict(),
            "evidence": evidence_state["meta"],
            "last_step": self._last_step,
            "steps_seen": self.steps_seen,
            "steps_observed": self.steps_observed,
            "n_prev": len(self._prev),
            "latent_scale": list(self._scale.norms),
            "uncounted": sorted(self._uncounted),
            "n_pending": len(self._pending),
        }
        tensors: dict[str, Tensor] = {f"prev_{i}": x.detach().cpu() for i, x in enumerate(self._prev)}
        tensors.update({f"pending_{i}": z.detach().cpu() for i, z in enumerate(self._pending)})
        tensors.update({f"evidence_{k}": v.detach().cpu() for k, v in evidence_state["tensors"].items()})
        if self._x_ref is not None:
            tensors["x_ref"] = self._x_ref.detach().cpu()
        if self.projection is not None:  # tensors, not JSON: d × k floats would dominate the meta
            tensors["projection_mean"] = self.projection.mean.detach().cpu()
            tensors["projection_components"] = self.projection.components.detach().cpu()
            tensors["projection_variances"] = self.projection.variances.detach().cpu()
        return {"meta": meta, "tensors": tensors}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> RLHFMonitor:
        """A monitor that continues exactly where the one that produced ``state`` stopped.

        A version-1 state (before the latent scale and the pending frame) continues with an empty latent
        scale: the next accepted step sets it.
        """
        meta, tensors = state["meta"], state["tensors"]
        if meta.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"unsupported monitor state version {meta.get('version')!r}; expected one of {_READABLE_VERSIONS}"
            )
        monitor = cls(MonitorConfig.from_dict(meta["config"]))
        if meta["projection"] is not None:
            monitor.projection = Projection(
                mean=tensors["projection_mean"].to(device=device, dtype=torch.float64),
                components=tensors["projection_components"].to(device=device, dtype=torch.float64),
                variances=tensors["projection_variances"].to(device=device, dtype=torch.float64),
                explained=float(meta["projection"]["explained"]),
            )
            monitor._x_ref = tensors["x_ref"].to(device)
        monitor.D0 = meta["D0"]
        monitor._calibration = [(int(s), FlowParts(**p), dict(sc)) for s, p, sc in meta["calibration"]]
        monitor.detector.load_state_dict(meta["detector"])
        monitor._div_q99.extend(meta["div_q99"])
        monitor._reward_mean.extend(meta["reward_mean"])
        if "latches" in meta:
            monitor._latches = Latches.from_dict(meta["latches"])
        else:  # version 1-2: cool-downs only; the evidence streams start afresh
            monitor._latches = Latches(last_alert={str(k): int(v) for k, v in meta["last_alert"].items()})
        if "evidence" in meta:
            prefix = "evidence_"
            ev_tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            monitor.evidence = EvidenceTracker.from_state_dict({"meta": meta["evidence"], "tensors": ev_tensors})
        monitor._last_step = meta["last_step"]
        monitor.steps_seen = int(meta["steps_seen"])
        monitor.steps_observed = int(meta.get("steps_observed", monitor.steps_seen))
        for i in range(int(meta["n_prev"])):
            monitor._prev.append(tensors[f"prev_{i}"].to(device))
        monitor._scale = LatentScale(monitor.config.outlier_factor, [float(v) for v in meta.get("latent_scale", [])])
        monitor._uncounted = {int(v) for v in meta.get("uncounted", [])}
        monitor._pending = [tensors[f"pending_{i}"].to(device) for i in range(int(meta.get("n_pending", 0)))]
        monitor.history = [(s, sc) for s, _, sc in monitor._calibration]
        return monitor

    # ------------------------------------------------------------------ internals
    def _finish_calibration(self) -> Detection | None:
        """D₀ = median over the warm-up of ‖μ‖/‖B s‖ (μ: model drift, else the velocity v).

        Rescales the warm-up steps' D₀-dependent scalars exactly, feeds them to the detector in order and
        returns the detector's verdict on the last one. Degenerate steps neither vote nor enter the
        detector's bands (they are scored only).
        """
        ratios = []
        for step, parts, _ in self._calibration:
            if step in self._uncounted:  # a degenerate step: its ratio is set by the floors
                continue
            drive = parts.mu_sq if math.isfinite(parts.mu_sq) else parts.v_sq
            if math.isfinite(drive) and parts.Bs_sq > 0 and parts.decay > 0:
                ratios.append(math.sqrt(drive / parts.Bs_sq) / parts.decay)
        positive = sorted(r for r in ratios if r > 0)
        self.D0 = positive[len(positive) // 2] if positive else 1.0
        detection: Detection | None = None
        for step, parts, scalars in self._calibration:
            scalars.update(d0_dependent_scalars(parts, self.D0))
            if step in self._uncounted:
                detection = self.detector.score(step, scalars)
            else:
                detection = self.detector.update(step, scalars)
        self._calibration.clear()
        self._uncounted.clear()
        return detection

    def _remember(self, scalars: dict[str, float]) -> None:
        for name, store in (("div_q99", self._div_q99), ("reward_mean", self._reward_mean)):
            value = scalars.get(name, math.nan)
            if math.isfinite(value):
                store.append(value)

    def _cluster_size(self, obs: Observables) -> int:
        """Samples with δ_i < −cluster_factor × typical div_q99 (the run's noise band of δ)."""
        if not self._div_q99 or not bool(torch.isfinite(obs.div).all()):
            return 0
        typical, _ = robust_location_scale(list(self._div_q99))
        threshold = -self.config.cluster_factor * max(typical, 1e-12)
        count = int((obs.div < threshold).sum())
        minimum = max(3, math.ceil(self.config.cluster_min_fraction * obs.div.shape[0]))
        return count if count >= minimum else 0

    def _reward_rise(self, scalars: dict[str, float]) -> float:
        value = scalars.get("reward_mean", math.nan)
        if not math.isfinite(value) or len(self._reward_mean) < 3:
            return math.nan
        centre, scale = robust_location_scale(list(self._reward_mean))
        return (value - centre) / scale
