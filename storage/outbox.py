"""The webhook outbox: the notifications of raised alerts, delivered at least once by the sidecar's notifier.

One row (:class:`storage.models.WebhookDelivery`, table ``webhook_outbox``) per ``(alert, target)``:

* **Enqueue** — :func:`storage.complete_step` inserts one ``pending`` row per target it is given
  (``notify_targets``) in the transaction that inserts the alert (:func:`enqueue_notifications`): an alert
  is never stored without its notifications, so a crash cannot lose one. Storage knows a target only as an
  opaque id (a string of at most :data:`MAX_TARGET_CHARS`); the sidecar's workers pass the ids of the
  webhooks configured (``api.webhooks.target_id``). ``(alert_id, target)`` is unique.
* **Claim** — :func:`claim_deliveries`: a notifier takes up to ``limit`` due rows (``pending``,
  ``due_at <= now``) of the targets it knows, the longest due first, and leases them: ``leased_by`` = its id,
  ``attempts`` + 1, ``due_at`` = now + ``lease_s``. PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` (several
  notifiers, in several replicas, claim disjoint rows); SQLite: under the database's write lock. A row whose
  notifier died mid-delivery is due again when its lease ends; one whose lease ran out on its last allowed
  attempt is marked ``failed``. Rows of a target no notifier knows (removed from the configuration) stay
  ``pending``, and go out if it comes back.
* **Outcome**, fenced on the lease (row id, ``leased_by`` and ``attempts``): :func:`mark_delivered` →
  ``delivered``; :func:`retry_delivery` → ``pending`` again, due after :meth:`RetryPolicy.delay_s`
  (exponential backoff with jitter), or ``failed`` with the last error after ``max_attempts`` attempts. A
  notifier whose lease ran out (another notifier took the row) writes nothing.
* **At least once, exactly once with the id**: a notifier may deliver and die before it marks the row (or
  its lease may run out while a slow receiver still answers), so one row can be sent more than once. Every
  attempt of a row carries the same id (the row's ``id``; the sidecar sends it as ``X-Fpmon-Delivery``): a
  receiver that drops the ids it has already seen acts on each ``(alert, target)`` exactly once.

Writes follow the transaction rules of :mod:`storage.steps` (each commits its own unit of work), except
:func:`enqueue_notifications`, which writes in its caller's transaction.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.orm import Session

from .models import OUTBOX_STATUS_VALUES, WebhookDelivery
from .sql import OUTBOX_TABLE, begin_write, rowcount
from .types import utcnow

OUTBOX_STATUSES: tuple[str, ...] = OUTBOX_STATUS_VALUES
#: longest target id (``webhook_outbox.target``)
MAX_TARGET_CHARS = 64
#: longest stored error message
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed delivery again, and when to give up.

    Attributes:
        max_attempts: attempts (claims) of one row before it is marked ``failed``. Default 8.
        base_s: the wait after the first failed attempt, before jitter (seconds). Default 2.
        max_s: the longest wait, before jitter (seconds). Default 600.
    """

    max_attempts: int = 8
    base_s: float = 2.0
    max_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.base_s <= self.max_s:
            raise ValueError(f"need 0 < base_s <= max_s, got base_s={self.base_s}, max_s={self.max_s}")

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): ``d = min(max_s, base_s·2^(attempt−1))``,
        drawn uniformly in ``[d/2, d]`` (the jitter spreads out the retries of many rows that failed together)."""
        d = min(self.max_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 60))
        u = (rng or random.Random()).random()
        return d * (0.5 + 0.5 * u)


@dataclass(frozen=True)
class Delivery:
    """A leased outbox row, as plain values: what the notifier sends and the fence its outcome is written under.

    ``id`` is the delivery's idempotency id (the same in every attempt); ``attempt`` counts from 1.
    """

    id: int
    alert_id: int
    target: str
    attempt: int
    leased_by: str
    created_at: datetime


def check_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """The distinct target ids, sorted; ``ValueError`` for an empty or too long one."""
    ids = tuple(sorted(set(targets)))
    for target in ids:
        if not isinstance(target, str) or not target or len(target) > MAX_TARGET_CHARS:
            raise ValueError(
                f"a webhook target id is a non-empty string of at most {MAX_TARGET_CHARS} chars, got {target!r}"
            )
    return ids


def enqueue_notifications(session: Session, alert_id: int, targets: Iterable[str]) -> int:
    """Insert one ``pending`` row per target for ``alert_id``, due now, IN THE CALLER'S TRANSACTION (no commit:
    :func:`storage.complete_step` calls it next to the alert's insert). Returns the number of rows."""
    ids = check_targets(targets)
    if not ids:
        return 0
    now = utcnow()
    rows = [
        {"alert_id": int(alert_id), "target": t, "status": "pending", "created_at": now, "due_at": now, "attempts": 0}
        for t in ids
    ]
    session.execute(insert(OUTBOX_TABLE), rows)
    return len(rows)


def claim_deliveries(
    session: Session,
    worker_id: str,
    targets: Iterable[str],
    lease_s: float,
    limit: int = 10,
    max_attempts: int = RetryPolicy.max_attempts,
) -> list[Delivery]:
    """Lease up to ``limit`` due rows of ``targets`` for ``lease_s`` seconds (see the module docstring).

    Marks ``failed`` the due rows whose lease ran out on attempt ``max_attempts`` (their notifier never
    reported). ``lease_s`` must exceed the longest delivery attempt (the HTTP timeout), or a slow attempt's
    row is sent again by another notifier meanwhile.
    """
    if lease_s <= 0:
        raise ValueError(f"lease_s must be positive, got {lease_s}")
    ids = check_targets(targets)
    if not ids or limit < 1:
        return []
    now = utcnow()
    c = OUTBOX_TABLE.c
    due = and_(c.status == "pending", c.due_at <= now, c.target.in_(ids))
    begin_write(session)
    try:
        session.execute(
            update(OUTBOX_TABLE)
            .where(due, c.leased_by.is_not(None), c.attempts >= max_attempts)
            .values(
                status="failed",
                last_error=f"gave up after {max_attempts} attempts: the last one never reported (its notifier "
                "died or hung past its lease)",
            )
        )
        rows = session.execute(
            select(c.id, c.alert_id, c.target, c.attempts, c.created_at)
            .where(due)
            .order_by(c.due_at, c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(OUTBOX_TABLE)
                .where(c.id.in_([r.id for r in rows]))
                .values(leased_by=worker_id, attempts=c.attempts + 1, due_at=now + timedelta(seconds=lease_s))
            )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return [Delivery(r.id, r.alert_id, r.target, r.attempts + 1, worker_id, r.created_at) for r in rows]


def _fence(delivery: Delivery) -> Any:
    c = OUTBOX_TABLE.c
    return and_(
        c.id == delivery.id,
        c.status == "pending",
        c.leased_by == delivery.leased_by,
        c.attempts == delivery.attempt,
    )


def _write(session: Session, delivery: Delivery, **values: Any) -> bool:
    begin_write(session)
    try:
        ok = rowcount(session.execute(update(OUTBOX_TABLE).where(_fence(delivery)).values(**values))) == 1
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return ok


def mark_delivered(session: Session, delivery: Delivery) -> bool:
    """The receiver took it (2xx): ``delivered``. False (nothing written) when the lease was lost."""
    return _write(session, delivery, status="delivered", delivered_at=utcnow())


def retry_delivery(
    session: Session, delivery: Delivery, error: str, policy: RetryPolicy, rng: random.Random | None = None
) -> str | None:
    """The attempt failed with ``error``: due again after ``policy.delay_s(attempt)``, or ``failed`` once the
    attempt was the ``policy.max_attempts``-th. Returns the row's new status, None when the lease was lost."""
    message = str(error)[:MAX_ERROR_CHARS]
    if delivery.attempt >= policy.max_attempts:
        return "failed" if _write(session, delivery, status="failed", last_error=message) else None
    due = utcnow() + timedelta(seconds=policy.delay_s(delivery.attempt, rng))
    return "pending" if _write(session, delivery, due_at=due, leased_by=None, last_error=message) else None


def outbox_counts(session: Session) -> dict[str, int]:
    """Number of outbox rows per status (all statuses present, zeros included)."""
    found = dict(session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).all())
    return {status: int(found.get(status, 0)) for status in OUTBOX_STATUSES}


def list_deliveries(
    session: Session, alert_id: int | None = None, status: str | None = None, limit: int = 100
) -> list[WebhookDelivery]:
    """Outbox rows by id, optionally of one alert and one status."""
    if status is not None and status not in OUTBOX_STATUSES:
        raise ValueError(f"status must be one of {list(OUTBOX_STATUSES)}, got {status!r}")
    stmt = select(WebhookDelivery)
    if alert_id is not None:
        stmt = stmt.where(WebhookDelivery.alert_id == alert_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    stmt = stmt.order_by(WebhookDelivery.id).limit(limit).execution_options(populate_existing=True)
    return list(session.scalars(stmt))
