"""SQLAlchemy 2.x typed models: runs, steps, step payloads, step samples, step evidence, alerts, reviews, the
run state and the webhook outbox.

The schema itself is created by the Alembic migrations in ``storage/migrations`` (never by
``Base.metadata.create_all`` in production); ``tests/test_storage.py`` checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import PortableJSON, UTCDateTime, utcnow

STEP_STATUS_VALUES = ("pending", "processing", "done", "failed")
ALERT_STATUS_VALUES = ("open", "acknowledged", "confirmed", "dismissed")
OUTBOX_STATUS_VALUES = ("pending", "delivered", "failed")


class Base(DeclarativeBase):
    """Declarative base of every fpmon table."""


class Run(Base):
    """A monitored training run. ``name`` is unique: creating the same name again returns this row."""

    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("name", name="runs_name_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    latent_dim: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    D0: Mapped[float | None] = mapped_column("d0", Float, nullable=True)
    steps_received: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: steps ``done`` (kept in the same transaction as the step's status, like the two counters around it)
    steps_processed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: steps ``failed``; so pending + processing = received − processed − failed, without counting steps
    steps_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_step_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the run's latest ``done`` step and its scalars (written with it): ``/metrics`` reads no step row
    latest_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latest_scalars: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, nullable=True)
    #: a reviewer dismissed an alert as the run's new normal: the id of that review, until the run's next
    #: processed step re-baselines the monitor (``RLHFMonitor.rebaseline``) and clears it in its transaction
    rebaseline_review_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Step(Base):
    """One received training step: its status, claim and, once done, scalars. Narrow on purpose: the raw
    payload lives in :class:`StepBlob` (``step_payloads``), so no scan of ``steps`` ever reads a blob.

    A claim is ``(claimed_by, attempts)``; the claiming worker refreshes ``heartbeat_at`` while it works
    (see :mod:`storage.steps` for the rules).
    """

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("run_id", "step", name="uq_steps_run_step"),
        Index("ix_steps_run_status_step", "run_id", "status", "step"),
        Index("ix_steps_status_received", "status", "received_at"),
        # the latest processed steps' claim-to-done times without a table scan (``/metrics``)
        Index("ix_steps_status_processed", "status", "processed_at", "claimed_at"),
        CheckConstraint("status IN ('pending', 'processing', 'done', 'failed')", name="ck_steps_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", name="fk_steps_run_id"))
    step: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    payload_sha256: Mapped[str] = mapped_column(String(64))
    n: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    scalars: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, nullable=True)
    #: the streaming detector flagged this step (a detected transition); None during the warm-up
    transition: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    #: named per-step scalars the trainer sent with the step (``observe(scalars={"true_reward": …})``),
    #: ``{name: float | None}``, stored at ingest; None when the step came without any
    extra_scalars: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON, nullable=True)


class StepBlob(Base):
    """The raw payload of a received step (``monitor.stepfile`` bytes), kept out of the ``steps`` rows.

    Written with its step at ingest, read by the worker that claims the step, deleted by the retention
    purge (:func:`storage.purge_payloads`) and with its step (``ON DELETE CASCADE``).
    """

    __tablename__ = "step_payloads"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_step_payloads_step", ondelete="CASCADE"
        ),
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class StepSample(Base):
    """One sample of a processed step: its relative flux divergence δ and what a reviewer needs to see.

    ``abs_div`` = |δ| is stored and indexed so that "the samples of a step ordered by |δ|" is an index scan.
    Non-finite δ (the first step of a run has none) is stored as NULL and sorts last. ``x``, ``y`` are the
    sample's first two coordinates in the run's frozen projection (whitened, dimensionless: the review page's
    2-D map); ``prompt`` is the prompt the response answered.
    """

    __tablename__ = "step_samples"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_step_samples_step"),
        Index("ix_step_samples_run_step_absdiv", "run_id", "step", "abs_div"),
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    index: Mapped[int] = mapped_column("sample_index", Integer, primary_key=True)
    sample_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    div: Mapped[float | None] = mapped_column(Float, nullable=True)
    abs_div: Mapped[float | None] = mapped_column(Float, nullable=True)
    reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    x: Mapped[float | None] = mapped_column(Float, nullable=True)
    y: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the sample's evidence score (``StepReport.witness``: larger = it carries more of the evidence of
    #: change); NULL before the evidence streams have a window, and for steps processed before 0004
    witness: Mapped[float | None] = mapped_column(Float, nullable=True)


class StepEvidence(Base):
    """The monitor's evidence of change after a processed step: one row per evidence series.

    ``stream`` is a stream's name (``embedding_lagged``, ``embedding_reference``, ``reward_rise``,
    ``judge_gap``) or a combined evidence (``embedding``, ``reward``); ``log_value`` is the natural log of its
    e-detector statistic (``StepReport.evidence``; finite values only: a series without a finite value at a
    step has no row). ``threshold`` is the log alarm level ``log(1/alpha)`` the run's monitor used at that step
    (``StepReport.evidence_threshold``; the same on every row of a run unless its configuration changed).
    """

    __tablename__ = "step_evidence"
    __table_args__ = (
        ForeignKeyConstraint(
            ["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_step_evidence_step", ondelete="CASCADE"
        ),
    )

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    log_value: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)


class Alert(Base):
    """An alert raised by the monitor at a step (``monitor.rlhf.Alert``), and its review status."""

    __tablename__ = "alerts"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_alerts_step"),
        Index("ix_alerts_run_status", "run_id", "status", "id"),
        Index("ix_alerts_status", "status", "id"),
        Index("ix_alerts_type", "type"),  # alert counts by type from the index alone (``/metrics``)
        CheckConstraint("status IN ('open', 'acknowledged', 'confirmed', 'dismissed')", name="ck_alerts_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", name="fk_alerts_run_id"))
    step: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    scalars: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    reasons: Mapped[list[str]] = mapped_column(PortableJSON)
    top_samples: Mapped[list[dict[str, Any]]] = mapped_column(PortableJSON)
    recommendation: Mapped[str] = mapped_column(Text)


class Review(Base):
    """A reviewer's decision on an alert (the alert's status is set to the latest decision; ``open``
    re-opens an alert that was acknowledged, confirmed or dismissed)."""

    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_alert_id", "alert_id"),
        CheckConstraint("decision IN ('open', 'acknowledged', 'confirmed', 'dismissed')", name="ck_reviews_decision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", name="fk_reviews_alert_id"))
    decision: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: a dismissal that asked to re-baseline the run's monitor ("treat as the new normal")
    rebaseline: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: the step whose processing applied that re-baseline (NULL while it is pending, or without one)
    rebaseline_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RunState(Base):
    """The monitor state between steps (``RLHFMonitor.state_dict()``): JSON meta + safetensors bytes."""

    __tablename__ = "run_states"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", name="fk_run_states_run_id"), primary_key=True)
    meta: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    tensors: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_processed_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class WebhookDelivery(Base):
    """One notification of one alert to one webhook target (the outbox; rules in :mod:`storage.outbox`).

    Written with its alert, in the alert's transaction (:func:`storage.complete_step`); one row per
    ``(alert_id, target)``. ``target`` is the target's id (``api.webhooks.target_id``: a hash of its URL, so no
    URL, which may hold a secret, is stored). ``due_at`` is when the row may next be claimed: a claim moves it to
    the lease's end, a failed attempt to the retry time. ``attempts`` counts claims; ``leased_by`` names the
    notifier that holds (or last held) the row.
    """

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        UniqueConstraint("alert_id", "target", name="uq_webhook_outbox_alert_target"),
        Index("ix_webhook_outbox_status_due", "status", "due_at"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_outbox_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", name="fk_webhook_outbox_alert_id"))
    target: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    leased_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
