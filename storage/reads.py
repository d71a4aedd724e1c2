"""Reads of a run's processed results, for the API's charts and review pages.

Scalar and evidence history (:func:`metrics`, decimated to at most ``max_points`` rows; the run's evidence
threshold, :func:`evidence_threshold`), a step's samples (by |δ|, by witness score or by index, all or some,
or as map points) and the run's reference step. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Step, StepEvidence, StepSample


def _downsample_indices(count: int, max_points: int) -> list[int]:
    """Ranks floor(i·(count−1)/(max_points−1)), i = 0…max_points−1: first and last kept, evenly spaced."""
    if count <= max_points:
        return list(range(count))
    return [i * (count - 1) // (max_points - 1) for i in range(max_points)]


def metrics(
    session: Session,
    run_id: int,
    names: Sequence[str] | None = None,
    start: int | None = None,
    end: int | None = None,
    max_points: int = 1000,
    evidence: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Scalar history of a run: ``[{"step": int, "scalars": {name: float | None}, "extra": {name: float | None},
    "transition": bool | None}]``; ``extra`` holds the step's extra scalars (sent by the trainer with the step,
    ``Step.extra_scalars``; ``{}`` without any), never filtered by ``names``.

    One row per processed (``done``) step with ``start <= step <= end``. With more than ``max_points``
    such steps, the rows kept are the ones at ranks floor(i·(N−1)/(max_points−1)) for i = 0…max_points−1:
    the first and the last step always, evenly spaced (by rank) in between — plain decimation, no
    averaging, so every value shown is a real step's value. ``names`` selects scalars (a missing one is
    None); None returns them all. With ``evidence`` (names of evidence series, ``step_evidence.stream``) each
    row also has ``"evidence": {name: log_value | None}`` (None: no finite value stored at that step).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    conditions = [Step.run_id == run_id, Step.status == "done"]
    if start is not None:
        conditions.append(Step.step >= start)
    if end is not None:
        conditions.append(Step.step <= end)
    all_steps = list(session.scalars(select(Step.step).where(*conditions).order_by(Step.step)))
    chosen = [all_steps[i] for i in _downsample_indices(len(all_steps), max_points)]
    found: dict[int, tuple[dict[str, Any], dict[str, Any], bool | None]] = {}
    for lo in range(0, len(chosen), 500):
        chunk = chosen[lo : lo + 500]
        stmt = select(Step.step, Step.scalars, Step.extra_scalars, Step.transition).where(
            Step.run_id == run_id, Step.step.in_(chunk)
        )
        for step, scalars, extra, transition in session.execute(stmt):
            found[step] = (scalars or {}, extra or {}, transition)
    logs = _evidence_of(session, run_id, chosen, evidence) if evidence else {}
    rows = []
    for step in chosen:
        scalars, extra, transition = found[step]
        selected = dict(scalars) if names is None else {name: scalars.get(name) for name in names}
        row: dict[str, Any] = {"step": step, "scalars": selected, "extra": dict(extra), "transition": transition}
        if evidence is not None:
            at = logs.get(step, {})
            row["evidence"] = {name: at.get(name) for name in evidence}
        rows.append(row)
    return rows


def _evidence_of(
    session: Session, run_id: int, steps: Sequence[int], streams: Sequence[str]
) -> dict[int, dict[str, float]]:
    """``{step: {stream: log_value}}`` of the stored evidence of these steps and streams."""
    wanted = sorted(set(streams))
    out: dict[int, dict[str, float]] = {}
    for lo in range(0, len(steps), 500):
        stmt = select(StepEvidence.step, StepEvidence.stream, StepEvidence.log_value).where(
            StepEvidence.run_id == run_id,
            StepEvidence.step.in_(steps[lo : lo + 500]),
            StepEvidence.stream.in_(wanted),
        )
        for step, stream, value in session.execute(stmt):
            out.setdefault(step, {})[stream] = value
    return out


def evidence_threshold(session: Session, run_id: int) -> float | None:
    """The log alarm level ``log(1/alpha)`` stored with the run's latest evidence, or None before any."""
    latest = select(func.max(StepEvidence.step)).where(StepEvidence.run_id == run_id).scalar_subquery()
    stmt = select(StepEvidence.threshold).where(StepEvidence.run_id == run_id, StepEvidence.step == latest).limit(1)
    return session.scalar(stmt)


def step_samples(
    session: Session, run_id: int, step: int, order: str = "div", limit: int = 100, offset: int = 0
) -> list[StepSample]:
    """Samples of a processed step: ``order="div"`` by |δ| descending, ``"div_asc"`` by |δ| ascending (unknown
    δ last in both), ``"witness"`` by witness score descending, ``"witness_asc"`` ascending (unknown scores
    last in both, then by |δ| the same way), or ``"index"``."""
    stmt = select(StepSample).where(StepSample.run_id == run_id, StepSample.step == step)
    if order == "div":
        stmt = stmt.order_by(StepSample.abs_div.desc().nulls_last(), StepSample.index)
    elif order == "div_asc":
        stmt = stmt.order_by(StepSample.abs_div.asc().nulls_last(), StepSample.index)
    elif order == "witness":
        stmt = stmt.order_by(
            StepSample.witness.desc().nulls_last(), StepSample.abs_div.desc().nulls_last(), StepSample.index
        )
    elif order == "witness_asc":
        stmt = stmt.order_by(
            StepSample.witness.asc().nulls_last(), StepSample.abs_div.asc().nulls_last(), StepSample.index
        )
    elif order == "index":
        stmt = stmt.order_by(StepSample.index)
    else:
        raise ValueError(f"order must be 'div', 'div_asc', 'witness', 'witness_asc' or 'index', got {order!r}")
    return list(session.scalars(stmt.limit(limit).offset(offset)))


def samples_at(session: Session, run_id: int, step: int, indices: Sequence[int]) -> list[StepSample]:
    """The samples of a step with these indices, by index (unknown indices are absent)."""
    wanted = sorted({int(i) for i in indices})
    found: list[StepSample] = []
    for lo in range(0, len(wanted), 500):
        chunk = wanted[lo : lo + 500]
        stmt = select(StepSample).where(
            StepSample.run_id == run_id, StepSample.step == step, StepSample.index.in_(chunk)
        )
        found.extend(session.scalars(stmt))
    return sorted(found, key=lambda s: s.index)


def sample_count(session: Session, run_id: int, step: int) -> int:
    """How many samples a processed step stored."""
    stmt = select(func.count()).where(StepSample.run_id == run_id, StepSample.step == step)
    return int(session.scalar(stmt) or 0)


#: characters of a response kept with each map point (the hover label of the review page's map)
POINT_TEXT_CHARS = 240

PointRow = tuple[int, float | None, float | None, float | None, str | None]


def sample_points(session: Session, run_id: int, step: int, indices: Sequence[int] | None = None) -> list[PointRow]:
    """``(index, x, y, div, text[:POINT_TEXT_CHARS])`` of a step's samples (all, or those ``indices``), by index."""
    stmt = select(
        StepSample.index, StepSample.x, StepSample.y, StepSample.div, func.substr(StepSample.text, 1, POINT_TEXT_CHARS)
    ).where(StepSample.run_id == run_id, StepSample.step == step)
    if indices is None:
        return [tuple(row) for row in session.execute(stmt.order_by(StepSample.index))]
    wanted = sorted({int(i) for i in indices})
    rows: list[PointRow] = []
    for lo in range(0, len(wanted), 500):
        chunk = stmt.where(StepSample.index.in_(wanted[lo : lo + 500]))
        rows.extend(tuple(row) for row in session.execute(chunk))
    return sorted(rows, key=lambda r: r[0])


def first_processed_step(session: Session, run_id: int) -> int | None:
    """The run's reference step: its first processed (``done``) step, or None."""
    return session.scalar(select(func.min(Step.step)).where(Step.run_id == run_id, Step.status == "done"))


def adjacent_steps(session: Session, run_id: int, step: int) -> tuple[int | None, int | None]:
    """The run's processed (``done``) steps just before and just after ``step`` (None where there is none):
    what the review page's ←/→ keys step through."""
    done = (Step.run_id == run_id, Step.status == "done")
    before = session.scalar(select(func.max(Step.step)).where(*done, Step.step < step))
    after = session.scalar(select(func.min(Step.step)).where(*done, Step.step > step))
    return before, after
