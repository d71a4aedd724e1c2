"""Liveness, readiness and Prometheus metrics (public, or behind ``FPMON_METRICS_TOKEN``)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from ..deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database unreachable or no live worker"}})
def readyz(request: Request, services: ServicesDep) -> dict[str, object]:
    """The database answers and every compute worker is alive and taking steps."""
    workers = getattr(request.app.state, "workers", [])
    alive = sum(1 for w in workers if w.is_ready())
    try:
        with services.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"database unreachable: {exc}") from exc
    if alive < len(workers) or not workers:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{alive} of {len(workers)} workers alive")
    return {"status": "ready", "workers": alive}


metrics_bearer = HTTPBearer(auto_error=False, description="FPMON_METRICS_TOKEN, when set")


@router.get("/metrics", response_class=Response, responses={401: {"description": "FPMON_METRICS_TOKEN is set"}})
def metrics(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(metrics_bearer)]
) -> Response:
    """Prometheus exposition (names prefixed ``fpmon_``; see ``api.metrics``). Public unless
    ``FPMON_METRICS_TOKEN`` is set; then it needs ``Authorization: Bearer <that token>`` (compared in
    constant time)."""
    expected = services.settings.metrics_token
    if expected:
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
            services.metrics.rejected.labels(reason="auth").inc()
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid metrics token: send 'Authorization: Bearer <FPMON_METRICS_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
