"""The process transport, sender side: the child process that delivers the training process's steps.

``main(IN_FD OUT_FD)`` is started by ``monitor.client.sender_process.BOOTSTRAP``. It reads its settings
(``("init", dict)``: ``url``, ``token``, ``run_name``, ``run_config``, ``config``, ``log_level``, ``backlog``:
the spooled steps to drain, ``steps``: a dead sender's unfinished steps, as wire items), builds one
``Deliverer`` with them (the same building, retries, spool, order and counters as the thread transport),
then serves the pipe: ``step`` → ``Deliverer.submit``, ``adopt`` → ``adopt_spooled``, ``flush`` → a thread
that flushes and answers ``("flushed", gen, ok)``, ``close`` → close and exit. A :class:`Reporter` tells the
parent which steps were resolved, with the counters, the run id, the alerts and the latest processed step
(``Deliverer.view``); log records go to the parent too (:class:`ForwardingHandler`).

When the parent goes away (its end of the pipe closes), or on SIGTERM, the child closes its ``Deliverer``
(the steps it holds go to the sink, briefly, or to the spool) and exits. SIGINT (Ctrl-C in the terminal,
which reaches the whole process group) is ignored: the parent's own shutdown closes the child.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from .delivery import Deliverer
from .pipe import SenderDied, item_from_wire, read_frame, write_frame
from .view import LatestStep

log = logging.getLogger("fpmon.client")


class Terminate(BaseException):
    """SIGTERM: close the Deliverer (what it holds goes to the sink or the spool) and exit."""


class Channel:
    """The child's writing end, shared by its threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False

    def send(self, message: tuple[Any, ...]) -> None:
        """Write one frame; once the parent is gone, nothing (the Deliverer goes on without it)."""
        with self.lock:
            if self.broken:
                return
            try:
                write_frame(self.fd, message)
            except SenderDied:
                self.broken = True  # the parent is gone; the Deliverer keeps going to the sink or the spool


class ForwardingHandler(logging.Handler):
    """Log records of the child go to the parent, which logs them under the same logger name."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.channel.send(("log", record.levelno, record.name, message))
        except Exception:  # never let logging break the sender
            pass


class Reporter:
    """Sends the parent the steps resolved since the last report, the counters, the run id and (each when it
    changed, else None) the alerts and the latest processed step: at most every ``interval_s``, and only when
    something changed."""

    def __init__(self, channel: Channel, interval_s: float = 0.005, idle_s: float = 0.5) -> None:
        self.channel = channel
        #: what is reported on (set once built: it calls :meth:`resolved`)
        self.deliverer: Deliverer | None = None
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.lock = threading.Lock()
        self.acks: list[int] = []
        self.event = threading.Event()
        self.stopped = False
        self._last: tuple[Any, ...] | None = None
        self._last_alerts: list[Any] | None = None
        self._last_latest: LatestStep | None = None
        self.thread = threading.Thread(target=self._run, name="fpmon-sender-reporter", daemon=True)

    def resolved(self, step: int) -> None:
        """Step ``step`` was resolved (the ``Deliverer``'s ``on_resolved``): report it soon."""
        with self.lock:
            self.acks.append(step)
        self.event.set()

    def _run(self) -> None:
        while not self.stopped:
            self.event.wait(self.idle_s)
            time.sleep(self.interval_s)  # coalesce a burst of resolutions into one message
            self.report()

    def report(self) -> None:
        """Send a report now if anything changed since the last one."""
        assert self.deliverer is not None
        with self.lock:
            self.event.clear()
            acks, self.acks = self.acks, []
            stats = asdict(self.deliverer.stats())
            run_id = self.deliverer.run_id
            alerts, latest = self.deliverer.view.alerts(), self.deliverer.view.latest()
        key = (tuple(sorted(stats.items())), run_id)
        changed_alerts = alerts if alerts != self._last_alerts else None
        changed_latest = latest if latest != self._last_latest else None
        if not acks and key == self._last and changed_alerts is None and changed_latest is None:
            return
        self._last, self._last_alerts, self._last_latest = key, alerts, latest
        self.channel.send(("report", acks, stats, run_id, changed_alerts, changed_latest))

    def stop(self) -> None:
        """Stop the thread and send the last report."""
        self.stopped = True
        self.event.set()
        self.thread.join(2.0)
        self.report()


def serve(in_fd: int, channel: Channel) -> int:
    """Read the settings, then serve the pipe until ``close`` or its end (see the module docstring)."""
    first = read_frame(in_fd)
    if not first or first[0] != "init":
        log.error("fpmon sender: expected its settings first, got %r", first and first[0])
        return 2
    init: dict[str, Any] = first[1]
    fpmon_log = logging.getLogger("fpmon")
    fpmon_log.addHandler(ForwardingHandler(channel))
    fpmon_log.setLevel(int(init.get("log_level", logging.INFO)))
    fpmon_log.propagate = False

    config = replace(init["config"], transport="thread")
    torch.set_num_threads(config.sender_threads)
    reporter = Reporter(channel)
    deliverer = Deliverer(
        init["url"],
        init["token"],
        init["run_name"],
        init["run_config"],
        config,
        backlog=init["backlog"],
        on_resolved=reporter.resolved,
    )
    reporter.deliverer = deliverer

    def submit(wire: dict[str, Any]) -> None:
        try:
            deliverer.submit(item_from_wire(wire))
        except Exception as exc:  # checked by the parent already; never lose it silently
            log.error("step %s DROPPED: the sender refused it: %s", wire["step"], exc)
            deliverer.count_dropped(f"step {wire['step']}: {exc}")
            reporter.resolved(wire["step"])

    try:  # the HTTP client (or, in-process, the database and its migrations) now, not at the first step
        deliverer.prepare_sink()
    except Exception as exc:  # the Deliverer retries at the first step and reports the problem then
        log.debug("fpmon sender: sink not ready yet: %s", exc)
    for wire in init["steps"]:  # a dead sender's unfinished steps: queued before anything is drained
        submit(wire)
    deliverer.start()
    reporter.thread.start()
    channel.send(("ready", os.getpid()))
    orphaned = True
    try:
        while True:
            message = read_frame(in_fd)
            if message is None:
                break
            kind = message[0]
            if kind == "step":
                submit(message[1])
            elif kind == "adopt":
                deliverer.adopt_spooled(int(message[1]))
            elif kind == "flush":
                gen, timeout = message[1], message[2]

                def flush(gen: int = gen, timeout: float | None = timeout) -> None:
                    ok = deliverer.flush(timeout)
                    reporter.report()
                    channel.send(("flushed", gen, ok))

                threading.Thread(target=flush, name=f"fpmon-sender-flush-{gen}", daemon=True).start()
            elif kind == "close":
                orphaned = False
                break
    except Terminate:
        log.warning("fpmon sender: terminated; spooling the steps it still holds")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Orphaned (the training process is gone): try the sink once more, briefly, then spool.
        deliverer.close(timeout=min(config.timeout_s, 10.0) if orphaned else 0.0)
        reporter.stop()
        channel.send(("closed",))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child (``IN_FD OUT_FD``); ``SenderProcess`` starts it through ``BOOTSTRAP``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m monitor.client.sender_child IN_FD OUT_FD (started by MonitorClient)", file=sys.stderr)
        return 2
    in_fd, out_fd = int(args[0]), int(args[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def terminate(signum: int, frame: Any) -> None:
        raise Terminate()

    signal.signal(signal.SIGTERM, terminate)
    return serve(in_fd, Channel(out_fd))


if __name__ == "__main__":
    sys.exit(main())
