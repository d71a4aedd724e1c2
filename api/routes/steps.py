"""Step ingest: one safetensors payload per training step, validated, stored, queued for the worker."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, HTTPException, Request, Response, status

import storage
from monitor.stepfile import decode_step, payload_digest

from ..deps import ServicesDep, SessionDep, WriteAuth
from ..schemas import MAX_DB_INT, Problem, StepAccepted
from .runs import RunId, get_run_or_404

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
    run = get_run_or_404(session, run_id)
    try:
        payload = decode_step(body)
    except ValueError as exc:
        metrics.rejected.labels(reason="payload").inc()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    n, d = payload.latents.shape
    problems = []
    if not 0 <= payload.step <= MAX_DB_INT:
        problems.append(f"step must be between 0 and {MAX_DB_INT}, got {payload.step}")
    if d != run.latent_dim:
        problems.append(f"latents have d={d}, but run {run_id} was created with latent_dim={run.latent_dim}")
    if n < 2:
        problems.append(f"a step needs at least 2 samples, got n={n}")
    if n > settings.max_n or d > settings.max_d:
        problems.append(f"n={n}, d={d} exceed the limits n <= {settings.max_n}, d <= {settings.max_d}")
    if not bool(torch.isfinite(payload.latents.float()).all()):
        problems.append("latents contain NaN or Inf; drop or fix those samples")
    if payload.rewards is not None and not bool(torch.isfinite(payload.rewards).all()):
        problems.append("rewards contain NaN or Inf")
    if problems:
        metrics.rejected.labels(reason="validation").inc()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(problems))
    try:
        result = storage.ingest_step(session, run_id, payload.step, body, n, digest=payload_digest(payload))
    except storage.StepConflict as exc:
        metrics.rejected.labels(reason="conflict").inc()
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except storage.NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if result == "duplicate":
        metrics.duplicates.inc()
        response.status_code = status.HTTP_200_OK
    else:
        metrics.ingested.inc()
    metrics.ingest_latency.observe(time.perf_counter() - started)
    return StepAccepted(run_id=run_id, step=payload.step, status=result)
