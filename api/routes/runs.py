"""Runs: create (idempotent by name), list, get, metric history, samples of a step."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

import storage
from storage import Run, StepSample
from storage.types import utcnow

from ..deps import ReadAuth, ServicesDep, SessionDep, WriteAuth
from ..schemas import MAX_DB_INT, MetricRow, MetricRows, Problem, RunCreate, RunList, RunOut, SampleList, SampleOut
from ..worker import monitor_config_of

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The run's id")]
StepNo = Annotated[int, Path(ge=0, le=MAX_DB_INT, description="Training step")]
StepBound = Annotated[int | None, Query(ge=0, le=MAX_DB_INT)]


def run_out(run: Run, open_alerts: int, live_window_s: float, now: datetime | None = None) -> RunOut:
    """The run's API form; ``status`` is ``live`` when its last step arrived less than ``live_window_s`` ago."""
    now = now or utcnow()
    live = run.last_step_at is not None and (now - run.last_step_at).total_seconds() < live_window_s
    return RunOut(
        run_id=run.id,
        name=run.name,
        latent_dim=run.latent_dim,
        config=run.config,
        created_at=run.created_at,
        D0=run.D0,
        steps_received=run.steps_received,
        steps_processed=run.steps_processed,
        last_step_at=run.last_step_at,
        open_alerts=open_alerts,
        status="live" if live else "idle",
    )


def sample_out(sample: StepSample) -> SampleOut:
    return SampleOut(
        index=sample.index,
        sample_id=sample.sample_id,
        div=sample.div,
        reward=sample.reward,
        text=sample.text,
        x=sample.x,
        y=sample.y,
        prompt=sample.prompt,
    )


def runs_out(session: SessionDep, services: ServicesDep, runs: list[Run]) -> list[RunOut]:
    counts = storage.open_alert_counts(session, [r.id for r in runs])
    window = services.settings.live_window_s
    return [run_out(r, counts[r.id], window) for r in runs]


def get_run_or_404(session: SessionDep, run_id: int) -> Run:
    run = storage.get_run(session, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} does not exist; create it with POST /v1/runs")
    return run


@router.post(
    "",
    response_model=RunOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAuth],
    responses={200: {"model": RunOut, "description": "A run of that name exists"}, 409: {"model": Problem}},
)
def create_run(body: RunCreate, session: SessionDep, services: ServicesDep, response: Response) -> RunOut:
    """Create a run; the same name again returns the existing run (200).

    ``config["monitor"]``, if given, must be a ``MonitorConfig.to_dict()``: it is checked here (422),
    not at the first step.
    """
    if "monitor" in body.config:
        try:
            monitor_config_of(body.config)
        except (ValueError, TypeError) as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"config.monitor is not a valid MonitorConfig: {exc}"
            ) from exc
    run, created = storage.get_or_create_run(session, body.name, body.latent_dim, body.config)
    if not created:
        if run.latent_dim != body.latent_dim:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"run {body.name!r} exists with latent_dim {run.latent_dim}, not {body.latent_dim}; use another name",
            )
        response.status_code = status.HTTP_200_OK
    return runs_out(session, services, [run])[0]


@router.get("", response_model=RunList, dependencies=[ReadAuth])
def list_runs(
    session: SessionDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> RunList:
    """Runs by id, each with its open alerts and live/idle status."""
    return RunList(runs=runs_out(session, services, storage.list_runs(session, limit=limit, offset=offset)))


@router.get("/{run_id}", response_model=RunOut, dependencies=[ReadAuth], responses={404: {"model": Problem}})
def get_run(run_id: RunId, session: SessionDep, services: ServicesDep) -> RunOut:
    return runs_out(session, services, [get_run_or_404(session, run_id)])[0]


@router.get(
    "/{run_id}/metrics", response_model=MetricRows, dependencies=[ReadAuth], responses={404: {"model": Problem}}
)
def get_metrics(
    run_id: RunId,
    session: SessionDep,
    names: Annotated[str | None, Query(description="Comma-separated scalar names, e.g. C,S_dot")] = None,
    start: StepBound = None,
    end: StepBound = None,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 1000,
) -> MetricRows:
    """One row per processed step in [start, end], decimated to at most max_points (first and last kept)."""
    get_run_or_404(session, run_id)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    rows = storage.metrics(session, run_id, wanted, start, end, max_points)
    return MetricRows(rows=[MetricRow(step=r["step"], scalars=r["scalars"], transition=r["transition"]) for r in rows])


@router.get(
    "/{run_id}/steps/{step}/samples",
    response_model=SampleList,
    dependencies=[ReadAuth],
    responses={404: {"model": Problem}},
)
def get_samples(
    run_id: RunId,
    step: StepNo,
    session: SessionDep,
    order: Annotated[str, Query(pattern="^(div|index)$")] = "div",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> SampleList:
    """The samples of a processed step, by |δ| (largest first) or by index."""
    get_run_or_404(session, run_id)
    row = storage.get_step(session, run_id, step)
    if row is None or row.status != "done":
        state = "not received" if row is None else row.status
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"step {step} of run {run_id} is {state}, not processed")
    samples = storage.step_samples(session, run_id, step, order=order, limit=limit, offset=offset)
    return SampleList(samples=[sample_out(s) for s in samples])
