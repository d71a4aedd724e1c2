"""Evidence of change per step, the witness score per sample, and the reviewer's re-baseline request.

* ``step_evidence(run_id, step, stream, log_value, threshold)``, primary key ``(run_id, step, stream)``, FK to
  ``steps`` (``ON DELETE CASCADE``): the natural log of each e-detector statistic after a processed step
  (``StepReport.evidence``: one row per stream and per combined evidence, ``embedding`` and ``reward``;
  finite values only) and the log alarm level ``log(1/alpha)`` it is compared with (``threshold``).
* ``step_samples.witness``: a sample's evidence score (``StepReport.witness``).
* ``reviews.rebaseline`` (a dismissal that treats the change as the new normal) and
  ``reviews.rebaseline_step`` (the step whose processing applied it).
* ``runs.rebaseline_review_id``: the pending re-baseline request of a run (the review that asked for it),
  consumed and cleared by the run's next processed step, in that step's transaction.

Steps processed before this migration have no evidence rows and a NULL witness (the page shows no value).
Only columns and a table are added (``ALTER TABLE … ADD/DROP COLUMN`` on SQLite, like 0003): no table copy.

Revision ID: 0004_evidence_rebaseline
Revises: 0003_payloads_heartbeat_counters
Create Date: 2026-12-12
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_evidence_rebaseline"
down_revision: str | None = "0003_payloads_heartbeat_counters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``step_evidence``; add the nullable or defaulted columns (existing rows keep NULL / false)."""
    op.create_table(
        "step_evidence",
        sa.Column("run_id", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("stream", sa.String(64), primary_key=True),
        sa.Column("log_value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id", "step"], ["steps.run_id", "steps.step"], name="fk_step_evidence_step", ondelete="CASCADE"
        ),
    )
    with op.batch_alter_table("step_samples", recreate="never") as batch:
        batch.add_column(sa.Column("witness", sa.Float(), nullable=True))
    with op.batch_alter_table("reviews", recreate="never") as batch:
        batch.add_column(sa.Column("rebaseline", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("rebaseline_step", sa.Integer(), nullable=True))
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.add_column(sa.Column("rebaseline_review_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop the table and columns added (their data too: evidence, witness scores, re-baseline requests)."""
    with op.batch_alter_table("runs", recreate="never") as batch:
        batch.drop_column("rebaseline_review_id")
    with op.batch_alter_table("reviews", recreate="never") as batch:
        batch.drop_column("rebaseline_step")
        batch.drop_column("rebaseline")
    with op.batch_alter_table("step_samples", recreate="never") as batch:
        batch.drop_column("witness")
    op.drop_table("step_evidence")
