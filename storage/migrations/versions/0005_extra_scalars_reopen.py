"""Extra per-step scalars sent by the trainer, and re-opening a reviewed alert.

* ``steps.extra_scalars``: the named per-step numbers the trainer sends with a step
  (``MonitorClient.observe(scalars={"true_reward": …, "kl": …})``), stored at ingest as a JSON object
  ``{name: float | null}``; NULL for a step sent without any (and for every step received before this
  migration).
* ``reviews.decision`` may now be ``open``: a reviewer re-opens an alert (its status goes back to ``open``;
  the earlier decisions stay in its history).

The check constraint ``ck_reviews_decision`` is replaced: PostgreSQL drops and adds it; SQLite, which cannot
alter a constraint, copies the ``reviews`` table (Alembic's batch mode; reviews are few).

Revision ID: 0005_extra_scalars_reopen
Revises: 0004_evidence_rebaseline
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from storage.types import PortableJSON

revision: str = "0005_extra_scalars_reopen"
down_revision: str | None = "0004_evidence_rebaseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DECISIONS_BEFORE = "decision IN ('acknowledged', 'confirmed', 'dismissed')"
_DECISIONS_AFTER = "decision IN ('open', 'acknowledged', 'confirmed', 'dismissed')"


def _replace_decision_check(old: str, condition: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite keeps CHECK constraints in the table's DDL: copy the table with the new one
        with op.batch_alter_table(
            "reviews",
            recreate="always",
            reflect_args=(sa.CheckConstraint(old, name="ck_reviews_decision"),),
        ) as batch:
            batch.drop_constraint("ck_reviews_decision", type_="check")
            batch.create_check_constraint("ck_reviews_decision", sa.text(condition))
    else:
        op.drop_constraint("ck_reviews_decision", "reviews", type_="check")
        op.create_check_constraint("ck_reviews_decision", "reviews", sa.text(condition))


def upgrade() -> None:
    """Add ``steps.extra_scalars`` (existing rows keep NULL) and allow ``open`` as a review decision."""
    with op.batch_alter_table("steps", recreate="never") as batch:
        batch.add_column(sa.Column("extra_scalars", PortableJSON, nullable=True))
    _replace_decision_check(_DECISIONS_BEFORE, _DECISIONS_AFTER)


def downgrade() -> None:
    """Drop ``steps.extra_scalars`` (its data too); re-open reviews are deleted before the old check returns."""
    op.execute("DELETE FROM reviews WHERE decision = 'open'")
    _replace_decision_check(_DECISIONS_AFTER, _DECISIONS_BEFORE)
    with op.batch_alter_table("steps", recreate="never") as batch:
        batch.drop_column("extra_scalars")
