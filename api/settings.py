"""Sidecar settings, from arguments or ``FPMON_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .webhooks import WebhookTarget, check_http_url, parse_targets


class Settings(BaseSettings):
    """Settings of ``fpmon serve``; every field can be set as ``FPMON_<NAME>`` (e.g. ``FPMON_PORT``).

    Attributes:
        host: address to bind. Without tokens only loopback addresses are allowed.
        port: TCP port.
        database_url: SQLAlchemy URL; SQLite file by default, ``postgresql+psycopg://…`` to scale out.
        device: where the worker computes: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        api_tokens: bearer tokens allowed to write (and read), comma-separated in the environment.
        read_tokens: bearer tokens allowed to read only.
        max_body_bytes: largest accepted step payload (``POST /v1/runs/{id}/steps``).
        max_json_bytes: largest body of every other route (the JSON routes; 413 beyond it, counted while the
            body streams in, before the body is parsed and after the token is checked).
        max_json_depth: deepest nesting of a JSON body (422 beyond it, before the body is validated).
        max_config_bytes: largest run ``config`` (its JSON encoding in UTF-8; 422 beyond it).
        max_n: most samples per step; max_d: largest latent dimension.
        workers: compute workers (each claims pending steps from the database).
        worker_mode: ``process`` (default: each worker is a child process, so computing never holds the
            HTTP server's GIL; children die with the server) or ``thread`` (inside the server process).
        worker_threads: torch CPU threads per worker process (None: torch's default, all cores). One
            by default: the per-step kernels are small, and OpenMP threads spinning against the HTTP
            server and the database on a small machine cost more than they give (measured in
            benchmarks/bench_sidecar.py).
        worker_poll_s: how often an idle worker looks for pending steps.
        claim_stale_s: a step claimed longer ago than this is claimed again, even while its worker's heartbeat
            goes on (a hung worker).
        claim_timeout_s: a step whose worker's heartbeat stopped this long ago (the worker died) is claimed
            again: crash recovery in seconds. The worker beats every ``claim_timeout_s / 5``.
        metrics_token: when set, ``GET /metrics`` needs ``Authorization: Bearer <metrics_token>`` (Prometheus'
            ``authorization`` scrape setting); None (default): ``/metrics`` is public.
        retention_steps: keep the raw latents of only the last N processed steps per run (None: all).
        review_dir: folder of the review page served at ``/`` (None: the page shipped inside the ``api``
            package, ``api/page``; set it only to serve another copy of the page).
        live_window_s: a run is ``live`` while its last step was received less than this many seconds ago,
            else ``idle`` (``GET /v1/runs``; the review page polls live runs).
        public_url: the sidecar's address as a reader's browser sees it, for the links in notifications
            (``<public_url>/#/alerts/<id>``). None (default): ``http://<host>:<port>``.
        webhook_urls: where alerts are notified: comma-separated ``[json:|slack:]URL`` entries (empty, the
            default: no notifications). A malformed entry is refused at startup.
        webhook_format: the body format of entries without a ``json:``/``slack:`` prefix: ``json`` (default;
            generic JSON) or ``slack`` (a Slack incoming-webhook message).
        webhook_secret: when set, each request is signed (``X-Fpmon-Signature``, see ``api.webhooks``).
        webhook_timeout_s: HTTP timeout of one delivery attempt (default 5 s); the attempt's lease on its
            outbox row is ``3 · webhook_timeout_s + 5`` s (connect, send and read each have the timeout).
        webhook_max_attempts: attempts of one notification before it is marked ``failed`` (default 8).
        webhook_backoff_s, webhook_backoff_max_s: the wait after the first failed attempt (default 2 s),
            doubled after each next one up to the maximum (default 600 s), then drawn in [½, 1] of that.
        webhook_poll_s: how often the notifier looks for due notifications (default 1 s).
        webhook_samples: the top samples (their texts) a notification quotes (default 3).
    """

    model_config = SettingsConfigDict(env_prefix="FPMON_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8700
    database_url: str = "sqlite:///./fpmon.db"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    read_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 64 * 1024 * 1024
    max_json_bytes: int = Field(default=1024 * 1024, ge=1)
    max_json_depth: int = Field(default=32, ge=1)
    max_config_bytes: int = Field(default=64 * 1024, ge=1)
    max_n: int = 8192
    max_d: int = 8192
    workers: int = 1
    worker_mode: Literal["process", "thread"] = "process"
    worker_threads: int | None = 1
    worker_poll_s: float = 0.05
    claim_stale_s: float = 300.0
    claim_timeout_s: float = Field(default=5.0, gt=0)
    metrics_token: str | None = None
    retention_steps: int | None = None
    review_dir: Path | None = None
    live_window_s: float = Field(default=120.0, gt=0)
    public_url: str | None = None
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_format: Literal["json", "slack"] = "json"
    webhook_secret: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=2.0, gt=0)
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_poll_s: float = Field(default=1.0, gt=0)
    webhook_samples: int = Field(default=3, ge=0, le=20)

    @field_validator("api_tokens", "read_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        parse_targets(self.webhook_urls, self.webhook_format)  # a malformed entry: ValueError saying which
        if self.public_url is not None:
            check_http_url(self.public_url, "FPMON_PUBLIC_URL", " (the sidecar's address, for links in notifications)")
        if self.webhook_backoff_s > self.webhook_backoff_max_s:
            raise ValueError(
                f"FPMON_WEBHOOK_BACKOFF_S ({self.webhook_backoff_s}) must not exceed FPMON_WEBHOOK_BACKOFF_MAX_S "
                f"({self.webhook_backoff_max_s})"
            )
        return self

    def webhook_targets(self) -> list[WebhookTarget]:
        """The configured webhooks (``webhook_urls`` parsed; empty: notifications are off)."""
        return parse_targets(self.webhook_urls, self.webhook_format)

    def resolved_public_url(self) -> str:
        """``public_url``, else ``http://<host>:<port>`` (an IPv6 host in brackets), without a trailing slash."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = self.host if ":" not in self.host or self.host.startswith("[") else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def resolved_review_dir(self) -> Path:
        """Where the review page's files are: ``review_dir``, else the package's own ``api/page``."""
        if self.review_dir is not None:
            return self.review_dir
        return Path(__file__).resolve().parent / "page"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens or self.read_tokens)

    def check_bind(self) -> None:
        """Refuse a non-loopback address when no token is configured."""
        if self.auth_enabled:
            return
        host = self.host.strip("[]")
        if host == "localhost":
            return
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"refusing to bind {self.host} without authentication: set FPMON_API_TOKENS (and "
                "optionally FPMON_READ_TOKENS), or bind 127.0.0.1"
            )
