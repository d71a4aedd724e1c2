"""Sidecar settings, from arguments or ``FPMON_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    @field_validator("api_tokens", "read_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

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
