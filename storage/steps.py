"""The step lifecycle: receive a step, claim it, keep the claim alive, write its results (or its failure) and
the run's monitor state.

Holds :func:`ingest_step` (API side), :func:`complete_step`, :func:`fail_step` and :func:`load_run_state`
(worker side), step reads (:func:`get_step`, :func:`list_steps`, :func:`step_status_counts`) and
:func:`counts`. Claiming is :mod:`storage.claims` (:func:`~storage.claims.claim_next_step`,
:func:`~storage.claims.heartbeat_step`), under the rules below. The raw payloads live in their own table
(``step_payloads``; :mod:`storage.payloads` reads, lists and purges them), so no scan of ``steps`` reads a blob.

Transactions: every function that writes commits its own unit of work before returning, and rolls back
(leaving nothing written) when it raises — do not wrap them in ``with session.begin():``. Read functions
do not commit. On SQLite, writes open their transaction with ``BEGIN IMMEDIATE`` (a read-only transaction
left open by earlier reads on the session is committed first), so concurrent writers queue on SQLite's
single write lock instead of failing with "database is locked". (The same rules hold for the writes in
:mod:`storage.runs`, :mod:`storage.payloads` and :mod:`storage.alerts`.)

Counters: the run's ``steps_received``, ``steps_processed`` (``done``) and ``steps_failed`` change in the
same transaction as the step's status, and ``latest_step`` / ``latest_scalars`` with its latest ``done``
step, so that a reader (``/metrics``) learns the per-status counts and the latest observables from one
row per run: pending + processing = received − processed − failed.

Step processing order (the rule :func:`storage.claims.claim_next_step` implements):

* The steps of one run are processed one at a time, in increasing step number **among the steps received
  so far**: a pending step is claimable only if no other step of its run is ``processing`` and no pending
  step of its run has a smaller number. A step never waits for a step that has not been received (a client
  may skip or lose steps).
* A step that arrives after a later step of its run was already claimed or processed cannot be fed to the
  monitor, whose state only moves forward (``RLHFMonitor.observe`` requires increasing steps): ingest
  refuses it (:class:`StepTooLate`, HTTP 409), so an accepted step is always processed. Ingest and claims
  both take the run's row lock (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's write lock), and a claim
  re-checks its step under it, so neither can overtake the other. A step that got in anyway (received
  before this check existed) is marked ``failed`` with the error ``"arrived after step N was processed"``
  when a worker reaches it, and the run's state is untouched.
* Across runs, the oldest received claimable step goes first.

Claims, heartbeats and crash recovery:

* A claim is the pair ``(claimed_by, attempts)`` (:class:`storage.claims.Claim`): claiming sets the step ``processing``,
  ``claimed_by`` to the worker's id, ``claimed_at`` and ``heartbeat_at`` to now, and counts one more
  attempt. While it works on the step, the worker refreshes ``heartbeat_at`` (``heartbeat_step``, every
  ``claim_timeout_s / 5`` from a small thread of ``monitor.processing.StepProcessor``).
* A ``processing`` step is taken back (``pending`` again, first in its run's line) by the next claim when
  its heartbeat is older than ``claim_timeout_s`` (its worker died: killed, out of memory, its machine or
  its database connection gone; recovery in seconds), or when it was claimed longer than
  ``stale_after_s`` ago (a worker hung with its heartbeat thread still beating). After ``max_attempts``
  claims it is marked ``failed`` instead.
* Fencing: :func:`complete_step`, :func:`fail_step` and ``heartbeat_step`` write only while the step
  is still ``processing`` under the same claim (worker id **and** attempt number). A worker that lost its
  claim (taken for dead, then back) gets :class:`LostClaim` / False and writes nothing, so a step's results
  are written exactly once, and in its run's order.
* Times are those of the writing process. Replicas on several machines need clocks in step to well under
  ``claim_timeout_s`` (NTP does that); a clock ahead by more only makes a live worker's step be computed
  twice (the second result is fenced off), never written twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from .claims import Claim, claim_of, count_failed, fence
from .errors import LostClaim, NotFound, StepConflict, StepTooLate
from .models import STEP_STATUS_VALUES, Base, Run, RunState, Step
from .outbox import check_targets, enqueue_notifications
from .sql import (
    ALERTS_TABLE,
    EVIDENCE_TABLE,
    PAYLOADS_TABLE,
    REVIEWS_TABLE,
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
    "witness",
)
#: the columns of a stored evidence row (``step_evidence``)
_EVIDENCE_COLUMNS = ("run_id", "step", "stream", "log_value", "threshold")


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
    session: Session,
    run: Run | int,
    step: int,
    payload: bytes,
    n: int,
    digest: str | None = None,
    extra_scalars: Mapping[str, float | None] | None = None,
) -> Literal["queued", "duplicate"]:
    """Store a received step as ``pending`` (its payload in ``step_payloads``); idempotent on (run, step).

    Returns ``"queued"`` for a new step (the run's ``steps_received`` goes up by one), ``"duplicate"`` when
    the same content was already received (nothing is written). Raises :class:`StepConflict` when different
    content was received for this (run, step), :class:`StepTooLate` (a ``StepConflict``) when a later step of
    the run is already ``processing`` or ``done`` (the step could never be processed), :class:`NotFound` for
    an unknown run id. The content is
    identified by ``digest`` (the API passes ``monitor.stepfile.payload_digest``, which does not depend on
    the encoding's metadata order), else by the sha256 of the bytes. ``extra_scalars``: the step's named
    per-step numbers (``{name: float | None}``, non-finite values stored as null; the caller checks the names,
    ``monitor.stepfile.check_scalars``), stored in ``steps.extra_scalars`` with a new step (a duplicate keeps
    the first step's); None or empty: NULL.
    """
    run_id = run.id if isinstance(run, Run) else int(run)
    sha = digest if digest is not None else hashlib.sha256(payload).hexdigest()
    extra = finite_json({str(k): v for k, v in extra_scalars.items()}) if extra_scalars else None
    now = utcnow()
    begin_write(session)
    try:
        # the run's row lock orders this against claims of the run's steps (claims take it too): a step
        # is refused here, or the claim that would overtake it sees it pending
        if session.scalar(select(Run.id).where(Run.id == run_id).with_for_update()) is None:
            raise NotFound(f"run {run_id} does not exist; create it first (POST /v1/runs)")
        existing = session.scalar(select(Step.payload_sha256).where(Step.run_id == run_id, Step.step == int(step)))
        if existing is None:
            overtaken = session.scalar(
                select(func.max(Step.step)).where(
                    Step.run_id == run_id, Step.step > int(step), Step.status.in_(("processing", "done"))
                )
            )
            if overtaken is not None:
                raise StepTooLate(
                    f"step {step} of run {run_id} arrived after step {overtaken} was processed; the monitor's "
                    "state only moves forward, so send a run's steps in increasing order"
                )
        inserted = existing is None and insert_ignore(
            session,
            STEPS_TABLE,
            {
                "run_id": run_id,
                "step": int(step),
                "status": "pending",
                "payload_sha256": sha,
                "n": int(n),
                "received_at": now,
                "attempts": 0,
                # omitted when None: a JSON column would store None as JSON 'null', not SQL NULL
                **({"extra_scalars": extra} if extra else {}),
            },
            ["run_id", "step"],
        )
        if inserted:
            session.execute(insert(PAYLOADS_TABLE).values(run_id=run_id, step=int(step), payload=payload))
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
        if existing is None:  # inserted meanwhile by a concurrent request
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
    """The step row (no payload: :func:`storage.load_payload`), or None."""
    stmt = select(Step).where(Step.run_id == run_id, Step.step == step)
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def list_steps(
    session: Session, run_id: int, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[Step]:
    """Steps of a run by step number (no payloads), optionally of one status."""
    if status is not None and status not in STEP_STATUSES:
        raise ValueError(f"status must be one of {list(STEP_STATUSES)}, got {status!r}")
    stmt = select(Step).where(Step.run_id == run_id)
    if status is not None:
        stmt = stmt.where(Step.status == status)
    stmt = stmt.order_by(Step.step).limit(limit).offset(offset).execution_options(populate_existing=True)
    return list(session.scalars(stmt))


def step_status_counts(session: Session, run_id: int | None = None) -> dict[str, int]:
    """Number of steps per status (all of them present, zeros included), for one run or all runs.

    Counts the step rows (an index scan); ``/metrics`` reads the runs' counters instead.
    """
    stmt = select(Step.status, func.count()).group_by(Step.status)
    if run_id is not None:
        stmt = stmt.where(Step.run_id == run_id)
    found = {status: int(count) for status, count in session.execute(stmt)}
    return {status: found.get(status, 0) for status in STEP_STATUSES}


# ---------------------------------------------------------------------------------------------- results
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
    claim: Claim | None = None,
    evidence: Mapping[str, float] | None = None,
    evidence_threshold: float | None = None,
    rebaseline_review_id: int | None = None,
    notify_targets: Sequence[str] = (),
) -> None:
    """Write a processed step's results in ONE transaction (all or nothing).

    Args:
        step_row: the step as returned by :func:`claim_next_step` (still claimed by this worker).
        scalars: the step's observables (non-finite values stored as null).
        samples: one dict per sample: ``index``, ``div`` and optional ``sample_id``, ``reward``, ``text``,
            ``x``, ``y`` (the sample in the run's projection, first two coordinates), ``prompt``, ``witness``
            (the sample's evidence score).
        alert: ``monitor.rlhf.Alert.to_dict()`` (``type``, ``scalars``, ``reasons``, ``top_samples``,
            ``recommendation``) or None.
        state_meta, state_tensors_bytes: the monitor state after this step (:func:`encode_state`); the
            meta is stored losslessly (non-finite floats tagged, see :mod:`storage.state_codec`).
        D0: the run's calibrated D₀ once known (stored on the run).
        rescaled: ``(step, scalars)`` of earlier (warm-up) steps of this run whose stored scalars are
            replaced, in the same transaction (``StepReport.recalibrated`` when D₀ was just calibrated).
        transition: the streaming detector flagged this step (None: no verdict, e.g. during the warm-up).
        claim: the claim to fence on (default: the one ``step_row`` holds).
        evidence: the log e-detector statistic of each evidence series after this step (``step_evidence``
            rows; non-finite values are not stored). Needs a finite ``evidence_threshold``.
        evidence_threshold: the log alarm level ``log(1/alpha)``, stored on each evidence row.
        rebaseline_review_id: the run's pending re-baseline request (``Run.rebaseline_review_id``) that was
            applied to the monitor before this step: it is cleared, unless a newer request replaced it
            meanwhile (that one stays pending for the next step), and the re-baseline reviews of the run it
            covers (ids up to it) are marked applied at this step (``Review.rebaseline_step``).
        notify_targets: the webhook target ids to notify of the alert: one ``webhook_outbox`` row per target
            is written with the alert, in this transaction (:mod:`storage.outbox`). Ignored without an alert.

    The run's ``steps_processed``, ``latest_step`` and ``latest_scalars`` are updated with it. Raises
    :class:`LostClaim` (nothing written) when the step was reclaimed from this worker.
    """
    now = utcnow()
    token = claim if claim is not None else Claim.of(step_row)
    run_id, step = token.run_id, token.step
    clean_scalars = finite_json(scalars)
    evidence_rows = _evidence_rows(run_id, step, evidence or {}, evidence_threshold)
    targets = check_targets(notify_targets)
    begin_write(session)
    try:
        done = session.execute(
            update(STEPS_TABLE)
            .where(fence(token))
            .values(status="done", processed_at=now, scalars=clean_scalars, error=None, transition=transition)
        )
        if rowcount(done) != 1:
            raise LostClaim(
                f"step {step} of run {run_id} is no longer claimed by {token.worker_id!r} "
                f"(attempt {token.attempt}); another worker took it over"
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
                    "witness": float_or_none(sample.get("witness")),
                }
            )
        bulk_insert(session, SAMPLES_TABLE, _SAMPLE_COLUMNS, rows)
        bulk_insert(session, EVIDENCE_TABLE, _EVIDENCE_COLUMNS, evidence_rows)
        if rebaseline_review_id is not None:
            _consume_rebaseline(session, run_id, step, int(rebaseline_review_id))
        if alert is not None:
            alert_id = session.execute(
                insert(ALERTS_TABLE)
                .values(
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
                .returning(ALERTS_TABLE.c.id)
            ).scalar_one()
            enqueue_notifications(session, alert_id, targets)
        state_values = {
            "meta": tag_floats(state_meta),
            "tensors": state_tensors_bytes,
            "updated_at": now,
            "last_processed_step": step,
        }
        updated = session.execute(update(STATES_TABLE).where(STATES_TABLE.c.run_id == run_id).values(**state_values))
        if rowcount(updated) == 0:
            session.execute(insert(STATES_TABLE).values(run_id=run_id, **state_values))
        latest_scalars = clean_scalars
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
            if int(earlier_step) == step:  # the calibrating step itself, rescaled: what its row now holds
                latest_scalars = finite_json(earlier_scalars)
        # steps of a run are done in increasing order (a late step is failed), so this is the latest one
        run_values: dict[str, Any] = {
            "steps_processed": RUNS_TABLE.c.steps_processed + 1,
            "latest_step": step,
            "latest_scalars": latest_scalars,
        }
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


def _evidence_rows(
    run_id: int, step: int, evidence: Mapping[str, float], threshold: float | None
) -> list[dict[str, Any]]:
    """The ``step_evidence`` rows of a step: its finite values, each with the threshold."""
    values = {str(name): float_or_none(value) for name, value in evidence.items()}
    finite = {name: value for name, value in values.items() if value is not None}
    if not finite:
        return []
    limit = float_or_none(threshold)
    if limit is None:
        raise ValueError(f"evidence needs a finite evidence_threshold (log(1/alpha)), got {threshold!r}")
    return [
        {"run_id": run_id, "step": step, "stream": name, "log_value": value, "threshold": limit}
        for name, value in sorted(finite.items())
    ]


def _consume_rebaseline(session: Session, run_id: int, step: int, review_id: int) -> None:
    """Clear the run's re-baseline request ``review_id`` (unless a newer one replaced it) and mark the re-baseline
    reviews of the run up to it applied at ``step``; in the caller's transaction."""
    session.execute(
        update(RUNS_TABLE)
        .where(RUNS_TABLE.c.id == run_id, RUNS_TABLE.c.rebaseline_review_id == review_id)
        .values(rebaseline_review_id=None)
    )
    run_alerts = select(ALERTS_TABLE.c.id).where(ALERTS_TABLE.c.run_id == run_id)
    session.execute(
        update(REVIEWS_TABLE)
        .where(
            REVIEWS_TABLE.c.rebaseline.is_(True),
            REVIEWS_TABLE.c.rebaseline_step.is_(None),
            REVIEWS_TABLE.c.id <= review_id,
            REVIEWS_TABLE.c.alert_id.in_(run_alerts),
        )
        .values(rebaseline_step=step)
    )


def fail_step(session: Session, step_row: Step | Claim, error: str) -> bool:
    """Mark a claimed step ``failed`` with ``error``; False (nothing written) if the claim was lost.

    Pass the :class:`Claim` taken at claim time when the session was rolled back since (a rollback
    expires ``step_row``, and reloading it would read whichever claim the database holds now).
    """
    now = utcnow()
    token = claim_of(step_row)
    message = str(error)[:MAX_ERROR_CHARS]
    begin_write(session)
    try:
        result = session.execute(
            update(STEPS_TABLE).where(fence(token)).values(status="failed", processed_at=now, error=message)
        )
        ok = rowcount(result) == 1
        if ok:
            count_failed(session, [token.run_id])
        session.commit()
    except BaseException:
        session.rollback()
        raise
    if ok and isinstance(step_row, Step):
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
def counts(session: Session) -> dict[str, int]:
    """Row count of every fpmon table (tests use it to assert that nothing was written)."""
    return {
        table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
        for table in Base.metadata.sorted_tables
    }
