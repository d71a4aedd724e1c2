"""The client's settings and counters: :class:`ClientConfig`, :class:`ClientStats`, and the run config sent at
run creation (:func:`monitor_config_diff`).

Both transports (``monitor.client.delivery`` in a thread, ``monitor.client.sender`` with a sender process)
and the sender process itself read the same ``ClientConfig``; :class:`ClientStats` is what
``MonitorClient.stats`` returns, whichever transport counted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..rlhf import MonitorConfig

#: turns a list of n response strings into an (n, d) float tensor (any device)
Embedder = Callable[[list[str]], Tensor]
#: the sidecar's default address (``fpmon serve``)
DEFAULT_URL = "http://127.0.0.1:8700"
#: dtypes allowed for the latents on the wire and in the spool (``ClientConfig.latent_dtype``)
WIRE_DTYPES = (torch.float16, torch.float32, torch.bfloat16)
#: the counters of :class:`ClientStats` that add up across transports and sender processes
COUNTERS = ("sent", "spooled", "retried", "dropped", "rejected", "dropped_rows")


def default_spool_dir() -> Path:
    """``$FPMON_SPOOL_DIR``, else ``./fpmon-spool``."""
    return Path(os.environ.get("FPMON_SPOOL_DIR", "fpmon-spool"))


def default_transport() -> Literal["process", "thread"]:
    """``process`` on POSIX systems, else ``thread``."""
    return "process" if os.name == "posix" else "thread"


@dataclass
class ClientConfig:
    """Settings of ``monitor.client.MonitorClient`` (and of its sender process).

    Attributes:
        spool_dir: where undelivered steps are kept (``<spool_dir>/<run>/step-….safetensors``). Default
            ``$FPMON_SPOOL_DIR`` or ``./fpmon-spool``.
        max_queue_bytes: bound of the in-memory queue (latent, reward and text bytes of the queued steps).
            When a step does not fit, it goes to the spool at once (written by the calling thread when it
            carries latents; see :meth:`MonitorClient.observe`). One step larger than the bound is admitted
            when the queue is empty. Default 256 MiB.
        timeout_s: limit of each HTTP request (connect, read, write), seconds. Default 10.
        max_retries: retries of one step after retryable failures (connection error, timeout, 429, 5xx)
            before it goes to the spool. Default 5.
        backoff_base_s: upper bound of the first retry's wait; the n-th waits uniformly in
            ``[0, min(backoff_max_s, backoff_base_s · 2^(n−1))]`` (full jitter). Default 0.5 s.
        backoff_max_s: cap of every wait (also of the spool-drain probes of ``/healthz``). Default 30 s.
        latent_dtype: dtype of the latents on the wire and in the spool: ``torch.float16`` (default, half
            the bytes; values beyond ±65504 become Inf and their rows are dropped), ``torch.float32`` or
            ``torch.bfloat16``.
        database_url: in-process mode only (``url=None``): the SQLAlchemy URL the steps are stored in.
            Default ``$FPMON_DATABASE_URL``, else ``sqlite:///<spool_dir>/../fpmon.db`` (with the default
            spool dir that is ``./fpmon.db``, the file ``fpmon serve`` uses by default).
        device: in-process mode only: where the observables are computed (``cpu``, ``cuda`` or ``auto``).
            Default ``cpu`` (stays off the training GPU).
        poll_alerts_s: how often the background thread fetches this run's alerts. Default 5 s.
        embed_batch_size: responses per call of the embedder. Default 64.
        transport: ``"process"`` (default on POSIX): a sender process encodes, sends, retries and spools,
            so none of that takes the training process's GIL; the embedder still runs in a background
            thread of the training process (it needs the model that lives there). ``"thread"``: all of it in
            one background thread of the training process (the only choice where ``os.name != "posix"``;
            also what the sender process itself runs). Both deliver the same steps in the same order.
        sender_threads: torch threads of the sender process (in-process mode computes the observables
            there). Default 1: it shares the machine with training.
        sender_nice: niceness added to the sender process (``os.nice``), so that when it shares a core with
            training the scheduler gives training the CPU first (the sender needs a few ms per step and
            catches up when a core is idle). Default 10; 0 keeps the training process's priority.
        sender_cpus: CPUs the sender process may run on (``os.sched_setaffinity``), e.g. ``{15}`` to keep it
            off the cores of the training threads and data loaders. Default None: the training process's.
        max_sender_restarts: how often a sender process that died is replaced (its unfinished steps are
            handed to the next one) before the client falls back to ``transport="thread"``. Default 3.
    """

    spool_dir: Path = field(default_factory=default_spool_dir)
    max_queue_bytes: int = 256 * 2**20
    timeout_s: float = 10.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    latent_dtype: torch.dtype = torch.float16
    database_url: str | None = None
    device: str = "cpu"
    poll_alerts_s: float = 5.0
    embed_batch_size: int = 64
    transport: Literal["process", "thread"] = field(default_factory=lambda: default_transport())
    sender_threads: int = 1
    sender_nice: int = 10
    sender_cpus: frozenset[int] | None = None
    max_sender_restarts: int = 3

    def __post_init__(self) -> None:
        self.spool_dir = Path(self.spool_dir)
        if self.max_queue_bytes < 1:
            raise ValueError(f"ClientConfig.max_queue_bytes must be >= 1, got {self.max_queue_bytes}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"ClientConfig.timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"ClientConfig.max_retries must be >= 0, got {self.max_retries}")
        if not (self.backoff_base_s >= 0 and self.backoff_max_s >= 0):
            raise ValueError("ClientConfig.backoff_base_s and backoff_max_s must be >= 0 seconds")
        if self.latent_dtype not in WIRE_DTYPES:
            raise ValueError(f"ClientConfig.latent_dtype must be float16, float32 or bfloat16, got {self.latent_dtype}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"ClientConfig.device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if not self.poll_alerts_s > 0:
            raise ValueError(f"ClientConfig.poll_alerts_s must be > 0 seconds, got {self.poll_alerts_s}")
        if self.embed_batch_size < 1:
            raise ValueError(f"ClientConfig.embed_batch_size must be >= 1, got {self.embed_batch_size}")
        if self.transport not in ("process", "thread"):
            raise ValueError(f"ClientConfig.transport must be 'process' or 'thread', got {self.transport!r}")
        if self.transport == "process" and os.name != "posix":
            raise ValueError("ClientConfig.transport='process' needs a POSIX system; use transport='thread'")
        if self.sender_threads < 1:
            raise ValueError(f"ClientConfig.sender_threads must be >= 1, got {self.sender_threads}")
        if not 0 <= self.sender_nice <= 19:
            raise ValueError(f"ClientConfig.sender_nice must be between 0 and 19, got {self.sender_nice}")
        if self.sender_cpus is not None:
            self.sender_cpus = frozenset(int(c) for c in self.sender_cpus)
            if not hasattr(os, "sched_setaffinity"):
                raise ValueError("ClientConfig.sender_cpus needs os.sched_setaffinity (Linux); leave it None")
            if not self.sender_cpus or min(self.sender_cpus) < 0:
                raise ValueError(f"ClientConfig.sender_cpus must be a non-empty set of CPUs, got {self.sender_cpus}")
        if self.max_sender_restarts < 0:
            raise ValueError(f"ClientConfig.max_sender_restarts must be >= 0, got {self.max_sender_restarts}")

    def resolved_database_url(self) -> str:
        """The in-process database URL (see ``database_url``)."""
        if self.database_url:
            return self.database_url
        env = os.environ.get("FPMON_DATABASE_URL")
        if env:
            return env
        return f"sqlite:///{(self.spool_dir.absolute().parent / 'fpmon.db').as_posix()}"


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of the client's counters (see ``docs/client.md``; both transports count the same way).

    Attributes:
        sent: steps the server (or the in-process store) acknowledged, duplicates included.
        spooled: steps written to the spool (delivered later ones are also in ``sent``).
        retried: attempts repeated after a retryable failure of a step.
        dropped: steps lost with an error log: not writable to disk, or the embedder failed.
        rejected: steps refused for good (4xx, or invalid after dropping non-finite rows), in ``rejected/``.
        dropped_rows: rows (samples) removed because their latents or reward were NaN/Inf.
        queued_steps: steps observed and not yet sent, spooled, rejected or dropped.
        queued_bytes: bytes held by the in-memory queue.
        spool_backlog: this run's steps waiting in the spool.
        embed_seconds: time spent in the embedder (background thread), seconds.
        last_error: the most recent delivery or embedding error, or None.
    """

    sent: int
    spooled: int
    retried: int
    dropped: int
    rejected: int
    dropped_rows: int
    queued_steps: int
    queued_bytes: int
    spool_backlog: int
    embed_seconds: float
    last_error: str | None

    def plus(self, counts: Mapping[str, Any]) -> ClientStats:
        """These stats with ``counts`` (e.g. a sender process's :data:`COUNTERS`) added to the counters."""
        return replace(self, **{name: getattr(self, name) + int(counts.get(name, 0)) for name in COUNTERS})


def _diff(default: Any, value: Any, path: str) -> Any:
    if isinstance(default, dict) and isinstance(value, dict):
        out = {}
        for key, v in value.items():
            sub = _diff(default.get(key), v, f"{path}.{key}")
            if sub is not _SAME:
                out[key] = sub
        return out or _SAME
    if value == default:
        return _SAME
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"MonitorConfig {path} = {value} cannot be sent as JSON; use a finite value")
    return value


_SAME: Any = object()


def monitor_config_diff(config: MonitorConfig) -> dict[str, Any]:
    """``config.to_dict()`` without the entries equal to the defaults (``MonitorConfig.from_dict`` fills
    them in again). JSON has no ``inf``, and the default ``fpe.tau_D`` is ``inf``: sending only what differs
    keeps the run's config exact through JSON and the database."""
    diff = _diff(MonitorConfig().to_dict(), config.to_dict(), "MonitorConfig")
    return {} if diff is _SAME else dict(diff)
