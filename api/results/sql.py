"""The results in a sidecar's database, read through :mod:`storage`: :class:`SqlResults`, and the functions on a
session it is made of (the REST export calls those with its request's session).

The objects are built by the API's own converters (:mod:`api.converters`) and schemas, dumped as JSON, so they
are the ``/v1`` answers exactly; a review is checked by the API's ``ReviewIn`` (the same refusals).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import storage

from ..converters import alert_out, runs_out
from ..schemas import MetricRow, ReviewIn
from .backend import ResultsError, parse_run_ref, run_not_found

#: alerts read per query
PAGE = 1000


def find_run(session: Session, ref: str, live_window_s: float) -> dict[str, Any]:
    """The run with this id or name (an id first, see :func:`api.results.backend.parse_run_ref`)."""
    run_id = parse_run_ref(ref)
    run = storage.get_run(session, run_id) if run_id is not None else None
    if run is None:
        run = storage.get_run_by_name(session, ref)
    if run is None:
        raise run_not_found(ref)
    return runs_out(session, [run], live_window_s)[0].model_dump(mode="json")


def evidence_series(session: Session, run_id: int) -> list[str]:
    """The evidence series with at least one stored value in the run (``step_evidence`` holds finite ones only)."""
    stmt = select(storage.StepEvidence.stream).where(storage.StepEvidence.run_id == run_id).distinct()
    return sorted(session.scalars(stmt))


def metric_rows(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Every processed step of the run (no decimation), as ``GET /v1/runs/{id}/metrics?evidence=all`` rows."""
    series = evidence_series(session, run_id)
    rows = storage.metrics(session, run_id, max_points=sys.maxsize, evidence=series)
    return [MetricRow.model_validate(row).model_dump(mode="json") for row in rows]


def run_alerts(session: Session, run_id: int) -> list[dict[str, Any]]:
    """Every alert of the run, by id, each with its reviews (``GET /v1/alerts/{id}`` objects)."""
    alerts: list[storage.Alert] = []
    while True:
        page = storage.list_alerts(session, run_id=run_id, limit=PAGE, offset=len(alerts))
        alerts.extend(page)
        if len(page) < PAGE:
            break
    alerts.sort(key=lambda a: a.id)
    return [alert_out(session, a, with_reviews=True).model_dump(mode="json") for a in alerts]


class SqlResults:
    """:class:`api.results.backend.ResultsBackend` on a database URL (the one ``fpmon serve`` uses).

    Refuses (:class:`ResultsError`) a SQLite file that does not exist (it would be created empty) and a database
    not at the schema this fpmon expects (``fpmon db upgrade``). ``live_window_s``: a run is ``live`` while its
    last step arrived less than this many seconds ago (the sidecar's ``FPMON_LIVE_WINDOW_S``; default 120).
    """

    def __init__(self, database_url: str, live_window_s: float = 120.0) -> None:
        parsed = make_url(database_url)
        file = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if file not in (None, "", ":memory:") and not Path(str(file)).is_file():
            raise ResultsError(
                f"no database at {file} (from {database_url}): pass --database-url (or FPMON_DATABASE_URL) "
                "naming the sidecar's database, or --url (FPMON_URL) for a running sidecar"
            )
        self.engine = storage.make_engine(database_url)
        try:
            storage.check_schema(self.engine)
        except storage.SchemaError as exc:
            self.engine.dispose()
            raise ResultsError(str(exc)) from exc
        except Exception as exc:  # unreachable server, bad credentials: the driver's own words
            self.engine.dispose()
            raise ResultsError(f"cannot use the database {database_url}: {exc}") from exc
        self.sessions = storage.session_factory(self.engine)
        self.live_window_s = live_window_s

    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            runs = storage.list_runs(session, limit=limit)
            return [r.model_dump(mode="json") for r in runs_out(session, runs, self.live_window_s)]

    def find_run(self, ref: str) -> dict[str, Any]:
        with self.sessions() as session:
            return find_run(session, ref, self.live_window_s)

    def list_alerts(self, run_id: int | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            if run_id is not None and storage.get_run(session, run_id) is None:
                raise run_not_found(str(run_id))
            alerts = storage.list_alerts(session, run_id=run_id, status=status, limit=limit)
            return [alert_out(session, a).model_dump(mode="json") for a in alerts]

    def review(self, alert_id: int, decision: str, reviewer: str, note: str | None, rebaseline: bool) -> dict[str, Any]:
        try:
            body = ReviewIn.model_validate(
                {"decision": decision, "reviewer": reviewer, "note": note, "rebaseline": rebaseline}
            )
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ResultsError(f"invalid review: {problems}", "invalid") from exc
        with self.sessions() as session:
            try:
                alert = storage.review_alert(
                    session, alert_id, body.decision, body.reviewer.strip(), body.note, rebaseline=body.rebaseline
                )
            except storage.NotFound as exc:
                raise ResultsError(f"{exc} (`fpmon alerts` lists them)", "not_found") from exc
            except ValueError as exc:
                raise ResultsError(f"invalid review: {exc}", "invalid") from exc
            return alert_out(session, alert, with_reviews=True).model_dump(mode="json")

    def metric_rows(self, run_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return metric_rows(session, run_id)

    def run_alerts(self, run_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            return run_alerts(session, run_id)

    def close(self) -> None:
        self.engine.dispose()
