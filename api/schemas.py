"""Request and response bodies of the REST API (they define the OpenAPI document at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

#: largest id / step number the database stores (a 32-bit signed INTEGER column on PostgreSQL)
MAX_DB_INT = 2_147_483_647


class RunCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="Unique run name; the same name returns it")
    latent_dim: int = Field(ge=1, le=1_000_000, description="Dimension d of the latents the run will send")
    config: dict[str, Any] = Field(default_factory=dict, description='Free-form; "monitor" = MonitorConfig')


class RunOut(BaseModel):
    run_id: int
    name: str
    latent_dim: int
    config: dict[str, Any]
    created_at: datetime
    D0: float | None
    steps_received: int
    steps_processed: int
    last_step_at: datetime | None


class RunList(BaseModel):
    runs: list[RunOut]


class StepAccepted(BaseModel):
    run_id: int
    step: int
    status: Literal["queued", "duplicate"]


class MetricRow(BaseModel):
    step: int
    scalars: dict[str, float | None]


class MetricRows(BaseModel):
    rows: list[MetricRow]


class SampleOut(BaseModel):
    index: int
    sample_id: str | None
    div: float | None
    reward: float | None
    text: str | None


class SampleList(BaseModel):
    samples: list[SampleOut]


class ReviewIn(BaseModel):
    decision: Literal["acknowledged", "confirmed", "dismissed"]
    reviewer: str = Field(min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=10_000)


class ReviewOut(BaseModel):
    decision: str
    reviewer: str
    note: str | None
    created_at: datetime


class AlertOut(BaseModel):
    alert_id: int
    run_id: int
    step: int
    type: str
    status: str
    created_at: datetime
    scalars: dict[str, float | None]
    reasons: list[str]
    top_samples: list[dict[str, Any]]
    recommendation: str
    reviews: list[ReviewOut] = Field(default_factory=list)


class AlertList(BaseModel):
    alerts: list[AlertOut]


class Problem(BaseModel):
    detail: str
