"""Shared fixtures: ``database_url`` runs a test against SQLite (a temporary file) and PostgreSQL.

PostgreSQL: ``FPMON_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://root@127.0.0.1:5432/test``); each
test gets a fresh schema (dropped afterwards) through the connection's ``search_path``. When PostgreSQL is
unreachable the PostgreSQL-parametrised tests FAIL — set ``FPMON_SKIP_POSTGRES=1`` to skip them instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# One torch thread per test process (and the sidecars they start): `make test` runs one pytest worker per core,
# and small tensor ops (the e-detectors' kernels) slow down several-fold when two threads per worker contend.
os.environ.setdefault("OMP_NUM_THREADS", "1")

POSTGRES_URL = os.environ.get("FPMON_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database (no tables), on SQLite or on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fpmon.db'}"
        return
    if os.environ.get("FPMON_SKIP_POSTGRES") == "1":
        pytest.skip("FPMON_SKIP_POSTGRES=1: PostgreSQL tests skipped on request")
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is unreachable at {POSTGRES_URL} ({exc.orig}); start it, point "
            "FPMON_TEST_POSTGRES_URL at one, or set FPMON_SKIP_POSTGRES=1 to skip these tests explicitly",
            pytrace=False,
        )
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
