"""The review page: its static files (``/`` and ``/review/…``) and the step and alert contexts it shows.

The page (``api/page``, package data of the wheel: HTML, JS, CSS and a vendored uPlot, no CDN) holds no data,
so it is served without a token; everything it shows comes from the ``/v1`` routes, with the token the reviewer
enters.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, status
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

import storage

from ..converters import alert_out, sample_out
from ..deps import AlertId, ReadAuth, RunId, SessionDep, StepNo, get_alert_or_404, get_run_or_404
from ..errors import problem_response
from ..schemas import AlertContext, MapPoint, Problem, ReferencePoint, StepContext
from ..settings import Settings

router = APIRouter()

#: most points of one step returned for the map (a step holds at most FPMON_MAX_N samples)
MAX_MAP_POINTS = 4096
MAX_K = 100

ContextK = Annotated[int, Query(ge=1, le=MAX_K, description="Samples per list (flagged, typical, reference)")]
MaxPoints = Annotated[
    int, Query(ge=16, le=MAX_MAP_POINTS, description="Most map points per step (flagged always kept)")
]


def spread(count: int, size: int) -> list[int]:
    """``size`` indices evenly spread over ``range(count)`` (first and last included), all if fewer."""
    if count <= size:
        return list(range(count))
    if size == 1:
        return [0]
    return sorted({i * (count - 1) // (size - 1) for i in range(size)})


def step_context(
    session: Session, run_id: int, step: int, listed: list[int], k: int, max_points: int
) -> dict[str, Any]:
    """The fields of :class:`StepContext` for a processed step of a run.

    ``listed``: sample indices to lead the flagged list (an alert's ``top_samples``, in order; [] for a plain
    step), completed to k by the step's next samples by witness score (by |δ| where the step has none); k
    typical samples (smallest witness score, or |δ|) beside them, k of the run's reference step (its first
    processed step) and the 2-D map (the run's projection) of both steps. 404 when the step was never received,
    409 when it is not processed (yet).
    """
    row = storage.get_step(session, run_id, step)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"step {step} of run {run_id} was not received (GET /v1/runs/{run_id}/metrics lists its processed steps)",
        )
    if row.status != "done":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"step {step} of run {run_id} is {row.status}, not processed yet: its context exists once the worker has "
            "processed it" + (" (it failed; see the server log)" if row.status == "failed" else ""),
        )
    by_index = {s.index: s for s in storage.samples_at(session, run_id, step, listed[:k])}
    flagged = [by_index[i] for i in listed[:k] if i in by_index]
    if len(flagged) < k:
        taken = {s.index for s in flagged}
        more = storage.step_samples(session, run_id, step, order="witness", limit=2 * k)
        flagged += [s for s in more if s.index not in taken][: k - len(flagged)]
    flagged_ids = {s.index for s in flagged}
    typical = [
        s
        for s in storage.step_samples(session, run_id, step, order="witness_asc", limit=2 * k)
        if s.index not in flagged_ids
    ][:k]
    n = storage.sample_count(session, run_id, step)
    if n <= max_points:
        point_rows = storage.sample_points(session, run_id, step)
    else:
        keep = set(spread(n, max_points - len(flagged_ids))) | flagged_ids
        point_rows = storage.sample_points(session, run_id, step, sorted(keep))
    reference_step = storage.first_processed_step(session, run_id)
    reference = []
    reference_points: list[ReferencePoint] = []
    if reference_step is not None:
        m = storage.sample_count(session, run_id, reference_step)
        reference = storage.samples_at(session, run_id, reference_step, spread(m, k))
        ref_rows = storage.sample_points(
            session, run_id, reference_step, None if m <= max_points else spread(m, max_points)
        )
        reference_points = [ReferencePoint(index=i, x=x, y=y, text=t) for i, x, y, _, t in ref_rows]
    prev_step, next_step = storage.adjacent_steps(session, run_id, step)
    alerts = storage.list_alerts(session, run_id=run_id, step=step, limit=1000)
    return {
        "run_id": run_id,
        "step": step,
        "step_scalars": row.scalars or {},
        "extra": row.extra_scalars or {},
        "transition": row.transition,
        "k": k,
        "flagged": [sample_out(s) for s in flagged],
        "typical": [sample_out(s) for s in typical],
        "reference_step": reference_step,
        "reference": [sample_out(s) for s in reference],
        "n": n,
        "points": [
            MapPoint(index=i, x=x, y=y, div=d, flagged=i in flagged_ids, text=t) for i, x, y, d, t in point_rows
        ],
        "reference_points": reference_points,
        "prev_step": prev_step,
        "next_step": next_step,
        "alert_ids": sorted(a.id for a in alerts),
    }


@router.get(
    "/v1/alerts/{alert_id}/context",
    tags=["alerts"],
    response_model=AlertContext,
    dependencies=[ReadAuth],
    responses={404: {"model": Problem}},
)
def alert_context(
    alert_id: AlertId, session: SessionDep, k: ContextK = 8, max_points: MaxPoints = MAX_MAP_POINTS
) -> AlertContext:
    """The alert with its step's context (:func:`step_context`): the responses it lists (``top_samples``: the
    ones that carry the most evidence, largest first) lead the flagged list."""
    alert = get_alert_or_404(session, alert_id)
    listed = [int(s["index"]) for s in alert.top_samples if isinstance(s, dict) and "index" in s]
    try:
        fields = step_context(session, alert.run_id, alert.step, listed, k, max_points)
    except HTTPException as exc:  # the foreign key makes this unreachable unless the step was changed by hand
        raise HTTPException(exc.status_code, f"alert {alert_id}: {exc.detail}") from exc
    return AlertContext(alert=alert_out(session, alert, with_reviews=True), **fields)


@router.get(
    "/v1/runs/{run_id}/steps/{step}/context",
    tags=["runs"],
    response_model=StepContext,
    dependencies=[ReadAuth],
    responses={
        404: {"model": Problem, "description": "Unknown run, or a step the run never received"},
        409: {"model": Problem, "description": "The step is received but not processed (yet), or failed"},
    },
)
def run_step_context(
    run_id: RunId, step: StepNo, session: SessionDep, k: ContextK = 8, max_points: MaxPoints = MAX_MAP_POINTS
) -> StepContext:
    """Any processed step's context, as an alert's: its k most-evidence responses (witness score), k typical
    ones, k of the reference step, the 2-D map, the step's observables and extra scalars, the alerts raised at
    it, and the run's processed steps before and after it."""
    get_run_or_404(session, run_id)
    return StepContext(**step_context(session, run_id, step, [], k, max_points))


def mount_review_page(app: FastAPI, settings: Settings) -> None:
    """Serve ``index.html`` at ``/`` and the page's files under ``/review/`` (no token: they hold no data).

    A missing folder is not fatal (the API works without the page): ``/`` then answers 404 saying where
    it looked and how to point ``FPMON_REVIEW_DIR`` at the files.
    """
    folder = settings.resolved_review_dir()
    index = folder / "index.html"

    @app.get("/", include_in_schema=False)
    def review_page() -> Response:
        if not index.is_file():
            return problem_response(
                status.HTTP_404_NOT_FOUND,
                f"the review page is not installed: {index} does not exist. Set FPMON_REVIEW_DIR to the "
                "folder holding the review page (index.html, app.js, app.css, vendor/), or reinstall fpmon.",
            )
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.mount("/review", StaticFiles(directory=folder, check_dir=False), name="review")
