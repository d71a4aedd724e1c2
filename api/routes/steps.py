"""Step ingest: one safetensors payload per training step, validated and stored by
``monitor.processing.ingest_step`` (the checks the in-process client applies too), queued for the worker.

The body is read on the event loop (streamed, so that an oversized one is refused with 413 as soon as it
passes the limit); decoding, hashing and the SQL write run in a worker thread with a session of their own,
so that health checks and reads stay fast while clients upload steps. At most :data:`INGEST_THREADS` steps
are decoded and written at once: more would only take turns at the GIL (and at SQLite's write lock) with
the threads that serve the other routes; further uploads wait for a turn without holding a thread.
"""

from __future__ import annotations

import time
from typing import Literal

import anyio
from anyio.lowlevel import RunVar
from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy.orm import Session, sessionmaker

from monitor import processing
from monitor.stepfile import MAX_SAMPLE_ID_CHARS, MAX_SCALAR_NAME_CHARS, MAX_SCALARS, StepPayload

from ..deps import RunId, ServicesDep, WriteAuth
from ..schemas import Problem, StepAccepted

router = APIRouter(prefix="/v1/runs", tags=["steps"])

#: most step uploads decoded and written at the same time (per event loop, i.e. per server process)
INGEST_THREADS = 2
_ingest_limiter: RunVar[anyio.CapacityLimiter] = RunVar("fpmon_ingest_limiter")


def ingest_limiter() -> anyio.CapacityLimiter:
    """This event loop's limiter of :data:`INGEST_THREADS` tokens (created on first use, as anyio keeps its
    default thread limiter: one per loop, so that apps started one after another each get their own)."""
    try:
        return _ingest_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(INGEST_THREADS)
        _ingest_limiter.set(limiter)
        return limiter


_PAYLOAD_DOC = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "required": True,
    "description": (
        "A safetensors file: tensor `latents` (n×d, float32/float16/bfloat16), optional `rewards` (n, "
        "float32/float64/float16/bfloat16) and optional `reference_rewards` (n, same dtypes, finite: a held-out "
        "judge's rewards of the same responses, which do not drive training; only with `rewards`; the monitor "
        "then uses the proxy − judge gap); metadata `step` (integer as text) and optional `lr` (positive), "
        "`sample_ids`, `texts`, `prompts` (JSON lists of n strings: valid UTF-8 without NUL characters, "
        f"sample ids of at most {MAX_SAMPLE_ID_CHARS} characters) and `scalars` (a JSON object of named per-step "
        f'numbers, e.g. {{"true_reward": 0.41}}: at most {MAX_SCALARS} names of 1 to {MAX_SCALAR_NAME_CHARS} '
        "printable characters, values finite numbers or null; stored with the step and returned as the metrics "
        "rows' `extra`)."
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


def ingest_in_thread(
    sessions: sessionmaker[Session], run_id: int, body: bytes, limits: processing.IngestLimits
) -> tuple[StepPayload, Literal["queued", "duplicate"]]:
    """``processing.ingest_step`` with a session of its own (opened and closed in the calling thread: the
    route runs this in the thread pool, and a request-scoped session must not cross threads)."""
    with sessions() as session:
        return processing.ingest_step(session, run_id, body, limits)


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
async def ingest_step(run_id: RunId, request: Request, response: Response, services: ServicesDep) -> StepAccepted:
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
        payload, result = await anyio.to_thread.run_sync(
            ingest_in_thread, services.sessions, run_id, body, limits, limiter=ingest_limiter()
        )
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
