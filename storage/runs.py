"""Runs: create one by name (race-safe), list them, look one up by id or by name.

The write (:func:`get_or_create_run`) follows the transaction rules described in :mod:`storage.steps`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Run
from .sql import RUNS_TABLE, begin_write, insert_ignore
from .types import finite_json, utcnow


def get_or_create_run(
    session: Session, name: str, latent_dim: int, config: dict[str, Any] | None = None
) -> tuple[Run, bool]:
    """The run called ``name``, created if new; ``(run, created)``.

    Race-safe: concurrent creates of one name (several replicas) insert one row and all return it. An
    existing run is returned as it is (its ``latent_dim`` and ``config`` are not changed; callers compare).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a run needs a non-empty name")
    if int(latent_dim) < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
    begin_write(session)
    try:
        created = insert_ignore(
            session,
            RUNS_TABLE,
            {
                "name": name,
                "latent_dim": int(latent_dim),
                "config": finite_json(config or {}),
                "created_at": utcnow(),
                "steps_received": 0,
                "steps_processed": 0,
            },
            ["name"],
        )
        run = session.scalars(select(Run).where(Run.name == name).execution_options(populate_existing=True)).one()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run, created


def list_runs(session: Session, limit: int = 100, offset: int = 0) -> list[Run]:
    """Runs by id (each carries ``steps_received`` / ``steps_processed``)."""
    stmt = select(Run).order_by(Run.id).limit(limit).offset(offset)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))


def get_run(session: Session, run_id: int) -> Run | None:
    """The run with this id, or None."""
    return session.get(Run, run_id, populate_existing=True)


def get_run_by_name(session: Session, name: str) -> Run | None:
    """The run with this name, or None."""
    stmt = select(Run).where(Run.name == name).execution_options(populate_existing=True)
    return session.scalars(stmt).one_or_none()
