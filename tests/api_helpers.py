"""Helpers shared by the sidecar tests: payloads, a server process on loopback, a reference run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

from monitor.rlhf import RLHFMonitor
from monitor.stepfile import StepPayload, encode_step

D = 32
N = 96


def step_payload(step: int, seed: int = 0, onset: int | None = None, n: int = N, d: int = D) -> bytes:
    """A step of Gaussian responses; from ``onset`` on, 30 % sit in a tight, highly rewarded cluster."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    basis = torch.randn(8, d, generator=torch.Generator().manual_seed(1234))
    z = torch.randn(n, 8, generator=gen) @ basis + 0.3 * torch.randn(n, d, generator=gen)
    r = 0.1 * torch.randn(n, generator=gen)
    if onset is not None and step >= onset:
        m = int(0.3 * n)
        z[:m] = 3.0 * basis[0] + 0.05 * torch.randn(m, d, generator=gen)
        r[:m] += 1.0
    texts = [f"step {step} answer {i}" for i in range(n)]
    ids = [f"s{step}-{i}" for i in range(n)]
    return encode_step(StepPayload(step=step, latents=z, rewards=r, texts=texts, sample_ids=ids, lr=1e-6))


def reference_scalars(payloads: list[bytes], config: dict | None = None) -> dict[int, dict[str, float]]:
    """What an uninterrupted in-process RLHFMonitor computes for these payloads (in step order)."""
    from monitor.rlhf import MonitorConfig
    from monitor.stepfile import decode_step

    monitor = RLHFMonitor(MonitorConfig.from_dict(config) if config else None)
    decoded = sorted((decode_step(p) for p in payloads), key=lambda p: p.step)
    for p in decoded:
        monitor.observe(p.step, p.latents, rewards=p.rewards, texts=p.texts, lr=p.lr, sample_ids=p.sample_ids)
    return dict(monitor.history)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``fpmon serve`` as a real process on an ephemeral loopback port."""

    def __init__(self, database_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.log_path = log_path
        self.env = {**os.environ, "FPMON_WORKER_POLL_S": "0.02", "OMP_NUM_THREADS": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "monitor.cli", "serve", "--port", str(self.port)]
        cmd += ["--database-url", self.database_url]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_processed(client: httpx.Client, run_id: int, count: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["steps_processed"] >= count:
            return run
        time.sleep(0.1)
    raise AssertionError(f"only {run.get('steps_processed')} of {count} steps processed after {timeout} s")


def iter_steps(payloads: list[bytes]) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(payloads)
