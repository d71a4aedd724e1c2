"""Step ingest: one safetensors payload per training step, validated and stored by
``monitor.processing.ingest_step`` (the checks the in-process client applies too), queued for the worker."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request, Response, status

from monitor import processing

from ..deps import RunId, ServicesDep, SessionDep, WriteAuth
from ..schemas import Problem, StepAccepted

router = APIRouter(prefix="/v1/runs", tags=["steps"])

_PAYLOAD_DOC = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "required": True,
    "description": (
        "A safetensors file: tensor `latents` (n×d, float32/float16/bfloat16), optional `rewards` (n, "
        "float32); metadata `step` (integer as text) and optional `lr`, `sample_ids`, `texts`, `prompts` "
        "(JSON lists of length n)."
    ),
}


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it exceeds ``limit`` bytes (Content-Length checked first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body of {declared} bytes exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/{run_id}/steps",
    response_model=StepAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAuth],
    openapi_extra={"requestBody": _PAYLOAD_DOC},
    responses={
        200: {"model": StepAccepted, "description": "The same step with the same bytes was already received"},
        400: {"model": Problem},
        404: {"model": Problem},
        409: {"model": Problem},
        413: {"model": Problem},
        415: {"model": Problem},
        422: {"model": Problem},
    },
)
async def ingest_step(
    run_id: RunId, request: Request, response: Response, services: ServicesDep, session: SessionDep
) -> StepAccepted:
    """Validate and store one step; a worker computes its observables (202, queued)."""
    started = time.perf_counter()
    settings, metrics = services.settings, services.metrics
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != "application/octet-stream":
        metrics.rejected.labels(reason="content_type").inc()
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send the step as Content-Type: application/octet-stream (a safetensors file), not {content_type!r}",
        )
    body = await read_body_limited(request, settings.max_body_bytes)
    try:
        limits = processing.IngestLimits(max_n=settings.max_n, max_d=settings.max_d)
        payload, result = processing.ingest_step(session, run_id, body, limits)
    except processing.IngestError as exc:
        if exc.reason is not None:
            metrics.rejected.labels(reason=exc.reason).inc()
        raise HTTPException(exc.status, str(exc)) from exc
    if result == "duplicate":
        metrics.duplicates.inc()
        response.status_code = status.HTTP_200_OK
    else:
        metrics.ingested.inc()
    metrics.ingest_latency.observe(time.perf_counter() - started)
    return StepAccepted(run_id=run_id, step=payload.step, status=result)
