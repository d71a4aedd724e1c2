"""Runs: create (idempotent by name), list, get, metric history, samples of a step."""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

import storage
from monitor.processing import EVIDENCE_SERIES, monitor_config_of

from ..converters import runs_out, sample_out
from ..deps import ReadAuth, RunId, ServicesDep, SessionDep, StepBound, StepNo, WriteAuth, get_run_or_404
from ..errors import FieldError
from ..schemas import MAX_DB_INT, NO_NUL, MetricRow, MetricRows, Problem, RunCreate, RunList, RunOut, SampleList

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post(
    "",
    response_model=RunOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAuth],
    responses={
        200: {"model": RunOut, "description": "A run of that name exists"},
        409: {"model": Problem, "description": "A run of that name exists with another latent_dim"},
    },
)
def create_run(body: RunCreate, session: SessionDep, services: ServicesDep, response: Response) -> RunOut:
    """Create a run; the same name again returns the existing run (200).

    ``latent_dim`` must not exceed the server's ``FPMON_MAX_D`` and ``config`` (JSON) not
    ``FPMON_MAX_CONFIG_BYTES`` (422). ``config["monitor"]``, if given, must be a ``MonitorConfig.to_dict()``:
    it is checked here (422), not at the first step.
    """
    settings = services.settings
    unprocessable = status.HTTP_422_UNPROCESSABLE_CONTENT
    if body.latent_dim > settings.max_d:
        raise FieldError(
            unprocessable,
            ["body", "latent_dim"],
            f"latent_dim {body.latent_dim} exceeds this server's limit (FPMON_MAX_D={settings.max_d})",
        )
    size = len(json.dumps(body.config, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > settings.max_config_bytes:
        raise FieldError(
            unprocessable,
            ["body", "config"],
            f"config is {size} bytes of JSON; the limit is {settings.max_config_bytes} (FPMON_MAX_CONFIG_BYTES)",
        )
    if "monitor" in body.config:
        try:
            monitor_config_of(body.config)
        except (ValueError, TypeError) as exc:
            raise FieldError(
                unprocessable, ["body", "config", "monitor"], f"config.monitor is not a valid MonitorConfig: {exc}"
            ) from exc
    try:
        run, created = storage.get_or_create_run(session, body.name, body.latent_dim, body.config)
    except ValueError as exc:  # the schema refuses these first; storage's own checks, answered the same way
        raise HTTPException(unprocessable, str(exc)) from exc
    if not created:
        if run.latent_dim != body.latent_dim:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"run {body.name!r} exists with latent_dim {run.latent_dim}, not {body.latent_dim}; use another name",
            )
        response.status_code = status.HTTP_200_OK
    return runs_out(session, [run], services.settings.live_window_s)[0]


@router.get("", response_model=RunList, dependencies=[ReadAuth])
def list_runs(
    session: SessionDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> RunList:
    """Runs by id, each with its open alerts and live/idle status."""
    return RunList(
        runs=runs_out(session, storage.list_runs(session, limit=limit, offset=offset), services.settings.live_window_s)
    )


@router.get("/{run_id}", response_model=RunOut, dependencies=[ReadAuth], responses={404: {"model": Problem}})
def get_run(run_id: RunId, session: SessionDep, services: ServicesDep) -> RunOut:
    return runs_out(session, [get_run_or_404(session, run_id)], services.settings.live_window_s)[0]


#: the ``evidence`` query parameter's value that asks for every evidence series the run has
ALL_EVIDENCE = "all"


def evidence_names(evidence: str | None) -> list[str] | None:
    """The evidence series asked for (``all``: every known one); a 422 naming the valid ones for unknown names."""
    if evidence is None:
        return None
    wanted = list(dict.fromkeys(n.strip() for n in evidence.split(",") if n.strip()))
    if wanted == [ALL_EVIDENCE]:
        return list(EVIDENCE_SERIES)
    unknown = [n for n in wanted if n not in EVIDENCE_SERIES]
    if unknown or not wanted:
        raise FieldError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            ["query", "evidence"],
            f"unknown evidence series {unknown or [evidence]}; use {ALL_EVIDENCE!r} or a comma-separated list of "
            f"{list(EVIDENCE_SERIES)}",
        )
    return wanted


@router.get(
    "/{run_id}/metrics", response_model=MetricRows, dependencies=[ReadAuth], responses={404: {"model": Problem}}
)
def get_metrics(
    run_id: RunId,
    session: SessionDep,
    names: Annotated[
        str | None, Query(description="Comma-separated scalar names, e.g. C,S_dot", pattern=NO_NUL)
    ] = None,
    start: StepBound = None,
    end: StepBound = None,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 1000,
    evidence: Annotated[
        str | None,
        Query(
            description="Evidence of change to add to each row (rows[].evidence, natural-log e-values) with the "
            "alarm level (evidence_threshold = log(1/alpha)): 'all' (every series the run has), or comma-separated "
            f"names among {', '.join(EVIDENCE_SERIES)} (embedding and reward are the combined evidence that raises "
            "alerts; the others are its streams). Unknown names: 422.",
            pattern=NO_NUL,
            max_length=1000,
        ),
    ] = None,
) -> MetricRows:
    """One row per processed step in [start, end], decimated to at most max_points (first and last kept).

    With ``evidence``, each row also carries the requested evidence series after that step and the response the
    run's alarm level ``evidence_threshold`` (``log(1/alpha)``; ``evidence_alpha`` = alpha): an alert is raised
    when the combined ``embedding`` (or ``reward``) evidence reaches it. With ``evidence=all``, series that have no
    value at any returned step are left out.
    """
    get_run_or_404(session, run_id)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    series = evidence_names(evidence)
    rows = storage.metrics(session, run_id, wanted, start, end, max_points, evidence=series)
    if series is not None and evidence is not None and evidence.strip() == ALL_EVIDENCE:
        present = {name for r in rows for name, value in r["evidence"].items() if value is not None}
        for r in rows:
            r["evidence"] = {name: value for name, value in r["evidence"].items() if name in present}
    threshold = storage.evidence_threshold(session, run_id) if series is not None else None
    return MetricRows(
        rows=[
            MetricRow(
                step=r["step"],
                scalars=r["scalars"],
                extra=r["extra"],
                transition=r["transition"],
                evidence=r.get("evidence"),
            )
            for r in rows
        ],
        evidence_threshold=threshold,
        evidence_alpha=math.exp(-threshold) if threshold is not None else None,
    )


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
    order: Annotated[
        str,
        Query(
            pattern="^(div|witness|index)$",
            description="div: by |δ|, largest first; witness: by witness score (the evidence a sample carries), "
            "largest first, unknown scores last; index: by position in the step",
        ),
    ] = "div",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT)] = 0,
) -> SampleList:
    """The samples of a processed step (each with its witness score), by |δ| (largest first), by witness score
    (largest first) or by index."""
    get_run_or_404(session, run_id)
    row = storage.get_step(session, run_id, step)
    if row is None or row.status != "done":
        state = "not received" if row is None else row.status
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"step {step} of run {run_id} is {state}, not processed")
    samples = storage.step_samples(session, run_id, step, order=order, limit=limit, offset=offset)
    return SampleList(samples=[sample_out(s) for s in samples])
