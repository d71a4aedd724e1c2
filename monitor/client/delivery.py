"""The delivery engine: a :class:`Deliverer` turns observed steps into payloads and gets them to a sink.

Its background thread does everything after ``observe``'s copy: building the step (``items.StepBuilder``:
embed, drop NaN/Inf rows, encode), sending it (``sinks``) with retries (exponential backoff, full jitter)
on connection errors, timeouts, 429 and 5xx, the on-disk spool (``spool``) when the sink stays unreachable
or the in-memory queue (bounded in bytes) is full, and polling the run's alerts and latest processed step
(``view``). The thread transport runs one in the training process; the sender process runs one too.

Order: steps reach the sink in the order they were submitted. Once a step of this run is in the spool,
later steps go behind it, and the thread drains the spool in step order as soon as the sink answers again
(probing ``healthy()`` on the backoff schedule).

Each step submitted is *resolved* exactly once: sent, spooled, rejected (moved to
``<spool>/<run>/rejected/`` with the message) or dropped (logged as an error); ``on_resolved`` is called
with its step number then (the sender process reports it to the training process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from .config import ClientConfig, ClientStats
from .items import Built, Item, StepBuilder
from .sinks import DeliveryError, RetryPolicy, RunSink
from .spool import RunInfo, RunSpool, infer_info
from .view import RunView

log = logging.getLogger("fpmon.client")


class Deliverer:
    """Delivers one run's steps from a background thread (see the module docstring).

    Args:
        url: the sidecar's base URL, or None for in-process mode (``ClientConfig.database_url``).
        token: bearer token for the sidecar, or None.
        run_name: the run's name (also its spool folder's).
        run_config: the run's JSON config sent at creation (``{"monitor": monitor_config_diff(...)}``).
        config: the client's settings.
        backlog: the spooled steps to drain; None: every step found in the run's spool folder.
        on_resolved: called with each step number once it is sent, spooled, rejected or dropped.

    Nothing happens in the background before :meth:`start`; :meth:`close` stops it.
    """

    def __init__(
        self,
        url: str | None,
        token: str | None,
        run_name: str,
        run_config: dict[str, Any],
        config: ClientConfig,
        *,
        backlog: Sequence[int] | None = None,
        on_resolved: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.run_name = run_name
        self.config = config
        self.spool = RunSpool(config.spool_dir, run_name)  # validates the name
        #: the run's latent dimension, once known (from the first step with latents, or the first embedded)
        self.latent_dim: int | None = None
        self._link = RunSink(url, token, config)
        self._run_config = run_config
        self._on_resolved = on_resolved
        self._policy = RetryPolicy(config.max_retries, config.backoff_base_s, config.backoff_max_s)
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._queued_bytes = 0
        self._unresolved = 0  # submitted steps not yet sent / spooled / rejected / dropped
        self._backlog: set[int] = set(self.spool.steps() if backlog is None else backlog)
        self._info_written = False
        self._builder = StepBuilder(config)
        self._sent = self._spooled = self._retried = self._dropped = self._rejected = 0
        self._last_error: str | None = None
        self._logged: set[str] = set()
        self.view = RunView()  # the run's alerts and latest processed step, polled by the thread
        self._flush_gen = 0  # flush() calls so far
        self._drain_failed_gen = 0  # the flush generation at the last failed spool-drain attempt
        self._nudge = False
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"fpmon-client-{run_name}", daemon=True)
        if self._backlog:
            log.info(
                "run %r: %d steps left in %s from earlier; sending them first",
                run_name,
                len(self._backlog),
                self.spool.path,
            )

    # ================================================================== public API
    @property
    def closing(self) -> bool:
        """:meth:`close` has begun: nothing more may be submitted."""
        return self._closing or self._closed

    @property
    def queue_length(self) -> int:
        """Steps in the queue, not yet taken by the background thread."""
        with self._cond:
            return len(self._queue)

    @property
    def run_id(self) -> int | None:
        """The run's id at the sink, once known."""
        return self._link.run_id

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def prepare_sink(self) -> None:
        """Open the sink now (the HTTP client, or the database and its migrations) rather than at the first
        step; raises :class:`DeliveryError` when it cannot (the thread tries again at the first step)."""
        self._link.open()

    def note_latent_dim(self, d: int) -> None:
        """The run's latent dimension is ``d``, unless one is already known."""
        with self._cond:
            if self.latent_dim is None:
                self.latent_dim = int(d)

    def submit(self, item: Item) -> None:
        """Queue a step. When it does not fit in ``max_queue_bytes`` (one step is admitted into an empty
        queue whatever its size), it is handled at once on the calling thread (see :meth:`overflow`)."""
        if item.latents is not None:
            self.note_latent_dim(int(item.latents.shape[1]))
        with self._cond:
            if not self._queue or self._queued_bytes + item.nbytes <= self.config.max_queue_bytes:
                self._queue.append(item)
                self._queued_bytes += item.nbytes
                self._unresolved += 1
                self._cond.notify_all()
                return
            self.overflow(item)  # behind everything queued before it: the thread spools those too
        if self._on_resolved is not None:
            self._on_resolved(item.step)

    def overflow(self, item: Item) -> None:
        """The queue is full: write ``item`` to the spool now, on the calling thread (encode + one file),
        behind the steps queued before it. A step without latents cannot be written without embedding it:
        it is dropped, with an error log. Does not call ``on_resolved``."""
        with self._cond:
            if item.latents is None:
                self._dropped += 1
                msg = (
                    f"step {item.step} dropped: the queue is full ({self.config.max_queue_bytes} bytes) and the "
                    "step has no latents to spool; raise ClientConfig.max_queue_bytes, or pass latents="
                )
                self._last_error = msg
                log.error(msg)
                return
            self._log_once(
                "queue-full",
                logging.WARNING,
                "queue full (%d bytes): spooling steps to %s",
                self.config.max_queue_bytes,
                self.spool.path,
            )
            self.spool_item(item)

    def spool_item(self, item: Item) -> None:
        """Build ``item`` (embedding it if needed) and write it to the spool, or to ``rejected/`` when it
        cannot be sent; counted as spooled, rejected or (not writable) dropped. Raises when it cannot be
        built. Does not call ``on_resolved``."""
        self._spool_built(self._builder.build(item, self.latent_dim))

    def embed_item(self, item: Item) -> Item | None:
        """``item`` with latents: as it is, or embedded now. None when the embedder failed or returned the
        wrong shape: the step is then counted as dropped, with an error log."""
        if item.latents is not None:
            return item
        try:
            z = self._builder.embed(item)
        except Exception as exc:  # the embedder failed (or returned garbage): nothing to send or to write
            self._count_unembeddable(item, exc)
            return None
        return replace(item, latents=z, embedder=None, nbytes=item.nbytes + z.numel() * z.element_size())

    def adopt_spooled(self, step: int) -> None:
        """Step ``step`` was written to this run's spool elsewhere (the training process, on a queue
        overflow): drain it in order with the rest."""
        with self._cond:
            self._backlog.add(step)
            self._cond.notify_all()

    def count_dropped(self, message: str) -> None:
        """Count one step as dropped, with ``message`` as the last error (the caller logs it)."""
        with self._cond:
            self._dropped += 1
            self._last_error = message

    def record_error(self, message: str) -> None:
        """``message`` is the most recent error (``stats().last_error``)."""
        with self._cond:
            self._last_error = message

    def take_over(self, items: Sequence[Item], *, run_id: int | None, view: RunView) -> None:
        """Continue the work of a transport that is gone (a sender process): queue ``items`` (admitted
        already, oldest first) ahead of anything submitted later, drain every step now in the spool, and
        start from the run id, alerts and latest step it had reported (``view``)."""
        with self._cond:
            for item in reversed(items):
                self._queue.appendleft(item)
                self._queued_bytes += item.nbytes
                self._unresolved += 1
            self._backlog = set(self.spool.steps())
            if self._link.run_id is None:
                self._link.run_id = run_id
            self.view.update(view.alerts(), view.latest())
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted step was resolved and, while the sink answers, the spool is drained.
        Returns True when nothing submitted is still in memory (False: ``timeout`` seconds passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_gen += 1
            gen = self._flush_gen
            self._nudge = True
            self._cond.notify_all()
            while True:
                done = self._unresolved == 0 and (not self._backlog or self._drain_failed_gen >= gen)
                if done or not self._thread.is_alive():
                    return self._unresolved == 0
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout`` s), then stop the thread; whatever is still in memory then goes to the
        spool (here, when the thread never started). Idempotent."""
        if self._closed:
            return
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.ident is None:
            self._spool_remaining(None)
        else:
            self._thread.join(self.config.timeout_s + 5.0)
        if self._thread.is_alive():
            log.error("the fpmon client thread did not stop; %d steps still in memory", self._unresolved)
        self._closed = True

    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        with self._cond:
            return ClientStats(
                sent=self._sent,
                spooled=self._spooled,
                retried=self._retried,
                dropped=self._dropped,
                rejected=self._rejected,
                dropped_rows=self._builder.dropped_rows,
                queued_steps=self._unresolved,
                queued_bytes=self._queued_bytes,
                spool_backlog=len(self._backlog),
                embed_seconds=self._builder.embed_seconds,
                last_error=self._last_error,
            )

    # ================================================================== building a step
    def _log_once(self, kind: str, level: int, msg: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.log(level, msg, *args)

    def _info(self, latent_dim: int) -> RunInfo:
        return RunInfo(name=self.run_name, latent_dim=latent_dim, config=self._run_config)

    def _count_unembeddable(self, item: Item, exc: Exception) -> None:
        with self._cond:
            self._dropped += 1
            self._last_error = f"step {item.step}: {type(exc).__name__}: {exc}"
        log.error("step %d DROPPED: could not embed the responses into a payload: %s", item.step, exc)

    def _spool_built(self, built: Built) -> None:
        """Write a built step to the spool (or to rejected/ when it cannot be sent); a failure to write is
        counted as dropped and logged as an error."""
        try:
            if built.problem is not None:
                self._reject(built.step, built.body, f"not sent: {built.problem}")
                self._log_once(
                    f"local:{built.problem[:20]}",
                    logging.ERROR,
                    "step %d rejected locally: %s (in %s)",
                    built.step,
                    built.problem,
                    self.spool.path / "rejected",
                )
                return
            if not self._info_written:
                self.spool.write_info(self._info(self.latent_dim or built.latent_dim))
                self._info_written = True
            assert built.body is not None
            self.spool.write_step(built.step, built.body)
        except OSError as exc:
            with self._cond:
                self._dropped += 1
                self._last_error = f"step {built.step} could not be written to {self.spool.path}: {exc}"
            log.error("step %d DROPPED: could not be written to the spool %s: %s", built.step, self.spool.path, exc)
            return
        with self._cond:
            self._spooled += 1
            self._backlog.add(built.step)

    def _reject(self, step: int, body: bytes | None, message: str) -> None:
        try:
            self.spool.reject(step, body, message)
        except OSError as exc:
            with self._cond:
                self._dropped += 1
            log.error("step %d DROPPED: refused (%s) and not writable to %s: %s", step, message, self.spool.path, exc)
            return
        with self._cond:
            self._rejected += 1

    def _resolved(self, step: int) -> None:
        with self._cond:
            self._unresolved -= 1
            self._cond.notify_all()
        if self._on_resolved is not None:
            self._on_resolved(step)

    # ================================================================== the background thread
    def _note_failure(self, exc: DeliveryError) -> None:
        with self._cond:
            self._last_error = str(exc)
        if exc.retryable:
            self._log_once(
                f"retry:{exc.kind}", logging.WARNING, "sidecar unavailable (%s); retrying, then spooling", exc
            )
        else:
            self._log_once(
                f"reject:{exc.kind}",
                logging.ERROR,
                "the server refused a step (%s); such steps go to %s",
                exc,
                self.spool.path / "rejected",
            )

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug must not lose steps silently: say so, and spool what is in memory
            log.exception("the fpmon client thread failed; spooling the steps still in memory")
            self._spool_remaining(None)
            raise
        finally:
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        in_hand: Built | None = None  # the oldest undelivered step, being retried (never in the spool)
        attempts = 0
        next_attempt = 0.0
        offline = False  # the last attempt failed: probe before draining the spool
        next_poll = 0.0
        while True:
            now = time.monotonic()
            with self._cond:
                closing = self._closing
                if self._nudge and in_hand is None:  # flush(): try the spool now, not after the backoff
                    self._nudge = False
                    next_attempt, next_poll = now, min(next_poll, now + 0.1)
                flush_gen = self._flush_gen
                backlog = min(self._backlog) if self._backlog else None
                queued = bool(self._queue)
            if closing:
                self._spool_remaining(in_hand)
                break
            if in_hand is not None and now >= next_attempt:
                try:
                    self._link.deliver(in_hand.body or b"", self._info(in_hand.latent_dim))
                except DeliveryError as exc:
                    self._note_failure(exc)
                    if not exc.retryable:
                        self._reject(in_hand.step, in_hand.body, str(exc))
                        step, in_hand, attempts = in_hand.step, None, 0
                        self._resolved(step)
                    elif attempts < self._policy.max_retries:
                        attempts += 1
                        with self._cond:
                            self._retried += 1
                        next_attempt = time.monotonic() + self._policy.delay(attempts, exc.retry_after)
                    else:
                        self._spool_built(in_hand)
                        step, in_hand, offline = in_hand.step, None, True
                        next_attempt = time.monotonic() + self._policy.delay(attempts, exc.retry_after)
                        self._resolved(step)
                else:
                    with self._cond:
                        self._sent += 1
                    step, in_hand, attempts, offline = in_hand.step, None, 0, False
                    self._resolved(step)
                continue
            # Queued steps first: a step the caller spooled on overflow is newer than everything queued.
            if in_hand is None and backlog is not None and not queued and now >= next_attempt:
                attempts, offline, next_attempt = self._drain_one(backlog, attempts, offline, flush_gen)
                continue
            if now >= next_poll:
                self.view.poll(None if offline else self._link)
                next_poll = time.monotonic() + self.config.poll_alerts_s
            if in_hand is not None:  # backing off: later steps wait in the queue (its bound still holds)
                with self._cond:
                    if not self._closing:
                        self._cond.wait(max(0.0, min(next_attempt, next_poll, time.monotonic() + 1.0) - now))
                continue
            wake = min(next_attempt, next_poll) if backlog is not None else next_poll
            item = self._take(max(0.0, wake - time.monotonic()))
            if item is None:
                continue
            try:
                built = self._builder.build(item, self.latent_dim)
            except Exception as exc:  # the embedder failed (or returned garbage): nothing to send or to write
                self._count_unembeddable(item, exc)
                self._resolved(item.step)
                continue
            self.note_latent_dim(built.latent_dim)
            with self._cond:
                behind = bool(self._backlog)
            if built.problem is not None or behind:
                self._spool_built(built)  # keep the order: behind the steps not delivered yet
                self._resolved(built.step)
            else:
                in_hand, attempts, next_attempt = built, 0, time.monotonic()
        self._link.close()

    def _take(self, timeout: float) -> Item | None:
        with self._cond:
            if not self._queue and not self._closing and timeout > 0:
                self._cond.wait(min(timeout, 1.0))
            if not self._queue:
                return None
            item = self._queue.popleft()
            self._queued_bytes -= item.nbytes
            return item

    def _drain_one(self, step: int, attempts: int, offline: bool, flush_gen: int) -> tuple[int, bool, float]:
        """Send the oldest spooled step; returns (attempts, offline, next_attempt)."""
        try:
            if offline and not self._link.healthy():
                raise DeliveryError("the sidecar does not answer /healthz", retryable=True)
            info = self.spool.read_info() or infer_info(self.spool, step)
            self._link.deliver(self.spool.read_step(step), info)
        except DeliveryError as exc:
            self._note_failure(exc)
            if not exc.retryable:
                self._reject(step, None, str(exc))
                with self._cond:
                    self._backlog.discard(step)
                    self._cond.notify_all()
                return 0, False, time.monotonic()
            attempts += 1
            with self._cond:
                self._drain_failed_gen = flush_gen
                self._cond.notify_all()
            return attempts, True, time.monotonic() + self._policy.delay(attempts, exc.retry_after)
        except OSError as exc:  # the file vanished (another process replayed it) or is unreadable
            log.warning("spooled step %d of run %r unreadable (%s); skipping it", step, self.run_name, exc)
            with self._cond:
                self._backlog.discard(step)
                self._cond.notify_all()
            return attempts, offline, time.monotonic()
        self.spool.delete_step(step)
        with self._cond:
            self._sent += 1
            self._backlog.discard(step)
            self._cond.notify_all()
        return 0, False, time.monotonic()

    def _spool_remaining(self, in_hand: Built | None) -> None:
        """Closing: everything still in memory goes to the spool, in order."""
        if in_hand is not None:
            self._spool_built(in_hand)
            self._resolved(in_hand.step)
        while True:
            with self._cond:
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._queued_bytes -= item.nbytes
            try:
                self._spool_built(self._builder.build(item, self.latent_dim))
            except Exception as exc:
                with self._cond:
                    self._dropped += 1
                log.error("step %d DROPPED at close: %s", item.step, exc)
            self._resolved(item.step)
