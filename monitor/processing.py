"""The step pipeline shared by the sidecar and the in-process client: ingest checks, processing, alert JSON.

One training step goes through three stages, the same whichever way it arrives (``POST
/v1/runs/{id}/steps``, the sidecar's workers, or ``MonitorClient(url=None)``):

1. :func:`ingest_step` validates a step payload (``monitor.stepfile`` bytes) against its run and the
   size limits, and stores it as ``pending``. Every refusal is an :class:`IngestError` carrying the HTTP
   status a server answers with, so that the REST route and the in-process sink refuse the same steps
   with the same messages.
2. :class:`StepProcessor` claims the next pending step, restores the run's :class:`RLHFMonitor` from the
   database (and re-baselines it first when a reviewer asked for it, ``storage.review_alert``), observes the
   step and writes the results — observables, samples with their witness scores, the evidence of change
   (``step_evidence``, :data:`EVIDENCE_SERIES`) — the new monitor state and any alert in one transaction (a
   worker can die at any moment; another continues from the last completed step with identical
   observables).
3. :func:`alert_to_dict` turns a stored alert into the JSON object the REST API returns.

This is the one module of ``monitor`` where the HTTP-free math (``monitor.rlhf``) meets SQL
(``storage``); it imports no HTTP framework.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sqlalchemy.orm import Session

import storage
from storage import LostClaim, Step

from .detect.streams import ALL_STREAMS
from .rlhf import MonitorConfig, RLHFMonitor
from .stepfile import MAX_STEP, STRING_FIELDS, StepPayload, check_strings, decode_step, payload_digest

log = logging.getLogger("fpmon.worker")

#: with a retention set, a processor purges old raw payloads every this many processed steps
PURGE_EVERY = 20
#: largest magnitude of a latent coordinate a step may carry: finite float32 values near the type's limit
#: (3.4e38) overflow in the monitor's sums; no embedding comes near 1e30
MAX_ABS_LATENT = 1e30
#: the evidence series a processed step may store (``StepReport.evidence``): the combined ``embedding`` and
#: ``reward`` evidence, then each stream of ``monitor.detect.streams``
EVIDENCE_SERIES: tuple[str, ...] = ("embedding", "reward", *ALL_STREAMS)


# ---------------------------------------------------------------------------------------------- ingest
@dataclass(frozen=True)
class IngestLimits:
    """Size limits a step must respect (the sidecar's ``FPMON_MAX_N`` / ``FPMON_MAX_D``).

    Attributes:
        max_n: most samples (responses) per step. Default 8192.
        max_d: largest latent dimension. Default 8192.
    """

    max_n: int = 8192
    max_d: int = 8192


class IngestError(ValueError):
    """A step that is refused, with the HTTP status that says why.

    Attributes:
        status: 400 (unreadable payload: not safetensors, tensors of the wrong dtype or shape, metadata of the
            wrong type or length), 404 (no such run), 409 (the step was already received with other bytes)
            or 422 (readable but invalid: step number, latent dimension, limits, non-finite or huge values,
            strings the databases cannot store).
        reason: the label of the sidecar's ``fpmon_rejected_total`` counter (``payload``, ``validation``,
            ``conflict``), or None for an unknown run.
    """

    def __init__(self, message: str, *, status: int, reason: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def check_step(payload: StepPayload, latent_dim: int, limits: IngestLimits, run_id: int) -> None:
    """Raise :class:`IngestError` (422) when a decoded step cannot be processed for its run: step number
    outside ``[0, MAX_STEP]``, another latent dimension than the run's, fewer than 2 samples, beyond
    ``limits``, NaN/Inf latents or rewards, latents beyond :data:`MAX_ABS_LATENT`, or strings
    (``sample_ids``, ``texts``, ``prompts``) that the worker could not store in SQLite or PostgreSQL
    (``monitor.stepfile.check_strings``: invalid UTF-8, NUL, over-long sample ids). All problems are listed
    in one message.

    What :func:`monitor.stepfile.decode_step` accepted and this passes, the worker processes: a 202 means
    the step ends ``done`` (unless a later step of its run was processed first)."""
    n, d = payload.latents.shape
    problems = []
    if not 0 <= payload.step <= MAX_STEP:
        problems.append(f"step must be between 0 and {MAX_STEP}, got {payload.step}")
    if d != latent_dim:
        problems.append(f"latents have d={d}, but run {run_id} was created with latent_dim={latent_dim}")
    if n < 2:
        problems.append(f"a step needs at least 2 samples, got n={n}")
    if n > limits.max_n or d > limits.max_d:
        problems.append(f"n={n}, d={d} exceed the limits n <= {limits.max_n}, d <= {limits.max_d}")
    z = payload.latents.float()
    peak = float(z.abs().max()) if z.numel() else 0.0
    if not math.isfinite(peak):
        problems.append("latents contain NaN or Inf; drop or fix those samples")
    elif peak > MAX_ABS_LATENT:
        problems.append(f"latents reach |x| = {peak:.3g}, beyond {MAX_ABS_LATENT:g}; rescale the embeddings")
    if payload.rewards is not None and not bool(torch.isfinite(payload.rewards).all()):
        problems.append("rewards contain NaN or Inf")
    for name in STRING_FIELDS:
        try:
            check_strings(name, getattr(payload, name))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise IngestError("; ".join(problems), status=422, reason="validation")


def ingest_step(
    session: Session, run_id: int, body: bytes, limits: IngestLimits | None = None
) -> tuple[StepPayload, Literal["queued", "duplicate"]]:
    """Validate step payload ``body`` for run ``run_id`` and store it as pending (idempotent on the step).

    Returns the decoded payload and ``"queued"`` (stored now, with the payload's ``scalars`` as the step's
    extra scalars) or ``"duplicate"`` (the same content was received before; the first copy stays). Raises
    :class:`IngestError`: 404 unknown run, 400 unreadable payload (bad ``scalars`` included), 422 invalid
    (:func:`check_step`), 409 the step exists with other content. A refused step changes nothing.
    """
    run = storage.get_run(session, run_id)
    if run is None:
        raise IngestError(f"run {run_id} does not exist", status=404, reason=None)
    try:
        payload = decode_step(body)
    except ValueError as exc:
        raise IngestError(str(exc), status=400, reason="payload") from exc
    check_step(payload, run.latent_dim, limits or IngestLimits(), run_id)
    n = int(payload.latents.shape[0])
    try:
        result = storage.ingest_step(
            session, run_id, payload.step, body, n, digest=payload_digest(payload), extra_scalars=payload.scalars
        )
    except storage.StepConflict as exc:
        raise IngestError(str(exc), status=409, reason="conflict") from exc
    except storage.NotFound as exc:
        raise IngestError(str(exc), status=404, reason=None) from exc
    return payload, result


# ---------------------------------------------------------------------------------------------- processing
def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a CUDA device is a ``ValueError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("FPMON_DEVICE=cuda but torch sees no CUDA device; use auto or cpu")
    return torch.device(device)


def monitor_config_of(run_config: dict[str, Any]) -> MonitorConfig:
    """The run's MonitorConfig: ``config["monitor"]`` (MonitorConfig.to_dict() form) or the defaults."""
    data = run_config.get("monitor") if isinstance(run_config, dict) else None
    return MonitorConfig.from_dict(data) if data else MonitorConfig()


class StepProcessor:
    """Processes one claimed step at a time (see the module docstring).

    While it works on a step, a small thread refreshes the claim's heartbeat every ``claim_timeout_s / 5``;
    if this process dies, another processor takes the step over ``claim_timeout_s`` after the last beat
    (the rules: ``storage.steps``).

    Args:
        sessions: a session factory bound to the run database.
        device: where the observables are computed.
        claim_stale_s: a claim older than this (seconds) is taken over by another processor even while its
            heartbeat goes on (a hung worker).
        retention_steps: keep the raw payloads of only this many most recent steps per run (None: all).
        worker_id: this processor's name in the ``steps.claimed_by`` column. Default
            ``<host>:<pid>:<random>`` (which process holds a step).
        claim_timeout_s: a claim whose heartbeat stopped this long ago (seconds) is taken over: its worker
            died. Default 5.
        step_delay_s: TEST ONLY: sleep this long inside each step, after reading it and before writing its
            results, so that a test can kill a worker mid-step (the sidecar's workers read it from
            ``FPMON_TEST_STEP_DELAY_S``). Default 0.
        notify_targets: the webhook target ids an alert raised here is queued for, with the alert
            (``storage.outbox``; the sidecar passes its ``FPMON_WEBHOOK_URLS``' ids). Default: none.
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        device: torch.device,
        claim_stale_s: float = 300.0,
        retention_steps: int | None = None,
        worker_id: str | None = None,
        claim_timeout_s: float = storage.DEFAULT_CLAIM_TIMEOUT_S,
        step_delay_s: float = 0.0,
        notify_targets: Sequence[str] = (),
    ) -> None:
        if claim_timeout_s <= 0:
            raise ValueError(f"claim_timeout_s must be positive, got {claim_timeout_s}")
        self.sessions = sessions
        self.device = device
        self.claim_stale_s = claim_stale_s
        self.retention_steps = retention_steps
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.claim_timeout_s = claim_timeout_s
        self.step_delay_s = step_delay_s
        self.notify_targets = tuple(notify_targets)
        self.processed = 0

    def process_one(self) -> bool:
        """Claim and process one step; False when nothing was pending. A step that fails is recorded as
        failed (with the error) and does not raise."""
        with self.sessions() as session:
            row = storage.claim_next_step(
                session, self.worker_id, stale_after_s=self.claim_stale_s, claim_timeout_s=self.claim_timeout_s
            )
            if row is None:
                return False
            claim = storage.Claim.of(row)
            started = time.perf_counter()
            try:
                with self._heartbeat(claim):
                    self._process(session, row, claim)
            except LostClaim:
                log.warning("step %s of run %s was reclaimed by another worker", row.step, row.run_id)
                return True
            except Exception as exc:  # a bad step must not kill the worker: record it and go on
                log.exception("step %s of run %s failed", claim.step, claim.run_id)
                session.rollback()
                storage.fail_step(session, claim, f"{type(exc).__name__}: {exc}")
                return True
            log.debug("step %s of run %s in %.1f ms", row.step, row.run_id, 1e3 * (time.perf_counter() - started))
            self.processed += 1
            if self.retention_steps is not None and self.processed % PURGE_EVERY == 0:
                storage.purge_payloads(session, self.retention_steps)
        return True

    @contextmanager
    def _heartbeat(self, claim: storage.Claim) -> Iterator[None]:
        """Refresh ``claim``'s heartbeat every ``claim_timeout_s / 5`` from a thread of its own (its own
        database session) until the block ends. A step shorter than one interval writes no heartbeat."""
        done = threading.Event()

        def beat() -> None:
            with self.sessions() as session:
                while not done.wait(self.claim_timeout_s / 5):
                    try:
                        if not storage.heartbeat_step(session, claim):
                            log.warning("lost the claim on step %s of run %s", claim.step, claim.run_id)
                            return
                    except Exception:  # the database is away for a moment: the next beat may do
                        log.exception("heartbeat of step %s of run %s failed", claim.step, claim.run_id)
                        session.rollback()

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.run_id}-{claim.step}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _process(self, session: Session, row: Step, claim: storage.Claim) -> None:
        run = storage.get_run(session, row.run_id)
        body = storage.load_payload(session, row.run_id, row.step)
        if run is None or body is None:
            raise RuntimeError("the step's run or payload is missing")
        payload = decode_step(body)
        if self.step_delay_s > 0:  # test only (see the class docstring)
            time.sleep(self.step_delay_s)
        stored = storage.load_run_state(session, run.id)
        if stored is None:
            monitor = RLHFMonitor(monitor_config_of(run.config))
        else:
            state = storage.decode_state(stored.meta, stored.tensors)
            monitor = RLHFMonitor.from_state_dict(state, device=self.device)
        # a reviewer dismissed an alert as the run's new normal: re-baseline before this step (the request is
        # cleared in this step's transaction; a newer one, made meanwhile, stays for the next step)
        rebaseline = run.rebaseline_review_id
        if rebaseline is not None:
            monitor.rebaseline()
        latents = payload.latents.to(self.device)
        report = monitor.observe(
            payload.step,
            latents,
            rewards=payload.rewards,
            texts=payload.texts,
            lr=payload.lr,
            sample_ids=payload.sample_ids,
            reference_rewards=payload.reference_rewards,
        )
        div = report.div.tolist()
        rewards = payload.rewards.tolist() if payload.rewards is not None else None
        witness = report.witness.tolist() if report.witness is not None else None
        xy = map_coordinates(monitor, latents, outlier=report.outlier)
        samples = [
            {
                "index": i,
                "div": div[i],
                "sample_id": payload.sample_ids[i] if payload.sample_ids is not None else None,
                "reward": rewards[i] if rewards is not None else None,
                "text": payload.texts[i] if payload.texts is not None else None,
                "x": xy[i][0],
                "y": xy[i][1],
                "prompt": payload.prompts[i] if payload.prompts is not None else None,
                "witness": witness[i] if witness is not None else None,
            }
            for i in range(len(div))
        ]
        evidence = {name: value for name, value in report.evidence.items() if math.isfinite(value)}
        meta, tensors = storage.encode_state(monitor.state_dict())
        alert = report.alert.to_dict() if report.alert is not None else None
        storage.complete_step(
            session,
            row,
            report.scalars,
            samples,
            alert,
            meta,
            tensors,
            D0=monitor.D0,
            rescaled=report.recalibrated,
            transition=report.detection.flagged if report.detection is not None else None,
            claim=claim,
            evidence=evidence,
            evidence_threshold=report.evidence_threshold if evidence else None,
            rebaseline_review_id=rebaseline,
            notify_targets=self.notify_targets,
        )


def map_coordinates(monitor: RLHFMonitor, latents: torch.Tensor, outlier: bool = False) -> list[tuple[float, float]]:
    """The step's samples in the run's frozen projection, first two coordinates (whitened, dimensionless;
    y = 0 when the projection has one component): the review page's 2-D map. Shape: n pairs. NaN (stored
    as null) while the run's frame is not fitted yet (``frame_pending``) and for an ``outlier`` step, whose
    coordinates would be off any map (≈ 10⁶× the run's scale or more)."""
    if monitor.projection is None or outlier:
        return [(math.nan, math.nan)] * latents.shape[0]
    x = monitor.projection.transform(latents).detach().to("cpu", torch.float64)
    if x.shape[1] < 2:
        x = torch.cat([x, torch.zeros(x.shape[0], 2 - x.shape[1], dtype=x.dtype)], dim=1)
    return [(float(a), float(b)) for a, b in x[:, :2].tolist()]


# ---------------------------------------------------------------------------------------------- alerts
def alert_to_dict(alert: storage.Alert) -> dict[str, Any]:
    """A stored alert as the REST API's alert object (without its reviews): ``alert_id``, ``run_id``,
    ``step``, ``type``, ``status``, ``created_at`` (ISO 8601, UTC, ``Z``), ``scalars``, ``reasons``,
    ``top_samples``, ``recommendation``."""
    return {
        "alert_id": alert.id,
        "run_id": alert.run_id,
        "step": alert.step,
        "type": alert.type,
        "status": alert.status,
        "created_at": alert.created_at.isoformat().replace("+00:00", "Z"),
        "scalars": alert.scalars,
        "reasons": alert.reasons,
        "top_samples": alert.top_samples,
        "recommendation": alert.recommendation,
    }
