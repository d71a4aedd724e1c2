"""What :meth:`RLHFMonitor.observe <monitor.rlhf.RLHFMonitor.observe>` returns: :class:`StepReport`, the
:class:`Alert` it may carry, the reviewer's view of a sample (:class:`SampleRef`), and the alert types with
their :data:`RECOMMENDATIONS`; :func:`with_recalibration`: a run's reports as a sidecar stores them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from torch import Tensor

from ..detect import Detection

AlertType = Literal["POTENTIAL_REWARD_HACKING", "PHASE_TRANSITION"]

RECOMMENDATIONS: dict[str, str] = {
    "POTENTIAL_REWARD_HACKING": (
        "Pause or checkpoint the run and review the listed responses: the policy's answers moved away from the "
        "run's recent past faster than ordinary learning, and the reward (or its gap to the judge) rose with "
        "them. Compare the proxy reward with a held-out or human judgement before continuing."
    ),
    "PHASE_TRANSITION": (
        "Review the listed responses: the distribution of answers moved away from the run's recent past faster "
        "than ordinary learning. Check whether the new behaviour is intended."
    ),
    "none": "Continue training.",
}


@dataclass(frozen=True)
class SampleRef:
    """One sample of a step, as shown to a reviewer.

    Attributes:
        index: position in the step's batch.
        div: relative flux divergence δ of the sample (NaN while the frame is pending).
        sample_id, text, reward: as sent with the step.
        witness: the sample's evidence score (``monitor.detect.witness``; larger: more like where the run is
            moving, less like its base window), or None before the evidence streams have a window.
    """

    index: int
    div: float
    sample_id: str | None = None
    text: str | None = None
    reward: float | None = None
    witness: float | None = None


@dataclass(frozen=True)
class Alert:
    """An alert raised at a step: what fired, on which numbers, and the samples that drove it."""

    type: AlertType
    step: int
    scalars: dict[str, float]
    reasons: tuple[str, ...]
    top_samples: tuple[SampleRef, ...]
    recommendation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepReport:
    """What :meth:`RLHFMonitor.observe` returns for one step.

    Attributes:
        step: the training step.
        scalars: the observables (see ``monitor.fpe.SCALAR_NAMES``); during the warm-up with
            ``D0="auto"`` the D₀-dependent ones use D₀ = 1 (``monitor.history`` holds them rescaled). A
            flagged step also carries its flags as entries (``outlier``, ``degenerate``, ``frame_pending``
            = 1.0, with ``latent_scale_log10`` or ``batch_rank``); a normal step has exactly SCALAR_NAMES.
        div: (n,) relative flux divergence δ per sample (CPU, float32; NaN at the first step).
        detection: the streaming detector's verdict (None during the warm-up).
        alert: the alert raised at this step, or None.
        top_samples: the ``top_k`` samples by witness score (by |δ| before the evidence streams have a
            window), with their ids, texts and rewards.
        recommendation: what to do.
        warming_up: True while no alert can be raised yet.
        cluster_size: number of samples with strongly negative δ (mass arriving).
        reward_rise_z: robust z of reward_mean against its trailing window (NaN without rewards).
        recalibrated: at the step that finishes the D₀ calibration, the warm-up steps' scalars rescaled
            to the calibrated D₀ ``((step, scalars), ...)``, for callers that stored the earlier values.
        outlier: the step's latents are far outside the run's scale (``MonitorConfig.outlier_factor``): its
            observables are NaN, it raises no alert and it left the monitor's state untouched.
            ``scalars`` then also holds ``outlier = 1.0`` and ``latent_scale_log10`` (log10 of the step's
            median row norm over the run's scale; NaN for an all-zero batch).
        degenerate: the batch spans fewer than k directions of the frame (identical answers, fewer than
            k + 1 distinct ones): finite values set by the floors (docs/estimators.md §8), kept out of the
            noise bands and the D₀ calibration (it is still scored against them, and may alert).
            ``scalars`` then also holds ``degenerate = 1.0`` and ``batch_rank``.
        frame_pending: the run has not yet seen the 2k + 2 samples its frame needs: the step is kept for
            the frame and its observables are NaN (``scalars["frame_pending"] = 1.0``).
        notes: why a flag was set, for a person (empty on a normal step).
        evidence: natural-log e-detector statistics after this step (``monitor.detect.streams``): one per
            computed stream and the combined ``"embedding"`` and ``"reward"`` evidence; empty for an outlier.
        evidence_threshold: ``log(1/alpha)``: a combined evidence at or above it has crossed.
        witness: (n,) float32 evidence score per sample (CPU), or None.
    """

    step: int
    scalars: dict[str, float]
    div: Tensor
    detection: Detection | None
    alert: Alert | None
    top_samples: tuple[SampleRef, ...]
    recommendation: str
    warming_up: bool
    cluster_size: int = 0
    reward_rise_z: float = math.nan
    recalibrated: tuple[tuple[int, dict[str, float]], ...] = ()
    outlier: bool = False
    degenerate: bool = False
    frame_pending: bool = False
    notes: tuple[str, ...] = ()
    evidence: dict[str, float] = field(default_factory=dict)
    evidence_threshold: float = math.nan
    witness: Tensor | None = None


def with_recalibration(reports: Iterable[StepReport]) -> list[StepReport]:
    """The reports of one run (in the order observed) with their scalars as the sidecar stores them: a report's
    ``recalibrated`` entries (the warm-up steps rescaled to the calibrated D₀, at the step that finishes the
    calibration) replace the scalars of the earlier reports they name, and of that step itself, exactly as
    ``storage.complete_step(rescaled=report.recalibrated)`` replaces the stored rows. Offline tools
    (``fpmon analyze``) use it so that their warm-up rows agree with the sidecar's. Other fields are kept;
    the returned reports are copies (the inputs are not changed)."""
    out: list[StepReport] = []
    position: dict[int, int] = {}
    for report in reports:
        position[report.step] = len(out)
        out.append(report)
        for step, scalars in report.recalibrated:
            if step in position:
                i = position[step]
                out[i] = replace(out[i], scalars=dict(scalars))
    return out
