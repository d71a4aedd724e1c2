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
    open_alerts: int = Field(description="Alerts of this run not reviewed yet (status open)")
    status: Literal["live", "idle"] = Field(description="live: a step was received within FPMON_LIVE_WINDOW_S")


class RunList(BaseModel):
    runs: list[RunOut]


class StepAccepted(BaseModel):
    run_id: int
    step: int
    status: Literal["queued", "duplicate"]


class MetricRow(BaseModel):
    step: int
    scalars: dict[str, float | None]
    transition: bool | None = Field(
        default=None, description="The streaming detector flagged this step (null: no verdict, e.g. warm-up)"
    )


class MetricRows(BaseModel):
    rows: list[MetricRow]


class SampleOut(BaseModel):
    index: int
    sample_id: str | None
    div: float | None
    reward: float | None
    text: str | None
    x: float | None = Field(default=None, description="First coordinate in the run's projection (whitened)")
    y: float | None = Field(default=None, description="Second coordinate in the run's projection (whitened)")
    prompt: str | None = None


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


class MapPoint(BaseModel):
    """A sample of the alert's step on the 2-D map (the run's projection, first two coordinates)."""

    index: int
    x: float | None
    y: float | None
    div: float | None
    flagged: bool = Field(description="Among the top-k by |δ| (the context's flagged list)")
    text: str | None = Field(description="The response's first 240 characters (the map's hover label)")


class ReferencePoint(BaseModel):
    index: int
    x: float | None
    y: float | None
    text: str | None = Field(description="The response's first 240 characters (the map's hover label)")


class AlertContext(BaseModel):
    """What a reviewer needs beside an alert (``GET /v1/alerts/{id}/context``)."""

    alert: AlertOut
    step_scalars: dict[str, float | None] = Field(description="All observables of the alert's step")
    transition: bool | None = Field(description="The streaming detector flagged the alert's step")
    k: int
    flagged: list[SampleOut] = Field(description="The step's top-k samples by |δ|, largest first")
    typical: list[SampleOut] = Field(description="The step's k samples with the smallest |δ|, smallest first")
    reference_step: int | None = Field(description="The run's reference step (its first processed step)")
    reference: list[SampleOut] = Field(description="k samples of the reference step, evenly spread by index")
    n: int = Field(description="Samples in the alert's step")
    points: list[MapPoint] = Field(description="The step's samples (all, or at most max_points incl. flagged)")
    reference_points: list[ReferencePoint] = Field(description="The reference step's samples (at most max_points)")
