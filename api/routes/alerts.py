"""Alerts: list with filters, get, review (acknowledge / confirm / dismiss with a note, or re-open)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

import storage

from ..converters import alert_out
from ..deps import AlertId, ReadAuth, SessionDep, WriteAuth, get_alert_or_404, get_run_or_404
from ..schemas import MAX_DB_INT, NO_NUL, AlertList, AlertOut, Problem, ReviewIn

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])


@router.get("", response_model=AlertList, dependencies=[ReadAuth], responses={404: {"model": Problem}})
def list_alerts(
    session: SessionDep,
    run_id: Annotated[int | None, Query(ge=1, le=MAX_DB_INT)] = None,
    status_: Annotated[str | None, Query(alias="status", pattern="^(open|acknowledged|confirmed|dismissed)$")] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=64, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> AlertList:
    """Alerts, newest first. An unknown ``run_id`` is a 404, like every other unknown id."""
    if run_id is not None:
        get_run_or_404(session, run_id)
    alerts = storage.list_alerts(session, run_id=run_id, status=status_, type=type_, limit=limit, offset=offset)
    return AlertList(alerts=[alert_out(session, a) for a in alerts])


@router.get("/{alert_id}", response_model=AlertOut, dependencies=[ReadAuth], responses={404: {"model": Problem}})
def get_alert(alert_id: AlertId, session: SessionDep) -> AlertOut:
    return alert_out(session, get_alert_or_404(session, alert_id), with_reviews=True)


@router.post(
    "/{alert_id}/review",
    response_model=AlertOut,
    dependencies=[WriteAuth],
    responses={
        404: {"model": Problem},
        409: {"model": Problem, "description": "decision open for an alert that is already open"},
        422: {"model": Problem, "description": "Invalid review, e.g. rebaseline with another decision than dismissed"},
    },
)
def review_alert(alert_id: AlertId, body: ReviewIn, session: SessionDep) -> AlertOut:
    """Record a reviewer's decision; the alert's status becomes the decision.

    ``rebaseline: true`` (only with ``decision: "dismissed"``, else 422 and nothing is recorded) treats the
    change as the run's new normal: the run's monitor is re-baselined before its next processed step (the
    request is stored with the run, so a restart does not lose it; ``RunOut.rebaseline_pending`` shows it and
    the review's ``rebaseline_step`` says when it was applied). Without it, or when confirming, the detector is
    left as it is.

    ``decision: "open"`` re-opens a decided alert (409 if it is open already): the history keeps every review,
    and a re-baseline still pending from a dismissal of this alert is withdrawn (one already applied stays).
    """
    get_alert_or_404(session, alert_id)
    try:
        alert = storage.review_alert(
            session, alert_id, body.decision, body.reviewer.strip(), body.note, rebaseline=body.rebaseline
        )
    except storage.NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except storage.AlreadyOpen as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return alert_out(session, alert, with_reviews=True)
