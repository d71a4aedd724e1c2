"""Alerts and their reviews: open-alert counts per run, listing and reading alerts, recording a review.

Alerts are written by :func:`storage.steps.complete_step` (in the step's transaction); the one write here,
:func:`review_alert`, follows the transaction rules described in :mod:`storage.steps`.

Re-baseline: a dismissal may ask that the run's monitor treat the change as its new normal
(``rebaseline=True``). The request is durable: :func:`review_alert` stores the review's id on the run
(``runs.rebaseline_review_id``) in the review's transaction; the worker that processes the run's next step
reads it, re-baselines the restored monitor before observing the step, and clears it in the step's
transaction (:func:`storage.steps.complete_step`), marking the review applied at that step
(``reviews.rebaseline_step``). A restart in between loses nothing: the request waits in the run's row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .errors import NotFound
from .models import ALERT_STATUS_VALUES, Alert, Review
from .sql import RUNS_TABLE, begin_write

ALERT_STATUSES: tuple[str, ...] = ALERT_STATUS_VALUES
#: a review's decision becomes the alert's status; ``open`` re-opens a decided alert (its history is kept)
REVIEW_DECISIONS: tuple[str, ...] = ("acknowledged", "confirmed", "dismissed", "open")
#: a run's verdict from its alerts' statuses, by precedence (see :func:`run_verdict`)
Verdict = Literal["confirmed", "open", "dismissed", "none"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "open", "dismissed", "none")


class AlreadyOpen(ValueError):
    """Re-opening an alert that is open: nothing to re-open (the API answers 409)."""


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


def alert_status_counts(session: Session, run_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """``{run_id: {status: count}}`` for every status of :data:`ALERT_STATUSES` (zeros included), one query per
    500 runs."""
    ids = sorted({int(i) for i in run_ids})
    out = {run_id: dict.fromkeys(ALERT_STATUSES, 0) for run_id in ids}
    for lo in range(0, len(ids), 500):
        stmt = (
            select(Alert.run_id, Alert.status, func.count())
            .where(Alert.run_id.in_(ids[lo : lo + 500]))
            .group_by(Alert.run_id, Alert.status)
        )
        for run_id, status, count in session.execute(stmt):
            out[int(run_id)][str(status)] = int(count)
    return out


def run_verdict(counts: dict[str, int]) -> Verdict:
    """A run's verdict from its alerts per status, by precedence: ``confirmed`` (any alert confirmed), else
    ``open`` (any alert open or acknowledged: not decided yet), else ``dismissed`` (every alert dismissed), else
    ``none`` (no alert)."""
    if counts.get("confirmed", 0) > 0:
        return "confirmed"
    if counts.get("open", 0) + counts.get("acknowledged", 0) > 0:
        return "open"
    if counts.get("dismissed", 0) > 0:
        return "dismissed"
    return "none"


def list_alerts(
    session: Session,
    run_id: int | None = None,
    status: str | None = None,
    type: str | None = None,
    limit: int = 100,
    offset: int = 0,
    step: int | None = None,
) -> list[Alert]:
    """Alerts, newest first, filtered by run, status, type and step."""
    if status is not None and status not in ALERT_STATUSES:
        raise ValueError(f"status must be one of {list(ALERT_STATUSES)}, got {status!r}")
    stmt = select(Alert)
    if run_id is not None:
        stmt = stmt.where(Alert.run_id == run_id)
    if status is not None:
        stmt = stmt.where(Alert.status == status)
    if type is not None:
        stmt = stmt.where(Alert.type == type)
    if step is not None:
        stmt = stmt.where(Alert.step == step)
    stmt = stmt.order_by(Alert.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))


def get_alert(session: Session, alert_id: int) -> Alert | None:
    """The alert with this id, or None."""
    return session.get(Alert, alert_id, populate_existing=True)


def list_reviews(session: Session, alert_id: int) -> list[Review]:
    """The reviews of an alert, oldest first."""
    stmt = select(Review).where(Review.alert_id == alert_id).order_by(Review.id)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))


def review_alert(
    session: Session,
    alert_id: int,
    decision: str,
    reviewer: str,
    note: str | None = None,
    rebaseline: bool = False,
) -> Alert:
    """Record a review and set the alert's status to ``decision``; returns the updated alert.

    ``rebaseline=True`` (only with ``decision="dismissed"``) also asks that the run's monitor be re-baselined
    before its next processed step (see the module docstring); a newer request replaces a pending one.

    ``decision="open"`` re-opens a decided alert: a review row records it (the history is kept) and the status
    goes back to ``open``. If the run's pending re-baseline request came from a dismissal of this alert, it is
    withdrawn (``runs.rebaseline_review_id`` cleared); one already applied stays applied.

    Raises ``ValueError`` for a decision outside :data:`REVIEW_DECISIONS`, an empty reviewer or ``rebaseline``
    with another decision than ``dismissed``, :class:`AlreadyOpen` (a ``ValueError``) for re-opening an open
    alert, and :class:`NotFound` for an unknown alert; in all these cases nothing is written.
    """
    if decision not in REVIEW_DECISIONS:
        raise ValueError(f"decision must be one of {list(REVIEW_DECISIONS)}, got {decision!r}")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError("a review needs a non-empty reviewer")
    if rebaseline and decision != "dismissed":
        raise ValueError(
            f"rebaseline is only valid with decision 'dismissed' (treating the change as the new normal), "
            f"got decision {decision!r}"
        )
    begin_write(session)
    try:
        alert = session.get(Alert, alert_id, populate_existing=True)
        if alert is None:
            raise NotFound(f"alert {alert_id} does not exist")
        if decision == "open" and alert.status == "open":
            raise AlreadyOpen(
                f"alert {alert_id} is already open: only an acknowledged, confirmed or dismissed alert can be re-opened"
            )
        if decision == "open":
            mine = select(Review.id).where(Review.alert_id == alert_id)
            session.execute(
                update(RUNS_TABLE)
                .where(RUNS_TABLE.c.id == alert.run_id, RUNS_TABLE.c.rebaseline_review_id.in_(mine))
                .values(rebaseline_review_id=None)
            )
        review = Review(alert_id=alert_id, decision=decision, reviewer=reviewer, note=note, rebaseline=bool(rebaseline))
        session.add(review)
        alert.status = decision
        if rebaseline:
            session.flush()  # the review's id: the run's pending request
            session.execute(
                update(RUNS_TABLE).where(RUNS_TABLE.c.id == alert.run_id).values(rebaseline_review_id=review.id)
            )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return alert
