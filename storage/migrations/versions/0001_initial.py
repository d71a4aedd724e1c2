"""Initial schema: runs, steps, step_samples, alerts, reviews, run_states.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.types import PortableJSON, UTCDateTime

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the tables, constraints and read-path indexes."""
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("latent_dim", sa.Integer(), nullable=False),
        sa.Column("config", PortableJSON, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("d0", sa.Float(), nullable=True),
        sa.Column("steps_received", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("steps_processed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_step_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("name", name="runs_name_key"),
    )
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_steps_run_id"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("processed_at", UTCDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("scalars", PortableJSON, nullable=True),
        sa.UniqueConstraint("run_id", "step", name="uq_steps_run_step"),
        sa.CheckConstraint("status IN ('pending', 'processing', 'done', 'failed')", name="ck_steps_status"),
    )
    op.create_index("ix_steps_run_status_step", "steps", ["run_id", "status", "step"])
    op.create_index("ix_steps_status_received", "steps", ["status", "received_at"])
    if op.get_bind().dialect.name == "postgresql":
        # float32 latents do not compress: skip TOAST's pglz attempt on every payload (and state blob)
        op.execute("ALTER TABLE steps ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.create_table(
        "step_samples",
        sa.Column("run_id", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("sample_index", sa.Integer(), primary_key=True),
        sa.Column("sample_id", sa.String(200), nullable=True),
        sa.Column("div", sa.Float(), nullable=True),
        sa.Column("abs_div", sa.Float(), nullable=True),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_step_samples_step"),
    )
    op.create_index("ix_step_samples_run_step_absdiv", "step_samples", ["run_id", "step", "abs_div"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_alerts_run_id"), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("scalars", PortableJSON, nullable=False),
        sa.Column("reasons", PortableJSON, nullable=False),
        sa.Column("top_samples", PortableJSON, nullable=False),
        sa.Column("recommendation", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_alerts_step"),
        sa.CheckConstraint("status IN ('open', 'acknowledged', 'confirmed', 'dismissed')", name="ck_alerts_status"),
    )
    op.create_index("ix_alerts_run_status", "alerts", ["run_id", "status", "id"])
    op.create_index("ix_alerts_status", "alerts", ["status", "id"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alert_id", sa.Integer(), sa.ForeignKey("alerts.id", name="fk_reviews_alert_id"), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("decision IN ('acknowledged', 'confirmed', 'dismissed')", name="ck_reviews_decision"),
    )
    op.create_index("ix_reviews_alert_id", "reviews", ["alert_id"])
    op.create_table(
        "run_states",
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("runs.id", name="fk_run_states_run_id"),
            primary_key=True,
        ),
        sa.Column("meta", PortableJSON, nullable=False),
        sa.Column("tensors", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("last_processed_step", sa.Integer(), nullable=True),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE run_states ALTER COLUMN tensors SET STORAGE EXTERNAL")


def downgrade() -> None:
    """Drop everything (data included)."""
    for index, table in (
        ("ix_reviews_alert_id", "reviews"),
        ("ix_alerts_status", "alerts"),
        ("ix_alerts_run_status", "alerts"),
        ("ix_step_samples_run_step_absdiv", "step_samples"),
        ("ix_steps_status_received", "steps"),
        ("ix_steps_run_status_step", "steps"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("run_states", "reviews", "alerts", "step_samples", "steps", "runs"):
        op.drop_table(table)
