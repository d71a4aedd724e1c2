"""Review page: per-sample 2-D coordinates and prompt, the detector's transition flag per step.

Revision ID: 0002_review_page
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_review_page"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add nullable columns (existing rows keep NULL: no map / prompt / flag for steps processed before)."""
    with op.batch_alter_table("step_samples") as batch:
        batch.add_column(sa.Column("x", sa.Float(), nullable=True))
        batch.add_column(sa.Column("y", sa.Float(), nullable=True))
        batch.add_column(sa.Column("prompt", sa.Text(), nullable=True))
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("transition", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Drop the added columns (their data included)."""
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("transition")
    with op.batch_alter_table("step_samples") as batch:
        batch.drop_column("prompt")
        batch.drop_column("y")
        batch.drop_column("x")
