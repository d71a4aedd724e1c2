"""Claims: take the next step to process, keep the claim alive, take back a dead worker's claim.

The rules (order, heartbeats, fencing, clocks) are in :mod:`storage.steps`' docstring, with the rest of the
step lifecycle; this module holds :func:`claim_next_step`, :func:`heartbeat_step`, the :class:`Claim` token
and the fence that :func:`storage.complete_step` and :func:`storage.fail_step` write under.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from .models import Step
from .sql import RUNS_TABLE, STEPS_TABLE, begin_write, rowcount
from .types import utcnow

#: a claim whose heartbeat is older than this (seconds) is taken over (its worker died)
DEFAULT_CLAIM_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Claim:
    """One claim of a step, as plain values: what the fence compares (the step row, the worker, the attempt).

    Take it with :meth:`of` right after :func:`claim_next_step`: unlike the ORM row, it never reloads
    itself from the database (a rollback expires the row, and a reload would show another worker's claim),
    and another thread (the heartbeat) may hold it.
    """

    step_id: int
    run_id: int
    step: int
    worker_id: str
    attempt: int

    @classmethod
    def of(cls, row: Step) -> Claim:
        """The claim ``row`` holds (ValueError when it holds none)."""
        if row.claimed_by is None:
            raise ValueError(f"step {row.step} of run {row.run_id} is not claimed")
        return cls(row.id, row.run_id, row.step, row.claimed_by, row.attempts)


def claim_of(claim: Step | Claim) -> Claim:
    """``claim`` itself, or the claim a step row holds."""
    return claim if isinstance(claim, Claim) else Claim.of(claim)


def fence(claim: Claim) -> Any:
    """The WHERE clause of a write that must happen only under ``claim``: the step still ``processing``,
    claimed by the same worker, at the same attempt."""
    return and_(
        STEPS_TABLE.c.id == claim.step_id,
        STEPS_TABLE.c.status == "processing",
        STEPS_TABLE.c.claimed_by == claim.worker_id,
        STEPS_TABLE.c.attempts == claim.attempt,
    )


def count_failed(session: Session, run_ids: Iterable[int]) -> None:
    """Add the steps just marked ``failed`` (one run id per step) to their runs' ``steps_failed``."""
    for run_id, failed in sorted(Counter(run_ids).items()):
        session.execute(
            update(RUNS_TABLE).where(RUNS_TABLE.c.id == run_id).values(steps_failed=RUNS_TABLE.c.steps_failed + failed)
        )


def _reclaim_dead(
    session: Session, now: datetime, claim_timeout_s: float, stale_after_s: float, max_attempts: int
) -> None:
    """Take back the claims whose worker is taken for dead (see :mod:`storage.steps`)."""
    steps = STEPS_TABLE.c
    dead = and_(
        steps.status == "processing",
        or_(
            func.coalesce(steps.heartbeat_at, steps.claimed_at) < now - timedelta(seconds=claim_timeout_s),
            steps.claimed_at < now - timedelta(seconds=stale_after_s),
        ),
    )
    given_up = session.execute(
        update(STEPS_TABLE)
        .where(dead, steps.attempts >= max_attempts)
        .values(
            status="failed",
            processed_at=now,
            error=f"gave up after {max_attempts} claims: the worker died or timed out each time",
        )
        .returning(steps.run_id)
    ).scalars()
    count_failed(session, list(given_up))
    session.execute(
        update(STEPS_TABLE).where(dead).values(status="pending", claimed_by=None, claimed_at=None, heartbeat_at=None)
    )


def blocking(row: Step) -> Any:
    """The condition "another step of ``row``'s run is processing, or pending with a smaller number": while
    it holds, ``row`` is not claimable (for a fresh statement's view of the table)."""
    steps = STEPS_TABLE.c
    return and_(
        steps.run_id == row.run_id,
        steps.id != row.id,
        or_(steps.status == "processing", and_(steps.status == "pending", steps.step < row.step)),
    )


def claim_next_step(
    session: Session,
    worker_id: str,
    stale_after_s: float = 600.0,
    max_attempts: int = 3,
    claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
) -> Step | None:
    """Claim the next step to process (status ``processing``, ``claimed_by=worker_id``), or None.

    See the module docstring for the order and for when another worker's claim is taken back
    (``claim_timeout_s``: its heartbeat stopped; ``stale_after_s``: claimed too long ago). PostgreSQL:
    ``SELECT … FOR UPDATE SKIP LOCKED`` lets several replicas claim concurrently; SQLite: the claim runs
    under the database's write lock. The returned step is committed as claimed; its payload is read with
    :func:`storage.load_payload`. Keep the claim alive with :func:`heartbeat_step`.
    """
    now = utcnow()
    other = aliased(Step)
    blocked = exists().where(
        other.run_id == Step.run_id,
        or_(other.status == "processing", and_(other.status == "pending", other.step < Step.step)),
    )
    candidate = (
        select(Step)
        .where(Step.status == "pending", ~blocked)
        .order_by(Step.received_at, Step.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Step)
        .execution_options(populate_existing=True)
    )
    begin_write(session)
    try:
        _reclaim_dead(session, now, claim_timeout_s, stale_after_s, max_attempts)
        while True:
            row = session.scalars(candidate).one_or_none()
            if row is None:
                session.commit()
                return None
            # the run's row lock orders this claim against ingest (storage.steps.ingest_step takes it too):
            # a smaller step of the run received meanwhile is pending now, and goes first
            session.execute(select(RUNS_TABLE.c.id).where(RUNS_TABLE.c.id == row.run_id).with_for_update())
            if session.scalar(select(exists().where(blocking(row)))):
                continue
            last_done = session.scalar(
                select(func.max(Step.step)).where(Step.run_id == row.run_id, Step.status == "done")
            )
            if last_done is not None and row.step < last_done:
                row.status = "failed"
                row.error = f"arrived after step {last_done} was processed"
                row.processed_at = now
                session.flush()
                count_failed(session, [row.run_id])
                continue
            row.status = "processing"
            row.claimed_by = worker_id
            row.claimed_at = now
            row.heartbeat_at = now
            row.attempts = row.attempts + 1
            session.commit()
            return row
    except BaseException:
        session.rollback()
        raise


def heartbeat_step(session: Session, claim: Step | Claim) -> bool:
    """Refresh the claim's ``heartbeat_at``: the worker is alive and still working on the step.

    Returns False (nothing written) when the claim was lost (the step was taken back, or is no longer
    ``processing``): the caller's results would be refused anyway.
    """
    token = claim_of(claim)
    begin_write(session)
    try:
        result = session.execute(update(STEPS_TABLE).where(fence(token)).values(heartbeat_at=utcnow()))
        ok = rowcount(result) == 1
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return ok
