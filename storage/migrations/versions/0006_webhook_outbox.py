"""The webhook outbox: one row per (alert, webhook target), written in the alert's transaction.

* ``webhook_outbox(id, alert_id, target, status, created_at, due_at, attempts, leased_by, delivered_at,
  last_error)``, unique ``(alert_id, target)``, FK to ``alerts``, index ``(status, due_at)`` (the notifier's
  claim), check ``status IN ('pending', 'delivered', 'failed')``. The rules: :mod:`storage.outbox`.

Alerts raised before this migration have no rows: they are never notified. Only a table is added (no copy);
the downgrade drops it with its rows (pending notifications are lost).

Revision ID: 0006_webhook_outbox
Revises: 0005_extra_scalars_reopen
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.types import UTCDateTime

revision: str = "0006_webhook_outbox"
down_revision: str | None = "0005_extra_scalars_reopen"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``webhook_outbox`` (empty)."""
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("leased_by", sa.String(200), nullable=True),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name="fk_webhook_outbox_alert_id"),
        sa.UniqueConstraint("alert_id", "target", name="uq_webhook_outbox_alert_target"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_outbox_status"),
    )
    op.create_index("ix_webhook_outbox_status_due", "webhook_outbox", ["status", "due_at"])


def downgrade() -> None:
    """Drop ``webhook_outbox`` and its rows (undelivered notifications are lost)."""
    op.drop_index("ix_webhook_outbox_status_due", table_name="webhook_outbox")
    op.drop_table("webhook_outbox")
