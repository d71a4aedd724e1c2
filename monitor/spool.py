"""The on-disk spool of undelivered steps, the HTTP delivery to the sidecar, and the replay (``fpmon sync``).

Layout (one folder per run)::

    <spool_dir>/<run name, sanitised>/run.json                        {"name", "latent_dim", "config"}
    <spool_dir>/<run name, sanitised>/step-<10 digits>.safetensors    the wire format (monitor.stepfile)
    <spool_dir>/<run name, sanitised>/rejected/step-….safetensors     refused by the server (4xx) …
    <spool_dir>/<run name, sanitised>/rejected/step-….txt             … and the server's message

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a crash
leaves either the whole file or none. A step file is deleted only after the server acknowledged it (200:
already had it, 202: accepted), so replaying twice is harmless: the server is idempotent on (run, step).

Steps are replayed in step order: the sidecar fails a step that arrives after a later step of the same run
was processed. ``MonitorClient`` (``monitor.client``) drains its own run's folder with the same functions;
``fpmon sync SPOOL_DIR`` replays every folder later.

This module knows HTTP (httpx) and files; it does not import ``storage`` or ``api``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

log = logging.getLogger("fpmon.client")

RUN_FILE = "run.json"
REJECTED_DIR = "rejected"
_STEP_RE = re.compile(r"^step-(\d{10})\.safetensors$")
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")
#: HTTP statuses worth retrying (the request may succeed later); every other 4xx is permanent
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def sanitise_run_name(name: str) -> str:
    """A folder name for run ``name``: letters, digits, ``.``, ``_`` and ``-`` kept, anything else ``_``.

    When characters had to be replaced, 8 hex digits of the name's sha1 are appended so that two names
    differing only in such characters ("a b", "a/b") get different folders.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a run needs a non-empty name (run_name)")
    safe = _SAFE_RE.sub("_", name.strip())[:120].strip(".") or "run"
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RunInfo:
    """What ``run.json`` holds: enough to create the run on the server (``POST /v1/runs``)."""

    name: str
    latent_dim: int
    config: dict[str, Any] = field(default_factory=dict)


class RunSpool:
    """One run's spool folder (see the module docstring). Safe to use from several threads of one process:
    each operation is a single atomic file operation."""

    def __init__(self, spool_dir: str | Path, run_name: str) -> None:
        self.run_name = run_name
        self.path = Path(spool_dir) / sanitise_run_name(run_name)

    @classmethod
    def from_folder(cls, folder: Path) -> RunSpool:
        """The spool of an existing folder; the run's name comes from its ``run.json`` (else the folder name)."""
        spool = cls.__new__(cls)
        spool.path = folder
        try:
            info = spool.read_info()
        except ValueError:  # replay_run reports the malformed file
            info = None
        spool.run_name = info.name if info is not None else folder.name
        return spool

    # ------------------------------------------------------------------ run.json
    def write_info(self, info: RunInfo) -> None:
        """Write ``run.json`` (atomically; the same content again is a no-op)."""
        data = json.dumps({"name": info.name, "latent_dim": info.latent_dim, "config": info.config}, indent=1)
        target = self.path / RUN_FILE
        if target.is_file() and target.read_text() == data:
            return
        atomic_write(target, data.encode())

    def read_info(self) -> RunInfo | None:
        """``run.json``, or None when missing. ``ValueError`` names the file when it is malformed."""
        target = self.path / RUN_FILE
        if not target.is_file():
            return None
        try:
            data = json.loads(target.read_text())
            return RunInfo(name=str(data["name"]), latent_dim=int(data["latent_dim"]), config=dict(data["config"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{target}: not a valid run.json ({exc}); expected name, latent_dim, config") from exc

    # ------------------------------------------------------------------ step files
    def step_path(self, step: int) -> Path:
        return self.path / f"step-{int(step):010d}.safetensors"

    def write_step(self, step: int, body: bytes) -> Path:
        """Store one step's payload (atomically); returns its path."""
        target = self.step_path(step)
        atomic_write(target, body)
        return target

    def steps(self) -> list[int]:
        """The spooled step numbers, ascending (temporary and rejected files are not listed)."""
        if not self.path.is_dir():
            return []
        found = []
        for entry in os.scandir(self.path):
            match = _STEP_RE.match(entry.name)
            if match and entry.is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def read_step(self, step: int) -> bytes:
        return self.step_path(step).read_bytes()

    def delete_step(self, step: int) -> None:
        self.step_path(step).unlink(missing_ok=True)

    def reject(self, step: int, body: bytes | None, message: str) -> Path:
        """Move (or write) a refused step to ``rejected/`` with the server's message beside it; returns the
        payload's new path."""
        folder = self.path / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.step_path(step).name
        source = self.step_path(step)
        if body is None:
            os.replace(source, target)
        else:
            atomic_write(target, body)
            source.unlink(missing_ok=True)
        atomic_write(target.with_suffix(".txt"), (message.rstrip() + "\n").encode())
        return target

    def rejected(self) -> list[int]:
        folder = self.path / REJECTED_DIR
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for e in os.scandir(folder) if (m := _STEP_RE.match(e.name)))


def run_folders(spool_dir: str | Path) -> list[Path]:
    """The run folders of a spool directory (those with a ``run.json`` or a step file), by name."""
    root = Path(spool_dir)
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and ((entry / RUN_FILE).is_file() or any(_STEP_RE.match(p.name) for p in entry.iterdir())):
            out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------- delivery
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

    def close(self) -> None:
        self.http.close()


def call_with_retries(
    fn: Callable[[], Any],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], object] = time.sleep,
    on_retry: Callable[[DeliveryError], None] | None = None,
) -> Any:
    """``fn()``, retried on retryable :class:`DeliveryError` per ``policy``; the last error is raised."""
    attempt = 0
    while True:
        try:
            return fn()
        except DeliveryError as exc:
            if not exc.retryable or attempt >= policy.max_retries:
                raise
            attempt += 1
            if on_retry is not None:
                on_retry(exc)
            sleep(policy.delay(attempt, exc.retry_after))


# ---------------------------------------------------------------------------------------------- replay
@dataclass
class ReplayResult:
    """What one run folder's replay did.

    Attributes:
        run: the run's name; ``run_id`` its id on the server (None when it could not be created).
        sent: steps the server accepted (202); ``duplicates``: steps it already had (200); both deleted.
        rejected: steps the server refused (4xx), moved to ``rejected/`` with its message.
        remaining: step files left in the folder (the server became unreachable, or auth failed).
        error: why the replay stopped early (None when it finished).
    """

    run: str
    run_id: int | None = None
    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    remaining: int = 0
    error: str | None = None


def replay_run(
    spool: RunSpool, sink: HttpSink, policy: RetryPolicy, sleep: Callable[[float], object] = time.sleep
) -> ReplayResult:
    """Replay one run folder in step order (see the module docstring); returns a :class:`ReplayResult`.

    Connection errors, 429 and 5xx are retried per ``policy``; when they persist the replay stops and the
    remaining files stay. A 401/403 on run creation stops it too (wrong token: nothing is moved, run again
    with ``--token``). Any other refusal of a step moves that step to ``rejected/`` and goes on.
    """
    result = ReplayResult(run=spool.run_name)
    steps = spool.steps()
    if not steps:
        return result
    try:
        info = spool.read_info() or infer_info(spool, steps[0])
    except ValueError as exc:
        result.error, result.remaining = str(exc), len(steps)
        return result
    result.run = info.name
    try:
        result.run_id = call_with_retries(lambda: sink.ensure_run(info), policy, sleep=sleep)
    except DeliveryError as exc:
        if exc.retryable or exc.status in (401, 403):
            result.error, result.remaining = f"cannot create run {info.name!r}: {exc}", len(steps)
            return result
        for step in steps:  # the server refuses the run itself (409 latent_dim, 422 config): nothing can go
            spool.reject(step, None, f"run creation refused: {exc}")
            result.rejected += 1
        log.error("run %r refused by the server: %s; %d steps moved to rejected/", info.name, exc, len(steps))
        return result
    run_id: int = result.run_id
    for i, step in enumerate(steps):
        body = spool.read_step(step)

        def post(body: bytes = body) -> str:
            return sink.post_step(run_id, body)

        try:
            outcome = call_with_retries(post, policy, sleep=sleep)
        except DeliveryError as exc:
            if exc.retryable or exc.status in (401, 403):
                result.error, result.remaining = f"step {step}: {exc}", len(steps) - i
                return result
            spool.reject(step, None, str(exc))
            result.rejected += 1
            log.error("step %d of run %r refused: %s (moved to %s)", step, info.name, exc, spool.path / REJECTED_DIR)
            continue
        spool.delete_step(step)
        if outcome == "duplicate":
            result.duplicates += 1
        else:
            result.sent += 1
    return result


def infer_info(spool: RunSpool, first_step: int) -> RunInfo:
    """Without run.json: the folder's name and the first step's latent dimension."""
    from .stepfile import decode_step

    payload = decode_step(spool.read_step(first_step))
    return RunInfo(name=spool.run_name, latent_dim=int(payload.latents.shape[1]), config={})


def sync_spool(
    spool_dir: str | Path,
    url: str,
    token: str | None = None,
    run: str | None = None,
    policy: RetryPolicy | None = None,
    timeout_s: float = 10.0,
) -> list[ReplayResult]:
    """Replay every run folder of ``spool_dir`` (or only run ``run``, by name or folder name) to ``url``."""
    folders = run_folders(spool_dir)
    if run is not None:
        wanted = {run, sanitise_run_name(run)}
        folders = [f for f in folders if f.name in wanted or RunSpool.from_folder(f).run_name == run]
    policy = policy or RetryPolicy(max_retries=3, base_s=0.5, max_s=5.0)
    sink = HttpSink(url, token, timeout_s)
    try:
        return [replay_run(RunSpool.from_folder(folder), sink, policy) for folder in folders]
    finally:
        sink.close()
