"""Engines, sessions and schema management (Alembic, run programmatically from inside the package).

* :func:`make_engine` — SQLite: WAL journal, foreign keys, a busy timeout, usable from several threads,
  with transactions under fpmon's control (``BEGIN`` on demand, ``BEGIN IMMEDIATE`` for the storage
  functions' writes, see :data:`SQLITE_IMMEDIATE` and :func:`storage.sql.begin_write`); PostgreSQL:
  ``pool_pre_ping``.
* :func:`upgrade` — apply the migrations in ``storage/migrations`` up to head (``fpmon db upgrade``).
* :func:`check_schema` — refuse to serve on an un-migrated, older or newer schema (:class:`SchemaError`
  says what to run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DATABASE_URL = "sqlite:///./fpmon.db"
#: Execution option: on SQLite, open the transaction with ``BEGIN IMMEDIATE`` (take the write lock first),
#: so that a read-then-write transaction never fails to upgrade its lock under concurrency.
SQLITE_IMMEDIATE = "fpmon_sqlite_immediate"
SQLITE_BUSY_TIMEOUT_MS = 30_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaError(RuntimeError):
    """The database schema does not match the code; the message says what to run."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///path.db`` or ``postgresql+psycopg://…``), configured for fpmon."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        in_memory = parsed.database in (None, "", ":memory:")

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # fpmon emits BEGIN itself (see _on_begin)
            cursor = dbapi_connection.cursor()
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def _alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no Alembic migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision, or None when it has never been migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> str | None:
    """Apply the migrations up to ``revision`` (default: head); returns the revision reached."""
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
        return current_revision(engine)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def check_schema(engine: Engine) -> str:
    """Raise :class:`SchemaError` unless the database is exactly at the migrations' head; returns it."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    url = engine.url.render_as_string(hide_password=True)
    known = {script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
    if current is None or current in known:
        state = "is not migrated (no alembic_version)" if current is None else f"is at revision {current}"
        raise SchemaError(f"database {state}, code expects {head}: run `fpmon db upgrade --database-url {url}`")
    raise SchemaError(
        f"database is at revision {current}, which this fpmon does not know (it expects {head}): the "
        "schema is newer than the code; upgrade fpmon to the version that migrated this database"
    )
