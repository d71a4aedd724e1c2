"""``MonitorClient``: ships each training step to the fpmon sidecar without ever stalling training.

The training thread only validates its input and copies the batch (``observe``). Everything else happens
elsewhere. By default (``ClientConfig.transport="process"``) one background thread of the training process
embeds the responses (when the client embeds) and hands each step to a *sender process*
(``monitor.sender``), which encodes it, speaks HTTP, retries and spools — off the training process's GIL,
on another core. With ``transport="thread"`` (and inside the sender process) one background daemon thread
does all of it: embedding the responses, encoding the step (``monitor.stepfile``), HTTP with
retries (exponential backoff, full jitter) on connection errors, timeouts, 429 and 5xx, and the on-disk
spool (``monitor.spool``) when the sidecar stays unreachable or the in-memory queue (bounded in bytes) is
full. Steps reach the server in the order they were observed: once a step of this run is in the spool,
later steps go behind it, and the thread drains the spool in step order as soon as the sidecar answers
again (it probes ``/healthz`` on the backoff schedule). ``fpmon sync SPOOL_DIR`` replays what is left.

With ``url=None`` the same code ingests each step into a database (SQLite by default) and processes it
with the sidecar's own ``api.worker.StepProcessor``: the same storage and the same results, no server (in
the sender process by default, so the observables are computed off the training process's GIL too).

The process transport loses nothing when the sender dies: the training process keeps each step until the
sender reports it sent, spooled, rejected or dropped, starts a new sender and hands the rest over again (up
to ``max_sender_restarts`` times; then it falls back to the thread transport, with an error log).

Counters (``stats``): ``sent`` (acknowledged by the server, duplicates included), ``spooled`` (written to
the spool; a spooled step that is delivered later also counts in ``sent``), ``retried`` (attempts repeated
after a retryable failure), ``rejected`` (refused for good: moved to ``<spool>/<run>/rejected/`` with the
message), ``dropped`` (could not even be written to disk or turned into a payload; logged as errors).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from .rlhf import MonitorConfig
from .spool import DeliveryError, HttpSink, RetryPolicy, RunInfo, RunSpool, infer_info
from .stepfile import StepPayload, encode_step

log = logging.getLogger("fpmon.client")

Embedder = Callable[[list[str]], Tensor]
DEFAULT_URL = "http://127.0.0.1:8700"
#: largest step number the server stores (a 32-bit signed integer column)
MAX_STEP = 2_147_483_647
_WIRE_DTYPES = (torch.float16, torch.float32, torch.bfloat16)


def _default_spool_dir() -> Path:
    return Path(os.environ.get("FPMON_SPOOL_DIR", "fpmon-spool"))


def _default_transport() -> Literal["process", "thread"]:
    return "process" if os.name == "posix" else "thread"


@dataclass
class ClientConfig:
    """Settings of :class:`MonitorClient`.

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

    spool_dir: Path = field(default_factory=_default_spool_dir)
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
    transport: Literal["process", "thread"] = field(default_factory=lambda: _default_transport())
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
        if self.latent_dtype not in _WIRE_DTYPES:
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
    """A snapshot of the client's counters (see the module docstring).

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


@dataclass
class _Item:
    """One observed step, as copied on the calling thread."""

    step: int
    latents: Tensor | None
    texts: list[str] | None
    rewards: Tensor | None
    prompts: list[str] | None
    sample_ids: list[str] | None
    lr: float | None
    embedder: Embedder | None
    nbytes: int


@dataclass
class _Adopt:
    """Queue marker (process transport): step ``step`` was spooled by the calling thread on overflow; the
    sender is told in queue order, so that it drains the step behind the ones observed before it."""

    step: int
    nbytes: int = 0


@dataclass
class _Built:
    """A step turned into wire bytes, or the reason it cannot be sent."""

    step: int
    body: bytes | None
    latent_dim: int
    problem: str | None = None


class _Sink(Protocol):
    def ensure_run(self, info: RunInfo) -> int: ...
    def post_step(self, run_id: int, body: bytes) -> Literal["queued", "duplicate"]: ...
    def healthy(self) -> bool: ...
    def alerts(self, run_id: int) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


class _InProcessSink:
    """``url=None``: steps go into the database and are processed at once by the sidecar's worker code."""

    def __init__(self, database_url: str, device: str) -> None:
        import storage
        from api.worker import StepProcessor, resolve_device

        self._storage = storage
        self.engine = storage.make_engine(database_url)
        storage.upgrade(self.engine)  # what `fpmon db upgrade` does; a no-op when at head
        self.sessions = storage.session_factory(self.engine)
        self.processor = StepProcessor(self.sessions, resolve_device(device), worker_id=f"client-{os.getpid()}")

    def _errors(self, exc: Exception) -> DeliveryError:
        from sqlalchemy.exc import OperationalError

        retryable = isinstance(exc, OperationalError)  # locked or unreachable database: try again later
        return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=retryable, status=None if retryable else 500)

    def ensure_run(self, info: RunInfo) -> int:
        try:
            with self.sessions() as session:
                run, _ = self._storage.get_or_create_run(session, info.name, info.latent_dim, info.config)
        except Exception as exc:
            raise self._errors(exc) from exc
        if run.latent_dim != info.latent_dim:
            raise DeliveryError(
                f"run {info.name!r} exists with latent_dim {run.latent_dim}, not {info.latent_dim}; use another name",
                retryable=False,
                status=409,
            )
        return int(run.id)

    def post_step(self, run_id: int, body: bytes) -> Literal["queued", "duplicate"]:
        from .stepfile import decode_step, payload_digest

        try:
            payload = decode_step(body)
        except ValueError as exc:
            raise DeliveryError(str(exc), retryable=False, status=400) from exc
        n = int(payload.latents.shape[0])
        try:
            with self.sessions() as session:
                result = self._storage.ingest_step(
                    session, run_id, payload.step, body, n, digest=payload_digest(payload)
                )
        except self._storage.StepConflict as exc:
            raise DeliveryError(str(exc), retryable=False, status=409) from exc
        except Exception as exc:
            raise self._errors(exc) from exc
        self.process_pending()
        return result

    def process_pending(self) -> None:
        """Process every pending step (the worker records a step that fails; it does not raise)."""
        try:
            while self.processor.process_one():
                pass
        except Exception as exc:
            raise self._errors(exc) from exc

    def healthy(self) -> bool:
        from sqlalchemy import text

        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def alerts(self, run_id: int) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = self._storage.list_alerts(session, run_id=run_id, limit=1000)
            return [
                {
                    "alert_id": a.id,
                    "run_id": a.run_id,
                    "step": a.step,
                    "type": a.type,
                    "status": a.status,
                    "created_at": a.created_at.isoformat(),
                    "scalars": a.scalars,
                    "reasons": a.reasons,
                    "top_samples": a.top_samples,
                    "recommendation": a.recommendation,
                }
                for a in rows
            ]

    def close(self) -> None:
        self.engine.dispose()


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


def _str_list(value: Sequence[str] | None, name: str, n: int | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of strings (one per sample), got {type(value).__name__}")
    out = [str(v) for v in value]
    if n is not None and len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for a batch of {n}; pass one per sample")
    return out


class MonitorClient:
    """Sends each training step to the fpmon sidecar (or, with ``url=None``, monitors in-process).

    Args:
        url: the sidecar, e.g. ``http://127.0.0.1:8700``; None: in-process mode (``ClientConfig.database_url``).
        token: bearer token for the sidecar (``FPMON_API_TOKENS``); default ``$FPMON_TOKEN``.
        run_name: the run's name; the server creates the run on the first step and returns the same run for
            the same name (the latent dimension must not change).
        embedder: turns a list of response strings into an (n, d) tensor; used when ``observe`` gets
            responses without latents. Called in the background thread, under ``torch.no_grad()``.
        monitor_config: the run's ``MonitorConfig`` (sent at run creation; the sidecar computes with it).
        config: client settings (:class:`ClientConfig`).
        spool_backlog: internal (the sender process): the spooled steps to drain, instead of every step
            found in the run's spool folder.

    Use it as a context manager, or call :meth:`close` (also registered with ``atexit``).
    """

    def __init__(
        self,
        url: str | None = DEFAULT_URL,
        token: str | None = None,
        run_name: str = "run",
        *,
        embedder: Embedder | None = None,
        monitor_config: MonitorConfig | None = None,
        config: ClientConfig | None = None,
        spool_backlog: Sequence[int] | None = None,
        _defer_start: bool = False,
    ) -> None:
        self.config = config or ClientConfig()
        if url is not None:
            import httpx

            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL as exc:
                raise ValueError(f"url {url!r} is not a URL ({exc}); e.g. http://127.0.0.1:8700") from exc
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"url must be http(s)://host:port, got {url!r}; url=None monitors in-process")
        self.url = url.rstrip("/") if url is not None else None
        self.run_name = run_name
        self._spool = RunSpool(self.config.spool_dir, run_name)  # validates the name
        self._token = token if token is not None else os.environ.get("FPMON_TOKEN")
        self.monitor_config = monitor_config or MonitorConfig()
        self._run_config: dict[str, Any] = {"monitor": monitor_config_diff(self.monitor_config)}
        self.embedder = embedder
        self._policy = RetryPolicy(self.config.max_retries, self.config.backoff_base_s, self.config.backoff_max_s)
        self.run_id: int | None = None

        self._cond = threading.Condition()
        self._queue: deque[_Item | _Adopt] = deque()
        self._queued_bytes = 0
        self._unresolved = 0  # observed steps not yet sent / spooled / rejected / dropped
        # includes steps left by an earlier process
        self._backlog: set[int] = set(self._spool.steps() if spool_backlog is None else spool_backlog)
        self._info_written = False
        self._latent_dim: int | None = None
        self._last_step: int | None = None
        self._sent = self._spooled = self._retried = self._dropped = self._rejected = self._dropped_rows = 0
        self._embed_seconds = 0.0
        self._last_error: str | None = None
        self._logged: set[str] = set()
        self._alerts: list[dict[str, Any]] = []
        self._seen_alerts: set[Any] = set()
        self._flush_gen = 0  # flush() calls so far
        self._drain_failed_gen = 0  # the flush generation at the last failed spool-drain attempt
        self._nudge = False
        self._closing = False
        self._closed = False
        self._sink: _Sink | None = None
        #: called with each step once it is sent, spooled, rejected or dropped (the sender process reports it)
        self._on_resolved: Callable[[int], None] | None = None
        # process transport: the training process's side (see monitor.sender)
        self._mode: Literal["process", "thread"] = self.config.transport
        self._sender: Any = None  # monitor.sender.SenderProcess once started
        self._pending: OrderedDict[int, _Item] = OrderedDict()  # handed to the sender, not resolved yet
        self._pending_bytes = 0
        self._child_stats: dict[str, Any] = {}  # the running sender's counters
        self._base_stats: dict[str, int] = {}  # counters of senders that are gone
        self._flushed_gen = 0  # the newest flush generation the sender answered
        self._flush_timeout: float | None = None
        self._sender_lost = False  # the running sender died; start another
        self._sender_closing = False
        self._sender_closed = False
        self._sender_restarts = 0
        self._sender_ready_pid: int | None = None
        if self._backlog:
            log.info(
                "run %r: %d steps left in %s from earlier; sending them first",
                run_name,
                len(self._backlog),
                self._spool.path,
            )
        self._adopt_queued: set[int] = set()  # steps with an _Adopt marker still in the queue
        target = self._forward if self._mode == "process" else self._run
        self._thread = threading.Thread(target=target, name=f"fpmon-client-{run_name}", daemon=True)
        if not _defer_start:  # the sender process queues the steps it was handed before starting
            self._start()

    def _start(self) -> None:
        self._thread.start()
        atexit.register(self.close)

    # ================================================================== the training thread's side
    def observe(
        self,
        step: int,
        responses: Sequence[str] | None = None,
        rewards: Tensor | Sequence[float] | None = None,
        prompts: Sequence[str] | None = None,
        *,
        latents: Tensor | None = None,
        embedder: Embedder | None = None,
        sample_ids: Sequence[str] | None = None,
        lr: float | None = None,
    ) -> None:
        """Queue training step ``step``'s responses; returns as soon as the batch is copied.

        Args:
            step: the training step, an integer ≥ 0, increasing from call to call.
            responses: the n response strings (shipped as the step's texts; embedded in the background
                when ``latents`` is None).
            rewards: (n,) rewards of the responses (a tensor or a sequence of numbers).
            prompts: n prompt strings (stored with the samples).
            latents: (n, d) embeddings of the responses, any device and float dtype; copied to CPU
                (``ClientConfig.latent_dtype``) on this thread.
            embedder: embeds ``responses`` for this call (else the client's).
            sample_ids: n identifiers of the responses.
            lr: the trainer's learning rate at this step (positive).

        Raises ``TypeError``/``ValueError`` at once for bad input (wrong types or lengths, step < 0 or not
        increasing, neither latents nor an embedder); never because of the sidecar. Rows whose latents or
        reward are NaN/Inf are dropped in the background (counted in ``stats.dropped_rows``, warned once).
        """
        if self._closed or self._closing:
            raise RuntimeError("this MonitorClient is closed; create a new one to observe more steps")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if not 0 <= step <= MAX_STEP:
            raise ValueError(f"step must be between 0 and {MAX_STEP}, got {step}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"steps must increase: got step {step} after step {self._last_step}")
        z: Tensor | None = None
        if latents is not None:
            if not isinstance(latents, Tensor):
                raise TypeError(f"latents must be a torch.Tensor (n×d), got {type(latents).__name__}")
            if latents.ndim != 2 or not latents.is_floating_point():
                raise ValueError(
                    f"latents must be a 2-D float tensor (n×d), got {latents.dtype} {tuple(latents.shape)}"
                )
            if self._latent_dim is not None and latents.shape[1] != self._latent_dim:
                raise ValueError(
                    f"latents have d={latents.shape[1]}, but this run's latent dimension is {self._latent_dim}; "
                    "keep one encoder per run (or use another run_name)"
                )
        elif responses is None:
            raise ValueError("pass the responses (embedded with the embedder) or their latents")
        elif _str_list(responses, "responses", None) is not None and embedder is None and self.embedder is None:
            raise ValueError("no latents and no embedder: pass latents=, or an embedder to observe() or MonitorClient")
        n = int(latents.shape[0]) if latents is not None else None
        texts = _str_list(responses, "responses", n)
        n = n if n is not None else len(texts or [])
        if n < 2:
            raise ValueError(f"a step needs at least 2 responses, got {n}")
        prompt_list = _str_list(prompts, "prompts", n)
        id_list = _str_list(sample_ids, "sample_ids", n)
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        r: Tensor | None = None
        if rewards is not None:
            try:
                r = torch.as_tensor(rewards).detach().to("cpu", torch.float32, copy=True).reshape(-1)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TypeError(f"rewards must be a tensor or a sequence of numbers: {exc}") from exc
            if r.numel() != n:
                raise ValueError(f"rewards has {r.numel()} entries for a batch of {n}; pass one per sample")
        if latents is not None:
            z = latents.detach().to(device="cpu", dtype=self.config.latent_dtype, copy=True)
            if self._latent_dim is None:
                self._latent_dim = int(z.shape[1])
        strings = sum(len(s) for seq in (texts, prompt_list, id_list) if seq for s in seq)
        nbytes = (z.numel() * z.element_size() if z is not None else 0) + 4 * n + strings
        item = _Item(step, z, texts, r, prompt_list, id_list, float(lr) if lr is not None else None, embedder, nbytes)
        self._last_step = step
        with self._cond:
            held = self._queued_bytes + self._pending_bytes
            fits = (not self._queue and not self._pending) or held + nbytes <= self.config.max_queue_bytes
            if fits or item.latents is None:
                if not fits:  # nothing to write without embedding it first; see _overflow_unembedded
                    self._overflow_unembedded(item)
                    return
                self._queue.append(item)
                self._queued_bytes += nbytes
                self._unresolved += 1
                self._cond.notify_all()
                return
            # Queue full: this step goes to the spool now, written here (encode + one file), behind
            # everything queued before it — the background thread spools those too once it sees the backlog.
            self._log_once(
                "queue-full",
                logging.WARNING,
                "queue full (%d bytes): spooling steps to %s",
                self.config.max_queue_bytes,
                self._spool.path,
            )
            self._spool_built(self._build(item))
            if self._mode == "process":  # the sender drains it, after the steps queued before it
                self._queue.append(_Adopt(step))
                self._adopt_queued.add(step)
                self._cond.notify_all()
        if self._on_resolved is not None:
            self._on_resolved(step)

    def _overflow_unembedded(self, item: _Item) -> None:
        """Queue full and the step has responses but no latents: it cannot be spooled without embedding it."""
        self._dropped += 1
        msg = (
            f"step {item.step} dropped: the queue is full ({self.config.max_queue_bytes} bytes) and the step has "
            "no latents to spool; raise ClientConfig.max_queue_bytes, or pass latents="
        )
        self._last_error = msg
        log.error(msg)
        if self._on_resolved is not None:
            self._on_resolved(item.step)

    def _count_dropped(self, message: str) -> None:
        """Count one step as dropped (the sender process, for a step it could not take)."""
        with self._cond:
            self._dropped += 1
            self._last_error = message

    def _adopt_spooled(self, step: int) -> None:
        """Step ``step`` was written to this run's spool by another process (the training process, on a
        queue overflow): drain it in order with the rest."""
        with self._cond:
            self._backlog.add(step)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every observed step was sent, spooled, rejected or dropped — and, while the sidecar
        answers, until this run's spool is drained (in-process: also processed). Returns True when nothing
        observed is still in memory (False: ``timeout`` seconds passed first)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flush_gen += 1
            gen = self._flush_gen
            self._flush_timeout = timeout
            self._nudge = True
            self._cond.notify_all()
            while True:
                if self._mode == "process":  # the sender answers this flush once it has done the same
                    done = self._unresolved == 0 and self._flushed_gen >= gen
                else:
                    done = self._unresolved == 0 and (not self._backlog or self._drain_failed_gen >= gen)
                if done or not self._thread.is_alive():
                    return self._unresolved == 0
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout`` s), then stop the background thread; whatever is still in memory then
        goes to the spool. Idempotent; also runs at interpreter exit."""
        if self._closed:
            return
        atexit.unregister(self.close)
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.config.timeout_s + (25.0 if self._mode == "process" else 5.0))
        if self._thread.is_alive() and self._sender is not None:  # stuck writing to a hung sender
            self._sender.kill()
            self._thread.join(10.0)
        if self._thread.is_alive():
            log.error("the fpmon client thread did not stop; %d steps still in memory", self._unresolved)
        self._closed = True

    def __enter__(self) -> MonitorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alerts(self) -> list[dict[str, Any]]:
        """This run's alerts seen so far (newest first), as the REST API returns them; polled every
        ``poll_alerts_s`` by the background thread, so this never blocks on the network."""
        with self._cond:
            return [dict(a) for a in self._alerts]

    @property
    def stats(self) -> ClientStats:
        with self._cond:
            c, b = self._child_stats, self._base_stats

            def count(name: str) -> int:
                return int(getattr(self, f"_{name}")) + b.get(name, 0) + int(c.get(name, 0))

            backlog = len(self._backlog)
            if self._mode == "process" and c:
                backlog = int(c.get("spool_backlog", backlog))
            return ClientStats(
                sent=count("sent"),
                spooled=count("spooled"),
                retried=count("retried"),
                dropped=count("dropped"),
                rejected=count("rejected"),
                dropped_rows=count("dropped_rows"),
                queued_steps=self._unresolved,
                queued_bytes=self._queued_bytes + self._pending_bytes,
                spool_backlog=backlog,
                embed_seconds=self._embed_seconds,
                last_error=self._last_error,
            )

    @property
    def sender_pid(self) -> int | None:
        """The process id of the running sender process once it is ready (``transport="process"``); None
        before that, after it stopped, and with the thread transport."""
        with self._cond:
            return self._sender_ready_pid if self._mode == "process" and self._sender is not None else None

    @property
    def spool_path(self) -> Path:
        """This run's spool folder."""
        return self._spool.path

    # ================================================================== shared helpers
    def _log_once(self, kind: str, level: int, msg: str, *args: object) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.log(level, msg, *args)

    def _info(self, latent_dim: int) -> RunInfo:
        return RunInfo(name=self.run_name, latent_dim=latent_dim, config=self._run_config)

    def _build(self, item: _Item) -> _Built:
        """Embed (if needed), drop non-finite rows, encode. Runs on the background thread, or on the caller
        for a queue overflow (which always carries latents, so nothing is embedded there)."""
        z = item.latents
        if z is None:
            z = self._embed(item)
        n, d = int(z.shape[0]), int(z.shape[1])
        payload = StepPayload(item.step, z, item.rewards, item.lr, item.sample_ids, item.texts, item.prompts)
        finite = torch.isfinite(z.float()).all(dim=1)
        if item.rewards is not None:
            finite &= torch.isfinite(item.rewards)
        problem = None
        if not bool(finite.all()):
            keep = finite.nonzero().squeeze(1)
            kept = keep.tolist()
            dropped = n - len(kept)
            with self._cond:
                self._dropped_rows += dropped
            self._log_once(
                "nonfinite",
                logging.WARNING,
                "step %d: %d of %d rows have NaN/Inf latents or rewards; dropping such rows "
                "(counted in stats.dropped_rows)",
                item.step,
                dropped,
                n,
            )

            def pick(seq: list[str] | None) -> list[str] | None:
                return [seq[i] for i in kept] if seq is not None else None

            if len(kept) >= 2:
                payload = StepPayload(
                    item.step,
                    z[keep],
                    item.rewards[keep] if item.rewards is not None else None,
                    item.lr,
                    pick(item.sample_ids),
                    pick(item.texts),
                    pick(item.prompts),
                )
            else:
                problem = f"only {len(kept)} of {n} rows are finite; a step needs at least 2"
        if problem is None and self._latent_dim is not None and d != self._latent_dim:
            problem = f"the embedder returned d={d}, but this run's latent dimension is {self._latent_dim}"
        return _Built(item.step, encode_step(payload), d, problem)

    def _embed(self, item: _Item) -> Tensor:
        embedder = item.embedder or self.embedder
        texts = item.texts or []
        assert embedder is not None  # checked in observe()
        started = time.perf_counter()
        bs = self.config.embed_batch_size
        with torch.no_grad():
            parts = [torch.as_tensor(embedder(texts[i : i + bs])) for i in range(0, len(texts), bs)]
        z = torch.cat(parts).detach().to(device="cpu", dtype=self.config.latent_dtype)
        with self._cond:
            self._embed_seconds += time.perf_counter() - started
        if z.ndim != 2 or z.shape[0] != len(texts):
            raise ValueError(f"the embedder returned shape {tuple(z.shape)} for {len(texts)} responses; want (n, d)")
        return z

    def _spool_built(self, built: _Built) -> None:
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
                    self._spool.path / "rejected",
                )
                return
            if not self._info_written:
                self._spool.write_info(self._info(self._latent_dim or built.latent_dim))
                self._info_written = True
            assert built.body is not None
            self._spool.write_step(built.step, built.body)
        except OSError as exc:
            with self._cond:
                self._dropped += 1
                self._last_error = f"step {built.step} could not be written to {self._spool.path}: {exc}"
            log.error("step %d DROPPED: could not be written to the spool %s: %s", built.step, self._spool.path, exc)
            return
        with self._cond:
            self._spooled += 1
            self._backlog.add(built.step)

    # ================================================================== the background thread
    def _get_sink(self) -> _Sink:
        if self._sink is None:
            if self.url is None:
                try:
                    self._sink = _InProcessSink(self.config.resolved_database_url(), self.config.device)
                except Exception as exc:
                    raise DeliveryError(f"in-process store unavailable: {exc}", retryable=True) from exc
            else:
                self._sink = HttpSink(self.url, self._token, self.config.timeout_s)
        return self._sink

    def _deliver(self, body: bytes, info: RunInfo) -> None:
        """One attempt (the run is created first if needed); raises DeliveryError. A 404 on the step (the
        run vanished: a fresh database behind the same URL) re-creates the run once."""
        sink = self._get_sink()
        self.run_id = sink.ensure_run(info)
        try:
            sink.post_step(self.run_id, body)
        except DeliveryError as exc:
            if exc.status != 404 or not isinstance(sink, HttpSink):
                raise
            sink.forget_run(info.name)
            self.run_id = sink.ensure_run(info)
            sink.post_step(self.run_id, body)

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
                self._spool.path / "rejected",
            )

    def _drop_unembeddable(self, item: _Item, exc: Exception) -> None:
        """The embedder failed on this step (or returned garbage): count it as dropped, with an error log."""
        with self._cond:
            self._dropped += 1
            self._last_error = f"step {item.step}: {type(exc).__name__}: {exc}"
        log.error("step %d DROPPED: could not embed the responses into a payload: %s", item.step, exc)
        self._resolved(item.step)

    def _resolved(self, step: int) -> None:
        with self._cond:
            self._unresolved -= 1
            self._cond.notify_all()
        if self._on_resolved is not None:
            self._on_resolved(step)

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

    def _reject(self, step: int, body: bytes | None, message: str) -> None:
        try:
            self._spool.reject(step, body, message)
        except OSError as exc:
            with self._cond:
                self._dropped += 1
            log.error("step %d DROPPED: refused (%s) and not writable to %s: %s", step, message, self._spool.path, exc)
            return
        with self._cond:
            self._rejected += 1

    def _loop(self) -> None:
        in_hand: _Built | None = None  # the oldest undelivered step, being retried (never in the spool)
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
                    self._deliver(in_hand.body or b"", self._info(in_hand.latent_dim))
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
                self._poll_alerts(offline)
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
                built = self._build(item)
            except Exception as exc:  # the embedder failed (or returned garbage): nothing to send or to write
                self._drop_unembeddable(item, exc)
                continue
            if self._latent_dim is None:
                self._latent_dim = built.latent_dim
            with self._cond:
                behind = bool(self._backlog)
            if built.problem is not None or behind:
                self._spool_built(built)  # keep the order: behind the steps not delivered yet
                self._resolved(built.step)
            else:
                in_hand, attempts, next_attempt = built, 0, time.monotonic()
        if self._sink is not None:
            self._sink.close()

    def _take(self, timeout: float) -> _Item | None:
        with self._cond:
            if not self._queue and not self._closing and timeout > 0:
                self._cond.wait(min(timeout, 1.0))
            while self._queue:
                item = self._queue.popleft()
                self._queued_bytes -= item.nbytes
                if isinstance(item, _Item):  # an _Adopt marker: that step is in the spool and in _backlog
                    return item
            return None

    def _drain_one(self, step: int, attempts: int, offline: bool, flush_gen: int) -> tuple[int, bool, float]:
        """Send the oldest spooled step; returns (attempts, offline, next_attempt)."""
        try:
            sink = self._get_sink()
            if offline and not sink.healthy():
                raise DeliveryError("the sidecar does not answer /healthz", retryable=True)
            info = self._spool.read_info() or infer_info(self._spool, step)
            self._deliver(self._spool.read_step(step), info)
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
        self._spool.delete_step(step)
        with self._cond:
            self._sent += 1
            self._backlog.discard(step)
            self._cond.notify_all()
        return 0, False, time.monotonic()

    def _spool_remaining(self, in_hand: _Built | None) -> None:
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
            if isinstance(item, _Adopt):  # already in the spool (and in _backlog)
                continue
            try:
                self._spool_built(self._build(item))
            except Exception as exc:
                with self._cond:
                    self._dropped += 1
                log.error("step %d DROPPED at close: %s", item.step, exc)
            self._resolved(item.step)

    def _poll_alerts(self, offline: bool) -> None:
        if self.run_id is None or offline or self._sink is None:
            return
        try:
            alerts = self._sink.alerts(self.run_id)
        except Exception as exc:  # alerts are best effort; delivery errors are reported elsewhere
            log.debug("could not fetch alerts: %s", exc)
            return
        for a in alerts:
            key = a.get("alert_id")
            if key not in self._seen_alerts:
                self._seen_alerts.add(key)
                log.warning(
                    "fpmon alert %s at step %s: %s", a.get("type"), a.get("step"), "; ".join(a.get("reasons") or [])
                )
        with self._cond:
            self._alerts = alerts

    # ================================================================== the process transport (monitor.sender)
    def _forward(self) -> None:
        """The background thread of the process transport: embeds, then hands each step to the sender."""
        try:
            self._forward_loop()
        except BaseException as exc:  # a bug must not lose steps: go on with the thread transport
            log.exception("the fpmon client's forwarding thread failed")
            self._fallback_to_thread(f"the forwarding thread failed ({type(exc).__name__}: {exc})")
        finally:
            with self._cond:
                self._cond.notify_all()

    def _forward_loop(self) -> None:
        from .sender import SenderDied

        sent_gen = 0  # the newest flush generation handed to the sender
        # Start the sender now (its imports take a second or two of CPU; better before training than during
        # its first steps) — except on the non-main ranks of a distributed run, which never ship, and start
        # one only if they do. Steps left in the spool by an earlier process are drained at once.
        if self._backlog or os.environ.get("RANK", "0") == "0":
            try:
                self._ensure_sender()
            except SenderDied:
                pass  # its reader reports the end of the pipe: the loop starts another
            except _StartFailed as exc:
                self._fallback_to_thread(str(exc))
                return
        while True:
            with self._cond:
                while not (self._queue or self._closing or self._sender_lost or self._flush_gen > sent_gen):
                    self._cond.wait(1.0)
                lost, self._sender_lost = self._sender_lost, False
                entry: _Item | _Adopt | None = None
                if not lost and self._queue:
                    entry = self._queue.popleft()
                    self._queued_bytes -= entry.nbytes
                    if isinstance(entry, _Adopt):
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
                if isinstance(entry, _Adopt):
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
            except _StartFailed as exc:
                self._fallback_to_thread(str(exc))
                return
            except BaseException:  # a bug: the thread transport takes over (see _forward), with this step
                if isinstance(entry, _Item):
                    with self._cond:
                        if entry.step not in self._pending:
                            self._queue.appendleft(entry)
                            self._queued_bytes += entry.nbytes
                raise

    def _forward_step(self, item: _Item) -> None:
        if item.latents is None:
            try:
                z = self._embed(item)
            except Exception as exc:  # the embedder failed (or returned garbage): nothing to send or to write
                self._drop_unembeddable(item, exc)
                return
            item = replace(item, latents=z, embedder=None, nbytes=item.nbytes + z.numel() * z.element_size())
        assert item.latents is not None
        d = int(item.latents.shape[1])
        if self._latent_dim is None:
            self._latent_dim = d
        elif d != self._latent_dim:  # the embedder changed its dimension: keep the step, refuse it locally
            self._spool_built(self._build(item))
            self._resolved(item.step)
            return
        try:
            sender = self._ensure_sender()  # a new sender gets the pending steps with its settings
        except _StartFailed:  # the thread transport takes over, with this step
            with self._cond:
                self._pending[item.step] = item
                self._pending_bytes += item.nbytes
            raise
        with self._cond:
            self._pending[item.step] = item
            self._pending_bytes += item.nbytes
        sender.send(("step", _item_to_wire(item)))

    def _sender_init(self) -> dict[str, Any]:
        """A new sender's settings, with the steps it must finish (in order) and the spooled steps it must
        drain: everything in the spool but the overflow steps it will be told about in queue order."""
        with self._cond:
            backlog = sorted(set(self._spool.steps()) - self._adopt_queued)
            steps = [_item_to_wire(item) for item in self._pending.values()]
        return {
            "url": self.url,
            "token": self._token,
            "run_name": self.run_name,
            "monitor_config": self.monitor_config,
            "config": replace(self.config, spool_dir=self.config.spool_dir.absolute()),
            "log_level": logging.getLogger("fpmon").getEffectiveLevel(),
            "backlog": backlog,
            "steps": steps,
        }

    def _ensure_sender(self) -> Any:
        """The running sender, started on first use (ranks that never ship start none)."""
        from .sender import SenderDied, SenderProcess

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
                    raise _StartFailed(str(exc)) from exc
                raise
        return self._sender

    def _fold_sender_stats(self) -> None:
        """The sender is gone: keep its counters (under ``_cond``)."""
        for name, value in self._child_stats.items():
            if name in ("sent", "spooled", "retried", "dropped", "rejected", "dropped_rows"):
                self._base_stats[name] = self._base_stats.get(name, 0) + int(value)
        self._child_stats = {}

    def _restart_sender(self) -> bool:
        """The sender died: start another and hand it every step the dead one had not resolved."""
        from .sender import SenderDied

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
        except _StartFailed:
            return False
        return True

    def _close_sender(self) -> None:
        """Closing: the sender closes its client (what it cannot send goes to the spool) and exits; steps it
        never resolved (it was killed, or hung) are spooled here."""
        from .sender import SenderDied

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
                self._spool_built(self._build(item))
            except Exception as exc:
                self._count_dropped(f"step {item.step}: {exc}")
                log.error("step %d DROPPED at close: %s", item.step, exc)
            self._resolved(item.step)

    def _on_sender_message(self, sender: Any, message: tuple[Any, ...]) -> None:
        """Messages of the sender process, on its reader thread."""
        kind = message[0]
        if kind == "log":
            logging.getLogger(str(message[2])).log(int(message[1]), "%s", message[3])
            return
        with self._cond:
            if sender is not self._sender:
                return
            if kind == "report":
                _, acks, stats, run_id, alerts = message
                for step in acks:
                    item = self._pending.pop(step, None)
                    if item is not None:
                        self._pending_bytes -= item.nbytes
                        self._unresolved -= 1
                error = stats.get("last_error")
                if error and error != self._child_stats.get("last_error"):
                    self._last_error = error
                self._child_stats = stats
                if run_id is not None:
                    self.run_id = int(run_id)
                if alerts is not None:
                    self._alerts = alerts
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
        """Go on with the thread transport in this thread: the steps the sender held are queued again."""
        log.error("fpmon: %s; sending from a background thread of the training process from now on", reason)
        sender = self._sender
        if sender is not None:
            sender.kill()
            sender.join(10.0)
        with self._cond:
            self._mode = "thread"
            self._fold_sender_stats()
            self._sender = None
            for item in reversed(self._pending.values()):
                self._queue.appendleft(item)
                self._queued_bytes += item.nbytes
            self._pending.clear()
            self._pending_bytes = 0
            self._backlog = set(self._spool.steps())  # what the sender spooled, and the overflow
            self._cond.notify_all()
        self._run()


class _StartFailed(Exception):
    """The sender process could not be started at all."""


def _item_to_wire(item: _Item) -> dict[str, Any]:
    from .sender import tensor_to_wire

    return {
        "step": item.step,
        "latents": tensor_to_wire(item.latents),
        "rewards": tensor_to_wire(item.rewards),
        "texts": item.texts,
        "prompts": item.prompts,
        "sample_ids": item.sample_ids,
        "lr": item.lr,
    }
