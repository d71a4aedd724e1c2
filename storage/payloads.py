"""Step payloads (``step_payloads``): the raw bytes a worker decodes, kept apart from the narrow ``steps`` rows.

:func:`storage.ingest_step` writes a step's payload with the step; a worker reads it after claiming the step
(:func:`load_payload`); the retention purge (:func:`purge_payloads`) drops old ones. The writes follow the
transaction rules of :mod:`storage.steps`.
"""

from __future__ import annotations

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from .models import Run, Step, StepBlob
from .sql import PAYLOADS_TABLE, STEPS_TABLE, begin_write, rowcount


def load_payload(session: Session, run_id: int, step: int) -> bytes | None:
    """The step's raw payload, or None (unknown step, or its payload was purged). Does not commit."""
    return session.scalar(select(StepBlob.payload).where(StepBlob.run_id == run_id, StepBlob.step == step))


def payload_steps(session: Session, run_id: int) -> list[int]:
    """The steps of a run whose payload is still stored, in order."""
    return list(session.scalars(select(StepBlob.step).where(StepBlob.run_id == run_id).order_by(StepBlob.step)))


def purge_payloads(session: Session, keep_last_steps: int) -> int:
    """Retention: drop the raw payload of processed (done or failed) steps older than each run's last
    ``keep_last_steps`` processed steps; returns how many payloads were dropped.

    The step rows, their sha256 (so retries are still recognised as duplicates), scalars and samples stay.
    Pending and processing steps are never touched.
    """
    if keep_last_steps < 0:
        raise ValueError(f"keep_last_steps must be >= 0, got {keep_last_steps}")
    finished = Step.status.in_(("done", "failed"))
    payloads, steps = PAYLOADS_TABLE.c, STEPS_TABLE.c
    purged = 0
    begin_write(session)
    try:
        for run_id in list(session.scalars(select(Run.id).order_by(Run.id))):
            threshold = session.scalar(
                select(Step.step)
                .where(Step.run_id == run_id, finished)
                .order_by(Step.step.desc())
                .offset(keep_last_steps)
                .limit(1)
            )
            if threshold is None:
                continue
            processed = exists().where(
                steps.run_id == payloads.run_id,
                steps.step == payloads.step,
                steps.status.in_(("done", "failed")),
            )
            result = session.execute(
                delete(PAYLOADS_TABLE).where(payloads.run_id == run_id, payloads.step <= threshold, processed)
            )
            purged += rowcount(result)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return purged
