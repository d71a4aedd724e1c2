"""The sender process: ``MonitorClient``'s delivery work in a child process of its own.

Why a process: the training loop of a Python-bound model (small models, or any model between its CUDA
kernels) holds the GIL almost all the time. A background *thread* that encodes steps and speaks HTTP takes
the GIL for milliseconds per step, and every time the training thread gives the GIL up (each torch op does)
it may have to wait for it again — up to ``sys.getswitchinterval()`` (5 ms) at a time. In a child process
the same work runs on another core and never touches the training process's GIL: what is left on the
training side is copying the batch (``observe``), the embedding (when the client embeds) and handing the
copy to a pipe.

The child is ``python -c BOOTSTRAP IN_FD OUT_FD NICE CPUS`` (the bootstrap lowers its priority and sets
its CPU affinity before anything is imported, then runs :func:`main`) — started with ``subprocess``, not
``multiprocessing``, so the user's training script is never imported a second time. It runs an ordinary
``MonitorClient(transport="thread")`` with the parent's settings: the same retries, spool, order and
counters. The parent keeps every step it handed over until the child reports it *resolved* (sent,
spooled, rejected or dropped); if the child dies, the parent starts another and hands the unresolved steps
over again (the server is idempotent on a step's content), so a killed sender loses nothing.

Protocol: length-prefixed pickles (8-byte little-endian length, then ``pickle`` protocol 5) over two
private pipes. Parent → child: ``("init", dict)``, ``("step", dict)``, ``("adopt", step)`` (a step the
parent spooled itself), ``("flush", gen, timeout)``, ``("close",)``. Child → parent: ``("ready", pid)``,
``("report", acks, stats, run_id, alerts)``, ``("flushed", gen, ok)``, ``("log", level, name, message)``,
``("closed",)``.
When the parent goes away (its end of the pipe closes), or on SIGTERM, the child closes its client — the
steps it holds go to the server or to the spool — and exits. SIGINT (Ctrl-C in the terminal, which reaches
the whole process group) is ignored by the child: the parent's own shutdown closes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("fpmon.client")

_LEN = struct.Struct("<Q")
#: largest message accepted from the other side (a step of 4096 × 4096 float32 latents is 64 MiB)
MAX_FRAME_BYTES = 2**31


class SenderDied(Exception):
    """The sender process is gone (its pipe is closed)."""


# ---------------------------------------------------------------------------------------------- framing
def write_frame(fd: int, obj: Any) -> None:
    """Write one message to file descriptor ``fd`` (blocking; the GIL is released while the pipe is full)."""
    data = pickle.dumps(obj, protocol=5)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        try:
            n = os.write(fd, view)
        except (BrokenPipeError, OSError) as exc:
            raise SenderDied(f"the pipe is closed ({exc})") from exc
        view = view[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n > 0:
        try:
            chunk = os.read(fd, min(n, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any | None:
    """Read one message from ``fd``; None at end of file (the other side closed its end or died)."""
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"sender message of {size} bytes exceeds {MAX_FRAME_BYTES}; the pipe is out of sync")
    body = _read_exact(fd, size)
    return None if body is None else pickle.loads(body)


# ---------------------------------------------------------------------------------------------- tensors on the wire
def tensor_to_wire(t: Tensor | None) -> tuple[str, np.ndarray] | None:
    """A CPU tensor as (dtype name, numpy array) — pickled as raw bytes, unlike a torch tensor."""
    if t is None:
        return None
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return "bfloat16", t.view(torch.int16).numpy()
    return str(t.dtype).removeprefix("torch."), t.numpy()


def tensor_from_wire(w: tuple[str, np.ndarray] | None) -> Tensor | None:
    """Inverse of :func:`tensor_to_wire`."""
    if w is None:
        return None
    name, arr = w
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.view(torch.bfloat16) if name == "bfloat16" else t


# ---------------------------------------------------------------------------------------------- the parent's side
#: the child's first code: priority and CPUs before the imports (torch takes a second of CPU), then main()
BOOTSTRAP = """\
import os, sys
nice, cpus = int(sys.argv[3]), sys.argv[4]
if nice:
    os.nice(nice)
if cpus:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
from monitor.sender import main
sys.exit(main(sys.argv[1:3]))
"""


class SenderProcess:
    """One sender child process, seen from the training process.

    Args:
        init: the child's settings (url, token, run_name, monitor_config, config, log_level), sent first.
        on_message: called on a reader thread with every message from the child, and with ``("eof",
            returncode)`` once the child is gone.
    """

    #: the child's command line before its four arguments; None: ``sys.executable -c BOOTSTRAP``
    command: tuple[str, ...] | None = None

    def __init__(self, init: dict[str, Any], on_message: Callable[[tuple[Any, ...]], None]) -> None:
        self._init = init
        self._on_message = on_message
        self.proc: subprocess.Popen[bytes] | None = None
        self._to_child: int | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the child and send its settings; raises ``SenderDied`` when it cannot be started."""
        config = self._init["config"]
        cpus = ",".join(str(c) for c in sorted(config.sender_cpus or ()))
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        threads = str(config.sender_threads)
        env.setdefault("OMP_NUM_THREADS", threads)  # torch is imported before set_num_threads can run
        env.setdefault("MKL_NUM_THREADS", threads)
        args = [str(child_in), str(child_out), str(config.sender_nice), cpus]
        command = [*(self.command or (sys.executable, "-c", BOOTSTRAP)), *args]
        try:
            self.proc = subprocess.Popen(
                command,
                pass_fds=(child_in, child_out),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stray prints must not reach the protocol pipes
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            for fd in (child_in, parent_out, parent_in, child_out):
                os.close(fd)
            raise SenderDied(f"could not start the sender process ({command[0]}): {exc}") from exc
        finally:
            if self.proc is not None:
                os.close(child_in)
                os.close(child_out)
        self._to_child = parent_out
        self._reader = threading.Thread(
            target=self._read_loop, args=(parent_in,), name=f"fpmon-sender-reader-{self.proc.pid}", daemon=True
        )
        self._reader.start()
        self.send(("init", self._init))

    def send(self, message: tuple[Any, ...]) -> None:
        """Hand one message to the child (blocks while the pipe is full); ``SenderDied`` when it is gone."""
        if self._to_child is None:
            raise SenderDied("the sender process is not running")
        write_frame(self._to_child, message)

    def _read_loop(self, fd: int) -> None:
        try:
            while True:
                try:
                    message = read_frame(fd)
                except Exception as exc:  # a garbled pipe: treat the child as dead
                    log.error("fpmon sender %s: unreadable message (%s); restarting it", self.pid, exc)
                    message = None
                if message is None:
                    break
                self._on_message(message)
        finally:
            os.close(fd)
            code = None
            if self.proc is not None:
                try:
                    code = self.proc.wait(10.0)
                except subprocess.TimeoutExpired:  # its pipe closed but it hangs: it holds nothing we need
                    self.proc.kill()
                    code = self.proc.wait()
            self._on_message(("eof", code))

    def close_input(self) -> None:
        """Close the pipe to the child: it closes its client and exits (what happens when the parent dies)."""
        if self._to_child is not None:
            fd, self._to_child = self._to_child, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def kill(self) -> None:
        self.close_input()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def join(self, timeout: float | None) -> bool:
        """Wait until the child is gone and its last message was read; True if so."""
        if self._reader is not None:
            self._reader.join(timeout)
            return not self._reader.is_alive()
        return True


# ---------------------------------------------------------------------------------------------- the child's side
class _Terminate(BaseException):
    pass


class _Channel:
    """The child's writing end, shared by its threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock:
            if self.broken:
                return
            try:
                write_frame(self.fd, message)
            except SenderDied:
                self.broken = True  # the parent is gone; the client keeps going to the server or the spool


class _ForwardingHandler(logging.Handler):
    """Log records of the child go to the parent, which logs them under the same logger name."""

    def __init__(self, channel: _Channel) -> None:
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


class _Reporter:
    """Sends the parent the steps resolved since the last report, the counters, the run id and (when they
    changed) the alerts: at most every ``interval_s``, and only when something changed."""

    def __init__(self, channel: _Channel, client: Any, interval_s: float = 0.005, idle_s: float = 0.5) -> None:
        self.channel = channel
        self.client = client
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.lock = threading.Lock()
        self.acks: list[int] = []
        self.event = threading.Event()
        self.stopped = False
        self._last: tuple[Any, ...] | None = None
        self._last_alerts: list[Any] | None = None
        self.thread = threading.Thread(target=self._run, name="fpmon-sender-reporter", daemon=True)

    def resolved(self, step: int) -> None:
        with self.lock:
            self.acks.append(step)
        self.event.set()

    def _run(self) -> None:
        while not self.stopped:
            self.event.wait(self.idle_s)
            time.sleep(self.interval_s)  # coalesce a burst of resolutions into one message
            self.report()

    def report(self) -> None:
        with self.lock:
            self.event.clear()
            acks, self.acks = self.acks, []
            stats = self.client.stats.__dict__.copy()
            run_id = self.client.run_id
            alerts = self.client.alerts()
        key = (tuple(sorted(stats.items())), run_id)
        changed_alerts = alerts if alerts != self._last_alerts else None
        if not acks and key == self._last and changed_alerts is None:
            return
        self._last, self._last_alerts = key, alerts
        self.channel.send(("report", acks, stats, run_id, changed_alerts))

    def stop(self) -> None:
        self.stopped = True
        self.event.set()
        self.thread.join(2.0)
        self.report()


def _serve(in_fd: int, channel: _Channel) -> int:
    first = read_frame(in_fd)
    if not first or first[0] != "init":
        log.error("fpmon sender: expected its settings first, got %r", first and first[0])
        return 2
    init: dict[str, Any] = first[1]
    handler = _ForwardingHandler(channel)
    fpmon_log = logging.getLogger("fpmon")
    fpmon_log.addHandler(handler)
    fpmon_log.setLevel(int(init.get("log_level", logging.INFO)))
    fpmon_log.propagate = False

    from dataclasses import replace

    from .client import MonitorClient

    config = replace(init["config"], transport="thread")
    torch.set_num_threads(config.sender_threads)
    client = MonitorClient(
        init["url"],
        init["token"],
        init["run_name"],
        monitor_config=init["monitor_config"],
        config=config,
        spool_backlog=init["backlog"],
        _defer_start=True,
    )
    reporter = _Reporter(channel, client)
    client._on_resolved = reporter.resolved

    def observe(s: dict[str, Any]) -> None:
        try:
            client.observe(
                s["step"],
                s["texts"],
                tensor_from_wire(s["rewards"]),
                s["prompts"],
                latents=tensor_from_wire(s["latents"]),
                sample_ids=s["sample_ids"],
                lr=s["lr"],
            )
        except Exception as exc:  # checked by the parent already; never lose it silently
            log.error("step %s DROPPED: the sender refused it: %s", s["step"], exc)
            client._count_dropped(f"step {s['step']}: {exc}")
            reporter.resolved(s["step"])

    try:  # the HTTP client (or, in-process, the database and its migrations) now, not at the first step
        client._get_sink()
    except Exception as exc:  # the client retries at the first step and reports the problem then
        log.debug("fpmon sender: sink not ready yet: %s", exc)
    for s in init["steps"]:  # a dead sender's unfinished steps: queued before anything is drained
        observe(s)
    client._start()
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
                observe(message[1])
            elif kind == "adopt":
                client._adopt_spooled(int(message[1]))
            elif kind == "flush":
                gen, timeout = message[1], message[2]

                def flush(gen: int = gen, timeout: float | None = timeout) -> None:
                    ok = client.flush(timeout)
                    reporter.report()
                    channel.send(("flushed", gen, ok))

                threading.Thread(target=flush, name=f"fpmon-sender-flush-{gen}", daemon=True).start()
            elif kind == "close":
                orphaned = False
                break
    except _Terminate:
        log.warning("fpmon sender: terminated; spooling the steps it still holds")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Orphaned (the training process is gone): try the server once more, briefly, then spool.
        client.close(timeout=min(config.timeout_s, 10.0) if orphaned else 0.0)
        reporter.stop()
        channel.send(("closed",))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the child (``IN_FD OUT_FD``); ``MonitorClient`` starts it through :data:`BOOTSTRAP`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m monitor.sender IN_FD OUT_FD (started by MonitorClient)", file=sys.stderr)
        return 2
    in_fd, out_fd = int(args[0]), int(args[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminate()

    signal.signal(signal.SIGTERM, terminate)
    return _serve(in_fd, _Channel(out_fd))


if __name__ == "__main__":
    sys.exit(main())
