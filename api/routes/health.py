"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
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


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus exposition (names prefixed ``fpmon_``; see ``api.metrics``)."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
