"""``fpmon runs / alerts / review / export`` and ``GET /v1/runs/{id}/export``, on SQLite and PostgreSQL.

A run is filled through :mod:`storage` (the worker's own calls: ingest, claim, complete with observables,
evidence and alerts; the extra scalars written into ``steps.extra_scalars``, where ingest stores them; a review),
then read back through the CLI twice — against a live sidecar (uvicorn in a thread, ``--url`` with a token)
and straight from the database (``--database-url``) — and through the REST export:

* ``fpmon export`` round-trips: the rows read back (csv module, pyarrow, json) equal the API's answers
  (``/v1/runs/{id}/metrics?evidence=all`` and ``/v1/alerts/{id}``), in all three formats, from both sources;
* ``fpmon runs`` / ``fpmon alerts --json`` are the API's objects; their tables name the runs and alerts;
* ``fpmon review`` changes the alert's status (seen through the API); a bad alert id, an unknown run, a read
  token for a review, both sources at once, a missing SQLite file: a clear message and a nonzero exit, nothing
  changed;
* the REST export: attachment headers, the same bytes as the CLI's files, 404, 422, 401, 501 without pyarrow;
* over HTTP, paged runs, alerts and metric windows lose nothing; a non-sidecar or a 5xx is a clear error;
* ``import api.cli`` (what ``fpmon --help`` runs) imports none of torch, SQLAlchemy, FastAPI, httpx, pyarrow.
"""

from __future__ import annotations

import csv
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from typer.testing import CliRunner

import storage
from api.cli import app as cli_app
from api.main import create_app
from api.settings import Settings

WRITE, READ = "write-token", "read-token"
RUN_NAME = 'grpo, "v2"/ü'  # a comma, quotes, a slash and a non-ASCII letter: CSV quoting and file names
STEPS = 10
ALERT_STEPS = (6, 8)
OTHER_STEPS = (0, 1, 50_000)
NOTE = 'looks real, see "step 6"\nsecond line'
#: the documented column kinds of the alerts and reviews tables (docs/results.md)
ALERT_KINDS = dict.fromkeys(("alert_id", "run_id", "step", "review_count", "rebaseline_step"), "int") | {
    **dict.fromkeys(("type", "status", "created_at", "recommendation", "decision", "reviewer", "note"), "str"),
    **dict.fromkeys(("reasons", "scalars", "top_samples"), "json"),
    "reviewed_at": "str",
    "rebaseline": "bool",
}
REVIEW_KINDS = {k: ALERT_KINDS[k] for k in ("alert_id", "step", "decision", "reviewer", "note")} | {
    "created_at": "str",
    "rebaseline": "bool",
    "rebaseline_step": "int",
}


def auth(token: str = READ) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------------- the data
def fill(database_url: str) -> tuple[int, int, list[int]]:
    """A run of STEPS processed steps (+ one pending) with observables, extra scalars, evidence and two alerts,
    the first confirmed with a note; and a second run with one step. Returns (run id, other run id, alert ids)."""
    storage.upgrade(database_url)
    engine = storage.make_engine(database_url)
    try:
        with storage.session_factory(engine)() as session:
            run, _ = storage.get_or_create_run(session, RUN_NAME, 4, {})
            other, _ = storage.get_or_create_run(session, "other", 4, {})
            for step in range(STEPS):
                storage.ingest_step(session, run.id, step, f"{step}".encode(), 8)
            for step in range(STEPS):
                row = storage.claim_next_step(session, "w")
                assert row is not None and row.step == step
                scalars = {"C": 1.0 / (step + 3), "S_dot": -0.1 * step, "D": 1e-300 * step}
                if step == 0:
                    scalars["S_dot"] = math.nan  # stored as null
                evidence = {"embedding": 0.5 * step, "embedding_lagged": 0.25 * step} if step >= 3 else None
                if step == 9:
                    evidence = {"embedding": 4.5, "reward_rise": 2.0}  # a series with a single value
                alert = None
                if step in ALERT_STEPS:
                    alert = {
                        "type": "reward_hacking" if step == 6 else "mode_collapse",
                        "scalars": scalars,
                        "reasons": [f"evidence crossed at step {step}", "C dropped"],
                        "top_samples": [{"index": 1, "div": 0.5, "text": "a, b"}],
                        "recommendation": "look at the samples",
                    }
                storage.complete_step(
                    session,
                    row,
                    scalars,
                    [],
                    alert,
                    {},
                    b"",
                    transition=None if step < 2 else step in ALERT_STEPS,
                    evidence=evidence,
                    evidence_threshold=math.log(1000.0) if evidence else None,
                )
                extra = {"true_reward": 0.5 * step, "kl": None if step % 3 == 0 else 0.01 * step}
                if step == 5:
                    extra = {}
                if step == 7:
                    extra["late_metric"] = 7.0
                session.execute(
                    update(storage.Step)
                    .where(storage.Step.run_id == run.id, storage.Step.step == step)
                    .values(extra_scalars=extra or None)
                )
                session.commit()
            for step in OTHER_STEPS:  # far apart: the HTTP source skips the gap
                storage.ingest_step(session, other.id, step, f"o{step}".encode(), 8)
                row = storage.claim_next_step(session, "w")
                assert row is not None and row.step == step
                storage.complete_step(session, row, {"C": 1.0 + step}, [], None, {}, b"")
            storage.ingest_step(session, run.id, STEPS, b"pending", 8)  # received, not processed
            alert_ids = sorted(a.id for a in storage.list_alerts(session, run_id=run.id))
            storage.review_alert(session, alert_ids[0], "acknowledged", "bob")
            storage.review_alert(session, alert_ids[0], "confirmed", "alice", NOTE)
            return run.id, other.id, alert_ids
    finally:
        engine.dispose()


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on an ephemeral loopback port, in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@dataclass
class Sidecar:
    database_url: str
    url: str
    client: TestClient
    run_id: int
    other_id: int
    alert_ids: list[int]

    def sources(self) -> dict[str, list[str]]:
        """The CLI options of each source: the live sidecar (with a write token) and its database."""
        return {"http": ["--url", self.url, "--token", WRITE], "sql": ["--database-url", self.database_url]}


@pytest.fixture
def sidecar(database_url: str) -> Iterator[Sidecar]:
    run_id, other_id, alert_ids = fill(database_url)
    app = create_app(Settings(database_url=database_url, api_tokens=[WRITE], read_tokens=[READ]), start_workers=False)
    with live_server(app) as url, TestClient(app) as client:
        yield Sidecar(database_url, url, client, run_id, other_id, alert_ids)


CLEAN_ENV = {"FPMON_URL": None, "FPMON_TOKEN": None, "FPMON_DATABASE_URL": None, "FPMON_REVIEWER": None}


def fpmon(*args: str, env: dict[str, str | None] | None = None) -> Any:
    """``fpmon ARGS`` in this process (typer's runner); the result has exit_code, stdout and stderr."""
    return CliRunner().invoke(cli_app, list(args), env={**CLEAN_ENV, **(env or {})}, catch_exceptions=False)


# -------------------------------------------------------------------------------------------- expectations
def api_steps(s: Sidecar, run_id: int | None = None) -> list[dict[str, Any]]:
    """The steps table as the API's metric rows say it is: one row per processed step, every column present."""
    body = s.client.get(
        f"/v1/runs/{run_id or s.run_id}/metrics", params={"evidence": "all", "max_points": 100_000}, headers=auth()
    ).json()
    rows = body["rows"]
    scalars = sorted({k for r in rows for k in r["scalars"]})
    extra = sorted({k for r in rows for k in r["extra"]})
    evidence = sorted({k for r in rows for k, v in r["evidence"].items() if v is not None})
    return [
        {"step": r["step"], "transition": r["transition"]}
        | {k: r["scalars"].get(k) for k in scalars}
        | {f"extra.{k}": r["extra"].get(k) for k in extra}
        | {f"evidence.{k}": r["evidence"].get(k) for k in evidence}
        for r in rows
    ]


def api_alerts(s: Sidecar, run_id: int | None = None) -> list[dict[str, Any]]:
    """The run's alerts with their reviews, by id, as ``GET /v1/alerts/{id}`` answers them."""
    listed = s.client.get("/v1/alerts", params={"run_id": run_id or s.run_id}, headers=auth()).json()["alerts"]
    return [s.client.get(f"/v1/alerts/{a['alert_id']}", headers=auth()).json() for a in sorted(listed, key=_id)]


def _id(a: dict[str, Any]) -> int:
    return int(a["alert_id"])


def alert_row(a: dict[str, Any]) -> dict[str, Any]:
    latest = a["reviews"][-1] if a["reviews"] else {}
    return {k: a[k] for k in ALERT_KINDS if k in a} | {
        "review_count": len(a["reviews"]),
        "decision": latest.get("decision"),
        "reviewer": latest.get("reviewer"),
        "note": latest.get("note"),
        "reviewed_at": latest.get("created_at"),
        "rebaseline": latest.get("rebaseline"),
        "rebaseline_step": latest.get("rebaseline_step"),
    }


def review_rows(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"alert_id": a["alert_id"], "step": a["step"], **r} for a in alerts for r in a["reviews"]]


# ----------------------------------------------------------------------------------------------- read back
def parse_cell(text: str, kind: str) -> Any:
    if text == "":
        return None
    return {
        "int": int,
        "float": float,
        "bool": {"true": True, "false": False}.__getitem__,
        "str": str,
        "json": json.loads,
    }[kind](text)


def read_csv(path: Path, kinds: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows of an exported CSV; steps columns are floats but ``step`` (int) and ``transition`` (bool)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kinds = kinds or {"step": "int", "transition": "bool"}
    return [{k: parse_cell(v, kinds.get(k, "float")) for k, v in r.items()} for r in rows]


def read_parquet(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    json_columns = {f.name for f in table.schema if (f.metadata or {}).get(b"fpmon.kind") == b"json"}
    return [
        {k: json.loads(v) if k in json_columns and v is not None else v for k, v in r.items()}
        for r in table.to_pylist()
    ]


def read_jsonl(path: Path) -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        records.setdefault(record.pop("kind"), []).append(record)
    return records


# ------------------------------------------------------------------------------------------------- tests
def test_export_round_trips_the_apis_rows(sidecar: Sidecar, tmp_path: Path) -> None:
    """Must-show: in every format, from the sidecar and from its database, the rows read back are the API's."""
    steps, alerts = api_steps(sidecar), api_alerts(sidecar)
    assert [r["step"] for r in steps] == list(range(STEPS))  # the pending step is not exported
    assert {"extra.true_reward", "extra.kl", "extra.late_metric", "evidence.reward_rise"} <= set(steps[0])
    assert steps[0]["S_dot"] is None and steps[5]["extra.true_reward"] is None and steps[7]["extra.late_metric"] == 7
    assert [a["step"] for a in alerts] == list(ALERT_STEPS) and alerts[0]["reviews"][-1]["note"] == NOTE
    alert_rows, reviews = [alert_row(a) for a in alerts], review_rows(alerts)
    assert len(reviews) == 2
    for source, options in sidecar.sources().items():
        for ref in (str(sidecar.run_id), RUN_NAME):
            out = tmp_path / source / ref.replace("/", "_")
            result = fpmon("export", ref, "--format", "csv", "--output", str(out), *options)
            assert result.exit_code == 0, result.output
            files = sorted(p.name for p in out.iterdir())
            assert files == ["grpo_v2.alerts.csv", "grpo_v2.reviews.csv", "grpo_v2.steps.csv"], files
            assert read_csv(out / "grpo_v2.steps.csv") == steps, (source, ref)
            assert read_csv(out / "grpo_v2.alerts.csv", ALERT_KINDS) == alert_rows
            assert read_csv(out / "grpo_v2.reviews.csv", REVIEW_KINDS) == reviews

        out = tmp_path / source / "parquet"
        result = fpmon("export", RUN_NAME, "--format", "parquet", "--output", str(out), *options)
        assert result.exit_code == 0, result.output
        assert read_parquet(out / "grpo_v2.steps.parquet") == steps, source
        assert read_parquet(out / "grpo_v2.alerts.parquet") == alert_rows
        assert read_parquet(out / "grpo_v2.reviews.parquet") == reviews
        meta = pq.read_schema(out / "grpo_v2.steps.parquet").metadata
        assert meta[b"fpmon.run_name"].decode() == RUN_NAME and meta[b"fpmon.table"] == b"steps"

        path = tmp_path / source / "all.jsonl"
        result = fpmon("export", str(sidecar.run_id), "--format", "jsonl", "--output", str(path), "--json", *options)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["files"][0] == {"table": "steps", "rows": STEPS, "path": str(path)}
        records = read_jsonl(path)
        run = sidecar.client.get(f"/v1/runs/{sidecar.run_id}", headers=auth()).json()
        assert records["run"] == [run]
        assert records["step"] == steps and records["alert"] == alert_rows and records["review"] == reviews

        one = tmp_path / source / "alerts-only.csv"
        result = fpmon("export", RUN_NAME, "--table", "alerts", "--output", str(one), *options)
        assert result.exit_code == 0 and read_csv(one, ALERT_KINDS) == alert_rows

    # the same bytes on stdout, from both sources
    printed = {
        source: fpmon("export", RUN_NAME, "--format", "jsonl", "--table", "steps", "--output", "-", *opts).stdout
        for source, opts in sidecar.sources().items()
    }
    assert printed["http"] == printed["sql"] and len(printed["http"].splitlines()) == 1 + STEPS


def test_http_source_reads_every_page(sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs, alerts and metric rows read in pages (here 1 run or alert, 3 step numbers at a time) lose nothing."""
    import api.results.http as http_source

    monkeypatch.setattr(http_source, "PAGE", 1)
    monkeypatch.setattr(http_source, "WINDOW", 3)
    options = sidecar.sources()["http"]
    for ref, run_id in ((RUN_NAME, sidecar.run_id), ("other", sidecar.other_id)):  # by name: the runs are paged
        path = tmp_path / f"{run_id}.jsonl"
        assert fpmon("export", ref, "--format", "jsonl", "--output", str(path), *options).exit_code == 0
        records = read_jsonl(path)
        assert records["step"] == api_steps(sidecar, run_id)
        assert [r["step"] for r in records["step"]] == (list(range(STEPS)) if ref == RUN_NAME else list(OTHER_STEPS))
        assert records.get("alert", []) == [alert_row(a) for a in api_alerts(sidecar, run_id)]
    listed = json.loads(fpmon("alerts", "--json", *options).stdout)
    assert [a["alert_id"] for a in listed] == sorted(sidecar.alert_ids, reverse=True)
    assert [r["name"] for r in json.loads(fpmon("runs", "--json", *options).stdout)] == [RUN_NAME, "other"]


def test_runs_and_alerts_list_the_apis_objects(sidecar: Sidecar) -> None:
    api_runs = sidecar.client.get("/v1/runs", headers=auth()).json()["runs"]
    api_open = sidecar.client.get(
        "/v1/alerts", params={"run_id": sidecar.run_id, "status": "open"}, headers=auth()
    ).json()["alerts"]
    assert [a["alert_id"] for a in api_open] == [sidecar.alert_ids[1]]
    for source, options in sidecar.sources().items():
        result = fpmon("runs", "--json", *options)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == api_runs, source
        table = fpmon("runs", *options).stdout
        assert RUN_NAME in table and "other" in table and f"{STEPS} / {STEPS + 1}" in table

        result = fpmon("alerts", "--run", RUN_NAME, "--status", "open", "--json", *options)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == api_open, source
        everything = json.loads(fpmon("alerts", "--json", *options).stdout)
        assert [a["alert_id"] for a in everything] == sorted(sidecar.alert_ids, reverse=True)
        assert json.loads(fpmon("alerts", "--run", str(sidecar.other_id), "--json", *options).stdout) == []
        table = fpmon("alerts", "--run", str(sidecar.run_id), *options).stdout
        assert "reward_hacking" in table and "confirmed" in table and "mode_collapse" in table
        bad = fpmon("alerts", "--status", "closed", *options)
        assert bad.exit_code == 2 and "closed" in bad.output


def test_review_changes_the_alerts_status(sidecar: Sidecar) -> None:
    target = sidecar.alert_ids[1]

    def seen() -> dict[str, Any]:
        return sidecar.client.get(f"/v1/alerts/{target}", headers=auth()).json()

    http, sql = sidecar.sources()["http"], sidecar.sources()["sql"]
    result = fpmon("review", str(target), "--dismiss", "--note", "a false alarm", "--reviewer", "carol", *http)
    assert result.exit_code == 0, result.output
    assert f"alert {target}" in result.stdout and "dismissed by carol" in result.stdout
    assert seen()["status"] == "dismissed" and seen()["reviews"][-1]["note"] == "a false alarm"

    result = fpmon("review", str(target), "--acknowledge", "--json", *sql, env={"FPMON_REVIEWER": "dave"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "acknowledged"
    latest = seen()["reviews"][-1]
    assert seen()["status"] == "acknowledged" and latest["reviewer"] == "dave" and latest["note"] is None

    result = fpmon("review", str(target), "--confirm", *http[:2], env={"FPMON_URL": None, "FPMON_TOKEN": READ})
    assert result.exit_code == 1 and "write token" in result.stderr  # a read token may not review
    for flags in ([], ["--confirm", "--dismiss"]):  # exactly one decision
        result = fpmon("review", str(target), *flags, *sql)
        assert result.exit_code == 2 and "exactly one of --confirm --dismiss --acknowledge --reopen" in result.output
    result = fpmon("review", str(target), "--confirm", "--rebaseline", *sql)
    assert result.exit_code == 1 and "rebaseline" in result.stderr
    result = fpmon("review", str(target), "--confirm", "--reviewer", " ", *http)
    assert result.exit_code == 1 and "reviewer" in result.stderr
    assert seen()["status"] == "acknowledged" and len(seen()["reviews"]) == 2  # none of those wrote anything

    result = fpmon("review", str(target), "--reopen", "--note", "a second look", *http)
    assert result.exit_code == 0, result.output
    assert seen()["status"] == "open"
    assert [r["decision"] for r in seen()["reviews"]] == ["dismissed", "acknowledged", "open"]  # history kept
    for source in (http, sql):  # an open alert cannot be re-opened: refused, nothing written
        result = fpmon("review", str(target), "--reopen", *source)
        assert result.exit_code == 1 and "already open" in result.stderr, result.output
    assert len(seen()["reviews"]) == 3


def test_bad_ids_and_sources_fail_clearly(sidecar: Sidecar, tmp_path: Path) -> None:
    before = [sidecar.client.get(f"/v1/alerts/{i}", headers=auth()).json() for i in sidecar.alert_ids]
    for source, options in sidecar.sources().items():
        result = fpmon("review", "999999", "--confirm", *options)
        assert result.exit_code == 1 and "alert 999999 does not exist" in result.stderr, (source, result.output)
        result = fpmon("review", "abc", "--confirm", *options)
        assert result.exit_code == 2
        for args in (["export", "no-such-run"], ["alerts", "--run", "no-such-run"], ["export", "424242"]):
            result = (
                fpmon(*args, "--output", str(tmp_path / "x"), *options)
                if args[0] == "export"
                else fpmon(*args, *options)
            )
            assert result.exit_code == 1, (source, args, result.output)
            assert "does not exist" in result.stderr and "fpmon runs" in result.stderr
        assert not (tmp_path / "x").exists()
    after = [sidecar.client.get(f"/v1/alerts/{i}", headers=auth()).json() for i in sidecar.alert_ids]
    assert after == before

    several = fpmon("export", RUN_NAME, "--format", "parquet", "--output", "-", *sidecar.sources()["sql"])
    assert several.exit_code == 2 and "several files cannot go to stdout" in several.output
    both = fpmon("runs", "--url", sidecar.url, "--database-url", sidecar.database_url)
    assert both.exit_code == 2 and "not both" in both.output
    unauthenticated = fpmon("runs", "--url", sidecar.url)
    assert unauthenticated.exit_code == 1 and "--token" in unauthenticated.stderr
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    unreachable = fpmon("runs", "--url", f"http://127.0.0.1:{port}")
    assert unreachable.exit_code == 1 and "cannot reach the sidecar" in unreachable.stderr
    # the environment names the source when no option does; FPMON_URL beats FPMON_DATABASE_URL
    env = {"FPMON_URL": sidecar.url, "FPMON_TOKEN": READ, "FPMON_DATABASE_URL": "sqlite:////nonexistent/x.db"}
    assert json.loads(fpmon("runs", "--json", env=env).stdout)[0]["name"] == RUN_NAME
    env = {"FPMON_DATABASE_URL": sidecar.database_url}
    assert json.loads(fpmon("runs", "--json", env=env).stdout)[0]["name"] == RUN_NAME


def test_missing_default_database_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fpmon("runs")
    assert result.exit_code == 1 and "no database at ./fpmon.db" in result.stderr and "--url" in result.stderr
    assert not (tmp_path / "fpmon.db").exists()
    outdated = tmp_path / "old.db"
    storage.upgrade(f"sqlite:///{outdated}", "0004")
    result = fpmon("runs", "--database-url", f"sqlite:///{outdated}")
    assert result.exit_code == 1 and "fpmon db upgrade" in result.stderr


def test_rest_export_downloads_the_clis_files(
    sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, run_id = sidecar.client, sidecar.run_id
    assert fpmon("export", str(run_id), "--output", str(tmp_path), *sidecar.sources()["sql"]).exit_code == 0
    answer = client.get(f"/v1/runs/{run_id}/export", params={"format": "csv"}, headers=auth())
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == 'attachment; filename="grpo_v2.steps.csv"'
    assert answer.content == (tmp_path / "grpo_v2.steps.csv").read_bytes()
    for table in ("alerts", "reviews"):
        answer = client.get(f"/v1/runs/{run_id}/export", params={"format": "csv", "table": table}, headers=auth())
        assert answer.content == (tmp_path / f"grpo_v2.{table}.csv").read_bytes()
        assert answer.headers["content-disposition"] == f'attachment; filename="grpo_v2.{table}.csv"'

    answer = client.get(f"/v1/runs/{run_id}/export", params={"format": "parquet", "table": "steps"}, headers=auth())
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/vnd.apache.parquet"
    (tmp_path / "down.parquet").write_bytes(answer.content)
    assert read_parquet(tmp_path / "down.parquet") == api_steps(sidecar)

    answer = client.get(f"/v1/runs/{run_id}/export", params={"format": "jsonl"}, headers=auth())
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/x-ndjson")
    assert answer.headers["content-disposition"] == 'attachment; filename="grpo_v2.jsonl"'
    (tmp_path / "down.jsonl").write_bytes(answer.content)
    records = read_jsonl(tmp_path / "down.jsonl")
    assert records["step"] == api_steps(sidecar) and records["alert"] == [alert_row(a) for a in api_alerts(sidecar)]

    def problem(params: dict[str, str], status: int, path: str = f"/v1/runs/{run_id}/export", **kw: Any) -> str:
        answer = client.get(path, params=params, **kw)
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        return str(answer.json()["detail"])

    assert "does not exist" in problem({"format": "csv"}, 404, "/v1/runs/424242/export", headers=auth())
    problem({"format": "xlsx"}, 422, headers=auth())
    problem({"format": "csv", "table": "samples"}, 422, headers=auth())
    assert "format=jsonl" in problem({"format": "parquet", "table": "all"}, 422, headers=auth())
    problem({"format": "csv"}, 401)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # a server without pyarrow
    assert "pip install 'fpmon[parquet]'" in problem({"format": "parquet"}, 501, headers=auth())
    result = fpmon(
        "export", str(run_id), "--format", "parquet", "--output", str(tmp_path / "p"), *sidecar.sources()["sql"]
    )
    assert result.exit_code == 1 and "pip install 'fpmon[parquet]'" in result.stderr
    assert not (tmp_path / "p").exists()


def test_the_cli_module_imports_no_heavy_package() -> None:
    """``fpmon --help`` imports the CLI only: none of torch, SQLAlchemy, FastAPI, httpx, pyarrow."""
    heavy = ("torch", "sqlalchemy", "fastapi", "httpx", "pyarrow")
    code = f"import sys, api.cli; print([m for m in {heavy!r} if m in sys.modules])"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "api.cli", "--help"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    for command in ("runs", "alerts", "review", "export"):
        assert command in help_text


def test_http_source_names_what_went_wrong() -> None:
    """A server that is not a sidecar, or a sidecar's 5xx: a ResultsError saying so, not a traceback."""
    import httpx

    from api.results.backend import ResultsError
    from api.results.http import HttpResults

    def source(response: httpx.Response) -> HttpResults:
        return HttpResults("http://example.test", transport=httpx.MockTransport(lambda request: response))

    with pytest.raises(ResultsError, match="other than JSON: is it an fpmon sidecar"):
        source(httpx.Response(200, text="<html>hello</html>")).list_runs(10)
    problem = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "database is down"}
    with pytest.raises(ResultsError, match="HTTP 503: database is down") as caught:
        source(httpx.Response(503, json=problem)).find_run("7")
    assert caught.value.kind == "unavailable"
