"""The FastAPI application: ``create_app(settings)`` (tests, ``fpmon serve``) and ``app`` (uvicorn)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from monitor.processing import StepProcessor, resolve_device
from storage import check_schema, make_engine, session_factory

from .deps import Services
from .errors import install_error_handlers, problem_openapi
from .metrics import Metrics
from .notify import Notifier
from .routes import alerts, docs, export, health, review, runs, steps
from .schemas import Problem
from .security import FrontDoor, SecurityHeaders, install_access_log_redaction, internal_error_with_headers
from .settings import Settings
from .worker import WorkerProcess, WorkerThread

log = logging.getLogger("fpmon.api")


def create_app(settings: Settings | None = None, start_workers: bool = True) -> FastAPI:
    """The sidecar app. Refuses (``storage.SchemaError``) a database that is not at the code's revision,
    and (``ValueError``) a non-loopback bind without tokens."""
    settings = settings or Settings()
    settings.check_bind()
    engine = make_engine(settings.database_url)
    check_schema(engine)
    services = Services(settings=settings, sessions=session_factory(engine), metrics=Metrics())
    notify_targets = [target.id for target in settings.webhook_targets()]
    if not settings.auth_enabled:
        log.warning("no FPMON_API_TOKENS / FPMON_READ_TOKENS: serving WITHOUT authentication on %s", settings.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers: list[WorkerThread | WorkerProcess] = []
        if start_workers and settings.worker_mode == "process":
            resolve_device(settings.device)  # fail here, not in the children
            for _ in range(settings.workers):
                child = WorkerProcess(settings.model_dump(mode="json"))
                child.start()
                workers.append(child)
        elif start_workers:
            device = resolve_device(settings.device)
            for _ in range(settings.workers):
                processor = StepProcessor(
                    services.sessions,
                    device,
                    claim_stale_s=settings.claim_stale_s,
                    claim_timeout_s=settings.claim_timeout_s,
                    retention_steps=settings.retention_steps,
                    notify_targets=notify_targets,
                )
                thread = WorkerThread(processor, settings.worker_poll_s)
                thread.start()
                workers.append(thread)
        app.state.workers = workers
        # webhooks configured: one notifier thread delivers the outbox (even without workers: another
        # replica's workers may raise the alerts)
        notifier = None
        if notify_targets:
            notifier = Notifier(services.sessions, settings, on_attempt=services.metrics.count_webhook_attempt)
            notifier.start()
        app.state.notifier = notifier
        try:
            yield
        finally:
            if notifier is not None:
                notifier.stop()
            for worker in workers:
                worker.stop()
            engine.dispose()

    app = FastAPI(
        title="fpmon sidecar",
        version="0.1.0",
        description="Fokker–Planck monitoring of RLHF runs: ingest step latents, query observables and alerts.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI is served offline by api.routes.docs
        redoc_url=None,  # ReDoc's bundle is not packaged: not served (docs/sidecar.md)
    )
    app.state.services = services
    app.state.workers = []
    app.state.notifier = None
    services.metrics.watch_database(
        services.sessions, lambda: sum(1 for w in getattr(app.state, "workers", []) if w.is_ready())
    )
    for module in (runs, steps, alerts, review, health, export, docs):
        app.include_router(module.router)
    review.mount_review_page(app, settings)
    # errors in one shape (RFC 9457 problem details), in the answers and in the OpenAPI document
    install_error_handlers(app, internal_error_with_headers)
    app.openapi = problem_openapi(app, Problem.model_json_schema(ref_template="#/components/schemas/{model}"))  # type: ignore[method-assign]
    # the front door, outermost first: security headers on every answer (and a 500 problem for an escaped
    # exception) around authentication -> body limits -> JSON depth, all before a route reads the body
    app.add_middleware(FrontDoor, settings=settings, metrics=services.metrics)
    app.add_middleware(SecurityHeaders)
    install_access_log_redaction()
    return app
