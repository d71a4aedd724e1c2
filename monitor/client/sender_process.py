"""One sender process, seen from the training process: :class:`SenderProcess` starts it, writes to its pipe
and reads its messages on a thread of its own.

The child is ``python -c BOOTSTRAP IN_FD OUT_FD NICE CPUS``: the bootstrap lowers its priority and sets its
CPU affinity before anything is imported (torch takes a second of CPU), then runs
``monitor.client.sender_child.main``. It is started with ``subprocess``, not ``multiprocessing``, so the
user's training script is never imported a second time. Messages are ``monitor.client.pipe`` frames; what
they mean is ``monitor.client.sender``'s and ``monitor.client.sender_child``'s business.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pipe import SenderDied, read_frame, write_frame

log = logging.getLogger("fpmon.client")

#: the child's first code: priority and CPUs before the imports (torch takes a second of CPU), then main()
BOOTSTRAP = """\
import os, sys
nice, cpus = int(sys.argv[3]), sys.argv[4]
if nice:
    os.nice(nice)
if cpus:
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
from monitor.client.sender_child import main
sys.exit(main(sys.argv[1:3]))
"""


class StartFailed(Exception):
    """The sender process could not be started at all (the transport then falls back to a thread)."""


class SenderProcess:
    """One sender child process, seen from the training process.

    Args:
        init: the child's settings (see ``monitor.client.sender_child``), sent first in an ``("init", init)``
            frame.
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
        """The child's process id once started."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the child and send its settings; raises ``SenderDied`` when it cannot be started."""
        config = self._init["config"]
        cpus = ",".join(str(c) for c in sorted(config.sender_cpus or ()))
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds monitor/
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
        """Close the pipe and SIGKILL the child if it still runs."""
        self.close_input()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def join(self, timeout: float | None) -> bool:
        """Wait until the child is gone and its last message was read; True if so."""
        if self._reader is not None:
            self._reader.join(timeout)
            return not self._reader.is_alive()
        return True
