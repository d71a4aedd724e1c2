"""Helpers shared by the sidecar tests: payloads, a server process on loopback, a reference run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

from monitor.demo.sidecar import SidecarProcess
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


class ServerProcess(SidecarProcess):
    """``fpmon serve`` as a real process on an ephemeral loopback port; ``env``: FPMON_* settings on top of the
    tests' (a fast worker poll, one OpenMP thread). The test migrates the database itself (``storage.upgrade``)."""

    def __init__(self, database_url: str, log_path: Path, **env: str) -> None:
        super().__init__(
            database_url,
            log_path,
            extra_env={"FPMON_WORKER_POLL_S": "0.02", "OMP_NUM_THREADS": "1", **env},
            upgrade_schema=False,
        )


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
