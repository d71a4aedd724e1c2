"""The review page: its static files (``/`` and ``/review/…``) and the alert context it shows.

The page (``api/page``, package data of the wheel: HTML, JS, CSS and a vendored uPlot, no CDN) holds no data,
so it is served without a token; everything it shows comes from the ``/v1`` routes, with the token the reviewer
enters.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Query, status
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

import storage

from ..converters import alert_out, sample_out
from ..deps import AlertId, ReadAuth, SessionDep, get_alert_or_404
from ..errors import problem_response
from ..schemas import AlertContext, MapPoint, Problem, ReferencePoint
from ..settings import Settings

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

#: most points of one step returned for the map (a step holds at most FPMON_MAX_N samples)
MAX_MAP_POINTS = 4096
MAX_K = 100


def spread(count: int, size: int) -> list[int]:
    """``size`` indices evenly spread over ``range(count)`` (first and last included), all if fewer."""
    if count <= size:
        return list(range(count))
    if size == 1:
        return [0]
    return sorted({i * (count - 1) // (size - 1) for i in range(size)})


@router.get(
    "/{alert_id}/context", response_model=AlertContext, dependencies=[ReadAuth], responses={404: {"model": Problem}}
)
def alert_context(
    alert_id: AlertId,
    session: SessionDep,
    k: Annotated[int, Query(ge=1, le=MAX_K, description="Samples per list (flagged, typical, reference)")] = 8,
    max_points: Annotated[
        int, Query(ge=16, le=MAX_MAP_POINTS, description="Most map points per step (flagged always kept)")
    ] = MAX_MAP_POINTS,
) -> AlertContext:
    """The alert with its step's observables; the responses it lists (``top_samples``: the ones that carry the
    most evidence, largest first), completed to k by the step's next samples by witness score (by |δ| where the
    step has none), beside k typical samples of the same step (smallest witness score, or |δ|) and k of the
    run's reference step (its first processed step); and the 2-D map (the run's projection) of both steps."""
    alert = get_alert_or_404(session, alert_id)
    run_id, step = alert.run_id, alert.step
    row = storage.get_step(session, run_id, step)
    if row is None:  # the foreign key makes this unreachable unless the step was deleted by hand
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"step {step} of alert {alert_id} is gone")
    listed = [int(s["index"]) for s in alert.top_samples if isinstance(s, dict) and "index" in s][:k]
    by_index = {s.index: s for s in storage.samples_at(session, run_id, step, listed)}
    flagged = [by_index[i] for i in listed if i in by_index]
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
    return AlertContext(
        alert=alert_out(session, alert, with_reviews=True),
        step_scalars=row.scalars or {},
        transition=row.transition,
        k=k,
        flagged=[sample_out(s) for s in flagged],
        typical=[sample_out(s) for s in typical],
        reference_step=reference_step,
        reference=[sample_out(s) for s in reference],
        n=n,
        points=[MapPoint(index=i, x=x, y=y, div=d, flagged=i in flagged_ids, text=t) for i, x, y, d, t in point_rows],
        reference_points=reference_points,
    )


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
