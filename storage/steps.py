"""The step lifecycle: receive a step, claim it, write its results (or its failure) and the run's monitor state.

Holds :func:`ingest_step` (API side), :func:`claim_next_step`, :func:`complete_step`, :func:`fail_step` and
:func:`load_run_state` (worker side), step reads (:func:`get_step`, :func:`list_steps`,
:func:`step_status_counts`) and upkeep (:func:`purge_payloads`, :func:`counts`).

Transactions: every function that writes commits its own unit of work before returning, and rolls back
(leaving nothing written) when it raises — do not wrap them in ``with session.begin():``. Read functions
do not commit. On SQLite, writes open their transaction with ``BEGIN IMMEDIATE`` (a read-only transaction
left open by earlier reads on the session is committed first), so concurrent writers queue on SQLite's
single write lock instead of failing with "database is locked". (The same rules hold for the writes in
:mod:`storage.runs` and :mod:`storage.alerts`.)

Step processing order (the rule :func:`claim_next_step` implements):

* The steps of one run are processed one at a time, in increasing step number **among the steps received
  so far**: a pending step is claimable only if no other step of its run is ``processing`` and no pending
  step of its run has a smaller number. A step never waits for a step that has not been received (a client
  may skip or lose steps).
* A step that arrives after a later step of its run was already processed (its number is below the run's
  largest ``done`` step) cannot be fed to the monitor, whose state only moves forward
  (``RLHFMonitor.observe`` requires increasing steps): it is marked ``failed`` with the error
  ``"arrived after step N was processed"`` when a worker reaches it, and the run's state is untouched.
* Across runs, the oldest received claimable step goes first.
* A step left ``processing`` longer than ``stale_after_s`` (its worker died) goes back to ``pending``;
  after ``max_attempts`` claims it is marked ``failed``. The dead worker's late :func:`complete_step` or
  :func:`fail_step` is refused (:class:`LostClaim`), so a step's results are written once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased, undefer
from sqlalchemy.orm.attributes import set_committed_value

from .errors import LostClaim, NotFound, StepConflict
from .models import STEP_STATUS_VALUES, Base, Run, RunState, Step
from .sql import (
    ALERTS_TABLE,
    RUNS_TABLE,
    SAMPLES_TABLE,
    STATES_TABLE,
    STEPS_TABLE,
    begin_write,
    bulk_insert,
    float_or_none,
    insert_ignore,
    rowcount,
)
from .state_codec import tag_floats, untag_floats
from .types import finite_json, utcnow

STEP_STATUSES: tuple[str, ...] = STEP_STATUS_VALUES
MAX_ERROR_CHARS = 4000

#: the columns of a stored sample row, in the order :func:`complete_step` writes them
_SAMPLE_COLUMNS = (
    "run_id",
    "step",
    "sample_index",
    "sample_id",
    "div",
    "abs_div",
    "reward",
    "text",
    "x",
    "y",
    "prompt",
)


@dataclass(frozen=True)
class StoredState:
    """A run's persisted monitor state (see :mod:`storage.state_codec` to turn it back into tensors)."""

    run_id: int
    meta: dict[str, Any]
    tensors: bytes
    last_processed_step: int | None
    updated_at: datetime


# ---------------------------------------------------------------------------------------------- steps
def ingest_step(
    session: Session, run: Run | int, step: int, payload: bytes, n: int, digest: str | None = None
) -> Literal["queued", "duplicate"]:
    """Store a received step as ``pending``; idempotent on (run, step).

    Returns ``"queued"`` for a new step (the run's ``steps_received`` goes up by one), ``"duplicate"`` when
    the same content was already received (nothing is written). Raises :class:`StepConflict` when different
    content was received for this (run, step), :class:`NotFound` for an unknown run id. The content is
    identified by ``digest`` (the API passes ``monitor.stepfile.payload_digest``, which does not depend on
    the encoding's metadata order), else by the sha256 of the bytes.
    """
    run_id = run.id if isinstance(run, Run) else int(run)
    sha = digest if digest is not None else hashlib.sha256(payload).hexdigest()
    now = utcnow()
    begin_write(session)
    try:
        if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
            raise NotFound(f"run {run_id} does not exist; create it first (POST /v1/runs)")
        inserted = insert_ignore(
            session,
            STEPS_TABLE,
            {
                "run_id": run_id,
                "step": int(step),
                "status": "pending",
                "payload": payload,
                "payload_sha256": sha,
                "n": int(n),
                "received_at": now,
                "attempts": 0,
            },
            ["run_id", "step"],
        )
        if inserted:
            received = session.execute(
                update(RUNS_TABLE)
                .where(RUNS_TABLE.c.id == run_id)
                .values(steps_received=RUNS_TABLE.c.steps_received + 1, last_step_at=now)
                .returning(RUNS_TABLE.c.steps_received)
            ).scalar_one()
            session.commit()
            if isinstance(run, Run):  # keep the caller's object current without a reload
                set_committed_value(run, "steps_received", received)
                set_committed_value(run, "last_step_at", now)
            return "queued"
        existing = session.scalar(select(Step.payload_sha256).where(Step.run_id == run_id, Step.step == int(step)))
        session.rollback()
    except BaseException:
        session.rollback()
        raise
    if existing == sha:
        return "duplicate"
    raise StepConflict(
        f"step {step} of run {run_id} was already received with different content "
        f"(sha256 {existing} != {sha}); a step's payload cannot change"
    )


def get_step(session: Session, run_id: int, step: int) -> Step | None:
    """The step row (payload not loaded until accessed), or None."""
    stmt = select(Step).where(Step.run_id == run_id, Step.step == step)
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def list_steps(
    session: Session, run_id: int, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[Step]:
    """Steps of a run by step number (payloads not loaded), optionally of one status."""
    if status is not None and status not in STEP_STATUSES:
        raise ValueError(f"status must be one of {list(STEP_STATUSES)}, got {status!r}")
    stmt = select(Step).where(Step.run_id == run_id)
    if status is not None:
        stmt = stmt.where(Step.status == status)
    stmt = stmt.order_by(Step.step).limit(limit).offset(offset).execution_options(populate_existing=True)
    return list(session.scalars(stmt))


def step_status_counts(session: Session, run_id: int | None = None) -> dict[str, int]:
    """Number of steps per status (all of them present, zeros included), for one run or all runs."""
    stmt = select(Step.status, func.count()).group_by(Step.status)
    if run_id is not None:
        stmt = stmt.where(Step.run_id == run_id)
    found = {status: int(count) for status, count in session.execute(stmt)}
    return {status: found.get(status, 0) for status in STEP_STATUSES}


def _reclaim_stale(session: Session, now: datetime, stale_after_s: float, max_attempts: int) -> None:
    cutoff = now - timedelta(seconds=stale_after_s)
    stale = and_(STEPS_TABLE.c.status == "processing", STEPS_TABLE.c.claimed_at < cutoff)
    session.execute(
        update(STEPS_TABLE)
        .where(stale, STEPS_TABLE.c.attempts >= max_attempts)
        .values(
            status="failed",
            processed_at=now,
            error=f"gave up after {max_attempts} claims: the worker died or timed out each time",
        )
    )
    session.execute(update(STEPS_TABLE).where(stale).values(status="pending", claimed_by=None, claimed_at=None))


def claim_next_step(
    session: Session, worker_id: str, stale_after_s: float = 600.0, max_attempts: int = 3
) -> Step | None:
    """Claim the next step to process (status ``processing``, ``claimed_by=worker_id``), or None.

    See the module docstring for the order. PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` lets several
    replicas claim concurrently; SQLite: the claim runs under the database's write lock. The returned
    step has its payload loaded and is committed as claimed.
    """
    now = utcnow()
    other = aliased(Step)
    blocked = exists().where(
        other.run_id == Step.run_id,
        or_(other.status == "processing", and_(other.status == "pending", other.step < Step.step)),
    )
    candidate = (
        select(Step)
        .options(undefer(Step.payload))
        .where(Step.status == "pending", ~blocked)
        .order_by(Step.received_at, Step.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Step)
        .execution_options(populate_existing=True)
    )
    begin_write(session)
    try:
        _reclaim_stale(session, now, stale_after_s, max_attempts)
        while True:
            row = session.scalars(candidate).one_or_none()
            if row is None:
                session.commit()
                return None
            last_done = session.scalar(
                select(func.max(Step.step)).where(Step.run_id == row.run_id, Step.status == "done")
            )
            if last_done is not None and row.step < last_done:
                row.status = "failed"
                row.error = f"arrived after step {last_done} was processed"
                row.processed_at = now
                session.flush()
                continue
            row.status = "processing"
            row.claimed_by = worker_id
            row.claimed_at = now
            row.attempts = row.attempts + 1
            session.commit()
            return row
    except BaseException:
        session.rollback()
        raise


def _fence(step_row: Step) -> Any:
    return and_(
        STEPS_TABLE.c.id == step_row.id,
        STEPS_TABLE.c.status == "processing",
        STEPS_TABLE.c.claimed_by == step_row.claimed_by,
    )


def complete_step(
    session: Session,
    step_row: Step,
    scalars: dict[str, float],
    samples: Sequence[dict[str, Any]],
    alert: dict[str, Any] | None,
    state_meta: dict[str, Any],
    state_tensors_bytes: bytes,
    D0: float | None = None,
    rescaled: Sequence[tuple[int, dict[str, float]]] = (),
    transition: bool | None = None,
) -> None:
    """Write a processed step's results in ONE transaction (all or nothing).

    Args:
        step_row: the step as returned by :func:`claim_next_step` (still claimed by this worker).
        scalars: the step's observables (non-finite values stored as null).
        samples: one dict per sample: ``index``, ``div`` and optional ``sample_id``, ``reward``, ``text``,
            ``x``, ``y`` (the sample in the run's projection, first two coordinates), ``prompt``.
        alert: ``monitor.rlhf.Alert.to_dict()`` (``type``, ``scalars``, ``reasons``, ``top_samples``,
            ``recommendation``) or None.
        state_meta, state_tensors_bytes: the monitor state after this step (:func:`encode_state`); the
            meta is stored losslessly (non-finite floats tagged, see :mod:`storage.state_codec`).
        D0: the run's calibrated D₀ once known (stored on the run).
        rescaled: ``(step, scalars)`` of earlier (warm-up) steps of this run whose stored scalars are
            replaced, in the same transaction (``StepReport.recalibrated`` when D₀ was just calibrated).
        transition: the streaming detector flagged this step (None: no verdict, e.g. during the warm-up).

    Raises :class:`LostClaim` (nothing written) when the step was reclaimed from this worker.
    """
    now = utcnow()
    run_id, step = step_row.run_id, step_row.step
    clean_scalars = finite_json(scalars)
    begin_write(session)
    try:
        done = session.execute(
            update(STEPS_TABLE)
            .where(_fence(step_row))
            .values(status="done", processed_at=now, scalars=clean_scalars, error=None, transition=transition)
        )
        if rowcount(done) != 1:
            raise LostClaim(
                f"step {step} of run {run_id} is no longer claimed by {step_row.claimed_by!r}; "
                "another worker took it over"
            )
        rows = []
        for sample in samples:
            div = float_or_none(sample.get("div"))
            rows.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "sample_index": int(sample["index"]),
                    "sample_id": None if sample.get("sample_id") is None else str(sample["sample_id"]),
                    "div": div,
                    "abs_div": None if div is None else abs(div),
                    "reward": float_or_none(sample.get("reward")),
                    "text": sample.get("text"),
                    "x": float_or_none(sample.get("x")),
                    "y": float_or_none(sample.get("y")),
                    "prompt": sample.get("prompt"),
                }
            )
        bulk_insert(session, SAMPLES_TABLE, _SAMPLE_COLUMNS, rows)
        if alert is not None:
            session.execute(
                insert(ALERTS_TABLE).values(
                    run_id=run_id,
                    step=step,
                    type=str(alert["type"]),
                    status="open",
                    created_at=now,
                    scalars=finite_json(alert.get("scalars", {})),
                    reasons=finite_json(list(alert.get("reasons", ()))),
                    top_samples=finite_json(list(alert.get("top_samples", ()))),
                    recommendation=str(alert.get("recommendation", "")),
                )
            )
        state_values = {
            "meta": tag_floats(state_meta),
            "tensors": state_tensors_bytes,
            "updated_at": now,
            "last_processed_step": step,
        }
        updated = session.execute(update(STATES_TABLE).where(STATES_TABLE.c.run_id == run_id).values(**state_values))
        if rowcount(updated) == 0:
            session.execute(insert(STATES_TABLE).values(run_id=run_id, **state_values))
        for earlier_step, earlier_scalars in rescaled:
            session.execute(
                update(STEPS_TABLE)
                .where(
                    STEPS_TABLE.c.run_id == run_id,
                    STEPS_TABLE.c.step == int(earlier_step),
                    STEPS_TABLE.c.status == "done",
                )
                .values(scalars=finite_json(earlier_scalars))
            )
        run_values: dict[str, Any] = {"steps_processed": RUNS_TABLE.c.steps_processed + 1}
        if D0 is not None:
            run_values["d0"] = float_or_none(D0)
        session.execute(update(RUNS_TABLE).where(RUNS_TABLE.c.id == run_id).values(**run_values))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    for key, value in (
        ("status", "done"),
        ("processed_at", now),
        ("scalars", clean_scalars),
        ("error", None),
        ("transition", transition),
    ):
        set_committed_value(step_row, key, value)


def fail_step(session: Session, step_row: Step, error: str) -> bool:
    """Mark a claimed step ``failed`` with ``error``; False (nothing written) if the claim was lost."""
    now = utcnow()
    message = str(error)[:MAX_ERROR_CHARS]
    begin_write(session)
    try:
        result = session.execute(
            update(STEPS_TABLE).where(_fence(step_row)).values(status="failed", processed_at=now, error=message)
        )
        ok = rowcount(result) == 1
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if ok:
        for key, value in (("status", "failed"), ("processed_at", now), ("error", message)):
            set_committed_value(step_row, key, value)
    return ok


def load_run_state(session: Session, run_id: int) -> StoredState | None:
    """The run's persisted monitor state, or None before its first processed step."""
    row = session.get(RunState, run_id, populate_existing=True)
    if row is None:
        return None
    return StoredState(
        run_id=row.run_id,
        meta=untag_floats(row.meta),
        tensors=row.tensors,
        last_processed_step=row.last_processed_step,
        updated_at=row.updated_at,
    )


# ---------------------------------------------------------------------------------------------- upkeep
def purge_payloads(session: Session, keep_last_steps: int) -> int:
    """Retention: drop the raw payload of processed (done or failed) steps older than each run's last
    ``keep_last_steps`` processed steps; returns how many payloads were dropped.

    The step rows, their sha256 (so retries are still recognised as duplicates), scalars and samples stay.
    Pending and processing steps are never touched.
    """
    if keep_last_steps < 0:
        raise ValueError(f"keep_last_steps must be >= 0, got {keep_last_steps}")
    finished = Step.status.in_(("done", "failed"))
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
            result = session.execute(
                update(STEPS_TABLE)
                .where(
                    STEPS_TABLE.c.run_id == run_id,
                    STEPS_TABLE.c.status.in_(("done", "failed")),
                    STEPS_TABLE.c.step <= threshold,
                    STEPS_TABLE.c.payload.is_not(None),
                )
                .values(payload=None)
            )
            purged += rowcount(result)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return purged


def counts(session: Session) -> dict[str, int]:
    """Row count of every fpmon table (tests use it to assert that nothing was written)."""
    return {
        table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
        for table in Base.metadata.sorted_tables
    }
