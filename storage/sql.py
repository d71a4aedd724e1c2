"""SQL plumbing shared by the storage modules: table handles and the SQLite/PostgreSQL differences.

* Table handles (``RUNS_TABLE`` … ``OUTBOX_TABLE``): the models' Core tables, for ``insert``/``update``.
* :func:`begin_write` — on SQLite, take the write lock first (``BEGIN IMMEDIATE``); see :mod:`storage.steps`
  for the transaction rules every write function follows.
* :func:`insert_ignore` — ``INSERT … ON CONFLICT DO NOTHING`` in either dialect.
* :func:`bulk_insert` — many rows at once: ``COPY`` on PostgreSQL, ``executemany`` elsewhere.
* :func:`rowcount`, :func:`float_or_none` — small conversions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .db import SQLITE_IMMEDIATE
from .models import Alert, Review, Run, RunState, Step, StepBlob, StepEvidence, StepSample, WebhookDelivery

RUNS_TABLE = cast(Table, Run.__table__)
STEPS_TABLE = cast(Table, Step.__table__)
PAYLOADS_TABLE = cast(Table, StepBlob.__table__)
SAMPLES_TABLE = cast(Table, StepSample.__table__)
ALERTS_TABLE = cast(Table, Alert.__table__)
REVIEWS_TABLE = cast(Table, Review.__table__)
EVIDENCE_TABLE = cast(Table, StepEvidence.__table__)
STATES_TABLE = cast(Table, RunState.__table__)
OUTBOX_TABLE = cast(Table, WebhookDelivery.__table__)


def dialect_name(session: Session) -> str:
    """The session's database dialect: ``"sqlite"`` or ``"postgresql"``."""
    return session.get_bind().dialect.name


def begin_write(session: Session) -> None:
    """On SQLite, open the transaction with BEGIN IMMEDIATE (take the write lock before reading).

    A transaction the caller left open with only reads in it (no pending ORM changes) is committed first:
    a WAL read snapshot cannot always be upgraded to a write under concurrency ("database is locked").
    """
    if dialect_name(session) != "sqlite":
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return  # the caller's own unit of work: leave it alone (best effort: deferred BEGIN)
        session.commit()
    session.connection(execution_options={SQLITE_IMMEDIATE: True})


def insert_ignore(session: Session, table: Table, values: dict[str, Any], keys: list[str]) -> bool:
    """INSERT … ON CONFLICT (keys) DO NOTHING; True when the row was inserted."""
    dialect = dialect_name(session)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise ValueError(f"unsupported database dialect {dialect!r}: fpmon stores in SQLite or PostgreSQL")
    inserted = session.execute(stmt.returning(*table.primary_key.columns)).first()
    return inserted is not None


def rowcount(result: Any) -> int:
    """The number of rows an UPDATE/DELETE result touched."""
    return int(result.rowcount)


def float_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is None or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def bulk_insert(session: Session, table: Table, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Insert rows (dicts with exactly ``columns``) in the session's transaction: COPY on PostgreSQL (one
    stream instead of a round trip per row), executemany elsewhere."""
    if not rows:
        return
    if dialect_name(session) == "postgresql":
        psycopg_conn: Any = session.connection().connection.dbapi_connection  # psycopg 3
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        with psycopg_conn.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(tuple(row[c] for c in columns))
        return
    session.execute(insert(table), rows)
