"""Request dependencies shared by the routes: the app's services, database sessions, bearer-token
authentication, the path parameters naming a run, step or alert, and the lookups that 404 on unknown ids."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

import storage

from .metrics import Metrics
from .schemas import MAX_DB_INT
from .security import auth_refusal
from .settings import Settings


@dataclass
class Services:
    """What the routes need, kept on ``app.state.services``."""

    settings: Settings
    sessions: sessionmaker[Session]
    metrics: Metrics


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_session(services: Annotated[Services, Depends(get_services)]) -> Iterator[Session]:
    with services.sessions() as session:
        yield session


_bearer = HTTPBearer(auto_error=False, description="FPMON_API_TOKENS (write) or FPMON_READ_TOKENS (read)")


def _check_token(services: Services, credentials: HTTPAuthorizationCredentials | None, write: bool) -> None:
    """401 for a missing or unknown token, 403 for a read token on a write route; nothing when auth is off.

    The same check (:func:`api.security.auth_refusal`, constant-time) as the front door's, which refuses such a
    request before its body is read; this is the route's own second line.
    """
    token = credentials.credentials if credentials is not None else None
    refusal = auth_refusal(services.settings, token, write)
    if refusal is None:
        return
    status_code, message = refusal
    services.metrics.rejected.labels(reason="auth").inc()
    headers = {"WWW-Authenticate": "Bearer"} if status_code == status.HTTP_401_UNAUTHORIZED else None
    raise HTTPException(status_code, message, headers=headers)


def require_read(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Any configured token (read or write) may read."""
    _check_token(services, credentials, write=False)


def require_write(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Only write tokens (FPMON_API_TOKENS) may write."""
    _check_token(services, credentials, write=True)


SessionDep = Annotated[Session, Depends(get_session)]
ServicesDep = Annotated[Services, Depends(get_services)]
ReadAuth = Depends(require_read)
WriteAuth = Depends(require_write)


RunId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The run's id")]
AlertId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The alert's id")]
StepNo = Annotated[int, Path(ge=0, le=MAX_DB_INT, description="Training step")]
StepBound = Annotated[int | None, Query(ge=0, le=MAX_DB_INT)]


def get_run_or_404(session: Session, run_id: int) -> storage.Run:
    """The run with this id; 404 when there is none."""
    run = storage.get_run(session, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} does not exist (GET /v1/runs lists the runs)")
    return run


def get_alert_or_404(session: Session, alert_id: int) -> storage.Alert:
    """The alert with this id; 404 when there is none."""
    alert = storage.get_alert(session, alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"alert {alert_id} does not exist")
    return alert
