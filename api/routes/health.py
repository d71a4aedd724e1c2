"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from storage import Step

from ..deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database unreachable or no live worker"}})
def readyz(request: Request, services: ServicesDep) -> dict[str, object]:
    """The database answers and every compute worker thread is alive."""
    workers = getattr(request.app.state, "workers", [])
    alive = sum(1 for w in workers if w.is_alive())
    try:
        with services.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"database unreachable: {exc}") from exc
    if alive < len(workers) or not workers:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{alive} of {len(workers)} workers alive")
    return {"status": "ready", "workers": alive}


@router.get("/metrics", response_class=Response)
def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus exposition (names prefixed ``fpmon_``)."""
    workers = getattr(request.app.state, "workers", [])
    services.metrics.workers_alive.set(sum(1 for w in workers if w.is_alive()))
    try:
        with services.sessions() as session:
            depth = session.scalar(select(func.count()).where(Step.status.in_(("pending", "processing"))))
        services.metrics.queue_depth.set(int(depth or 0))
    except Exception:  # the metrics page must answer even when the database does not
        pass
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
