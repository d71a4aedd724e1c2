"""The sidecar's compute workers: threads or processes that keep running ``StepProcessor.process_one``.

What a worker does with a step (claim, keep the claim's heartbeat going, restore the run's monitor, observe,
write the results in one transaction) is ``monitor.processing.StepProcessor``; this module only runs it: a
:class:`WorkerThread` inside the server process, or a :class:`WorkerProcess` (its own interpreter, no GIL
shared with the HTTP server) that dies with its parent and is started again when it dies on its own (killed,
out of memory). The step a dead worker held is taken over ``claim_timeout_s`` after its last heartbeat, by the
restarted worker or any other (see ``storage.steps``).

Test only: ``FPMON_TEST_STEP_DELAY_S`` (seconds, read by each worker process) makes every step sleep that
long between reading its payload and writing its results, so that a test can SIGKILL a worker mid-step.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait
from typing import Any

import torch

from monitor.processing import StepProcessor, resolve_device

log = logging.getLogger("fpmon.worker")

#: TEST ONLY: seconds each step of a worker process sleeps mid-step (see the module docstring)
TEST_STEP_DELAY_ENV = "FPMON_TEST_STEP_DELAY_S"
#: a worker process that dies is started again after this many seconds, doubled after each quick death
RESTART_DELAY_S = (0.2, 30.0)
#: a worker process that lived this long before dying restarts after the shortest delay again
RESTART_RESET_S = 60.0


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
        claim_timeout_s=settings.claim_timeout_s,
        step_delay_s=float(os.environ.get(TEST_STEP_DELAY_ENV) or 0.0),
        notify_targets=[target.id for target in settings.webhook_targets()],
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
    """A compute worker in its own process (no GIL shared with the HTTP server); dies with its parent.

    A supervising thread starts the process again when it exits without being asked to (SIGKILL, the OOM
    killer, a crash), after :data:`RESTART_DELAY_S` (doubling while it keeps dying young). ``restarts``
    counts them.
    """

    def __init__(self, settings_data: dict[str, Any]) -> None:
        self.settings_data = settings_data
        self.ctx = multiprocessing.get_context("spawn")
        self.restarts = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.process, self.ready_event = self._new_process()
        self.supervisor = threading.Thread(target=self._supervise, name="fpmon-worker-supervisor", daemon=True)

    def _new_process(self) -> tuple[Any, Any]:
        ready = self.ctx.Event()
        process = self.ctx.Process(
            target=worker_process_main,
            args=(self.settings_data, os.getpid(), ready),
            name="fpmon-worker",
            daemon=True,
        )
        return process, ready

    def start(self) -> None:
        self.process.start()
        self.supervisor.start()

    def _supervise(self) -> None:
        delay = RESTART_DELAY_S[0]
        started = time.monotonic()
        while not self.stopping.is_set():
            process = self.process
            wait([process.sentinel], timeout=1.0)
            if process.is_alive() or self.stopping.is_set():
                continue
            lived = time.monotonic() - started
            delay = RESTART_DELAY_S[0] if lived > RESTART_RESET_S else delay
            log.error(
                "worker process %s exited with %s after %.0f s; starting another in %.1f s",
                process.pid,
                process.exitcode,
                lived,
                delay,
            )
            if self.stopping.wait(delay):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                self.process, self.ready_event = self._new_process()
                self.process.start()
                self.restarts += 1
            started = time.monotonic()
            delay = min(2 * delay, RESTART_DELAY_S[1])

    def is_alive(self) -> bool:
        return bool(self.process.is_alive())

    def is_ready(self) -> bool:
        """Alive, imported and connected to the database: it is taking steps."""
        return bool(self.process.is_alive() and self.ready_event.is_set())

    def stop(self, timeout: float = 10.0) -> None:
        with self.lock:  # after this, the supervisor starts no other process
            self.stopping.set()
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: the worker finishes its step and exits
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        if self.supervisor.is_alive():
            self.supervisor.join(timeout)
