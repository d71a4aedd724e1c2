"""Where the client's steps go: the sink protocol, the sidecar's REST API (:class:`HttpSink`), the database
of in-process mode (:class:`InProcessSink`), and what a failed delivery means (:class:`DeliveryError`,
:class:`RetryPolicy`).

A sink is used by one thread at a time (the ``Deliverer``'s, or ``fpmon sync``'s). :class:`InProcessSink`
runs the sidecar's own step pipeline (``monitor.processing``: the same ingest checks, the same processing
and the same alert JSON), so ``MonitorClient(url=None)`` stores the same rows and refuses the same steps as
``fpmon serve`` would. Besides ``monitor.processing``, this is the only module of ``monitor`` that touches
``storage``; nothing here imports the server (``api``).
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from .config import ClientConfig
from .spool import RunInfo
from .view import LatestStep

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("fpmon.client")

#: HTTP statuses worth retrying (the request may succeed later); every other 4xx is permanent
RETRYABLE_STATUSES = frozenset({408, 425, 429})


class Sink(Protocol):
    """Where steps are delivered: the sidecar over HTTP, or a database in this process."""

    def ensure_run(self, info: RunInfo) -> int:
        """The id of run ``info.name``, created on first use; raises :class:`DeliveryError`."""
        ...

    def post_step(self, run_id: int, body: bytes) -> Literal["queued", "duplicate"]:
        """Deliver one step payload (``monitor.stepfile`` bytes); raises :class:`DeliveryError`."""
        ...

    def healthy(self) -> bool:
        """Whether the sink answers now (a cheap probe before draining the spool)."""
        ...

    def alerts(self, run_id: int) -> list[dict[str, Any]]:
        """The run's alerts, newest first, as the REST API returns them."""
        ...

    def latest(self, run_id: int) -> LatestStep | None:
        """The run's latest processed step and its observables (None before the first)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class DeliveryError(Exception):
    """A request to the sidecar failed. ``retryable``: connection error, timeout, 408/425/429 or 5xx (try
    again later); otherwise the server refused the content or the credentials (4xx) and will again."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    @property
    def kind(self) -> str:
        """A short label for logs and counters: ``connection`` or the HTTP status."""
        return "connection" if self.status is None else f"HTTP {self.status}"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: before retry ``a`` (1, 2, …) wait a uniform random time in
    ``[0, min(max_s, base_s · 2^(a−1))]`` seconds (at least the server's ``Retry-After``, capped at max_s).

    Attributes:
        max_retries: retries after the first attempt before giving up (0: one attempt only).
        base_s: the first retry's upper bound, seconds.
        max_s: cap of every wait, seconds.
    """

    max_retries: int = 5
    base_s: float = 0.5
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not (self.base_s >= 0 and self.max_s >= 0):
            raise ValueError(f"backoff times must be >= 0, got base {self.base_s}, max {self.max_s}")

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        cap = min(self.max_s, self.base_s * 2.0 ** max(0, attempt - 1))
        wait = (rng or random).uniform(0.0, cap)
        if retry_after is not None:
            wait = max(wait, min(self.max_s, retry_after))
        return wait


def _message(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else (json.dumps(detail) if detail is not None else resp.text)
    return f"HTTP {resp.status_code}: {text.strip()[:2000]}"


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class HttpSink:
    """The sidecar's REST API as the client and ``fpmon sync`` use it: create a run, post a step, probe.

    Args:
        url: the sidecar's base URL, e.g. ``http://127.0.0.1:8700``.
        token: bearer token (``FPMON_API_TOKENS`` on the server); None sends no Authorization header.
        timeout_s: limit of each HTTP request (connect, read, write), seconds.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)
        self._run_ids: dict[str, int] = {}

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc or 'no answer'} ({self.url})", retryable=True) from exc
        if resp.status_code < 300:
            return resp
        retryable = resp.status_code >= 500 or resp.status_code in RETRYABLE_STATUSES
        raise DeliveryError(
            _message(resp), retryable=retryable, status=resp.status_code, retry_after=_retry_after(resp)
        )

    def ensure_run(self, info: RunInfo) -> int:
        """The server's id of run ``info.name``, created on first use (idempotent by name on the server)."""
        if info.name in self._run_ids:
            return self._run_ids[info.name]
        resp = self._request(
            "POST", "/v1/runs", json={"name": info.name, "latent_dim": info.latent_dim, "config": info.config}
        )
        run_id = int(resp.json()["run_id"])
        self._run_ids[info.name] = run_id
        return run_id

    def forget_run(self, name: str) -> None:
        """Drop the cached id of run ``name`` (the next :meth:`ensure_run` asks the server again)."""
        self._run_ids.pop(name, None)

    def post_step(self, run_id: int, body: bytes) -> Literal["queued", "duplicate"]:
        """Send one step payload: ``queued`` (202) or ``duplicate`` (200, the server already had it)."""
        resp = self._request(
            "POST", f"/v1/runs/{run_id}/steps", content=body, headers={"Content-Type": "application/octet-stream"}
        )
        return "duplicate" if resp.status_code == 200 else "queued"

    def healthy(self) -> bool:
        """``GET /healthz`` answers 200."""
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def alerts(self, run_id: int) -> list[dict[str, Any]]:
        """The run's alerts (newest first), as the API returns them."""
        resp = self._request("GET", "/v1/alerts", params={"run_id": run_id, "limit": 1000})
        alerts: list[dict[str, Any]] = resp.json()["alerts"]
        return alerts

    def latest(self, run_id: int) -> LatestStep | None:
        """``GET /v1/runs/{id}``'s ``latest_step`` and ``latest_scalars`` (None from a sidecar without them)."""
        body = self._request("GET", f"/v1/runs/{run_id}").json()
        return LatestStep.of(body.get("latest_step"), body.get("latest_scalars"))

    def close(self) -> None:
        self.http.close()


class InProcessSink:
    """``url=None``: each step is validated and stored in the database (``monitor.processing.ingest_step``)
    and processed at once by the sidecar's ``StepProcessor``.

    Args:
        database_url: the SQLAlchemy URL (migrated to the newest schema on open, as ``fpmon db upgrade``).
        device: where the observables are computed: ``cpu``, ``cuda`` or ``auto``.
    """

    def __init__(self, database_url: str, device: str) -> None:
        # Imported here, not at the top: a client that talks HTTP never loads SQLAlchemy or the processing code.
        import storage

        from .. import processing

        self.storage = storage
        self.processing = processing
        self.limits = processing.IngestLimits()
        self.engine = storage.make_engine(database_url)
        storage.upgrade(self.engine)  # what `fpmon db upgrade` does; a no-op when at head
        self.sessions: sessionmaker[Session] = storage.session_factory(self.engine)
        self.processor = processing.StepProcessor(
            self.sessions, processing.resolve_device(device), worker_id=f"client-{os.getpid()}"
        )

    @staticmethod
    def delivery_error(exc: Exception) -> DeliveryError:
        """A database failure as a :class:`DeliveryError`: retryable when the database is locked or
        unreachable (``OperationalError``), else permanent (status 500)."""
        from sqlalchemy.exc import OperationalError

        retryable = isinstance(exc, OperationalError)  # locked or unreachable database: try again later
        return DeliveryError(f"{type(exc).__name__}: {exc}", retryable=retryable, status=None if retryable else 500)

    def ensure_run(self, info: RunInfo) -> int:
        """The run's id, created when missing; 409 when it exists with another latent dimension."""
        try:
            with self.sessions() as session:
                run, _ = self.storage.get_or_create_run(session, info.name, info.latent_dim, info.config)
        except Exception as exc:
            raise self.delivery_error(exc) from exc
        if run.latent_dim != info.latent_dim:
            raise DeliveryError(
                f"run {info.name!r} exists with latent_dim {run.latent_dim}, not {info.latent_dim}; use another name",
                retryable=False,
                status=409,
            )
        return int(run.id)

    def post_step(self, run_id: int, body: bytes) -> Literal["queued", "duplicate"]:
        """Ingest the step with the sidecar's checks (a refusal is a permanent :class:`DeliveryError` with
        the sidecar's status: 400, 404, 409 or 422), then process every pending step."""
        try:
            with self.sessions() as session:
                _, result = self.processing.ingest_step(session, run_id, body, self.limits)
        except self.processing.IngestError as exc:
            raise DeliveryError(str(exc), retryable=False, status=exc.status) from exc
        except Exception as exc:
            raise self.delivery_error(exc) from exc
        self.process_pending()
        return result

    def process_pending(self) -> None:
        """Process every pending step (the worker records a step that fails; it does not raise)."""
        try:
            while self.processor.process_one():
                pass
        except Exception as exc:
            raise self.delivery_error(exc) from exc

    def healthy(self) -> bool:
        """The database answers ``SELECT 1``."""
        from sqlalchemy import text

        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def alerts(self, run_id: int) -> list[dict[str, Any]]:
        """The run's alerts (newest first), as the REST API returns them (``processing.alert_to_dict``)."""
        with self.sessions() as session:
            rows = self.storage.list_alerts(session, run_id=run_id, limit=1000)
            return [self.processing.alert_to_dict(a) for a in rows]

    def latest(self, run_id: int) -> LatestStep | None:
        """The run row's ``latest_step`` and ``latest_scalars`` (kept with each processed step)."""
        with self.sessions() as session:
            run = self.storage.get_run(session, run_id)
            return None if run is None else LatestStep.of(run.latest_step, run.latest_scalars)

    def close(self) -> None:
        """Dispose of the engine's connections."""
        self.engine.dispose()


def open_sink(url: str | None, token: str | None, config: ClientConfig) -> Sink:
    """The sink of a client: :class:`HttpSink` for ``url``, or :class:`InProcessSink` when ``url`` is None
    (a database that cannot be opened is a retryable :class:`DeliveryError`: the client tries again later)."""
    if url is not None:
        return HttpSink(url, token, config.timeout_s)
    try:
        return InProcessSink(config.resolved_database_url(), config.device)
    except Exception as exc:
        raise DeliveryError(f"in-process store unavailable: {exc}", retryable=True) from exc


class RunSink:
    """One run's connection to its sink (opened on first use; see :func:`open_sink`).

    :meth:`deliver` creates the run if needed and posts one step; a 404 on the step over HTTP (the run
    vanished: a fresh database behind the same URL) re-creates the run once. :meth:`fetch_alerts` logs each
    alert the first time it is seen (a warning on the ``fpmon.client`` logger); :meth:`fetch_latest` reads
    the latest processed step (both: ``monitor.client.view.RunView.poll``).
    """

    def __init__(self, url: str | None, token: str | None, config: ClientConfig) -> None:
        self.url = url
        self.config = config
        #: the run's id at the sink, once known
        self.run_id: int | None = None
        self._token = token
        self._sink: Sink | None = None
        self._seen_alerts: set[Any] = set()

    def open(self) -> Sink:
        """The sink, opened now if needed (raises :class:`DeliveryError` when it cannot be)."""
        if self._sink is None:
            self._sink = open_sink(self.url, self._token, self.config)
        return self._sink

    def deliver(self, body: bytes, info: RunInfo) -> None:
        """One attempt (the run is created first if needed); raises :class:`DeliveryError`."""
        sink = self.open()
        self.run_id = sink.ensure_run(info)
        try:
            sink.post_step(self.run_id, body)
        except DeliveryError as exc:
            if exc.status != 404 or not isinstance(sink, HttpSink):
                raise
            sink.forget_run(info.name)
            self.run_id = sink.ensure_run(info)
            sink.post_step(self.run_id, body)

    def healthy(self) -> bool:
        """The sink (opened now if needed) answers its health probe."""
        return self.open().healthy()

    def fetch_alerts(self) -> list[dict[str, Any]] | None:
        """The run's alerts, or None when there is no run or sink yet or the sink did not answer (alerts
        are best effort: delivery errors are reported elsewhere)."""
        if self.run_id is None or self._sink is None:
            return None
        try:
            alerts = self._sink.alerts(self.run_id)
        except Exception as exc:
            log.debug("could not fetch alerts: %s", exc)
            return None
        for a in alerts:
            key = a.get("alert_id")
            if key not in self._seen_alerts:
                self._seen_alerts.add(key)
                log.warning(
                    "fpmon alert %s at step %s: %s%s",
                    a.get("type"),
                    a.get("step"),
                    "; ".join(a.get("reasons") or []),
                    f" - review: {self.url}/#/alerts/{key}" if self.url else "",
                )
        return alerts

    def fetch_latest(self) -> LatestStep | None:
        """The run's latest processed step, or None when there is none, no run or sink yet, or no answer."""
        if self.run_id is None or self._sink is None:
            return None
        try:
            return self._sink.latest(self.run_id)
        except Exception as exc:
            log.debug("could not fetch the latest step: %s", exc)
            return None

    def close(self) -> None:
        """Close the sink if it was opened."""
        if self._sink is not None:
            self._sink.close()
