"""Request and response bodies of the REST API (they define the OpenAPI document at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictInt, ValidationInfo, field_validator

#: largest id / step number the database stores (a 32-bit signed INTEGER column on PostgreSQL)
MAX_DB_INT = 2_147_483_647
#: a query parameter's pattern: any text without NUL (PostgreSQL cannot compare against it)
NO_NUL = r"^[^\x00]*$"
#: deepest nesting of a run's ``config`` (the front door refuses deeper JSON bodies before parsing them)
MAX_CONFIG_DEPTH = 32


def storable_text(value: str) -> str:
    """Refuse text the databases cannot store: NUL (PostgreSQL) and lone surrogates (not UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def storable_json(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse a JSON object nested deeper than :data:`MAX_CONFIG_DEPTH` or holding a key or string the databases
    cannot store (see :func:`storable_text`); walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                storable_text(str(key))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            storable_text(item)
    return value


class RunCreate(BaseModel):
    name: Annotated[
        str,
        Field(min_length=1, max_length=200, description="Unique run name (not blank); the same name returns it"),
        AfterValidator(storable_text),
        AfterValidator(not_blank),
    ]
    latent_dim: StrictInt = Field(
        ge=1,
        le=1_000_000,
        description="Dimension d of the latents the run will send (an integer, at most the server's FPMON_MAX_D)",
    )
    config: Annotated[dict[str, Any], AfterValidator(storable_json)] = Field(
        default_factory=dict,
        description='Free-form JSON object (at most FPMON_MAX_CONFIG_BYTES encoded); "monitor" = MonitorConfig',
    )


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
    rebaseline_pending: bool = Field(
        default=False,
        description="A reviewer dismissed an alert with rebaseline=true: the run's monitor is re-baselined before "
        "its next processed step",
    )
    latest_step: int | None = Field(
        default=None, description="The run's latest processed step (null before the first is processed)"
    )
    latest_scalars: dict[str, float | None] | None = Field(
        default=None,
        description="The observables of latest_step (as GET /v1/runs/{id}/metrics returns that step's scalars; "
        "null where not computed); null before the first processed step",
    )
    verdict: Literal["confirmed", "open", "dismissed", "none"] = Field(
        default="none",
        description="The reviewers' verdict on the run, by precedence: confirmed (any alert confirmed: the page "
        "shows 'confirmed reward hacking'), else open (any alert open or acknowledged: not decided yet), else "
        "dismissed (every alert dismissed), else none (no alert)",
    )
    alert_counts: dict[str, int] = Field(
        default_factory=dict,
        description="The run's alerts per status: open, acknowledged, confirmed, dismissed (zeros included)",
    )


class RunList(BaseModel):
    runs: list[RunOut]


class StepAccepted(BaseModel):
    run_id: int
    step: int
    status: Literal["queued", "duplicate"]


class MetricRow(BaseModel):
    step: int
    scalars: dict[str, float | None]
    extra: dict[str, float | None] = Field(
        default_factory=dict,
        description="The step's extra scalars, sent by the trainer with the step (observe(scalars={...}), e.g. "
        "true_reward, kl); {} when it sent none. Not filtered by names.",
    )
    transition: bool | None = Field(
        default=None, description="The streaming detector flagged this step (null: no verdict, e.g. warm-up)"
    )
    evidence: dict[str, float | None] | None = Field(
        default=None,
        description="With the evidence query parameter: the natural log of each requested e-detector statistic "
        "after this step (log e-value; null: none stored at this step, e.g. the stream had no window yet or the "
        "step was an outlier). An evidence series alarms when it reaches evidence_threshold. Null without the "
        "parameter.",
    )


class MetricRows(BaseModel):
    rows: list[MetricRow]
    evidence_threshold: float | None = Field(
        default=None,
        description="With the evidence query parameter: the log alarm level log(1/alpha) of the run's e-detectors "
        "(6.9078 for the default alpha = 1e-3: an alarm when the e-value reaches 1/alpha = 1000); an alert is "
        "raised when the combined embedding (or reward) evidence reaches it. Null without the parameter or "
        "before the run has evidence.",
    )
    evidence_alpha: float | None = Field(
        default=None, description="exp(-evidence_threshold): the e-detectors' false-alarm level alpha"
    )


class SampleOut(BaseModel):
    index: int
    sample_id: str | None
    div: float | None
    reward: float | None
    text: str | None
    x: float | None = Field(default=None, description="First coordinate in the run's projection (whitened)")
    y: float | None = Field(default=None, description="Second coordinate in the run's projection (whitened)")
    prompt: str | None = None
    witness: float | None = Field(
        default=None,
        description="The sample's evidence score (larger: it carries more of the evidence of change — it resembles "
        "where the run is moving more than the run's base window); null before the evidence streams have a window",
    )


class SampleList(BaseModel):
    samples: list[SampleOut]


class ReviewIn(BaseModel):
    decision: Literal["acknowledged", "confirmed", "dismissed", "open"] = Field(
        description="The alert's new status; open re-opens a decided alert (409 when it is already open), "
        "keeping its history"
    )
    reviewer: Annotated[
        str, Field(min_length=1, max_length=200), AfterValidator(storable_text), AfterValidator(not_blank)
    ]
    note: Annotated[str, Field(max_length=10_000), AfterValidator(storable_text)] | None = None
    rebaseline: bool = Field(
        default=False,
        description="Only with decision dismissed: treat the change as the run's new normal. The run's monitor is "
        "re-baselined (its evidence detectors restart from the current behaviour) before its next processed "
        "step, so the same change does not alert again. Confirming or acknowledging leaves the detector as it is.",
    )

    @field_validator("rebaseline")
    @classmethod
    def rebaseline_only_when_dismissed(cls, value: bool, info: ValidationInfo) -> bool:
        decision = info.data.get("decision")
        if value and decision is not None and decision != "dismissed":
            raise ValueError(
                f"rebaseline is only valid with decision 'dismissed' (treating the change as the new normal), "
                f"not with {decision!r}"
            )
        return value


class ReviewOut(BaseModel):
    decision: str
    reviewer: str
    note: str | None
    created_at: datetime
    rebaseline: bool = Field(default=False, description="This dismissal asked to re-baseline the run's monitor")
    rebaseline_step: int | None = Field(
        default=None, description="The step before which the re-baseline was applied (null: pending, or none asked)"
    )


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


class ProblemError(BaseModel):
    """One offending part of a request."""

    loc: list[str | int] = Field(description='Where, e.g. ["body", "name"] or ["query", "limit"]')
    msg: str = Field(description="What is wrong with it")
    type: str = Field(description="A machine-readable kind, e.g. string_too_short, value_error")


class Problem(BaseModel):
    """Every 4xx/5xx answer: RFC 9457 problem details, media type ``application/problem+json``."""

    type: str = Field(default="about:blank", description="A URI naming the kind of problem; about:blank here")
    title: str = Field(description="The HTTP status phrase, e.g. Unprocessable Content")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong, in a sentence a person can act on")
    errors: list[ProblemError] | None = Field(default=None, description="The offending fields (validation errors)")


class MapPoint(BaseModel):
    """A sample of the step on the 2-D map (the run's projection, first two coordinates)."""

    index: int
    x: float | None
    y: float | None
    div: float | None
    flagged: bool = Field(description="In the context's flagged list")
    text: str | None = Field(description="The response's first 240 characters (the map's hover label)")


class ReferencePoint(BaseModel):
    index: int
    x: float | None
    y: float | None
    text: str | None = Field(description="The response's first 240 characters (the map's hover label)")


class StepContext(BaseModel):
    """What a reviewer needs to inspect one processed step (``GET /v1/runs/{run_id}/steps/{step}/context``)."""

    run_id: int
    step: int
    step_scalars: dict[str, float | None] = Field(description="All observables of the step")
    extra: dict[str, float | None] = Field(
        default_factory=dict, description="The step's extra scalars sent by the trainer (e.g. true_reward)"
    )
    transition: bool | None = Field(description="The streaming detector flagged the step")
    k: int
    flagged: list[SampleOut] = Field(
        description="The responses that carry the most evidence: an alert's listed responses (its top_samples, "
        "in order) first when the context is an alert's, then the step's next samples by witness score (by |δ| "
        "without one), up to k"
    )
    typical: list[SampleOut] = Field(
        description="The step's k samples with the smallest witness score (smallest |δ| without one), smallest first"
    )
    reference_step: int | None = Field(description="The run's reference step (its first processed step)")
    reference: list[SampleOut] = Field(description="k samples of the reference step, evenly spread by index")
    n: int = Field(description="Samples in the step")
    points: list[MapPoint] = Field(description="The step's samples (all, or at most max_points incl. flagged)")
    reference_points: list[ReferencePoint] = Field(description="The reference step's samples (at most max_points)")
    prev_step: int | None = Field(default=None, description="The run's processed step before this one (null: none)")
    next_step: int | None = Field(default=None, description="The run's processed step after this one (null: none)")
    alert_ids: list[int] = Field(default_factory=list, description="The alerts raised at this step")


class AlertContext(StepContext):
    """What a reviewer needs beside an alert (``GET /v1/alerts/{id}/context``): its step's context, the
    flagged list led by the alert's own responses."""

    alert: AlertOut
