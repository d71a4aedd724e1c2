"""storage/: migrations, schema checks, ingest idempotency, step claiming, results, reads, retention.

Every test runs on SQLite and on PostgreSQL (``database_url`` in conftest.py).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from monitor import MonitorConfig, RLHFMonitor
from monitor.stepfile import StepPayload, decode_step, encode_step
from storage import (
    Base,
    Claim,
    LostClaim,
    NotFound,
    SchemaError,
    Step,
    StepConflict,
    StepTooLate,
    check_schema,
    claim_next_step,
    complete_step,
    counts,
    current_revision,
    decode_state,
    encode_state,
    evidence_threshold,
    fail_step,
    get_alert,
    get_or_create_run,
    get_run,
    get_step,
    head_revision,
    heartbeat_step,
    ingest_step,
    list_alerts,
    list_reviews,
    list_runs,
    list_steps,
    load_payload,
    load_run_state,
    make_engine,
    metrics,
    payload_steps,
    purge_payloads,
    review_alert,
    session_factory,
    step_samples,
    step_status_counts,
    upgrade,
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    upgrade(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as s:
        yield s


def process(session: Session, worker: str = "w", scalars: dict[str, float] | None = None) -> Step | None:
    """Claim the next step and complete it with trivial results."""
    row = claim_next_step(session, worker)
    if row is not None:
        complete_step(session, row, scalars or {"x": float(row.step)}, [], None, {}, b"")
    return row


def add_done_steps(session: Session, run_id: int, steps: list[int]) -> None:
    for step in steps:
        assert ingest_step(session, run_id, step, f"{run_id}:{step}".encode(), 1) == "queued"
        row = claim_next_step(session, "w")
        assert row is not None and row.step == step
        complete_step(session, row, {"x": float(step), "y": -float(step)}, [], None, {}, b"")


# ---------------------------------------------------------------------------------------------- schema
def test_upgrade_from_empty_to_head_matches_the_models(database_url: str) -> None:
    eng = make_engine(database_url)
    try:
        assert current_revision(eng) is None
        assert upgrade(database_url) == head_revision()
        assert current_revision(eng) == head_revision()
        assert check_schema(eng) == head_revision()
        tables = set(inspect(eng).get_table_names())
        assert {
            "runs",
            "steps",
            "step_payloads",
            "step_samples",
            "step_evidence",
            "alerts",
            "reviews",
            "run_states",
            "webhook_outbox",
            "alembic_version",
        } <= tables
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == []
            if eng.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert upgrade(database_url) == head_revision()  # idempotent
    finally:
        eng.dispose()


def test_check_schema_refuses_an_unmigrated_database(database_url: str) -> None:
    eng = make_engine(database_url)
    try:
        with pytest.raises(SchemaError, match=rf"code expects {head_revision()}: run `fpmon db upgrade --database-url"):
            check_schema(eng)
    finally:
        eng.dispose()


def test_check_schema_refuses_a_newer_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaError, match="newer than the code; upgrade fpmon"):
        check_schema(engine)


def test_upgrade_0002_to_head_moves_the_payloads_and_downgrade_puts_them_back(database_url: str) -> None:
    """Payloads written under 0002 (inline in ``steps``) are readable after 0003, the run counters are
    back-filled, the rows that reference steps survive, and a downgrade restores the old layout."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import MetaData, Table, insert

    from storage.db import MIGRATIONS_DIR

    assert upgrade(database_url, "0002_review_page") == "0002_review_page"
    eng = make_engine(database_url)
    try:
        meta = MetaData()
        runs_t, steps_t, samples_t, alerts_t = (
            Table(name, meta, autoload_with=eng) for name in ("runs", "steps", "step_samples", "alerts")
        )
        now = datetime(2026, 12, 1, tzinfo=UTC)
        statuses = ["done", "done", "failed", "done", "processing", "pending"]
        with eng.begin() as conn:
            run_id = conn.execute(
                insert(runs_t)
                .values(name="old", latent_dim=4, config={}, created_at=now, steps_received=6, steps_processed=3)
                .returning(runs_t.c.id)
            ).scalar_one()
            for step, status in enumerate(statuses):
                conn.execute(
                    insert(steps_t).values(
                        run_id=run_id,
                        step=step,
                        status=status,
                        payload=None if step == 0 else f"payload {step}".encode() * 100,  # step 0: purged
                        payload_sha256=f"{step:064x}",
                        n=1,
                        received_at=now + timedelta(seconds=step),
                        claimed_at=None if status == "pending" else now + timedelta(seconds=step, milliseconds=1),
                        claimed_by=None if status == "pending" else "old-worker",
                        attempts=0 if status == "pending" else 1,
                        processed_at=now + timedelta(seconds=step + 0.5) if status in ("done", "failed") else None,
                        scalars={"C": float(step)} if status == "done" else None,
                    )
                )
            conn.execute(insert(samples_t).values(run_id=run_id, step=3, sample_index=0, div=1.0, abs_div=1.0))
            conn.execute(
                insert(alerts_t).values(
                    run_id=run_id,
                    step=3,
                    type="PHASE_TRANSITION",
                    status="open",
                    created_at=now,
                    scalars={},
                    reasons=[],
                    top_samples=[],
                    recommendation="",
                )
            )
        assert upgrade(eng) == head_revision()
        assert "payload" not in {c["name"] for c in inspect(eng).get_columns("steps")}
        with session_factory(eng)() as s:
            assert [load_payload(s, run_id, step) for step in range(6)] == [None] + [
                f"payload {step}".encode() * 100 for step in range(1, 6)
            ]
            assert payload_steps(s, run_id) == [1, 2, 3, 4, 5]
            run = get_run(s, run_id)
            assert run is not None and (run.steps_received, run.steps_processed, run.steps_failed) == (6, 3, 1)
            assert run.latest_step == 3 and run.latest_scalars == {"C": 3.0}
            busy = get_step(s, run_id, 4)
            assert busy is not None and busy.heartbeat_at == busy.claimed_at  # the old claim times out normally
            assert (counts(s)["step_samples"], counts(s)["alerts"]) == (1, 1)
            taken = claim_next_step(s, "new-worker", claim_timeout_s=1.0)  # the old claim is long dead
            assert taken is not None and taken.step == 4 and taken.attempts == 2
        with eng.connect() as conn:  # payloads go with their step
            conn.execute(text("DELETE FROM step_payloads WHERE step = 5"))  # (the purge's way)
            conn.commit()
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002_review_page")
        assert current_revision(eng) == "0002_review_page"
        assert "step_payloads" not in inspect(eng).get_table_names()
        with eng.connect() as conn:
            back = dict(conn.execute(text("SELECT step, payload FROM steps ORDER BY step")).all())
        assert {step: None if value is None else bytes(value) for step, value in back.items()} == {
            0: None,
            **{step: f"payload {step}".encode() * 100 for step in range(1, 5)},
            5: None,
        }
        assert upgrade(eng) == head_revision()  # and up again
    finally:
        eng.dispose()


def test_upgrade_0003_to_0004_keeps_the_rows_and_downgrade_drops_only_what_0004_added(database_url: str) -> None:
    """Rows written under 0003 read back under 0004 with no evidence, NULL witness and no re-baseline; a
    downgrade drops the evidence table and the new columns (their data) and keeps the rest; up again works."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import MetaData, Table, insert

    from storage.db import MIGRATIONS_DIR

    assert upgrade(database_url, "0003_payloads_heartbeat_counters") == "0003_payloads_heartbeat_counters"
    eng = make_engine(database_url)
    try:
        meta = MetaData()
        runs_t, steps_t, samples_t, alerts_t, reviews_t = (
            Table(name, meta, autoload_with=eng) for name in ("runs", "steps", "step_samples", "alerts", "reviews")
        )
        now = datetime(2026, 12, 6, tzinfo=UTC)
        with eng.begin() as conn:
            run_id = conn.execute(
                insert(runs_t)
                .values(name="old", latent_dim=4, config={}, created_at=now, steps_received=1, steps_processed=1)
                .returning(runs_t.c.id)
            ).scalar_one()
            conn.execute(
                insert(steps_t).values(
                    run_id=run_id, step=0, status="done", payload_sha256="0" * 64, n=1, received_at=now, scalars={}
                )
            )
            conn.execute(insert(samples_t).values(run_id=run_id, step=0, sample_index=0, div=0.5, abs_div=0.5))
            alert_id = conn.execute(
                insert(alerts_t)
                .values(
                    run_id=run_id,
                    step=0,
                    type="PHASE_TRANSITION",
                    status="dismissed",
                    created_at=now,
                    scalars={},
                    reasons=[],
                    top_samples=[],
                    recommendation="",
                )
                .returning(alerts_t.c.id)
            ).scalar_one()
            conn.execute(
                insert(reviews_t).values(alert_id=alert_id, decision="dismissed", reviewer="ann", created_at=now)
            )
        assert upgrade(eng) == head_revision()  # through 0004 (and the later migrations)
        assert {c["name"]: c["nullable"] for c in inspect(eng).get_columns("step_evidence")} == {
            "run_id": False,
            "step": False,
            "stream": False,
            "log_value": False,
            "threshold": False,
        }
        assert inspect(eng).get_pk_constraint("step_evidence")["constrained_columns"] == ["run_id", "step", "stream"]
        with session_factory(eng)() as s:
            assert [x.witness for x in step_samples(s, run_id, 0)] == [None]
            (review,) = list_reviews(s, alert_id)
            assert (review.rebaseline, review.rebaseline_step) == (False, None)
            run = get_run(s, run_id)
            assert run is not None and run.rebaseline_review_id is None
            assert metrics(s, run_id, evidence=["embedding"])[0]["evidence"] == {"embedding": None}
            assert evidence_threshold(s, run_id) is None
            # the new columns and table are written and read on the migrated schema
            review_alert(s, alert_id, "dismissed", "bob", rebaseline=True)
            ingest_step(s, run_id, 1, b"1", 1)
            row = claim_next_step(s, "w")
            assert row is not None and row.step == 1
            pending = get_run(s, run_id)
            assert pending is not None and pending.rebaseline_review_id is not None
            complete_step(
                s,
                row,
                {},
                [{"index": 0, "div": 0.1, "witness": 0.7}],
                None,
                {},
                b"",
                evidence={"embedding": 2.0},
                evidence_threshold=6.9,
                rebaseline_review_id=pending.rebaseline_review_id,
            )
            assert [x.witness for x in step_samples(s, run_id, 1)] == [0.7]
            assert counts(s)["step_evidence"] == 1
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003_payloads_heartbeat_counters")
        assert current_revision(eng) == "0003_payloads_heartbeat_counters"
        inspector = inspect(eng)
        assert "step_evidence" not in inspector.get_table_names()
        assert "witness" not in {c["name"] for c in inspector.get_columns("step_samples")}
        assert not {"rebaseline", "rebaseline_step"} & {c["name"] for c in inspector.get_columns("reviews")}
        assert "rebaseline_review_id" not in {c["name"] for c in inspector.get_columns("runs")}
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM step_samples")).scalar_one() == 2
            assert conn.execute(text("SELECT count(*) FROM reviews")).scalar_one() == 2
            assert conn.execute(text("SELECT count(*) FROM steps WHERE status = 'done'")).scalar_one() == 2
        assert upgrade(eng) == head_revision()  # and up again
        with session_factory(eng)() as s:
            assert [x.witness for x in step_samples(s, run_id, 1)] == [None]  # the data went with the columns
            assert [r.rebaseline for r in list_reviews(s, alert_id)] == [False, False]
    finally:
        eng.dispose()


def insert_old_run_with_alert(eng: Engine, status: str) -> tuple[int, int]:
    """A run, its processed step 0 and an alert there with ``status``, written through the tables as they are
    (reflected: a migration test's older schema, where the ORM models of the head do not fit);
    returns ``(run_id, alert_id)``."""
    from sqlalchemy import MetaData, Table, insert

    meta = MetaData()
    runs_t, steps_t, alerts_t = (Table(name, meta, autoload_with=eng) for name in ("runs", "steps", "alerts"))
    now = datetime(2026, 12, 2, tzinfo=UTC)
    with eng.begin() as conn:
        run_id = conn.execute(
            insert(runs_t).values(name="old", latent_dim=4, config={}, created_at=now).returning(runs_t.c.id)
        ).scalar_one()
        conn.execute(
            insert(steps_t).values(
                run_id=run_id, step=0, status="done", payload_sha256="0" * 64, n=1, received_at=now, scalars={}
            )
        )
        alert = dict(scalars={}, reasons=[], top_samples=[], recommendation="", created_at=now)
        alert_id = conn.execute(
            insert(alerts_t)
            .values(run_id=run_id, step=0, type="PHASE_TRANSITION", status=status, **alert)
            .returning(alerts_t.c.id)
        ).scalar_one()
    return int(run_id), int(alert_id)


def test_upgrade_0004_to_0005_adds_extra_scalars_and_reopen_and_downgrade_removes_them(database_url: str) -> None:
    """Rows written under 0004 read back under 0005 with no extra scalars; 0005 accepts a review decision
    ``open`` (re-open) that 0004's check refused; a downgrade deletes those re-open reviews, drops the column and
    refuses ``open`` again; up again works."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import MetaData, Table, insert
    from sqlalchemy.exc import IntegrityError

    from storage.db import MIGRATIONS_DIR

    assert upgrade(database_url, "0004_evidence_rebaseline") == "0004_evidence_rebaseline"
    eng = make_engine(database_url)
    try:
        meta = MetaData()
        reviews_t = Table("reviews", meta, autoload_with=eng)
        now = datetime(2026, 12, 2, tzinfo=UTC)
        run_id, alert_id = insert_old_run_with_alert(eng, "confirmed")
        with eng.begin() as conn:
            conn.execute(
                insert(reviews_t).values(alert_id=alert_id, decision="confirmed", reviewer="ann", created_at=now)
            )
        with pytest.raises(IntegrityError), eng.begin() as conn:  # 0004 refuses a re-open
            conn.execute(insert(reviews_t).values(alert_id=alert_id, decision="open", reviewer="x", created_at=now))
        assert upgrade(eng) == head_revision()
        with session_factory(eng)() as s:
            (row,) = metrics(s, run_id)
            assert row["extra"] == {}
            assert [r.decision for r in list_reviews(s, alert_id)] == ["confirmed"]
        with eng.begin() as conn:  # 0005 accepts it, and keeps the earlier review
            conn.execute(insert(reviews_t).values(alert_id=alert_id, decision="open", reviewer="bob", created_at=now))
            conn.execute(text("UPDATE steps SET extra_scalars = '{\"kl\": 0.5}'"))
        with session_factory(eng)() as s:
            assert metrics(s, run_id)[0]["extra"] == {"kl": 0.5}
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0004_evidence_rebaseline")
        assert current_revision(eng) == "0004_evidence_rebaseline"
        assert "extra_scalars" not in {c["name"] for c in inspect(eng).get_columns("steps")}
        with eng.connect() as conn:
            assert conn.execute(text("SELECT decision FROM reviews")).scalars().all() == ["confirmed"]
        with pytest.raises(IntegrityError), eng.begin() as conn:  # and the old check is back
            conn.execute(
                text(
                    f"INSERT INTO reviews (alert_id, decision, reviewer, created_at, rebaseline) "
                    f"VALUES ({alert_id}, 'open', 'x', '2026-12-02', false)"
                )
            )
        assert upgrade(eng) == head_revision()  # and up again
    finally:
        eng.dispose()


def test_upgrade_0005_to_0006_adds_an_empty_outbox_and_downgrade_drops_it(database_url: str) -> None:
    """Alerts raised under 0005 survive 0006 with no notification queued (they are never sent); 0006 queues
    and refuses a second row per (alert, target); a downgrade drops the outbox and keeps the alerts; up again
    works."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import MetaData, Table, insert
    from sqlalchemy.exc import IntegrityError

    from storage import list_deliveries, outbox_counts
    from storage.db import MIGRATIONS_DIR

    assert upgrade(database_url, "0005_extra_scalars_reopen") == "0005_extra_scalars_reopen"
    eng = make_engine(database_url)
    try:
        assert "webhook_outbox" not in inspect(eng).get_table_names()
        now = datetime(2026, 12, 2, tzinfo=UTC)
        _, alert_id = insert_old_run_with_alert(eng, "open")
        assert upgrade(eng) == head_revision()
        with session_factory(eng)() as s:
            assert outbox_counts(s) == {"pending": 0, "delivered": 0, "failed": 0}
            assert get_alert(s, alert_id) is not None
        outbox_t = Table("webhook_outbox", MetaData(), autoload_with=eng)
        row = {"alert_id": alert_id, "target": "wh_a", "status": "pending", "created_at": now, "due_at": now}
        with eng.begin() as conn:
            conn.execute(insert(outbox_t).values(**row))
        with pytest.raises(IntegrityError), eng.begin() as conn:  # one row per (alert, target)
            conn.execute(insert(outbox_t).values(**row))
        with pytest.raises(IntegrityError), eng.begin() as conn:  # statuses are checked
            conn.execute(insert(outbox_t).values(**{**row, "target": "wh_b", "status": "sent"}))
        with session_factory(eng)() as s:
            (stored,) = list_deliveries(s)
            assert (stored.alert_id, stored.target, stored.attempts, stored.due_at) == (alert_id, "wh_a", 0, now)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005_extra_scalars_reopen")
        assert current_revision(eng) == "0005_extra_scalars_reopen"
        assert "webhook_outbox" not in inspect(eng).get_table_names()
        with eng.connect() as conn:
            assert conn.execute(text("SELECT id FROM alerts")).scalars().all() == [alert_id]
        assert upgrade(eng) == head_revision()  # and up again
    finally:
        eng.dispose()


def test_deleting_a_step_deletes_its_payload(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 1)
    session.execute(text("DELETE FROM steps"))
    session.commit()
    assert counts(session)["step_payloads"] == 0


# ---------------------------------------------------------------------------------------------- runs
def test_get_or_create_run_is_idempotent(session: Session) -> None:
    run, created = get_or_create_run(session, "exp-1", 16, {"k": 4, "bad": math.nan})
    again, created_again = get_or_create_run(session, "exp-1", 16, {"k": 8})
    assert created and not created_again
    assert again.id == run.id and again.config == {"k": 4, "bad": None}
    assert [r.name for r in list_runs(session)] == ["exp-1"]
    assert counts(session)["runs"] == 1
    with pytest.raises(ValueError, match="non-empty name"):
        get_or_create_run(session, " ", 16)


def test_concurrent_creates_of_one_name_make_one_run(engine: Engine) -> None:
    factory = session_factory(engine)
    barrier = threading.Barrier(6)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with factory() as s:
                barrier.wait()
                run, created = get_or_create_run(s, "shared", 8)
                results.append((run.id, created))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with factory() as s:
        assert counts(s)["runs"] == 1


# ---------------------------------------------------------------------------------------------- ingest
def test_ingest_queued_duplicate_conflict(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    assert ingest_step(session, run, 0, b"payload-0", 2) == "queued"
    before = counts(session)
    assert ingest_step(session, run, 0, b"payload-0", 2) == "duplicate"
    with pytest.raises(StepConflict, match="different content"):
        ingest_step(session, run.id, 0, b"other bytes", 2)
    assert counts(session) == before
    fresh = get_run(session, run.id)
    assert fresh is not None and fresh.steps_received == 1 and fresh.last_step_at is not None
    step = get_step(session, run.id, 0)
    assert step is not None and step.status == "pending" and step.n == 2
    assert load_payload(session, run.id, 0) == b"payload-0" and payload_steps(session, run.id) == [0]
    with pytest.raises(NotFound):
        ingest_step(session, 12345, 0, b"x", 1)
    assert counts(session) == before


# ---------------------------------------------------------------------------------------------- claims
def test_claim_order_within_and_across_runs(session: Session) -> None:
    a, _ = get_or_create_run(session, "a", 4)
    b, _ = get_or_create_run(session, "b", 4)
    for step in (2, 0, 1):
        ingest_step(session, a, step, f"a{step}".encode(), 1)
    ingest_step(session, b, 5, b"b5", 1)
    first = claim_next_step(session, "w1")
    assert first is not None and (first.run_id, first.step) == (a.id, 0)
    assert load_payload(session, a.id, 0) == b"a0"
    # run a is busy: the next claim goes to run b even though a's step 1 is older
    second = claim_next_step(session, "w2")
    assert second is not None and (second.run_id, second.step) == (b.id, 5)
    assert claim_next_step(session, "w3") is None
    complete_step(session, first, {"x": 0.0}, [], None, {}, b"")
    order = [process(session) for _ in range(3)]
    assert [(r.run_id, r.step) for r in order if r is not None] == [(a.id, 1), (a.id, 2)]
    assert order[2] is None
    # across runs, the oldest received claimable step goes first
    complete_step(session, second, {"x": 5.0}, [], None, {}, b"")
    ingest_step(session, b, 6, b"b6", 1)
    ingest_step(session, a, 3, b"a3", 1)
    assert [(r.run_id, r.step) for r in (process(session), process(session)) if r] == [(b.id, 6), (a.id, 3)]
    assert step_status_counts(session) == {"pending": 0, "processing": 0, "done": 6, "failed": 0}
    assert [s.step for s in list_steps(session, a.id)] == [0, 1, 2, 3]
    assert [s.step for s in list_steps(session, b.id, status="done", limit=1)] == [5]


def test_step_arriving_after_a_later_step_was_claimed_or_processed_is_refused(session: Session) -> None:
    """A step the monitor could never process (a later step of its run is already processing or done) is
    refused at ingest — a 409, nothing written — so that every accepted step is processed."""
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 1)
    ingest_step(session, run, 2, b"2", 1)
    assert [process(session).step for _ in range(2)] == [0, 2]  # type: ignore[union-attr]
    with pytest.raises(StepTooLate, match="arrived after step 2 was processed"):
        ingest_step(session, run, 1, b"1", 1)
    assert isinstance(StepTooLate("x"), StepConflict)  # the API answers 409 for both
    assert ingest_step(session, run, 2, b"2", 1) == "duplicate"  # a retry of an accepted step is still fine
    ingest_step(session, run, 4, b"4", 1)
    claimed = claim_next_step(session, "w")
    assert claimed is not None and claimed.step == 4 and claimed.status == "processing"
    with pytest.raises(StepTooLate, match="arrived after step 4"):  # claimed, not done yet: too late as well
        ingest_step(session, run, 3, b"3", 1)
    ingest_step(session, run, 5, b"5", 1)  # later steps are welcome
    assert get_step(session, run.id, 1) is None and get_step(session, run.id, 3) is None
    fresh = get_run(session, run.id)
    assert fresh is not None and fresh.steps_received == 4 and fresh.steps_failed == 0


def test_every_accepted_step_is_processed_under_concurrent_shuffled_ingest(engine: Engine) -> None:
    """Steps arrive shuffled (two senders) while two workers claim and complete: each step is either refused
    at ingest (StepTooLate) or processed — none accepted and then failed. This is the race the run's row
    lock closes on PostgreSQL (a claim overtaking a smaller step that was being received)."""
    factory = session_factory(engine)
    with factory() as s:
        run_id = get_or_create_run(s, "shuffled", 4)[0].id
    order = list(range(80))
    random.Random(7).shuffle(order)
    accepted: list[int] = []
    refused: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    sending = [True, True]

    def sender(k: int) -> None:
        try:
            with factory() as s:
                for step in order[k::2]:
                    try:
                        ingest_step(s, run_id, step, f"{step}".encode(), 1)
                        with lock:
                            accepted.append(step)
                    except StepTooLate:
                        with lock:
                            refused.append(step)
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)
        finally:
            sending[k] = False

    def worker(name: str) -> None:
        try:
            with factory() as s:
                while True:
                    row = process(s, name)
                    if row is None and not any(sending):
                        row = process(s, name)
                        if row is None:
                            return
                    if row is None:
                        time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(2)]
    threads += [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(accepted + refused) == list(range(80)) and accepted and refused
    with factory() as s:
        rows = {r.step: r for r in list_steps(s, run_id, limit=1000)}
    assert sorted(rows) == sorted(accepted), "exactly the accepted steps are stored"
    assert {r.status for r in rows.values()} == {"done"}, {r.step: r.error for r in rows.values() if r.error}


def test_concurrent_claimers_never_share_a_step_and_keep_run_order(engine: Engine) -> None:
    factory = session_factory(engine)
    n_runs, n_steps = 3, 8
    with factory() as s:
        run_ids = [get_or_create_run(s, f"run{i}", 4)[0].id for i in range(n_runs)]
        for step in range(n_steps):
            for run_id in run_ids:
                ingest_step(s, run_id, step, f"{run_id}:{step}".encode(), 1)
    total = n_runs * n_steps
    lock = threading.Lock()
    active: set[int] = set()
    claimed: list[tuple[int, int]] = []
    processed: dict[int, list[int]] = {run_id: [] for run_id in run_ids}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        deadline = time.monotonic() + 40
        try:
            with factory() as s:
                while time.monotonic() < deadline:
                    row = claim_next_step(s, name)
                    if row is None:
                        with lock:
                            if len(claimed) == total:
                                return
                        time.sleep(0.002)
                        continue
                    with lock:
                        if row.run_id in active:
                            raise AssertionError(f"two steps of run {row.run_id} processed at once")
                        active.add(row.run_id)
                        claimed.append((row.run_id, row.step))
                    time.sleep(0.003)
                    with lock:  # released before the commit: the DB still says 'processing'
                        active.discard(row.run_id)
                        processed[row.run_id].append(row.step)
                    complete_step(s, row, {"x": float(row.step)}, [], None, {}, b"")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(claimed) == total and len(set(claimed)) == total
    assert all(steps == list(range(n_steps)) for steps in processed.values())
    with factory() as s:
        assert all(r.steps_processed == n_steps for r in list_runs(s))


def test_postgres_claim_skips_locked_rows(engine: Engine, database_url: str) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's; SQLite serialises claims on its write lock")
    factory = session_factory(engine)
    with factory() as s:
        a, _ = get_or_create_run(s, "a", 4)
        b, _ = get_or_create_run(s, "b", 4)
        ingest_step(s, a, 0, b"a0", 1)
        ingest_step(s, b, 0, b"b0", 1)
    with factory() as holder, factory() as claimer:
        holder.execute(select(Step).where(Step.run_id == a.id).with_for_update())  # another replica's lock
        t0 = time.monotonic()
        row = claim_next_step(claimer, "w")
        assert row is not None and row.run_id == b.id and time.monotonic() - t0 < 5
        holder.rollback()


def test_stale_claims_are_reclaimed_and_the_dead_worker_is_fenced_off(engine: Engine, session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 1)
    with session_factory(engine)() as dead_session:  # the dead worker had its own session
        dead = claim_next_step(dead_session, "dead")
    assert dead is not None and dead.claimed_by == "dead" and dead.attempts == 1
    assert claim_next_step(session, "alive", stale_after_s=3600) is None
    alive = claim_next_step(session, "alive", stale_after_s=0)
    assert alive is not None and alive.step == 0 and alive.claimed_by == "alive" and alive.attempts == 2
    before = counts(session)
    with pytest.raises(LostClaim):
        complete_step(session, dead, {"x": 1.0}, [{"index": 0, "div": 1.0}], None, {}, b"")
    assert not fail_step(session, dead, "boom")
    assert counts(session) == before
    complete_step(session, alive, {"x": 1.0}, [{"index": 0, "div": 1.0}], None, {}, b"")
    assert get_step(session, run.id, 0).status == "done"  # type: ignore[union-attr]
    # a step whose worker keeps dying is given up after max_attempts claims
    ingest_step(session, run, 1, b"1", 1)
    for _ in range(3):
        assert claim_next_step(session, "dies", stale_after_s=0, max_attempts=3) is not None
    assert claim_next_step(session, "dies", stale_after_s=0, max_attempts=3) is None
    poison = get_step(session, run.id, 1)
    assert poison is not None and poison.status == "failed" and "gave up after 3 claims" in (poison.error or "")


def test_fail_step_marks_failed_and_the_run_continues(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 1)
    ingest_step(session, run, 1, b"1", 1)
    row = claim_next_step(session, "w")
    assert row is not None and fail_step(session, row, "ValueError: bad latents")
    assert row.status == "failed" and row.error == "ValueError: bad latents"
    assert process(session).step == 1  # type: ignore[union-attr]


def test_a_beating_claim_is_kept_and_a_silent_one_is_taken_back_in_seconds(engine: Engine, session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 1)
    ingest_step(session, run, 1, b"1", 1)
    with session_factory(engine)() as worker_session:
        held = claim_next_step(worker_session, "busy")
        assert held is not None and held.heartbeat_at == held.claimed_at
        token = Claim.of(held)
        for _ in range(3):  # 1.2 s of work, a beat every 0.4 s: never 1 s without one
            time.sleep(0.4)
            assert heartbeat_step(worker_session, token)
            assert claim_next_step(session, "other", claim_timeout_s=1.0) is None  # step 1 waits behind step 0
        time.sleep(1.1)  # the worker died: no beat for longer than the timeout
        t0 = time.monotonic()
        taken = claim_next_step(session, "other", claim_timeout_s=1.0)
        assert taken is not None and (taken.step, taken.claimed_by, taken.attempts) == (0, "other", 2)
        assert time.monotonic() - t0 < 1.0
        before = counts(session)
        assert not heartbeat_step(worker_session, token)  # the late worker learns it lost the claim
        with pytest.raises(LostClaim, match="attempt 1"):
            complete_step(worker_session, held, {"x": 0.0}, [{"index": 0, "div": 1.0}], None, {}, b"")
        assert not fail_step(worker_session, token, "late")
        assert counts(session) == before
    complete_step(session, taken, {"x": 0.0}, [], None, {}, b"")
    assert process(session).step == 1  # type: ignore[union-attr]


def test_the_fence_is_the_worker_and_the_attempt(session: Session) -> None:
    """A worker that claims the same step again under the same id (its first claim taken back) must not be
    able to write through its first claim."""
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 1)
    first = claim_next_step(session, "w")
    assert first is not None and first.step == 0 and first.attempts == 1
    old = Claim.of(first)
    second = claim_next_step(session, "w", claim_timeout_s=0)  # the first claim's heartbeat is "old"
    assert second is not None and second.step == 0 and second.attempts == 2
    assert not heartbeat_step(session, old) and not fail_step(session, old, "stale")
    with pytest.raises(LostClaim):
        complete_step(session, second, {"x": 0.0}, [], None, {}, b"", claim=old)
    assert heartbeat_step(session, second)
    complete_step(session, second, {"x": 0.0}, [], None, {}, b"")
    assert get_step(session, run.id, 0).status == "done"  # type: ignore[union-attr]


def test_run_counters_and_latest_scalars_follow_the_steps(session: Session) -> None:
    """``steps_received/processed/failed`` and ``latest_step/latest_scalars`` (what /metrics reads) agree with
    the step rows after every kind of transition: done, failed, refused late arrival, given up, still queued."""
    run, _ = get_or_create_run(session, "r", 4)
    other, _ = get_or_create_run(session, "other", 4)
    fresh = get_run(session, run.id)
    assert fresh is not None and (fresh.steps_failed, fresh.latest_step, fresh.latest_scalars) == (0, None, None)
    for step in (0, 2):
        ingest_step(session, run, step, f"{step}".encode(), 1)
    process(session, scalars={"C": 0.5})
    process(session, scalars={"C": 0.25, "H": math.nan})
    with pytest.raises(StepTooLate):  # late: refused at ingest, counted nowhere
        ingest_step(session, run, 1, b"1", 1)
    ingest_step(session, run, 3, b"3", 1)
    row = claim_next_step(session, "w")
    assert row is not None and row.step == 3 and fail_step(session, row, "bad")
    ingest_step(session, run, 4, b"4", 1)
    for _ in range(2):  # a worker dies twice on step 4: given up
        assert claim_next_step(session, "dies", stale_after_s=0, max_attempts=2) is not None
    assert claim_next_step(session, "dies", stale_after_s=0, max_attempts=2) is None
    ingest_step(session, run, 5, b"5", 1)
    ingest_step(session, other, 0, b"o0", 1)
    assert claim_next_step(session, "w") is not None  # run's step 5: processing; other's step 0 pending
    by_status = step_status_counts(session, run.id)
    assert by_status == {"pending": 0, "processing": 1, "done": 2, "failed": 2}
    fresh = get_run(session, run.id)
    assert fresh is not None
    assert (fresh.steps_received, fresh.steps_processed, fresh.steps_failed) == (5, 2, 2)
    assert fresh.latest_step == 2 and fresh.latest_scalars == {"C": 0.25, "H": None}
    assert get_step(session, run.id, 4).error.startswith("gave up after 2 claims")  # type: ignore[union-attr]
    total = step_status_counts(session)
    received = sum(r.steps_received for r in list_runs(session))
    assert total["pending"] + total["processing"] == received - total["done"] - total["failed"] == 2


# ---------------------------------------------------------------------------------------------- results
def test_complete_step_is_atomic(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 3)
    row = claim_next_step(session, "w")
    assert row is not None and row.step == 0 and row.status == "processing"
    before = counts(session)
    samples = [{"index": i, "div": float(i)} for i in range(3)]
    bad_alert = {"type": "PHASE_TRANSITION", "scalars": {"C": object()}, "reasons": [], "top_samples": []}
    with pytest.raises(TypeError, match="JSON column"):
        complete_step(session, row, {"C": 1.0}, samples, bad_alert, {"v": 1}, b"t", D0=2.0)
    assert counts(session) == before
    assert get_step(session, run.id, 0).status == "processing"  # type: ignore[union-attr]
    assert get_run(session, run.id).steps_processed == 0  # type: ignore[union-attr]
    assert load_run_state(session, run.id) is None
    good_alert = dict(bad_alert, scalars={"C": 0.1, "H": math.inf}, recommendation="look")
    meta = {"v": 1, "stats": [math.nan, -math.inf]}
    complete_step(session, row, {"C": 1.0}, samples, good_alert, meta, b"t", D0=2.0)
    after = counts(session)
    assert (after["step_samples"], after["alerts"], after["run_states"]) == (3, 1, 1)
    fresh = get_run(session, run.id)
    assert fresh is not None and fresh.steps_processed == 1 and fresh.D0 == 2.0
    state = load_run_state(session, run.id)
    assert state is not None and state.meta["v"] == 1 and state.tensors == b"t"
    assert math.isnan(state.meta["stats"][0]) and state.meta["stats"][1] == -math.inf
    assert state.last_processed_step == 0
    assert list_alerts(session)[0].scalars == {"C": 0.1, "H": None}


def test_latest_scalars_are_what_the_latest_row_holds_after_a_recalibration(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    add_done_steps(session, run.id, [0])
    ingest_step(session, run, 1, b"1", 1)
    row = claim_next_step(session, "w")
    assert row is not None
    complete_step(session, row, {"x": 1.0}, [], None, {}, b"", rescaled=[(0, {"x": 0.5}), (1, {"x": 2.0})])
    fresh = get_run(session, run.id)
    assert fresh is not None and fresh.latest_step == 1 and fresh.latest_scalars == {"x": 2.0}
    assert [r["scalars"] for r in metrics(session, run.id)] == [{"x": 0.5}, {"x": 2.0}]


def test_metrics_downsampling_keeps_first_last_and_even_ranks(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    add_done_steps(session, run.id, list(range(10)))
    ingest_step(session, run, 10, b"pending", 1)  # not processed: never a metrics row
    rows = metrics(session, run.id, max_points=4)
    assert [r["step"] for r in rows] == [0, 3, 6, 9]
    assert rows[1]["scalars"] == {"x": 3.0, "y": -3.0}
    rows = metrics(session, run.id, names=["x", "missing"], start=2, end=8, max_points=3)
    assert rows == [
        {"step": 2, "scalars": {"x": 2.0, "missing": None}, "extra": {}, "transition": None},
        {"step": 5, "scalars": {"x": 5.0, "missing": None}, "extra": {}, "transition": None},
        {"step": 8, "scalars": {"x": 8.0, "missing": None}, "extra": {}, "transition": None},
    ]
    assert [r["step"] for r in metrics(session, run.id, max_points=100)] == list(range(10))
    with pytest.raises(ValueError, match="max_points"):
        metrics(session, run.id, max_points=1)


def test_step_samples_are_ordered_by_absolute_divergence(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 5)
    row = claim_next_step(session, "w")
    assert row is not None and row.step == 0 and row.status == "processing"
    divs = [0.1, -3.0, 2.0, math.nan, -0.5]
    samples = [
        {"index": i, "div": d, "sample_id": f"s{i}", "reward": 0.5 * i, "text": f"t{i}"} for i, d in enumerate(divs)
    ]
    complete_step(session, row, {}, samples, None, {}, b"")
    ordered = step_samples(session, run.id, 0)
    assert [s.index for s in ordered] == [1, 2, 4, 0, 3]
    assert ordered[0].div == -3.0 and ordered[0].sample_id == "s1" and ordered[0].text == "t1"
    assert ordered[-1].div is None and ordered[0].reward == 0.5
    assert [s.index for s in step_samples(session, run.id, 0, limit=2)] == [1, 2]
    assert [s.index for s in step_samples(session, run.id, 0, order="index")] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="order"):
        step_samples(session, run.id, 0, order="reward")


def _raise_alert(session: Session, run_id: int, step: int, alert_type: str) -> None:
    ingest_step(session, run_id, step, f"{run_id}:{step}".encode(), 1)
    row = claim_next_step(session, "w")
    assert row is not None and row.step == step
    alert = {
        "type": alert_type,
        "step": step,
        "scalars": {"C": 0.1},
        "reasons": ("C low",),
        "top_samples": ({"index": 0, "div": -2.0, "sample_id": None, "text": "x", "reward": 1.0},),
        "recommendation": "review",
    }
    complete_step(session, row, {"C": 0.1}, [], alert, {}, b"")


def test_alert_filters_and_reviews(session: Session) -> None:
    a, _ = get_or_create_run(session, "a", 4)
    b, _ = get_or_create_run(session, "b", 4)
    _raise_alert(session, a.id, 0, "PHASE_TRANSITION")
    _raise_alert(session, a.id, 1, "POTENTIAL_REWARD_HACKING")
    _raise_alert(session, b.id, 0, "PHASE_TRANSITION")
    assert len(list_alerts(session)) == 3
    assert [x.step for x in list_alerts(session, run_id=a.id)] == [1, 0]
    hacking = list_alerts(session, type="POTENTIAL_REWARD_HACKING")
    assert len(hacking) == 1 and hacking[0].run_id == a.id and hacking[0].reasons == ["C low"]
    assert hacking[0].top_samples[0]["text"] == "x"
    assert len(list_alerts(session, limit=1, offset=2)) == 1
    alert_id = hacking[0].id
    before = counts(session)
    with pytest.raises(ValueError, match="decision must be one of"):
        review_alert(session, alert_id, "ignored", "ann")
    with pytest.raises(ValueError, match="reviewer"):
        review_alert(session, alert_id, "confirmed", "")
    with pytest.raises(NotFound):
        review_alert(session, 999_999, "confirmed", "ann")
    with pytest.raises(ValueError, match="status must be one of"):
        list_alerts(session, status="closed")
    assert counts(session) == before
    reviewed = review_alert(session, alert_id, "confirmed", "ann", note="reward exploit")
    assert reviewed.status == "confirmed"
    assert [x.id for x in list_alerts(session, status="confirmed")] == [alert_id]
    assert len(list_alerts(session, status="open", run_id=a.id)) == 1
    review_alert(session, alert_id, "dismissed", "bob")
    fetched = get_alert(session, alert_id)
    assert fetched is not None and fetched.status == "dismissed"
    reviews = list_reviews(session, alert_id)
    assert [(r.decision, r.reviewer, r.note) for r in reviews] == [
        ("confirmed", "ann", "reward exploit"),
        ("dismissed", "bob", None),
    ]
    assert get_alert(session, 999_999) is None


def test_complete_step_stores_finite_evidence_and_witness_scores(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    ingest_step(session, run, 0, b"0", 3)
    row = claim_next_step(session, "w")
    assert row is not None
    samples = [{"index": i, "div": 0.1 * i, "witness": w} for i, w in enumerate([0.5, math.nan, -0.2])]
    evidence = {"embedding": 7.5, "embedding_lagged": 7.5, "reward": -math.inf, "reward_rise": math.nan}
    before = counts(session)
    with pytest.raises(ValueError, match="finite evidence_threshold"):
        complete_step(session, row, {}, samples, None, {}, b"", evidence=evidence, evidence_threshold=math.nan)
    assert counts(session) == before  # nothing written
    complete_step(session, row, {}, samples, None, {}, b"", evidence=evidence, evidence_threshold=math.log(1000))
    assert [(x.index, x.witness) for x in step_samples(session, run.id, 0, order="witness")] == [
        (0, 0.5),
        (2, -0.2),
        (1, None),  # unknown last
    ]
    assert [x.index for x in step_samples(session, run.id, 0, order="witness_asc")] == [2, 0, 1]
    rows = metrics(session, run.id, evidence=["embedding", "embedding_lagged", "reward", "reward_rise"])
    assert rows[0]["evidence"] == {"embedding": 7.5, "embedding_lagged": 7.5, "reward": None, "reward_rise": None}
    assert counts(session)["step_evidence"] == 2  # the finite values only
    assert evidence_threshold(session, run.id) == pytest.approx(math.log(1000))
    assert "evidence" not in metrics(session, run.id)[0]
    # no evidence at all (e.g. an outlier step) needs no threshold
    ingest_step(session, run, 1, b"1", 1)
    row = claim_next_step(session, "w")
    assert row is not None
    complete_step(session, row, {}, [], None, {}, b"", evidence={"embedding": math.nan}, evidence_threshold=None)
    assert metrics(session, run.id, evidence=["embedding"])[1]["evidence"] == {"embedding": None}


def test_a_rebaseline_request_waits_for_the_next_step_and_a_newer_one_is_not_lost(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    other, _ = get_or_create_run(session, "other", 4)
    _raise_alert(session, run.id, 0, "PHASE_TRANSITION")
    _raise_alert(session, other.id, 0, "PHASE_TRANSITION")
    alert_id, other_alert = list_alerts(session, run_id=run.id)[0].id, list_alerts(session, run_id=other.id)[0].id
    before = counts(session)
    for decision in ("confirmed", "acknowledged"):
        with pytest.raises(ValueError, match="rebaseline is only valid with decision 'dismissed'"):
            review_alert(session, alert_id, decision, "ann", rebaseline=True)
    assert counts(session) == before and get_run(session, run.id).rebaseline_review_id is None  # type: ignore[union-attr]
    review_alert(session, alert_id, "confirmed", "ann")
    assert get_run(session, run.id).rebaseline_review_id is None  # type: ignore[union-attr]

    review_alert(session, alert_id, "dismissed", "ann", rebaseline=True)
    first = list_reviews(session, alert_id)[-1]
    assert first.rebaseline and get_run(session, run.id).rebaseline_review_id == first.id  # type: ignore[union-attr]
    review_alert(session, other_alert, "dismissed", "ann", rebaseline=True)  # another run's request: its own
    # a worker that lost its claim writes nothing: the request stays pending
    ingest_step(session, run, 1, b"1", 1)
    lost = claim_next_step(session, "w")
    assert lost is not None
    stale = Claim.of(lost)
    row = claim_next_step(session, "w", claim_timeout_s=0)  # taken back: the first claim is fenced off
    assert row is not None and row.step == 1
    with pytest.raises(LostClaim):
        complete_step(session, row, {}, [], None, {}, b"", claim=stale, rebaseline_review_id=first.id)
    assert get_run(session, run.id).rebaseline_review_id == first.id  # type: ignore[union-attr]
    assert list_reviews(session, alert_id)[-1].rebaseline_step is None
    # the worker read the request (first) and processes step 1; meanwhile a newer request arrives
    review_alert(session, alert_id, "dismissed", "bob", rebaseline=True)
    newer = list_reviews(session, alert_id)[-1]
    complete_step(session, row, {}, [], None, {}, b"", rebaseline_review_id=first.id)
    assert get_run(session, run.id).rebaseline_review_id == newer.id  # type: ignore[union-attr]  # still pending
    assert [(r.reviewer, r.rebaseline, r.rebaseline_step) for r in list_reviews(session, alert_id)] == [
        ("ann", False, None),
        ("ann", True, 1),
        ("bob", True, None),
    ]
    ingest_step(session, run, 2, b"2", 1)
    row = claim_next_step(session, "w")
    assert row is not None and row.step == 2
    complete_step(session, row, {}, [], None, {}, b"", rebaseline_review_id=newer.id)
    assert get_run(session, run.id).rebaseline_review_id is None  # type: ignore[union-attr]
    assert list_reviews(session, alert_id)[-1].rebaseline_step == 2
    # the other run's request is untouched by this run's steps
    other_review = list_reviews(session, other_alert)[-1]
    assert get_run(session, other.id).rebaseline_review_id == other_review.id  # type: ignore[union-attr]
    assert other_review.rebaseline_step is None


# ---------------------------------------------------------------------------------------------- retention
def test_purge_payloads_keeps_the_last_steps_and_duplicate_detection(session: Session) -> None:
    run, _ = get_or_create_run(session, "r", 4)
    other, _ = get_or_create_run(session, "other", 4)
    add_done_steps(session, run.id, list(range(5)))
    add_done_steps(session, other.id, [0])
    ingest_step(session, run, 5, b"pending", 1)
    assert purge_payloads(session, keep_last_steps=2) == 3
    payloads = {s: load_payload(session, run.id, s) for s in range(6)}
    kept = {s: f"{run.id}:{s}".encode() for s in (3, 4)}
    assert payloads == {0: None, 1: None, 2: None, **kept, 5: b"pending"}
    assert payload_steps(session, run.id) == [3, 4, 5] and payload_steps(session, other.id) == [0]
    assert counts(session)["steps"] == 7  # the step rows stay
    assert purge_payloads(session, keep_last_steps=2) == 0
    assert ingest_step(session, run, 0, f"{run.id}:0".encode(), 1) == "duplicate"
    with pytest.raises(StepConflict):
        ingest_step(session, run, 0, b"changed", 1)
    assert metrics(session, run.id)[0]["scalars"]["x"] == 0.0


# ---------------------------------------------------------------------------------------------- run state
def _batches(steps: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    basis = torch.randn(4, 16, generator=gen)
    out = []
    for step in range(steps):
        z = torch.randn(64, 4, generator=gen) @ basis + 0.3 * torch.randn(64, 16, generator=gen)
        out.append((step, z, 0.1 * torch.randn(64, generator=gen)))
    return out


def _work_one(session: Session, monitor: RLHFMonitor | None) -> tuple[RLHFMonitor, dict[str, float]]:
    """…; returns the monitor and the step's scalars with its evidence (``evidence.<name>`` entries)."""
    """A minimal compute worker: claim, restore the state from the DB, observe, write back."""
    row = claim_next_step(session, "worker")
    assert row is not None
    body = load_payload(session, row.run_id, row.step)
    assert body is not None
    if monitor is None:
        stored = load_run_state(session, row.run_id)
        monitor = (
            RLHFMonitor(MonitorConfig(warmup_steps=3))
            if stored is None
            else RLHFMonitor.from_state_dict(decode_state(stored.meta, stored.tensors))
        )
    payload = decode_step(body)
    report = monitor.observe(payload.step, payload.latents, rewards=payload.rewards, texts=payload.texts)
    samples = [
        {"index": i, "div": float(d), "text": payload.texts[i] if payload.texts else None}
        for i, d in enumerate(report.div.tolist())
    ]
    meta, blob = encode_state(monitor.state_dict())
    alert = report.alert.to_dict() if report.alert else None
    complete_step(session, row, report.scalars, samples, alert, meta, blob, D0=monitor.D0)
    return monitor, {**report.scalars, **{f"evidence.{k}": v for k, v in report.evidence.items()}}


def test_run_state_round_trip_continues_a_real_monitor_identically(engine: Engine, database_url: str) -> None:
    batches = _batches(9)
    reference = RLHFMonitor(MonitorConfig(warmup_steps=3))
    reports = [reference.observe(step, z, rewards=r) for step, z, r in batches]
    expected = [{**x.scalars, **{f"evidence.{k}": v for k, v in x.evidence.items()}} for x in reports]
    assert any("evidence.embedding" in x for x in expected)  # the evidence streams' state is in the round trip
    factory = session_factory(engine)
    with factory() as s:
        run, _ = get_or_create_run(s, "real", 16)
        for step, z, r in batches:
            texts = [f"answer {i}" for i in range(64)]
            payload = encode_step(StepPayload(step=step, latents=z, rewards=r, texts=texts))
            ingest_step(s, run, step, payload, 64)
        monitor = None
        got = []
        for _ in range(5):
            monitor, scalars = _work_one(s, monitor)
            got.append(scalars)
    # a "restarted replica": a new engine, the state read back from the database at every step
    second = make_engine(database_url)
    try:
        with session_factory(second)() as s:
            for _ in range(4):
                _, scalars = _work_one(s, None)
                got.append(scalars)
            assert claim_next_step(s, "worker") is None
            stored_run = get_run(s, run.id)
            assert stored_run is not None and stored_run.steps_processed == 9
            assert pytest.approx(reference.D0) == stored_run.D0
            assert len(step_samples(s, run.id, 8, limit=1000)) == 64
            stored = load_run_state(s, run.id)
            assert stored is not None and stored.meta["version"] == 3
            names = set(decode_state(stored.meta, stored.tensors)["tensors"])
            assert {"evidence_past_0_latents", "evidence_past_0_rewards"} <= names
    finally:
        second.dispose()
    for want, have in zip(expected, got, strict=True):
        assert have == pytest.approx(want, nan_ok=True)


def test_state_codec_round_trips_non_finite_floats() -> None:
    state: dict[str, Any] = {
        "meta": {"a": [math.nan, math.inf, -math.inf, 1.5], "b": {"c": (1, 2)}, "d": None},
        "tensors": {"t": torch.arange(6.0).reshape(2, 3)},
    }
    meta, blob = encode_state(state)
    assert meta["a"][0] == {"$float": "nan"}
    back = decode_state(meta, blob)
    assert math.isnan(back["meta"]["a"][0]) and back["meta"]["a"][1:] == [math.inf, -math.inf, 1.5]
    assert back["meta"]["b"] == {"c": [1, 2]}
    torch.testing.assert_close(back["tensors"]["t"], state["tensors"]["t"])
