"""Plain functions over a :class:`~sqlalchemy.orm.Session`: the only SQL the API and the worker need.

Transactions: every function that writes commits its own unit of work before returning, and rolls back
(leaving nothing written) when it raises — do not wrap them in ``with session.begin():``. Read functions
do not commit. On SQLite, writes open their transaction with ``BEGIN IMMEDIATE`` (a read-only transaction
left open by earlier reads on the session is committed first), so concurrent writers queue on SQLite's
single write lock instead of failing with "database is locked".

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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, and_, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased, undefer
from sqlalchemy.orm.attributes import set_committed_value

from .db import SQLITE_IMMEDIATE
from .models import (
    ALERT_STATUS_VALUES,
    STEP_STATUS_VALUES,
    Alert,
    Base,
    Review,
    Run,
    RunState,
    Step,
    StepSample,
)
from .state_codec import tag_floats, untag_floats
from .types import finite_json, utcnow

STEP_STATUSES: tuple[str, ...] = STEP_STATUS_VALUES
ALERT_STATUSES: tuple[str, ...] = ALERT_STATUS_VALUES
REVIEW_DECISIONS: tuple[str, ...] = ("acknowledged", "confirmed", "dismissed")
MAX_ERROR_CHARS = 4000

_RUNS = cast(Table, Run.__table__)
_STEPS = cast(Table, Step.__table__)
_SAMPLES = cast(Table, StepSample.__table__)
_ALERTS = cast(Table, Alert.__table__)
_STATES = cast(Table, RunState.__table__)


class StepConflict(Exception):
    """The same (run, step) was already received with different bytes (HTTP 409)."""


class NotFound(LookupError):
    """The run or alert named does not exist."""


class LostClaim(RuntimeError):
    """The step is no longer claimed by this worker (reclaimed as stale); its results were not written."""


@dataclass(frozen=True)
class StoredState:
    """A run's persisted monitor state (see :mod:`storage.state_codec` to turn it back into tensors)."""

    run_id: int
    meta: dict[str, Any]
    tensors: bytes
    last_processed_step: int | None
    updated_at: datetime


# ---------------------------------------------------------------------------------------------- helpers
def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _begin_write(session: Session) -> None:
    """On SQLite, open the transaction with BEGIN IMMEDIATE (take the write lock before reading).

    A transaction the caller left open with only reads in it (no pending ORM changes) is committed first:
    a WAL read snapshot cannot always be upgraded to a write under concurrency ("database is locked").
    """
    if _dialect(session) != "sqlite":
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return  # the caller's own unit of work: leave it alone (best effort: deferred BEGIN)
        session.commit()
    session.connection(execution_options={SQLITE_IMMEDIATE: True})


def _insert_ignore(session: Session, table: Table, values: dict[str, Any], keys: list[str]) -> bool:
    """INSERT … ON CONFLICT (keys) DO NOTHING; True when the row was inserted."""
    dialect = _dialect(session)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise ValueError(f"unsupported database dialect {dialect!r}: fpmon stores in SQLite or PostgreSQL")
    inserted = session.execute(stmt.returning(*table.primary_key.columns)).first()
    return inserted is not None


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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


def _insert_samples(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert sample rows in the session's transaction: COPY on PostgreSQL (one stream instead of a round
    trip per row), executemany elsewhere."""
    if not rows:
        return
    if _dialect(session) == "postgresql":
        psycopg_conn: Any = session.connection().connection.dbapi_connection  # psycopg 3
        statement = f"COPY step_samples ({', '.join(_SAMPLE_COLUMNS)}) FROM STDIN"
        with psycopg_conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(tuple(row[c] for c in _SAMPLE_COLUMNS))
        return
    session.execute(insert(_SAMPLES), rows)


# ---------------------------------------------------------------------------------------------- runs
def get_or_create_run(
    session: Session, name: str, latent_dim: int, config: dict[str, Any] | None = None
) -> tuple[Run, bool]:
    """The run called ``name``, created if new; ``(run, created)``.

    Race-safe: concurrent creates of one name (several replicas) insert one row and all return it. An
    existing run is returned as it is (its ``latent_dim`` and ``config`` are not changed; callers compare).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a run needs a non-empty name")
    if int(latent_dim) < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
    _begin_write(session)
    try:
        created = _insert_ignore(
            session,
            _RUNS,
            {
                "name": name,
                "latent_dim": int(latent_dim),
                "config": finite_json(config or {}),
                "created_at": utcnow(),
                "steps_received": 0,
                "steps_processed": 0,
            },
            ["name"],
        )
        run = session.scalars(select(Run).where(Run.name == name).execution_options(populate_existing=True)).one()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run, created


def list_runs(session: Session, limit: int = 100, offset: int = 0) -> list[Run]:
    """Runs by id (each carries ``steps_received`` / ``steps_processed``)."""
    stmt = select(Run).order_by(Run.id).limit(limit).offset(offset)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))


def get_run(session: Session, run_id: int) -> Run | None:
    """The run with this id, or None."""
    return session.get(Run, run_id, populate_existing=True)


def get_run_by_name(session: Session, name: str) -> Run | None:
    """The run with this name, or None."""
    stmt = select(Run).where(Run.name == name).execution_options(populate_existing=True)
    return session.scalars(stmt).one_or_none()


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
    _begin_write(session)
    try:
        if session.scalar(select(Run.id).where(Run.id == run_id)) is None:
            raise NotFound(f"run {run_id} does not exist; create it first (POST /v1/runs)")
        inserted = _insert_ignore(
            session,
            _STEPS,
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
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(steps_received=_RUNS.c.steps_received + 1, last_step_at=now)
                .returning(_RUNS.c.steps_received)
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
    stale = and_(_STEPS.c.status == "processing", _STEPS.c.claimed_at < cutoff)
    session.execute(
        update(_STEPS)
        .where(stale, _STEPS.c.attempts >= max_attempts)
        .values(
            status="failed",
            processed_at=now,
            error=f"gave up after {max_attempts} claims: the worker died or timed out each time",
        )
    )
    session.execute(update(_STEPS).where(stale).values(status="pending", claimed_by=None, claimed_at=None))


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
    _begin_write(session)
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
        _STEPS.c.id == step_row.id,
        _STEPS.c.status == "processing",
        _STEPS.c.claimed_by == step_row.claimed_by,
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
    _begin_write(session)
    try:
        done = session.execute(
            update(_STEPS)
            .where(_fence(step_row))
            .values(status="done", processed_at=now, scalars=clean_scalars, error=None, transition=transition)
        )
        if _rowcount(done) != 1:
            raise LostClaim(
                f"step {step} of run {run_id} is no longer claimed by {step_row.claimed_by!r}; "
                "another worker took it over"
            )
        rows = []
        for sample in samples:
            div = _float_or_none(sample.get("div"))
            rows.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "sample_index": int(sample["index"]),
                    "sample_id": None if sample.get("sample_id") is None else str(sample["sample_id"]),
                    "div": div,
                    "abs_div": None if div is None else abs(div),
                    "reward": _float_or_none(sample.get("reward")),
                    "text": sample.get("text"),
                    "x": _float_or_none(sample.get("x")),
                    "y": _float_or_none(sample.get("y")),
                    "prompt": sample.get("prompt"),
                }
            )
        _insert_samples(session, rows)
        if alert is not None:
            session.execute(
                insert(_ALERTS).values(
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
        updated = session.execute(update(_STATES).where(_STATES.c.run_id == run_id).values(**state_values))
        if _rowcount(updated) == 0:
            session.execute(insert(_STATES).values(run_id=run_id, **state_values))
        for earlier_step, earlier_scalars in rescaled:
            session.execute(
                update(_STEPS)
                .where(_STEPS.c.run_id == run_id, _STEPS.c.step == int(earlier_step), _STEPS.c.status == "done")
                .values(scalars=finite_json(earlier_scalars))
            )
        run_values: dict[str, Any] = {"steps_processed": _RUNS.c.steps_processed + 1}
        if D0 is not None:
            run_values["d0"] = _float_or_none(D0)
        session.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(**run_values))
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
    _begin_write(session)
    try:
        result = session.execute(
            update(_STEPS).where(_fence(step_row)).values(status="failed", processed_at=now, error=message)
        )
        ok = _rowcount(result) == 1
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


# ---------------------------------------------------------------------------------------------- reads
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
) -> list[dict[str, Any]]:
    """Scalar history of a run: ``[{"step": int, "scalars": {name: float | None}, "transition": bool | None}]``.

    One row per processed (``done``) step with ``start <= step <= end``. With more than ``max_points``
    such steps, the rows kept are the ones at ranks floor(i·(N−1)/(max_points−1)) for i = 0…max_points−1:
    the first and the last step always, evenly spaced (by rank) in between — plain decimation, no
    averaging, so every value shown is a real step's value. ``names`` selects scalars (a missing one is
    None); None returns them all.
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
    found: dict[int, tuple[dict[str, Any], bool | None]] = {}
    for lo in range(0, len(chosen), 500):
        chunk = chosen[lo : lo + 500]
        stmt = select(Step.step, Step.scalars, Step.transition).where(Step.run_id == run_id, Step.step.in_(chunk))
        for step, scalars, transition in session.execute(stmt):
            found[step] = (scalars or {}, transition)
    rows = []
    for step in chosen:
        scalars, transition = found[step]
        selected = dict(scalars) if names is None else {name: scalars.get(name) for name in names}
        rows.append({"step": step, "scalars": selected, "transition": transition})
    return rows


def step_samples(
    session: Session, run_id: int, step: int, order: str = "div", limit: int = 100, offset: int = 0
) -> list[StepSample]:
    """Samples of a processed step: ``order="div"`` by |δ| descending, ``"div_asc"`` by |δ| ascending (unknown
    δ last in both), or ``"index"``."""
    stmt = select(StepSample).where(StepSample.run_id == run_id, StepSample.step == step)
    if order == "div":
        stmt = stmt.order_by(StepSample.abs_div.desc().nulls_last(), StepSample.index)
    elif order == "div_asc":
        stmt = stmt.order_by(StepSample.abs_div.asc().nulls_last(), StepSample.index)
    elif order == "index":
        stmt = stmt.order_by(StepSample.index)
    else:
        raise ValueError(f"order must be 'div', 'div_asc' or 'index', got {order!r}")
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


def open_alert_counts(session: Session, run_ids: Sequence[int]) -> dict[int, int]:
    """Number of ``open`` alerts per run id (zeros included)."""
    ids = sorted({int(i) for i in run_ids})
    found: dict[int, int] = {}
    for lo in range(0, len(ids), 500):
        stmt = (
            select(Alert.run_id, func.count())
            .where(Alert.status == "open", Alert.run_id.in_(ids[lo : lo + 500]))
            .group_by(Alert.run_id)
        )
        found.update({int(run_id): int(count) for run_id, count in session.execute(stmt)})
    return {run_id: found.get(run_id, 0) for run_id in ids}


def list_alerts(
    session: Session,
    run_id: int | None = None,
    status: str | None = None,
    type: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Alert]:
    """Alerts, newest first, filtered by run, status and type."""
    if status is not None and status not in ALERT_STATUSES:
        raise ValueError(f"status must be one of {list(ALERT_STATUSES)}, got {status!r}")
    stmt = select(Alert)
    if run_id is not None:
        stmt = stmt.where(Alert.run_id == run_id)
    if status is not None:
        stmt = stmt.where(Alert.status == status)
    if type is not None:
        stmt = stmt.where(Alert.type == type)
    stmt = stmt.order_by(Alert.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))


def get_alert(session: Session, alert_id: int) -> Alert | None:
    """The alert with this id, or None."""
    return session.get(Alert, alert_id, populate_existing=True)


def list_reviews(session: Session, alert_id: int) -> list[Review]:
    """The reviews of an alert, oldest first."""
    return list(session.scalars(select(Review).where(Review.alert_id == alert_id).order_by(Review.id)))


def review_alert(session: Session, alert_id: int, decision: str, reviewer: str, note: str | None = None) -> Alert:
    """Record a review and set the alert's status to ``decision``; returns the updated alert.

    Raises ``ValueError`` for a decision outside :data:`REVIEW_DECISIONS` or an empty reviewer, and
    :class:`NotFound` for an unknown alert; in both cases nothing is written.
    """
    if decision not in REVIEW_DECISIONS:
        raise ValueError(f"decision must be one of {list(REVIEW_DECISIONS)}, got {decision!r}")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError("a review needs a non-empty reviewer")
    _begin_write(session)
    try:
        alert = session.get(Alert, alert_id, populate_existing=True)
        if alert is None:
            raise NotFound(f"alert {alert_id} does not exist")
        session.add(Review(alert_id=alert_id, decision=decision, reviewer=reviewer, note=note))
        alert.status = decision
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return alert


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
    _begin_write(session)
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
                update(_STEPS)
                .where(
                    _STEPS.c.run_id == run_id,
                    _STEPS.c.status.in_(("done", "failed")),
                    _STEPS.c.step <= threshold,
                    _STEPS.c.payload.is_not(None),
                )
                .values(payload=None)
            )
            purged += _rowcount(result)
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
