"""Hot rows stay narrow: step payloads in their own table, claim heartbeats, per-run counters for ``/metrics``.

* ``step_payloads(run_id, step, payload)`` (FK to ``steps``, ``ON DELETE CASCADE``) receives every payload
  still held by ``steps.payload``, and that column is dropped: a scan of ``steps`` never reads a blob.
* ``steps.heartbeat_at``: the claiming worker refreshes it while it processes the step; a claim whose
  heartbeat is older than the worker's claim timeout is taken over (crash recovery in seconds).
* ``runs.steps_failed``, ``runs.latest_step``, ``runs.latest_scalars``: kept by the step writes, so the
  metrics read one row per run instead of counting steps; back-filled here from the steps.
* indexes ``ix_steps_status_processed`` (latency of the latest processed steps) and ``ix_alerts_type``.

SQLite: the columns are dropped with ``ALTER TABLE … DROP COLUMN`` (SQLite ≥ 3.35), not by Alembic's
move-and-copy: with foreign keys on, dropping the old ``steps`` table would delete (or refuse to delete)
the rows that reference it.

Revision ID: 0003_payloads_heartbeat_counters
Revises: 0002_review_page
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.types import PortableJSON, UTCDateTime

revision: str = "0003_payloads_heartbeat_counters"
down_revision: str | None = "0002_review_page"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the latest done step of a run, for the back-fill (a correlated sub-select: both dialects)
_LATEST_DONE = "(SELECT max(s.step) FROM steps s WHERE s.run_id = runs.id AND s.status = 'done')"


def upgrade() -> None:
    """Create ``step_payloads`` and move the payloads into it; add the heartbeat, counters and indexes."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "step_payloads",
        sa.Column("run_id", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_step_payloads_step", ondelete="CASCADE"
        ),
    )
    if postgresql:  # float32 latents do not compress: skip TOAST's pglz attempt on every payload
        op.execute("ALTER TABLE step_payloads ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.execute(
        "INSERT INTO step_payloads (run_id, step, payload) "
        "SELECT run_id, step, payload FROM steps WHERE payload IS NOT NULL"
    )
    with op.batch_alter_table("steps", recreate="never") as batch:
        batch.drop_column("payload")
        batch.add_column(sa.Column("heartbeat_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE steps SET heartbeat_at = claimed_at WHERE status = 'processing'")
    op.create_index("ix_steps_status_processed", "steps", ["status", "processed_at", "claimed_at"])
    op.create_index("ix_alerts_type", "alerts", ["type"])
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.add_column(sa.Column("steps_failed", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("latest_step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("latest_scalars", PortableJSON, nullable=True))
    op.execute(
        "UPDATE runs SET "
        "steps_failed = (SELECT count(*) FROM steps s WHERE s.run_id = runs.id AND s.status = 'failed'), "
        "steps_processed = (SELECT count(*) FROM steps s WHERE s.run_id = runs.id AND s.status = 'done'), "
        f"latest_step = {_LATEST_DONE}"
    )
    op.execute(
        "UPDATE runs SET latest_scalars = "
        "(SELECT s.scalars FROM steps s WHERE s.run_id = runs.id AND s.step = runs.latest_step) "
        "WHERE latest_step IS NOT NULL"
    )
    if postgresql:  # fresh statistics after moving every payload: the planner picks the new indexes
        op.execute("ANALYZE steps, step_payloads, runs, alerts")


def downgrade() -> None:
    """Put the payloads back into ``steps.payload``; drop the table, columns and indexes added (their data too)."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.drop_column("latest_scalars")
        batch.drop_column("latest_step")
        batch.drop_column("steps_failed")
    op.drop_index("ix_alerts_type", table_name="alerts")
    op.drop_index("ix_steps_status_processed", table_name="steps")
    with op.batch_alter_table("steps", recreate="never") as batch:
        batch.drop_column("heartbeat_at")
        batch.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))
    if postgresql:
        op.execute("ALTER TABLE steps ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.execute(
        "UPDATE steps SET payload = (SELECT p.payload FROM step_payloads p "
        "WHERE p.run_id = steps.run_id AND p.step = steps.step)"
    )
    op.drop_table("step_payloads")
