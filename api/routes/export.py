"""A run's results as a file download: ``GET /v1/runs/{run_id}/export?format=…&table=…`` (docs/results.md).

The same tables and files as ``fpmon export`` (:mod:`api.results`): built here from the database, whole, in
memory (a run of 100 000 steps with a dozen columns is a few tens of MB).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status

from ..converters import runs_out
from ..deps import ReadAuth, RunId, ServicesDep, SessionDep, get_run_or_404
from ..errors import FieldError
from ..results.backend import RunResults
from ..results.sql import metric_rows, run_alerts
from ..results.tables import TABLES, TableName, build
from ..results.writers import MEDIA_TYPES, ParquetUnavailable, encode, filename
from ..schemas import Problem

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.get(
    "/{run_id}/export",
    dependencies=[ReadAuth],
    response_class=Response,
    responses={
        200: {
            "description": "The file, as an attachment (Content-Disposition names it <run>.<table>.<format>)",
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
        },
        404: {"model": Problem, "description": "No run has this id"},
        422: {"model": Problem, "description": "An unknown format or table, or table=all with csv / parquet"},
        501: {"model": Problem, "description": "format=parquet on a server without pyarrow"},
    },
)
def export_run(
    run_id: RunId,
    session: SessionDep,
    services: ServicesDep,
    format: Annotated[
        Literal["csv", "jsonl", "parquet"],
        Query(description="csv and parquet: one table per file; jsonl: typed records, any tables in one file"),
    ] = "csv",
    table: Annotated[
        Literal["steps", "alerts", "reviews", "all"] | None,
        Query(description="Which table (default: all for jsonl, steps for csv and parquet; all needs jsonl)"),
    ] = None,
) -> Response:
    """Download a run's ``steps`` (one row per processed step: observables, ``extra.<name>``, ``evidence.<name>``,
    ``transition``), ``alerts`` (each with its latest review) or ``reviews`` (every decision), as CSV, JSON Lines
    or Parquet — the files ``fpmon export`` writes."""
    run = get_run_or_404(session, run_id)
    chosen = table or ("all" if format == "jsonl" else "steps")
    if chosen == "all" and format != "jsonl":
        raise FieldError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            ["query", "table"],
            f"a {format} file holds one table: ask for table=steps, alerts or reviews (or format=jsonl for all)",
        )
    names: tuple[TableName, ...] = TABLES if chosen == "all" else (chosen,)
    run_json = runs_out(session, [run], services.settings.live_window_s)[0].model_dump(mode="json")
    results = RunResults(run=run_json, rows=metric_rows(session, run_id), alerts=run_alerts(session, run_id))
    try:
        data = encode(run_json, build(results, names), format)
    except ParquetUnavailable as exc:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, f"this sidecar cannot write parquet: {exc}") from exc
    name = filename(run_json, format, None if chosen == "all" else chosen)
    return Response(
        content=data,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )
