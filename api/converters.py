"""ORM rows → API schemas: one function per response object, shared by every route."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

import storage
from monitor.processing import alert_to_dict
from storage.types import utcnow

from .schemas import AlertOut, ReviewOut, RunOut, SampleOut


def run_out(
    run: storage.Run, alert_counts: dict[str, int], live_window_s: float, now: datetime | None = None
) -> RunOut:
    """The run's API form; ``alert_counts`` = its alerts per status; ``status`` is ``live`` when its last step
    arrived less than ``live_window_s`` ago; ``verdict`` follows :func:`storage.run_verdict`."""
    now = now or utcnow()
    live = run.last_step_at is not None and (now - run.last_step_at).total_seconds() < live_window_s
    return RunOut(
        run_id=run.id,
        name=run.name,
        latent_dim=run.latent_dim,
        config=run.config,
        created_at=run.created_at,
        D0=run.D0,
        steps_received=run.steps_received,
        steps_processed=run.steps_processed,
        last_step_at=run.last_step_at,
        open_alerts=alert_counts.get("open", 0),
        status="live" if live else "idle",
        rebaseline_pending=run.rebaseline_review_id is not None,
        latest_step=run.latest_step,
        latest_scalars=run.latest_scalars,
        verdict=storage.run_verdict(alert_counts),
        alert_counts=alert_counts,
    )


def runs_out(session: Session, runs: list[storage.Run], live_window_s: float) -> list[RunOut]:
    """Several runs' API forms, with their alert counts per status and verdicts (one query)."""
    counts = storage.alert_status_counts(session, [r.id for r in runs])
    return [run_out(r, counts[r.id], live_window_s) for r in runs]


def sample_out(sample: storage.StepSample) -> SampleOut:
    """One stored response of a step."""
    return SampleOut(
        index=sample.index,
        sample_id=sample.sample_id,
        div=sample.div,
        reward=sample.reward,
        text=sample.text,
        x=sample.x,
        y=sample.y,
        prompt=sample.prompt,
        witness=sample.witness,
    )


def alert_out(session: Session, alert: storage.Alert, with_reviews: bool = False) -> AlertOut:
    """The alert as ``monitor.processing.alert_to_dict`` writes it (the in-process client's form too),
    with its reviews (oldest first) when ``with_reviews``."""
    reviews = (
        [
            ReviewOut(
                decision=r.decision,
                reviewer=r.reviewer,
                note=r.note,
                created_at=r.created_at,
                rebaseline=r.rebaseline,
                rebaseline_step=r.rebaseline_step,
            )
            for r in storage.list_reviews(session, alert.id)
        ]
        if with_reviews
        else []
    )
    return AlertOut.model_validate({**alert_to_dict(alert), "reviews": reviews})
