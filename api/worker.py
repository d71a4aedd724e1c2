"""The compute worker: claims pending steps from the database, runs RLHFMonitor, writes the results.

This is the one place where HTTP-free math (``monitor``) and SQL (``storage``) meet. The run's monitor
state is read from the database before each step and written back in the same transaction as the step's
results, so a worker (or a whole replica) can die at any moment and another one continues the run from
the last completed step, with identical observables.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy.orm import Session

from monitor.rlhf import MonitorConfig, RLHFMonitor
from monitor.stepfile import decode_step
from storage import (
    LostClaim,
    Step,
    claim_next_step,
    complete_step,
    decode_state,
    encode_state,
    fail_step,
    get_run,
    load_run_state,
    purge_payloads,
)

log = logging.getLogger("fpmon.worker")

#: with FPMON_RETENTION_STEPS set, each worker purges old raw payloads every this many processed steps
PURGE_EVERY = 20


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
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
    """Processes one claimed step at a time (see the module docstring)."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        device: torch.device,
        claim_stale_s: float = 300.0,
        retention_steps: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.device = device
        self.claim_stale_s = claim_stale_s
        self.retention_steps = retention_steps
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.processed = 0

    def process_one(self) -> bool:
        """Claim and process one step; False when nothing was pending."""
        with self.sessions() as session:
            row = claim_next_step(session, self.worker_id, stale_after_s=self.claim_stale_s)
            if row is None:
                return False
            started = time.perf_counter()
            try:
                self._process(session, row)
            except LostClaim:
                log.warning("step %s of run %s was reclaimed by another worker", row.step, row.run_id)
                return True
            except Exception as exc:  # a bad step must not kill the worker: record it and go on
                log.exception("step %s of run %s failed", row.step, row.run_id)
                session.rollback()
                fail_step(session, row, f"{type(exc).__name__}: {exc}")
                return True
            log.debug("step %s of run %s in %.1f ms", row.step, row.run_id, 1e3 * (time.perf_counter() - started))
            self.processed += 1
            if self.retention_steps is not None and self.processed % PURGE_EVERY == 0:
                purge_payloads(session, self.retention_steps)
        return True

    def _process(self, session: Session, row: Step) -> None:
        run = get_run(session, row.run_id)
        if run is None or row.payload is None:
            raise RuntimeError("the step's run or payload is missing")
        payload = decode_step(row.payload)
        stored = load_run_state(session, run.id)
        if stored is None:
            monitor = RLHFMonitor(monitor_config_of(run.config))
        else:
            monitor = RLHFMonitor.from_state_dict(decode_state(stored.meta, stored.tensors), device=self.device)
        report = monitor.observe(
            payload.step,
            payload.latents.to(self.device),
            rewards=payload.rewards,
            texts=payload.texts,
            lr=payload.lr,
            sample_ids=payload.sample_ids,
        )
        div = report.div.tolist()
        rewards = payload.rewards.tolist() if payload.rewards is not None else None
        xy = _map_coordinates(monitor, payload.latents.to(self.device))
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
            }
            for i in range(len(div))
        ]
        meta, tensors = encode_state(monitor.state_dict())
        alert = report.alert.to_dict() if report.alert is not None else None
        complete_step(
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
        )


def _map_coordinates(monitor: RLHFMonitor, latents: torch.Tensor) -> list[tuple[float, float]]:
    """The step's samples in the run's frozen projection, first two coordinates (whitened, dimensionless;
    y = 0 when the projection has one component): the review page's 2-D map. Shape: n pairs."""
    if monitor.projection is None:  # observe() always fits it; a monitor without one has nothing to map
        return [(math.nan, math.nan)] * latents.shape[0]
    x = monitor.projection.transform(latents).detach().to("cpu", torch.float64)
    if x.shape[1] < 2:
        x = torch.cat([x, torch.zeros(x.shape[0], 2 - x.shape[1], dtype=x.dtype)], dim=1)
    return [(float(a), float(b)) for a, b in x[:, :2].tolist()]


class WorkerThread(threading.Thread):
    """A daemon thread that keeps calling :meth:`StepProcessor.process_one` until stopped."""

    def __init__(self, processor: StepProcessor, poll_s: float) -> None:
        super().__init__(name=processor.worker_id, daemon=True)
        self.processor = processor
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self.last_beat = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.last_beat = time.monotonic()
            try:
                busy = self.processor.process_one()
            except Exception:  # database down for a moment: log, back off, keep going
                log.exception("worker loop error")
                busy = False
                self.stop_event.wait(1.0)
            if not busy:
                self.stop_event.wait(self.poll_s)

    def is_ready(self) -> bool:
        return self.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout)


def _die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent-pid check in the loop covers it
        pass


def worker_process_main(settings_data: dict[str, Any], parent_pid: int, ready: Any = None) -> None:
    """Entry point of a compute worker process (``fpmon serve`` starts ``FPMON_WORKERS`` of them)."""
    from storage import make_engine, session_factory

    from .settings import Settings

    _die_with_parent()
    settings = Settings(**settings_data)
    if settings.worker_threads is not None:
        torch.set_num_threads(settings.worker_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    engine = make_engine(settings.database_url)
    processor = StepProcessor(
        session_factory(engine),
        resolve_device(settings.device),
        claim_stale_s=settings.claim_stale_s,
        retention_steps=settings.retention_steps,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with processor.sessions() as session:  # connect once before declaring readiness
        session.connection()
    if ready is not None:
        ready.set()
    while not stop.is_set() and os.getppid() == parent_pid:
        try:
            busy = processor.process_one()
        except Exception:  # database down for a moment: log, back off, keep going
            log.exception("worker loop error")
            busy = False
            stop.wait(1.0)
        if not busy:
            stop.wait(settings.worker_poll_s)
    engine.dispose()


class WorkerProcess:
    """A compute worker in its own process (no GIL shared with the HTTP server); dies with its parent."""

    def __init__(self, settings_data: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready_event = ctx.Event()
        self.process = ctx.Process(
            target=worker_process_main,
            args=(settings_data, os.getpid(), self.ready_event),
            name="fpmon-worker",
            daemon=True,
        )

    def start(self) -> None:
        self.process.start()

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def is_ready(self) -> bool:
        """Alive, imported and connected to the database: it is taking steps."""
        return self.process.is_alive() and self.ready_event.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: the worker finishes its step and exits
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
