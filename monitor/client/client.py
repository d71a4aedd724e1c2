"""``MonitorClient``: ships each training step to the fpmon sidecar without ever stalling training.

This is the user's face of the client: the training thread only validates its input and copies the batch
(:meth:`MonitorClient.observe`); a *transport* does the rest, off that thread:

- ``ClientConfig.transport="process"`` (default on POSIX): a ``SenderTransport`` (``monitor.client.sender``)
  embeds the responses in one background thread (when the client embeds) and hands each step to a sender
  process, which encodes it, speaks HTTP, retries and spools — off the training process's GIL, on another
  core. If the sender keeps dying it falls back to a ``Deliverer`` in this process.
- ``transport="thread"``: a ``Deliverer`` (``monitor.client.delivery``) does all of it in one background
  thread of the training process.

Both deliver the same steps in the same order with the same counters (``stats``; see ``docs/client.md``).
With ``url=None`` the steps go into a database (SQLite by default) and are processed at once with the
sidecar's own step pipeline (``monitor.processing``): the same storage and results, no server.
``fpmon sync SPOOL_DIR`` replays what is left in the spool (``monitor.client.replay``).
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ..rlhf import MonitorConfig
from ..stepfile import MAX_STEP, check_scalars, check_strings
from .config import DEFAULT_URL, ClientConfig, ClientStats, Embedder, monitor_config_diff
from .delivery import Deliverer
from .items import Item
from .sender import SenderTransport
from .spool import RunSpool, sanitise_run_name
from .view import LatestStep, RunView


class Transport(Protocol):
    """What :class:`MonitorClient` drives: a ``Deliverer`` or a ``SenderTransport``."""

    @property
    def closing(self) -> bool: ...
    @property
    def latent_dim(self) -> int | None: ...
    @property
    def run_id(self) -> int | None: ...
    @property
    def queue_length(self) -> int: ...
    @property
    def spool(self) -> RunSpool: ...
    def start(self) -> None: ...
    def submit(self, item: Item) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def close(self, timeout: float | None = 30.0) -> None: ...
    def stats(self) -> ClientStats: ...
    @property
    def view(self) -> RunView: ...


def str_list(value: Sequence[str] | None, name: str, n: int | None) -> list[str] | None:
    """``value`` as a list of n strings (None stays None); ``TypeError``/``ValueError`` name ``name``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of strings (one per sample), got {type(value).__name__}")
    out = [str(v) for v in value]
    if n is not None and len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for a batch of {n}; pass one per sample")
    return out


def reward_vector(value: Tensor | Sequence[float] | None, name: str, n: int) -> Tensor | None:
    """``value`` as an (n,) float32 CPU copy (None stays None; NaN/Inf are kept: the step's builder drops
    those rows); ``TypeError`` for what is not real numbers, ``ValueError`` for another length."""
    if value is None:
        return None
    try:
        given = torch.as_tensor(value)
        if given.is_complex():  # float32 would silently drop the imaginary part
            raise TypeError(f"{name} must be real numbers, got {given.dtype}")
        r = given.detach().to("cpu", torch.float32, copy=True).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or a sequence of real numbers: {exc}") from exc
    if r.numel() != n:
        raise ValueError(f"{name} has {r.numel()} entries for a batch of {n}; pass one per sample")
    return r


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

    Use it as a context manager, or call :meth:`close` (also registered with ``atexit``).
    """

    #: the client logs each new alert itself (a warning on ``fpmon.client`` with its review link, from the
    #: background poll), so the TRL hook does not log a second line for it
    announces_alerts: bool = True

    def __init__(
        self,
        url: str | None = DEFAULT_URL,
        token: str | None = None,
        run_name: str = "run",
        *,
        embedder: Embedder | None = None,
        monitor_config: MonitorConfig | None = None,
        config: ClientConfig | None = None,
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
        sanitise_run_name(run_name)  # validates the name
        token = token if token is not None else os.environ.get("FPMON_TOKEN")
        self.monitor_config = monitor_config or MonitorConfig()
        run_config: dict[str, Any] = {"monitor": monitor_config_diff(self.monitor_config)}
        self.embedder = embedder
        self._last_step: int | None = None
        self._closed = False
        self._transport: Transport
        if self.config.transport == "process":
            self._transport = SenderTransport(self.url, token, run_name, run_config, self.config)
        else:
            self._transport = Deliverer(self.url, token, run_name, run_config, self.config)
        self._transport.start()
        atexit.register(self.close)

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
        reference_rewards: Tensor | Sequence[float] | None = None,
        scalars: Mapping[str, float | Tensor | None] | None = None,
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
            reference_rewards: (n,) a second reward of the same responses that does not drive training (a
                held-out judge, e.g. a function logged at weight 0); needs ``rewards``. The monitor's reward
                evidence then uses the proxy − judge gap (``rewards − reference_rewards``).
            scalars: named numbers of this step to store beside it (e.g. ``{"true_reward": 0.41, "kl": 0.02}``;
                ``GET /v1/runs/{id}/metrics`` rows return them as ``extra``). At most 64 names of 1–64
                printable characters; values Python/numpy numbers or 0-d tensors (read with ``.item()``), or
                None. NaN and None are stored as null (no value); ±Inf is refused. They do not enter the
                monitor's math, and are not touched when rows are dropped.

        Raises ``TypeError``/``ValueError`` at once for bad input (wrong types or lengths, step < 0 or not
        increasing, neither latents nor an embedder, strings the sidecar would refuse: not valid UTF-8 such
        as a lone surrogate, a NUL character, a sample id over 200 characters; ``scalars`` breaking the rules
        above); never because of the sidecar.
        Rows whose latents, reward or reference reward are NaN/Inf are dropped in the background, from every
        array of the step (counted in ``stats.dropped_rows``, warned once).
        When the queue (``ClientConfig.max_queue_bytes``) is full, a step with latents is written to the
        spool by this thread, behind the steps queued before it; one without latents is dropped (an error).
        """
        if self._closed or self._transport.closing:
            raise RuntimeError("this MonitorClient is closed; create a new one to observe more steps")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if not 0 <= step <= MAX_STEP:
            raise ValueError(f"step must be between 0 and {MAX_STEP}, got {step}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"steps must increase: got step {step} after step {self._last_step}")
        latent_dim = self._transport.latent_dim
        if latents is not None:
            if not isinstance(latents, Tensor):
                raise TypeError(f"latents must be a torch.Tensor (n×d), got {type(latents).__name__}")
            if latents.ndim != 2 or not latents.is_floating_point():
                raise ValueError(
                    f"latents must be a 2-D float tensor (n×d), got {latents.dtype} {tuple(latents.shape)}"
                )
            if latent_dim is not None and latents.shape[1] != latent_dim:
                raise ValueError(
                    f"latents have d={latents.shape[1]}, but this run's latent dimension is {latent_dim}; "
                    "keep one encoder per run (or use another run_name)"
                )
        elif responses is None:
            raise ValueError("pass the responses (embedded with the embedder) or their latents")
        elif str_list(responses, "responses", None) is not None and embedder is None and self.embedder is None:
            raise ValueError("no latents and no embedder: pass latents=, or an embedder to observe() or MonitorClient")
        n = int(latents.shape[0]) if latents is not None else None
        texts = str_list(responses, "responses", n)
        n = n if n is not None else len(texts or [])
        if n < 2:
            raise ValueError(f"a step needs at least 2 responses, got {n}")
        prompt_list = str_list(prompts, "prompts", n)
        id_list = str_list(sample_ids, "sample_ids", n)
        # what the sidecar would refuse (invalid UTF-8, NUL, over-long ids), refused here and now
        check_strings("texts", texts, label="responses")
        check_strings("prompts", prompt_list, label="prompts")
        check_strings("sample_ids", id_list, label="sample_ids")
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        extra = check_scalars(scalars, label="scalars")
        r = reward_vector(rewards, "rewards", n)
        rr = reward_vector(reference_rewards, "reference_rewards", n)
        if rr is not None and r is None:
            raise ValueError(
                "reference_rewards need rewards: pass the training rewards of the same responses too (the "
                "monitor compares the two)"
            )
        z = None if latents is None else latents.detach().to(device="cpu", dtype=self.config.latent_dtype, copy=True)
        item = Item.of(
            step,
            z,
            texts,
            r,
            prompt_list,
            id_list,
            float(lr) if lr is not None else None,
            None if z is not None else (embedder or self.embedder),
            reference_rewards=rr,
            scalars=extra,
        )
        self._last_step = step
        self._transport.submit(item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every observed step was sent, spooled, rejected or dropped — and, while the sidecar
        answers, until this run's spool is drained (in-process: also processed). Returns True when nothing
        observed is still in memory (False: ``timeout`` seconds passed first)."""
        return self._transport.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush (up to ``timeout`` s), then stop the background thread (and the sender process); whatever
        is still in memory then goes to the spool. Idempotent; also runs at interpreter exit."""
        if self._closed:
            return
        atexit.unregister(self.close)
        self._transport.close(timeout)
        self._closed = True

    def __enter__(self) -> MonitorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alerts(self) -> list[dict[str, Any]]:
        """This run's alerts seen so far (newest first), as the REST API returns them; polled every
        ``poll_alerts_s`` in the background, so this never blocks on the network."""
        return self._transport.view.alerts()

    def latest(self) -> LatestStep | None:
        """This run's latest processed step and its observables (:class:`~monitor.client.view.LatestStep`), or
        None before one was seen. Polled with the alerts (every ``poll_alerts_s``, and soon after a
        :meth:`flush`), so this never blocks on the network; it lags the steps observed by the delivery,
        the processing and up to one poll interval."""
        return self._transport.view.latest()

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters (:class:`ClientStats`)."""
        return self._transport.stats()

    @property
    def run_id(self) -> int | None:
        """The run's id on the server (or in the in-process database), once the first step was delivered."""
        return self._transport.run_id

    @property
    def transport(self) -> str:
        """The transport in use: ``"process"``, or ``"thread"`` (configured so, or after a fallback)."""
        return self._transport.mode if isinstance(self._transport, SenderTransport) else "thread"

    @property
    def queue_length(self) -> int:
        """Steps (and overflow markers) waiting in the in-memory queue: not yet taken by the background
        thread, or (process transport) not yet handed to the sender process."""
        return self._transport.queue_length

    @property
    def sender_pid(self) -> int | None:
        """The process id of the running sender process once it is ready (``transport="process"``); None
        before that, after it stopped, and with the thread transport."""
        return self._transport.sender_pid if isinstance(self._transport, SenderTransport) else None

    @property
    def spool_path(self) -> Path:
        """This run's spool folder."""
        return self._transport.spool.path
