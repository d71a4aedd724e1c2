"""``/metrics`` at 100,000 stored steps: the scrape before and after issue 12 ("metrics in constant time").

Run::

    python benchmarks/bench_metrics.py [--steps 100000] [--runs 20] [--payload-bytes 8192]
                                       [--real-payload-steps 16] [--scrapes 30] [--backends sqlite,postgresql]
                                       [--postgres-url URL] [--json PATH]

For each backend (a SQLite file; PostgreSQL in a fresh schema, dropped afterwards):

1. the database is migrated to ``0002_review_page`` (the schema before: each step row holds its payload) and
   filled directly through SQLAlchemy (bulk inserts, no sidecar): ``--steps`` steps over ``--runs`` runs,
   the runs streaming at once; almost all ``done`` with scalars and claim/done times, a few ``failed``, the
   last ones of each run ``pending`` (one ``processing``), one alert every 100 steps. The newest
   ``--real-payload-steps`` steps of each run hold a real step's payload (~790 kB: n = 256, d = 768 float32),
   the older ones ``--payload-bytes`` random bytes (100,000 real ones would take 80 GB; it is the newest
   steps that the old queries read, and the new ones read no payload at all);
2. **old**: the collector's queries as they were before (kept in this file, :func:`old_collect`) are timed;
3. ``fpmon db upgrade`` (migration 0003: payloads to ``step_payloads``, run counters back-filled) is timed;
4. **old queries, new schema**: the same old queries on the narrow rows; **new collector**: ``api.metrics``'s
   ``DatabaseCollector``; **GET /metrics**: the app's route through a ``TestClient`` (HTTP side included);
5. the old and the new collector must export the same values (the script fails otherwise).

Each time is the median (and p95) of ``--scrapes`` scrapes after two warm-up scrapes. Target: ``/metrics``
≤ 50 ms at 100,000 stored steps. ``tests/test_deploy.py`` runs this with 5,000 steps and checks the values,
not the times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, func, insert, select

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import storage  # noqa: E402

DEFAULT_PG = os.environ.get("FPMON_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
OLD_REVISION = "0002_review_page"
#: the observables a done step stores (the exported ones and a few more, as a real step does)
SCALAR_NAMES = ("C", "W2_ref", "S_dot", "H", "div_q99", "reward_mean", "D", "W2_step", "div_mean", "div_std")
ALERT_TYPES = ("PHASE_TRANSITION", "POTENTIAL_REWARD_HACKING")
#: a real step's payload: n = 256 float32 latents of d = 768 (~786 kB) and a little metadata
REAL_PAYLOAD_BYTES = 256 * 768 * 4 + 4096
#: what a scrape exports, as comparable values: {(metric sample name, sorted labels): value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ----------------------------------------------------------------------------------------------- filling
def fill_old_schema(
    engine: Engine,
    steps: int,
    runs: int,
    payload_bytes: int = 8192,
    real_payload_steps: int = 16,
    seed: int = 0,
    batch: int = 1000,
) -> dict[str, int]:
    """Fill a database at revision 0002 (steps hold their payloads) with ``steps`` steps over ``runs`` runs.

    The runs stream at once (step-major order, as concurrent training runs do). Per run: every 53rd step
    ``failed``, the last 3 ``pending`` and the one before them ``processing``, the rest ``done`` (scalars,
    claimed 20–80 ms before done); one alert per 100 steps. Payloads are ``payload_bytes`` random bytes, except
    the last ``real_payload_steps`` of each run, which hold :data:`REAL_PAYLOAD_BYTES` (a real step's size:
    what the newest steps hold when a retention keeps only the last ones). Returns the counts written.
    """
    rng = random.Random(seed)
    meta = MetaData()
    runs_t, steps_t, alerts_t = (Table(name, meta, autoload_with=engine) for name in ("runs", "steps", "alerts"))
    small, real = rng.randbytes(payload_bytes), rng.randbytes(REAL_PAYLOAD_BYTES)  # random: nothing compresses
    start = datetime(2026, 12, 1, tzinfo=UTC)
    per_run = [steps // runs + (1 if r < steps % runs else 0) for r in range(runs)]
    written = {"done": 0, "failed": 0, "pending": 0, "processing": 0, "alerts": 0}
    with engine.begin() as conn:
        run_ids = [
            conn.execute(
                insert(runs_t)
                .values(name=f"bench-run-{r}", latent_dim=768, config={}, created_at=start, steps_received=count)
                .returning(runs_t.c.id)
            ).scalar_one()
            for r, count in enumerate(per_run)
        ]
        done = dict.fromkeys(run_ids, 0)
        rows: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        clock = 0
        for step in range(max(per_run)):
            for run_id, count in zip(run_ids, per_run, strict=True):
                if step >= count:
                    continue
                clock += 1
                received = start + timedelta(milliseconds=100 * clock)
                status = "done"
                if step >= count - 3:
                    status = "pending"
                elif step == count - 4:
                    status = "processing"
                elif step % 53 == 52:
                    status = "failed"
                claimed = received + timedelta(milliseconds=5) if status != "pending" else None
                took = timedelta(milliseconds=rng.randint(20, 80))
                finished = claimed + took if claimed is not None and status in ("done", "failed") else None
                rows.append(
                    {
                        "run_id": run_id,
                        "step": step,
                        "status": status,
                        "payload": real if step >= count - real_payload_steps else small,
                        "payload_sha256": f"{run_id:08x}{step:056x}",
                        "n": 256,
                        "received_at": received,
                        "claimed_by": "bench" if claimed else None,
                        "claimed_at": claimed,
                        "attempts": 1 if claimed else 0,
                        "processed_at": finished,
                        "error": "bench: failed on purpose" if status == "failed" else None,
                        "scalars": {name: rng.gauss(0.0, 1.0) for name in SCALAR_NAMES} if status == "done" else None,
                        "transition": False if status == "done" else None,
                    }
                )
                written[status] += 1
                done[run_id] += status == "done"
                if status == "done" and step % 100 == 99:
                    alerts.append(
                        {
                            "run_id": run_id,
                            "step": step,
                            "type": ALERT_TYPES[step // 100 % 2],
                            "status": "open",
                            "created_at": finished,
                            "scalars": {"C": 0.1},
                            "reasons": ["bench"],
                            "top_samples": [],
                            "recommendation": "review",
                        }
                    )
                if len(rows) >= batch:
                    conn.execute(insert(steps_t), rows)
                    rows = []
        if rows:
            conn.execute(insert(steps_t), rows)
        if alerts:
            conn.execute(insert(alerts_t), alerts)
        written["alerts"] = len(alerts)
        for run_id, count in done.items():
            conn.execute(runs_t.update().where(runs_t.c.id == run_id).values(steps_processed=count))
    return written


# ----------------------------------------------------------------------------------------------- scraping
def old_tables(engine: Engine) -> tuple[Table, Table, Table]:
    """``runs``, ``steps``, ``alerts`` as the database has them (reflected once, outside the timings)."""
    meta = MetaData()
    runs_t, steps_t, alerts_t = (Table(name, meta, autoload_with=engine) for name in ("runs", "steps", "alerts"))
    return runs_t, steps_t, alerts_t


def old_collect(engine: Engine, tables: tuple[Table, Table, Table] | None = None) -> Samples:
    """The database collector's queries as they were before issue 12 (``api/metrics.py`` at 2a60fd9): status
    counts GROUP BY over all steps, latency over the last 200 done steps by id, the latest observables per run
    through max(step) GROUP BY run_id. Runs on either schema (it never names the payload column)."""
    from api.metrics import EXPORTED_OBSERVABLES

    runs_t, steps_t, alerts_t = tables if tables is not None else old_tables(engine)
    out: Samples = {}
    with engine.connect() as conn:
        by_status = dict(conn.execute(select(steps_t.c.status, func.count()).group_by(steps_t.c.status)).all())
        out["fpmon_steps_processed_total", ()] = float(by_status.get("done", 0))
        out["fpmon_steps_failed_total", ()] = float(by_status.get("failed", 0))
        out["fpmon_queue_depth", ()] = float(by_status.get("pending", 0) + by_status.get("processing", 0))
        for alert_type, count in conn.execute(select(alerts_t.c.type, func.count()).group_by(alerts_t.c.type)):
            out["fpmon_alerts_total", (("type", alert_type),)] = float(count)
        rows = conn.execute(
            select(steps_t.c.claimed_at, steps_t.c.processed_at)
            .where(steps_t.c.status == "done", steps_t.c.claimed_at.is_not(None))
            .order_by(steps_t.c.id.desc())
            .limit(200)
        ).all()
        durations = sorted((done - claimed).total_seconds() for claimed, done in rows if done and claimed)
        for q in (0.5, 0.9, 0.99) if durations else ():
            value = durations[min(len(durations) - 1, int(q * len(durations)))]
            out["fpmon_processing_latency_seconds", (("quantile", str(q)),)] = value
        latest = (
            select(steps_t.c.run_id, func.max(steps_t.c.step).label("step"))
            .where(steps_t.c.status == "done")
            .group_by(steps_t.c.run_id)
            .subquery()
        )
        stmt = (
            select(runs_t.c.name, steps_t.c.scalars)
            .join(latest, (steps_t.c.run_id == latest.c.run_id) & (steps_t.c.step == latest.c.step))
            .join(runs_t, runs_t.c.id == steps_t.c.run_id)
            .order_by(runs_t.c.id)
            .limit(500)
        )
        for run_name, scalars in conn.execute(stmt):
            for name in EXPORTED_OBSERVABLES:
                value = (scalars or {}).get(name)
                if value is not None:
                    out["fpmon_observable", (("name", name), ("run", run_name))] = float(value)
    return out


def new_collect(engine: Engine) -> Samples:
    """What ``api.metrics.DatabaseCollector`` exports now (the database part of ``/metrics``)."""
    from api.metrics import DatabaseCollector

    out: Samples = {}
    for family in DatabaseCollector(storage.session_factory(engine), lambda: 0).collect():
        for sample in family.samples:
            if sample.name != "fpmon_workers_alive" and not sample.name.endswith("_created"):
                out[sample.name, tuple(sorted(sample.labels.items()))] = float(sample.value)
    return out


def differences(old: Samples, new: Samples, rel: float = 1e-9) -> list[str]:
    """What differs between two scrapes (empty: the same metrics with the same values)."""
    problems = [f"only in the old scrape: {key}" for key in sorted(old.keys() - new.keys())]
    problems += [f"only in the new scrape: {key}" for key in sorted(new.keys() - old.keys())]
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key], new[key]
        if abs(a - b) > rel * max(1.0, abs(a), abs(b)):
            problems.append(f"{key}: old {a} != new {b}")
    return problems


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median and p95 (nearest rank) wall time of ``fn`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))]}


def http_scrape(url: str) -> Callable[[], str]:
    """A function that GETs ``/metrics`` of the real app (``create_app``, no workers) through a TestClient."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings

    client = TestClient(create_app(Settings(database_url=url), start_workers=False))

    def scrape() -> str:
        response = client.get("/metrics")
        if response.status_code != 200:
            raise RuntimeError(f"/metrics answered {response.status_code}: {response.text[:200]}")
        return response.text

    return scrape


# ----------------------------------------------------------------------------------------------- backends
def postgres_schema(base: str) -> Iterator[str]:
    """A URL to a fresh PostgreSQL schema (``search_path``), dropped when the generator is closed."""
    admin = storage.make_engine(base, isolation_level="AUTOCOMMIT")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def analyze(engine: Engine) -> None:
    """Refresh the planner's statistics (``ANALYZE``), outside the timings."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def measure(
    url: str, steps: int, runs: int, payload_bytes: int, real_payload_steps: int, scrapes: int
) -> dict[str, Any]:
    """Fill at 0002, time the old queries, migrate, time the old queries, the new collector and /metrics."""
    storage.upgrade(url, OLD_REVISION)
    engine = storage.make_engine(url)
    try:
        t0 = time.perf_counter()
        written = fill_old_schema(engine, steps, runs, payload_bytes, real_payload_steps)
        fill_s = time.perf_counter() - t0
        analyze(engine)  # as autovacuum would have by then: both schemas are timed with fresh statistics
        tables = old_tables(engine)
        before = old_collect(engine, tables)
        old_schema = timed(lambda: old_collect(engine, tables), scrapes)
        t0 = time.perf_counter()
        storage.upgrade(engine)
        migrate_s = time.perf_counter() - t0
        analyze(engine)
        tables = old_tables(engine)
        old_queries = timed(lambda: old_collect(engine, tables), scrapes)
        after = new_collect(engine)
        new = timed(lambda: new_collect(engine), scrapes)
        scrape = http_scrape(url)
        http = timed(scrape, scrapes)
        problems = differences(before, after)
    finally:
        engine.dispose()
    return {
        "steps": steps,
        "runs": runs,
        "payload_bytes": payload_bytes,
        "real_payload_steps": real_payload_steps,
        "written": written,
        "fill_s": fill_s,
        "migrate_s": migrate_s,
        "old_schema_old_queries": old_schema,
        "new_schema_old_queries": old_queries,
        "new_collector": new,
        "http_metrics": http,
        "same_values": not problems,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--payload-bytes", type=int, default=8192)
    parser.add_argument("--real-payload-steps", type=int, default=16)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_PG)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    sizes = (args.steps, args.runs, args.payload_bytes, args.real_payload_steps, args.scrapes)
    for backend in args.backends.split(","):
        print(f"{backend}: filling {args.steps} steps …", flush=True)
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'metrics.db'}"
                results[backend] = measure(url, *sizes)
        elif backend == "postgresql":
            urls = postgres_schema(args.postgres_url)
            try:
                results[backend] = measure(next(urls), *sizes)
            finally:
                urls.close()
        else:
            parser.error(f"unknown backend {backend!r}")
    print()
    print(
        "| backend | steps | fill s | migrate 0003 s | old queries, old schema ms | old queries, new schema ms "
        "| new collector ms | GET /metrics ms | same values | target ≤ 50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend, r in results.items():

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['median_ms']:.1f} (p95 {r[key]['p95_ms']:.1f})"

        print(
            f"| {backend} | {r['steps']:,} | {r['fill_s']:.0f} | {r['migrate_s']:.1f} "
            f"| {cell('old_schema_old_queries')} | {cell('new_schema_old_queries')} | {cell('new_collector')} "
            f"| {cell('http_metrics')} "
            f"| {'yes' if r['same_values'] else 'NO'} | {'pass' if r['http_metrics']['median_ms'] <= 50 else 'FAIL'} |"
        )
    for backend, r in results.items():
        for problem in r["problems"]:
            print(f"{backend}: {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["same_values"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
