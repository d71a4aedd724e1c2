"""The sidecar's compute workers: threads or processes that keep running ``StepProcessor.process_one``.

What a worker does with a step (claim, restore the run's monitor, observe, write the results in one
transaction) is ``monitor.processing.StepProcessor``; this module only runs it: a :class:`WorkerThread`
inside the server process, or a :class:`WorkerProcess` (its own interpreter, no GIL shared with the HTTP
server) that dies with its parent.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import torch

from monitor.processing import StepProcessor, resolve_device

log = logging.getLogger("fpmon.worker")


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
