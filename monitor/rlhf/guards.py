"""What keeps one bad step from poisoning a run's statistics (docs/estimators.md §8).

* :class:`LatentScale` — the run's robust latent scale, and the check that flags a step whose latents are
  far outside it (``MonitorConfig.outlier_factor``) as an *outlier*.
* :func:`frame_samples` — how many samples the run's frame waits for before it is fitted.
* :func:`outlier_report`, :func:`pending_report`, :func:`degenerate_note` — the reports of the steps
  without observables (NaN but the reward statistics) and the reviewer's notes.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

from ..fpe.observables import SCALAR_NAMES
from .report import RECOMMENDATIONS, StepReport

#: the run's latent scale is the median over this many last accepted steps
SCALE_WINDOW = 50


def median_row_norm(z: Tensor) -> float:
    """Median of the Euclidean norms of the rows of z (n×d), in float64 and without overflow.

    Each row is divided by its largest |entry| before squaring, so latents up to the float64 maximum give
    a finite norm (float32 latents at 1e30 would overflow a plain float32 norm).
    """
    z64 = z.detach().to(torch.float64)
    peak = z64.abs().amax(dim=1)
    safe = peak.clamp_min(torch.finfo(torch.float64).tiny)
    norms = torch.linalg.vector_norm(z64 / safe[:, None], dim=1) * peak
    return float(norms.median())


class LatentScale:
    """The run's robust latent scale: the median of the last :data:`SCALE_WINDOW` accepted steps' median
    row norms (positive ones only: an all-zero batch carries no scale).

    :meth:`ratio` compares a step's median row norm with it; the step is an outlier when the ratio is
    above ``factor`` or below ``1/factor``. Until the run has a positive scale nothing is an outlier.
    """

    def __init__(self, factor: float, norms: list[float] | None = None) -> None:
        self.factor = float(factor)
        self.norms: deque[float] = deque((float(v) for v in norms or ()), maxlen=SCALE_WINDOW)

    @property
    def scale(self) -> float:
        """The run's scale (latent units); NaN before any accepted step with a positive norm."""
        if not self.norms:
            return math.nan
        ordered = sorted(self.norms)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])

    def ratio(self, norm: float) -> float:
        """``norm`` over the run's scale (NaN while the run has none)."""
        scale = self.scale
        return norm / scale if math.isfinite(scale) else math.nan

    def is_outlier(self, ratio: float) -> bool:
        return math.isfinite(ratio) and (ratio > self.factor or ratio * self.factor < 1.0)

    def accept(self, norm: float) -> None:
        """Record the median row norm of an accepted step."""
        if math.isfinite(norm) and norm > 0:
            self.norms.append(norm)


def frame_samples(k: int, d: int) -> int:
    """Samples the run's frame waits for: 2k' + 2 with k' = min(k, d), enough for k' components and for
    ``Projection.fit_held_out``'s two halves."""
    return 2 * min(k, d) + 2


def blank_scalars(rewards: Tensor | None) -> dict[str, float]:
    """The scalars of a step without observables: NaN, except ``reward_mean``/``reward_std`` when given."""
    scalars = dict.fromkeys(SCALAR_NAMES, math.nan)
    if rewards is not None:
        scalars["reward_mean"] = float(rewards.mean())
        scalars["reward_std"] = float(rewards.std(correction=0))
    return scalars


def observable_free_report(
    step: int,
    n: int,
    scalars: dict[str, float],
    note: str,
    *,
    warming_up: bool,
    outlier: bool = False,
    frame_pending: bool = False,
) -> StepReport:
    """A step's report without observables: NaN δ for its n samples, no detection, no alert, one note, and
    its flag (``outlier`` or ``frame_pending``)."""
    return StepReport(
        step=step,
        scalars=scalars,
        div=torch.full((n,), math.nan),
        detection=None,
        alert=None,
        top_samples=(),
        recommendation=RECOMMENDATIONS["none"],
        warming_up=warming_up,
        notes=(note,),
        outlier=outlier,
        frame_pending=frame_pending,
    )


def outlier_report(
    step: int, n: int, rewards: Tensor | None, ratio: float, factor: float, warming_up: bool
) -> StepReport:
    """The report of an outlier step: NaN observables, ``outlier = 1`` and ``latent_scale_log10``, no alert."""
    scalars = blank_scalars(rewards)
    scalars["outlier"] = 1.0
    scalars["latent_scale_log10"] = math.log10(ratio) if ratio > 0 else math.nan
    note = (
        f"outlier: the median latent row norm is {ratio:.3g} times the run's scale (outlier_factor {factor:g}); "
        "the step is left out of the run's state: check the embedder"
    )
    return observable_free_report(step, n, scalars, note, warming_up=warming_up, outlier=True)


def pending_report(step: int, n: int, rewards: Tensor | None, have: int, need: int) -> StepReport:
    """The report of a step seen before the frame exists: NaN observables and ``frame_pending = 1``."""
    scalars = blank_scalars(rewards)
    scalars["frame_pending"] = 1.0
    note = f"frame pending: {have} of the {need} samples (2k + 2) the run's frame is fitted on"
    return observable_free_report(step, n, scalars, note, warming_up=True, frame_pending=True)


def degenerate_note(rank: int, k: int) -> str:
    return (
        f"degenerate batch: rank {rank} < k = {k} in the run's frame (identical or too few distinct answers); "
        "values set by the floors, kept out of the noise bands and the D0 calibration"
    )
