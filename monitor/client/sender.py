"""The process transport, training-process side: :class:`SenderTransport` hands each step to a sender process.

Why a process: the training loop of a Python-bound model (small models, or any model between its CUDA
kernels) holds the GIL almost all the time. A background *thread* that encodes steps and speaks HTTP takes
the GIL for milliseconds per step, and every time the training thread gives the GIL up (each torch op does)
it may have to wait for it again — up to ``sys.getswitchinterval()`` (5 ms) at a time. In a child process
(``monitor.client.sender_child``, which runs a ``Deliverer``) the same work runs on another core and never
touches the training process's GIL. What is left here: ``observe``'s copy, the embedding (the embedder's
model lives here), and one forwarding thread that writes each step to the child's pipe.

Nothing is lost when the child dies: each step handed over stays *pending* here until the child reports it
resolved (sent, spooled, rejected or dropped). A child that exits is replaced, and the new one gets the
pending steps again, in order (the server is idempotent on a step's content), up to
``ClientConfig.max_sender_restarts`` times; then (or when no process can be started at all) this transport
falls back to a ``Deliverer`` in this process, which takes over every step held here.

A step that does not fit in the queue's byte bound (queued + pending bytes) is written to the spool by the
calling thread (the local ``Deliverer`` builds and counts it), and an :class:`Adopt` marker in the queue
tells the child, in queue order, to drain it behind the steps observed before it.

Protocol (``monitor.client.pipe`` frames). To the child: ``("init", dict)``, ``("step", wire item)``,
``("adopt", step)``, ``("flush", gen, timeout)``, ``("close",)``. From the child: ``("ready", pid)``,
``("report", acks, stats, run_id, alerts, latest)``, ``("flushed", gen, ok)``, ``("log", level, name, message)``,
``("closed",)``; the reader adds ``("eof", returncode)`` when the child is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Any

from .config import COUNTERS, ClientConfig, ClientStats
from .delivery import Deliverer
from .items import Item
from .pipe import SenderDied, item_to_wire
from .sender_process import SenderProcess, StartFailed
from .spool import RunSpool
from .view import RunView

log = logging.getLogger("fpmon.client")


@dataclass
class Adopt:
    """Queue marker: step ``step`` was spooled by the calling thread on overflow; the sender is told in
    queue order, so that it drains the step behind the ones observed before it."""

    step: int
    nbytes: int = 0


class SenderTransport:
    """Delivers one run's steps through a sender process (see the module docstring).

    Args:
        url, token, run_name, run_config, config: as for ``Deliverer``; the sender process gets them all.
    """

    def __init__(
        self, url: str | None, token: str | None, run_name: str, run_config: dict[str, Any], config: ClientConfig
    ) -> None:
        self.url = url
        self.run_name = run_name
        self.config = config
        self._token = token
        self._run_config = run_config
        #: builds, embeds and spools in this process (overflow, leftovers), and takes over on fallback
        self.local = Deliverer(url, token, run_name, run_config, config)
        self._cond = threading.Condition()
        self._queue: deque[Item | Adopt] = deque()
        self._queued_bytes = 0
        self._unresolved = 0  # observed steps not yet sent / spooled / rejected / dropped
        self._adopt_queued: set[int] = set()  # steps with an Adopt marker still in the queue
        self._pending: OrderedDict[int, Item] = OrderedDict()  # handed to the sender, not resolved yet
        self._pending_bytes = 0
        self._child_stats: dict[str, Any] = {}  # the running sender's counters
        self._base_stats: dict[str, int] = {}  # counters of senders that are gone
        self._run_id: int | None = None
        self._view = RunView()  # the run's alerts and latest step, as the sender reported them
        self._flush_gen = 0  # flush() calls so far
        self._flushed_gen = 0  # the newest flush generation the sender answered
        self._flush_timeout: float | None = None
        self._sender: SenderProcess | None = None
        self._sender_lost = False  # the running sender died; start another
        self._sender_closing = False
        self._sender_closed = False
        self._sender_restarts = 0
        self._sender_ready_pid: int | None = None
        self._fallen_back = False  # self.local delivers from now on
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._forward, name=f"fpmon-client-{run_name}", daemon=True)

    # ================================================================== the face's side
    @property
    def mode(self) -> str:
        """``"process"``, or ``"thread"`` once this transport fell back to its local ``Deliverer``."""
        with self._cond:
            return "thread" if self._fallen_back else "process"

    @property
    def closing(self) -> bool:
        """:meth:`close` has begun: nothing more may be submitted."""
        return self._closing or self._closed or (self._fallen_back and self.local.closing)

    @property
    def spool(self) -> RunSpool:
        """This run's spool."""
        return self.local.spool

    @property
    def latent_dim(self) -> int | None:
        """The run's latent dimension, once known."""
        return self.local.latent_dim

    @property
    def queue_length(self) -> int:
        """Entries in the queue (steps and markers) not yet handed to the sender process."""
        with self._cond:
            return self.local.queue_length if self._fallen_back else len(self._queue)

    @property
    def run_id(self) -> int | None:
        """The run's id at the sink, once the sender reported it."""
        with self._cond:
            return self.local.run_id if self._fallen_back else self._run_id

    @property
    def sender_pid(self) -> int | None:
        """The running sender's process id once it is ready; None before, after it stopped, and after the
        fallback."""
        with self._cond:
            return self._sender_ready_pid if self._sender is not None else None

    def start(self) -> None:
        """Start the forwarding thread (which starts the sender process)."""
        self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue a step; when queued + pending bytes would exceed ``max_queue_bytes``, the step is spooled
        now by the calling thread (see ``Deliverer.overflow``) and the sender told about it in queue order."""
        if item.latents is not None:
            self.local.note_latent_dim(int(item.latents.shape[1]))
        with self._cond:
            if self._fallen_back:  # under the lock: behind the steps the local Deliverer took over
                self.local.submit(item)
                return
            held = self._queued_bytes + self._pending_bytes
            fits = (not self._queue and not self._pending) or held + item.nbytes <= self.config.max_queue_bytes
            if fits:
                self._queue.append(item)
                self._queued_bytes += item.nbytes
                self._unresolved += 1
                self._cond.notify_all()
                return
            self.local.overflow(item)
            if item.latents is not None:  # spooled: the sender drains it after the steps queued before it
                self._queue.append(Adopt(item.step))
                self._adopt_queued.add(item.step)
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every observed step was resolved and the sender answered this flush (it flushes its
        ``Deliverer``: the spool drained while the sink answers). True when nothing observed is in memory."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_gen += 1
            gen = self._flush_gen
            self._flush_timeout = timeout
            self._cond.notify_all()
            while not self._fallen_back:  # else the local Deliverer answers (below)
                done = self._unresolved == 0 and self._flushed_gen >= gen
                if done or not self._thread.is_alive():
                    return self._unresolved == 0
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))
        return self.local.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout`` s), then close the sender (what it cannot deliver goes to the spool) and
        stop the forwarding thread. Idempotent."""
        if self._closed:
            return
        with self._cond:
            fallen_back = self._fallen_back
        if fallen_back:
            self.local.close(timeout)
        else:
            self.flush(timeout)
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(self.config.timeout_s + 25.0)
            if self._thread.is_alive() and self._sender is not None:  # stuck writing to a hung sender
                self._sender.kill()
                self._thread.join(10.0)
            with self._cond:
                fallen_back = self._fallen_back
            if fallen_back:  # it fell back while closing: the local Deliverer spools what it took over
                self.local.close(0.0)
            elif self._thread.is_alive():
                log.error("the fpmon client thread did not stop; %d steps still in memory", self._unresolved)
        self._closed = True

    def stats(self) -> ClientStats:
        """The counters of this process's ``Deliverer``, plus those of every sender process so far."""
        with self._cond:
            local = self.local.stats()
            if self._fallen_back:
                return local.plus(self._base_stats)
            child = self._child_stats
            backlog = int(child.get("spool_backlog", local.spool_backlog)) if child else local.spool_backlog
            return replace(
                local.plus(self._base_stats).plus(child),
                queued_steps=self._unresolved,
                queued_bytes=self._queued_bytes + self._pending_bytes,
                spool_backlog=backlog,
            )

    @property
    def view(self) -> RunView:
        """The run's alerts and latest processed step, as the sender reported them (after a fallback: as the
        local ``Deliverer`` polls them)."""
        with self._cond:
            return self.local.view if self._fallen_back else self._view

    # ================================================================== the forwarding thread
    def _forward(self) -> None:
        """The forwarding thread: embeds, then hands each step to the sender."""
        try:
            self._forward_loop()
        except BaseException as exc:  # a bug must not lose steps: go on with the thread transport
            log.exception("the fpmon client's forwarding thread failed")
            self._fallback_to_thread(f"the forwarding thread failed ({type(exc).__name__}: {exc})")
        finally:
            with self._cond:
                self._cond.notify_all()

    def _forward_loop(self) -> None:
        sent_gen = 0  # the newest flush generation handed to the sender
        # Start the sender now (its imports take a second or two of CPU; better before training than during
        # its first steps) — except on the non-main ranks of a distributed run, which never ship, and start
        # one only if they do. Steps left in the spool by an earlier process are drained at once.
        if self.local.stats().spool_backlog or os.environ.get("RANK", "0") == "0":
            try:
                self._ensure_sender()
            except SenderDied:
                pass  # its reader reports the end of the pipe: the loop starts another
            except StartFailed as exc:
                self._fallback_to_thread(str(exc))
                return
        while True:
            with self._cond:
                while not (self._queue or self._closing or self._sender_lost or self._flush_gen > sent_gen):
                    self._cond.wait(1.0)
                lost, self._sender_lost = self._sender_lost, False
                entry: Item | Adopt | None = None
                if not lost and self._queue:
                    entry = self._queue.popleft()
                    self._queued_bytes -= entry.nbytes
                    if isinstance(entry, Adopt):
                        self._adopt_queued.discard(entry.step)
                gen = self._flush_gen
                closing = self._closing and entry is None and not lost and not self._queue
            if lost:
                if not self._restart_sender():
                    self._fallback_to_thread(
                        f"the sender process died {self._sender_restarts} times "
                        f"(ClientConfig.max_sender_restarts={self.config.max_sender_restarts})"
                    )
                    return
                with self._cond:
                    sent_gen = min(sent_gen, self._flushed_gen)  # ask the new sender again
                continue
            try:
                if isinstance(entry, Adopt):
                    self._ensure_sender().send(("adopt", entry.step))
                elif entry is not None:
                    self._forward_step(entry)
                elif gen > sent_gen:
                    sent_gen = gen
                    if self._sender is None:  # nothing was ever handed over: nothing to wait for
                        with self._cond:
                            self._flushed_gen = max(self._flushed_gen, gen)
                            self._cond.notify_all()
                    else:
                        self._sender.send(("flush", gen, self._flush_timeout))
                elif closing:
                    self._close_sender()
                    return
            except SenderDied:
                # Its reader sees the end of the pipe and sets _sender_lost; the step is in _pending.
                with self._cond:
                    if not self._sender_lost:
                        self._cond.wait(1.0)
            except StartFailed as exc:
                self._fallback_to_thread(str(exc))
                return
            except BaseException:  # a bug: the local Deliverer takes over (see _forward), with this step
                if isinstance(entry, Item):
                    with self._cond:
                        if entry.step not in self._pending:
                            self._queue.appendleft(entry)
                            self._queued_bytes += entry.nbytes
                raise

    def _resolved_here(self, step: int) -> None:
        """A step was resolved in this process (dropped, or spooled) rather than by the sender."""
        with self._cond:
            self._unresolved -= 1
            self._cond.notify_all()

    def _forward_step(self, item: Item) -> None:
        embedded = self.local.embed_item(item)
        if embedded is None:  # the embedder failed: counted as dropped, with an error log
            self._resolved_here(item.step)
            return
        item = embedded
        assert item.latents is not None
        d, known = int(item.latents.shape[1]), self.local.latent_dim
        if known is None:
            self.local.note_latent_dim(d)
        elif d != known:  # the embedder changed its dimension: keep the step, refuse it locally
            self.local.spool_item(item)
            self._resolved_here(item.step)
            return
        try:
            sender = self._ensure_sender()  # a new sender gets the pending steps with its settings
        except StartFailed:  # the local Deliverer takes over, with this step
            with self._cond:
                self._pending[item.step] = item
                self._pending_bytes += item.nbytes
            raise
        with self._cond:
            self._pending[item.step] = item
            self._pending_bytes += item.nbytes
        sender.send(("step", item_to_wire(item)))

    def _sender_init(self) -> dict[str, Any]:
        """A new sender's settings, with the steps it must finish (in order) and the spooled steps it must
        drain: everything in the spool but the overflow steps it will be told about in queue order."""
        with self._cond:
            backlog = sorted(set(self.local.spool.steps()) - self._adopt_queued)
            steps = [item_to_wire(item) for item in self._pending.values()]
        return {
            "url": self.url,
            "token": self._token,
            "run_name": self.run_name,
            "run_config": self._run_config,
            "config": replace(self.config, spool_dir=self.config.spool_dir.absolute()),
            "log_level": logging.getLogger("fpmon").getEffectiveLevel(),
            "backlog": backlog,
            "steps": steps,
        }

    def _ensure_sender(self) -> SenderProcess:
        """The running sender, started on first use (ranks that never ship start none)."""
        if self._sender is None:
            sender = SenderProcess(self._sender_init(), lambda m: self._on_sender_message(sender, m))
            with self._cond:
                self._sender, self._sender_closed = sender, False
            try:
                sender.start()
            except SenderDied as exc:
                if sender.proc is None:  # not even started: no process here can send
                    with self._cond:
                        self._sender = None
                    raise StartFailed(str(exc)) from exc
                raise
        return self._sender

    def _fold_sender_stats(self) -> None:
        """The sender is gone: keep its counters (under ``_cond``)."""
        for name, value in self._child_stats.items():
            if name in COUNTERS:
                self._base_stats[name] = self._base_stats.get(name, 0) + int(value)
        self._child_stats = {}

    def _restart_sender(self) -> bool:
        """The sender died: start another and hand it every step the dead one had not resolved."""
        old = self._sender
        with self._cond:
            self._fold_sender_stats()
            self._sender = None
            pending = list(self._pending.values())
        self._sender_restarts += 1
        code = old.proc.returncode if old is not None and old.proc is not None else None
        if self._sender_restarts > self.config.max_sender_restarts:
            return False
        log.warning(
            "the fpmon sender process exited (code %s); starting another and handing it the %d steps it had "
            "not finished",
            code,
            len(pending),
        )
        try:
            self._ensure_sender()  # its settings carry the pending steps
        except SenderDied:
            pass  # died again: its reader says so, and the loop comes back here
        except StartFailed:
            return False
        return True

    def _close_sender(self) -> None:
        """Closing: the sender closes its Deliverer (what it cannot send goes to the spool) and exits; steps
        it never resolved (it was killed, or hung) are spooled here."""
        sender = self._sender
        if sender is not None:
            with self._cond:
                self._sender_closing = True
            with contextlib.suppress(SenderDied):
                sender.send(("close",))
            deadline = time.monotonic() + self.config.timeout_s + 15.0
            with self._cond:
                while not self._sender_closed and time.monotonic() < deadline:
                    self._cond.wait(0.5)
                closed = self._sender_closed
            if not closed:
                log.error("the fpmon sender process did not close in time; spooling its steps here")
                sender.kill()
            sender.close_input()
            sender.join(15.0)
        with self._cond:
            leftovers = list(self._pending.values())
            self._pending.clear()
            self._pending_bytes = 0
        for item in leftovers:
            try:
                self.local.spool_item(item)
            except Exception as exc:
                self.local.count_dropped(f"step {item.step}: {exc}")
                log.error("step %d DROPPED at close: %s", item.step, exc)
            self._resolved_here(item.step)

    def _on_sender_message(self, sender: SenderProcess, message: tuple[Any, ...]) -> None:
        """Messages of the sender process, on its reader thread."""
        kind = message[0]
        if kind == "log":
            logging.getLogger(str(message[2])).log(int(message[1]), "%s", message[3])
            return
        with self._cond:
            if sender is not self._sender:
                return
            if kind == "report":
                _, acks, stats, run_id, alerts, latest = message
                for step in acks:
                    item = self._pending.pop(step, None)
                    if item is not None:
                        self._pending_bytes -= item.nbytes
                        self._unresolved -= 1
                error = stats.get("last_error")
                if error and error != self._child_stats.get("last_error"):
                    self.local.record_error(error)
                self._child_stats = stats
                if run_id is not None:
                    self._run_id = int(run_id)
                self._view.update(alerts, latest)
            elif kind == "flushed":
                self._flushed_gen = max(self._flushed_gen, int(message[1]))
            elif kind == "ready":
                self._sender_ready_pid = int(message[1])
            elif kind == "closed":
                self._sender_closed = True
                self._sender_ready_pid = None
            elif kind == "eof":
                self._sender_closed = True
                self._sender_ready_pid = None
                if not self._sender_closing:
                    self._sender_lost = True
            self._cond.notify_all()

    def _fallback_to_thread(self, reason: str) -> None:
        """Go on with the local ``Deliverer``: it takes over every step held here, in order, and the spool."""
        log.error("fpmon: %s; sending from a background thread of the training process from now on", reason)
        sender = self._sender
        if sender is not None:
            sender.kill()
            sender.join(10.0)
        with self._cond:
            self._fold_sender_stats()
            self._sender = None
            items = [*self._pending.values(), *(e for e in self._queue if isinstance(e, Item))]
            self._pending.clear()
            self._queue.clear()
            self._adopt_queued.clear()
            self._pending_bytes = self._queued_bytes = self._unresolved = 0
            # under the lock: a step observed from now on goes to the local Deliverer behind these
            self.local.take_over(items, run_id=self._run_id, view=self._view)
            self._fallen_back = True
            if not self._closing:  # else close() closes the local Deliverer, which spools what it took over
                self.local.start()  # under the lock too: a flush() that sees the fallback finds it running
            self._cond.notify_all()
