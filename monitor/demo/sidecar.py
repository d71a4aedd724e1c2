"""``fpmon serve`` as a child process on a free loopback port: the demo's sidecar, and the tests' and benchmarks'.

>>> sidecar = SidecarProcess("sqlite:///./demo.db", Path("sidecar.log")).start(timeout_s=60)  # doctest: +SKIP
>>> sidecar.url                                                                   # doctest: +SKIP
'http://127.0.0.1:40123'
>>> sidecar.stop()                                                                # doctest: +SKIP

The server runs as ``python -m api.cli serve`` with this interpreter (the ``fpmon`` command, whether or not its
console script is installed); with ``upgrade_schema`` the database is first created or migrated by
``fpmon db upgrade`` in the same way, so this module imports neither the server nor the database code.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

#: The ``fpmon`` command's module (its composition root), run as ``python -m`` with this interpreter.
FPMON_MODULE = "api.cli"
#: How much of the log's end an error message quotes.
LOG_TAIL_CHARS = 2000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's choice of an ephemeral port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """``fpmon serve`` in a child process on ``host`` (loopback) and a free port, its output appended to a log.

    Args:
        database_url: the server's database (``--database-url``).
        log_path: file the server's (and the schema upgrade's) stdout and stderr are appended to.
        host: address to bind; ``url`` points at it. Default ``127.0.0.1``.
        port: the port; default a free one (:func:`free_port`), kept across restarts.
        env: the environment the child starts from; default this process's.
        extra_env: variables set on top of it (e.g. ``FPMON_WORKER_POLL_S``, ``OMP_NUM_THREADS``).
        isolate_env: drop every ``FPMON_*`` variable of ``env`` (a demo's sidecar must not pick up the tokens or
            the database meant for the user's own sidecar); those of ``extra_env`` are still set.
        cpus: pin the server (and the schema upgrade) to these CPUs (``sched_setaffinity``); default unpinned.
        upgrade_schema: run ``fpmon db upgrade`` on the database before each start (a fresh SQLite file works).
            Without it the server refuses a database whose schema is not at the code's revision.
        serve_args: further ``fpmon serve`` options, e.g. ``("--device", "cpu")``.
        fpmon_command: the ``fpmon`` command to run, e.g. ``("/venv/bin/fpmon",)`` (an installed console
            script); default ``python -m api.cli`` with this interpreter.

    ``proc`` is the running ``subprocess.Popen`` (None before :meth:`start`). :meth:`start` can be called again
    after :meth:`stop` or :meth:`kill`: same port, same database.
    """

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        isolate_env: bool = False,
        cpus: Collection[int] | None = None,
        upgrade_schema: bool = True,
        serve_args: Sequence[str] = (),
        fpmon_command: Sequence[str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.log_path = Path(log_path)
        self.host = host
        self.port = free_port(host) if port is None else port
        self.url = f"http://{host}:{self.port}"
        base = dict(os.environ if env is None else env)
        if isolate_env:
            base = {k: v for k, v in base.items() if not k.startswith("FPMON_")}
        self.env: dict[str, str] = {**base, **(extra_env or {})}
        self.cpus = frozenset(cpus) if cpus else None
        self.upgrade_schema = upgrade_schema
        self.serve_args = tuple(serve_args)
        self.fpmon_command = tuple(fpmon_command or (sys.executable, "-m", FPMON_MODULE))
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self, *args: str) -> list[str]:
        return [*self.fpmon_command, *args]

    def _popen(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        cpus = self.cpus
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=pin)

    def log_tail(self) -> str:
        """The end of the log (for error messages); empty when there is none yet."""
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def upgrade(self, timeout_s: float = 120.0) -> None:
        """``fpmon db upgrade --database-url …``: create the schema, or migrate it to the code's revision."""
        proc = self._popen(self._command("db", "upgrade", "--database-url", self.database_url))
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"fpmon db upgrade of {self.database_url} took over {timeout_s:.0f} s") from None
        if code != 0:
            raise RuntimeError(
                f"could not create or upgrade the database {self.database_url} (fpmon db upgrade exited with "
                f"{code}); see {self.log_path}:\n{self.log_tail()}"
            )

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start the server (after the schema upgrade, if asked for) and wait until ``/readyz`` answers 200.

        Raises RuntimeError (with the log's end) when the server exits or is not ready within ``timeout_s``
        (it is stopped then).
        """
        if self.upgrade_schema:
            self.upgrade()
        cmd = self._command("serve", "--host", self.host, "--port", str(self.port))
        cmd += ["--database-url", self.database_url, *self.serve_args]
        self.proc = self._popen(cmd)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"fpmon serve exited with {self.proc.returncode}; see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fpmon serve not ready after {timeout_s:.0f} s; see {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (a graceful shutdown); SIGKILL if it has not exited after ``timeout_s``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
