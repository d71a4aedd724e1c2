"""Settings of :class:`~monitor.rlhf.RLHFMonitor`: :class:`MonitorConfig` and the alert :class:`Thresholds`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..detect import StreamingConfig
from ..detect.streams import EvidenceConfig
from ..fpe.config import FPEConfig


@dataclass
class MonitorConfig:
    """Settings of :class:`RLHFMonitor` (defaults documented in docs/estimators.md and DESIGN.md §3.5).

    Attributes:
        fpe: estimator settings; ``fpe.k`` is the projection's dimension (clipped to d; the frame waits
            for 2k + 2 samples, pooling the first steps if needed, see docs/estimators.md §8),
            ``fpe.pool_window`` the number of previous batches pooled, ``fpe.D0="auto"`` calibrates D₀.
        evidence: the e-detectors that raise alerts (``monitor.detect.streams``): streams, α (default 1e-3),
            windows. They are armed from the run's third step (two earlier steps give the first base window
            and direction); no warm-up.
        warmup_steps: D₀ (``"auto"``) is calibrated over these steps, and the streaming detector's noise band
            (the transition marks, ``report.detection``) starts from them; ``warming_up`` is True meanwhile.
            Alerts do not wait for it.
        seed_rule: also raise POTENTIAL_REWARD_HACKING (after the warm-up) on the seed's absolute rule
            (C < ``C_alert`` and div_max > ``div_alert``, seed §11.1). Off by default: on the reward-hacking benchmark
            (docs/validation.md §1) it fired as often on control runs as on hackable ones (26 false alarms
            per 1000 control steps), because C drifts down in any run whose reward saturates and one odd
            answer in a batch is enough for div_max > 1.
        C_alert: the seed's consolidation threshold (C below it, with div_max above ``div_alert``; used when
            ``seed_rule`` is on). With D₀ calibrated, C is about 1 at the start of the run.
        div_alert: the seed's flux-divergence threshold on div_max (nats per step; with ``seed_rule``).
        cluster_factor: a sample is "arriving" when δ_i < −cluster_factor × the run's typical div_q99
            (median over the trailing window), i.e. far outside the stationary noise of δ
            (``report.cluster_size``, a diagnostic).
        cluster_min_fraction: a cluster needs at least this fraction of the batch (and 3 samples).
        reward_rise_z: the reward jump reported as ``report.reward_rise_z`` (robust z of reward_mean against
            its trailing window) is compared with this by :meth:`RLHFMonitor.calibrate` (a diagnostic).
        top_k: how many samples (largest witness score) an alert carries.
        cooldown_steps: after an alert, the same alert type is not raised again for this many steps.
        detector: the streaming detector's settings.
        max_reference_samples: the reference batch kept for W2_ref/KL_ref is subsampled to this many.
        held_out_reference: fit the frame's directions on half of the reference batch and its mean and
            whitening on the other half, which is kept as the reference sample (``Projection.fit_held_out``:
            removes the in-sample bias of the frame, see ``benchmarks/reference_frame.py``). Used when the
            reference batch has at least ``2(k + 1)`` and 32 samples.
        outlier_factor: a step whose median latent row norm is more than ``outlier_factor`` times the
            run's scale, or less than 1/``outlier_factor`` of it, is an *outlier*: it gets a report flagged
            ``outlier`` (NaN observables, no alert) and leaves no trace in the run's state (pooled window,
            noise bands, D₀ calibration, reference, warm-up count), so the next step computes exactly what
            it would have computed without it. The run's scale is the median of the median row norms of
            its last :data:`~monitor.rlhf.monitor.SCALE_WINDOW` accepted steps (the first step is always
            accepted). Default 1e6: a real run's norms drift by a few times at most, a unit or dtype bug
            (latents at 1e30, all-zero rows) by many orders of magnitude. ``inf`` turns the check off.
    """

    fpe: FPEConfig = field(default_factory=FPEConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    warmup_steps: int = 10
    seed_rule: bool = False
    C_alert: float = 0.3
    div_alert: float = 1.0
    cluster_factor: float = 2.0
    cluster_min_fraction: float = 0.05
    reward_rise_z: float = 4.0
    top_k: int = 8
    cooldown_steps: int = 10
    detector: StreamingConfig = field(default_factory=StreamingConfig)
    max_reference_samples: int = 2048
    held_out_reference: bool = True
    outlier_factor: float = 1e6

    def __post_init__(self) -> None:
        if not self.outlier_factor > 1:
            raise ValueError(f"MonitorConfig.outlier_factor must be > 1 (inf: no check), got {self.outlier_factor}")
        if self.warmup_steps < 3:
            raise ValueError(f"MonitorConfig.warmup_steps must be >= 3, got {self.warmup_steps}")
        if self.top_k < 1:
            raise ValueError(f"MonitorConfig.top_k must be >= 1, got {self.top_k}")
        if self.cooldown_steps < 0:
            raise ValueError(f"MonitorConfig.cooldown_steps must be >= 0, got {self.cooldown_steps}")
        if not 0 < self.cluster_min_fraction < 1:
            raise ValueError(f"MonitorConfig.cluster_min_fraction must be in (0, 1), got {self.cluster_min_fraction}")

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON form (nested ``fpe`` and ``detector``; ``outlier_factor = inf`` written as ``None``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fpe"] = self.fpe.to_dict()
        out["detector"] = asdict(self.detector)
        out["evidence"] = asdict(self.evidence)
        if math.isinf(self.outlier_factor):
            out["outlier_factor"] = None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonitorConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown MonitorConfig keys {sorted(unknown)}; valid keys are {sorted(valid)}")
        values = dict(data)
        if isinstance(values.get("fpe"), dict):
            values["fpe"] = FPEConfig.from_dict(values["fpe"])
        if isinstance(values.get("evidence"), dict):
            values["evidence"] = EvidenceConfig.from_dict(values["evidence"])
        if isinstance(values.get("detector"), dict):
            values["detector"] = StreamingConfig(**values["detector"])
        if "outlier_factor" in values and values["outlier_factor"] is None:  # no check (inf, see to_dict)
            values["outlier_factor"] = math.inf
        return cls(**values)


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; :meth:`RLHFMonitor.calibrate` sets them from a known-safe run."""

    C_alert: float
    div_alert: float
    z_threshold: float
    reward_rise_z: float
