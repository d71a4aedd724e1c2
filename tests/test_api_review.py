"""The review page's API: alert context, run status / open alerts, transition flags, map coordinates,
prompts, the static page; on SQLite and PostgreSQL (in-process app, worker drained synchronously)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import torch
from api_helpers import step_payload
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text, update

import storage
from api.main import create_app
from api.routes.review import spread
from api.settings import Settings
from monitor.processing import StepProcessor
from monitor.rlhf import RLHFMonitor
from monitor.stepfile import StepPayload, decode_step, encode_step
from storage.types import utcnow

WRITE, READ = "write-token", "read-token"
OCTET = {"Content-Type": "application/octet-stream"}
STEPS, ONSET, K = 32, 25, 8


def auth(token: str = WRITE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payload_with_prompts(step: int) -> bytes:
    """api_helpers.step_payload (30 % of the batch jumps to a rewarded cluster from ONSET) plus prompts."""
    p = decode_step(step_payload(step, onset=ONSET))
    prompts = [f"prompt {step}/{i % 7}" for i in range(p.latents.shape[0])]
    return encode_step(
        StepPayload(
            step=p.step,
            latents=p.latents,
            rewards=p.rewards,
            texts=p.texts,
            sample_ids=p.sample_ids,
            prompts=prompts,
            lr=p.lr,
        )
    )


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [payload_with_prompts(s) for s in range(STEPS)]


@pytest.fixture
def filled(database_url: str, payloads: list[bytes]) -> Iterator[tuple[TestClient, int]]:
    """An app with one run of STEPS processed steps (alerts after ONSET)."""
    storage.upgrade(database_url)
    settings = Settings(database_url=database_url, api_tokens=[WRITE], read_tokens=[READ], live_window_s=60)
    app = create_app(settings, start_workers=False)
    processor = StepProcessor(app.state.services.sessions, torch.device("cpu"), claim_stale_s=60)
    with TestClient(app) as client:
        resp = client.post("/v1/runs", json={"name": "review", "latent_dim": 32}, headers=auth())
        run_id = int(resp.json()["run_id"])
        for body in payloads:
            assert client.post(f"/v1/runs/{run_id}/steps", content=body, headers={**OCTET, **auth()}).status_code == 202
        while processor.process_one():
            pass
        yield client, run_id


@pytest.fixture(scope="module")
def reference_run(payloads: list[bytes]) -> tuple[RLHFMonitor, dict[int, bool | None]]:
    return in_process(payloads)


def in_process(payloads: list[bytes]) -> tuple[RLHFMonitor, dict[int, bool | None]]:
    """An uninterrupted in-process monitor over the payloads, and its detector verdict per step."""
    monitor = RLHFMonitor()
    flags: dict[int, bool | None] = {}
    for body in payloads:
        p = decode_step(body)
        rep = monitor.observe(p.step, p.latents, rewards=p.rewards, texts=p.texts, lr=p.lr, sample_ids=p.sample_ids)
        flags[p.step] = rep.detection.flagged if rep.detection is not None else None
    return monitor, flags


def test_alert_context_lists_map_and_reference(
    filled: tuple[TestClient, int], payloads: list[bytes], reference_run: tuple[RLHFMonitor, dict[int, bool | None]]
) -> None:
    client, run_id = filled
    alerts = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"]
    assert alerts, "the cluster at ONSET must raise an alert"
    alert = alerts[-1]
    resp = client.get(f"/v1/alerts/{alert['alert_id']}/context", params={"k": K}, headers=auth(READ))
    assert resp.status_code == 200, resp.text
    ctx = resp.json()
    n = decode_step(payloads[alert["step"]]).latents.shape[0]
    assert ctx["alert"]["alert_id"] == alert["alert_id"] and ctx["k"] == K and ctx["n"] == n
    assert ctx["step_scalars"]["C"] == pytest.approx(alert["scalars"]["C"], rel=1e-12)

    # flagged: the responses the alert lists (by the evidence they carry), in its order; typical: the step's
    # smallest witness scores, none of them flagged
    assert [s["index"] for s in ctx["flagged"]] == [s["index"] for s in alert["top_samples"]][:K]
    assert [s["witness"] for s in ctx["flagged"]] == pytest.approx([s["witness"] for s in alert["top_samples"]][:K])
    typical = [s["witness"] for s in ctx["typical"]]
    assert len(typical) == K and typical == sorted(typical)
    assert not {s["index"] for s in ctx["typical"]} & {s["index"] for s in ctx["flagged"]}
    assert max(typical) < min(s["witness"] for s in ctx["flagged"])
    assert all(s["prompt"] == f"prompt {alert['step']}/{s['index'] % 7}" for s in ctx["flagged"] + ctx["typical"])

    # reference: the run's first processed step, k samples spread evenly by index, no δ at the first step
    assert ctx["reference_step"] == 0
    assert [s["index"] for s in ctx["reference"]] == spread(n, K) == [i * (n - 1) // (K - 1) for i in range(K)]
    assert all(s["text"] == f"step 0 answer {s['index']}" and s["div"] is None for s in ctx["reference"])

    # the map: every sample once, flagged marked, coordinates = the run's frozen projection (first two axes)
    points = ctx["points"]
    assert [p["index"] for p in points] == list(range(n))
    assert all(p["text"] == f"step {alert['step']} answer {p['index']}" for p in points)
    assert {p["index"] for p in points if p["flagged"]} == {s["index"] for s in ctx["flagged"]}
    assert len(ctx["reference_points"]) == n
    monitor, _ = reference_run
    assert monitor.projection is not None
    want = monitor.projection.transform(decode_step(payloads[alert["step"]]).latents)[:, :2].double()
    got = torch.tensor([[p["x"], p["y"]] for p in points], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 projection on both sides
    want_ref = monitor.projection.transform(decode_step(payloads[0]).latents)[:, :2].double()
    got_ref = torch.tensor([[p["x"], p["y"]] for p in ctx["reference_points"]], dtype=torch.float64)
    torch.testing.assert_close(got_ref, want_ref, rtol=1e-4, atol=1e-4)

    # bounded: at most max_points per step, the flagged ones always kept
    small = client.get(f"/v1/alerts/{alert['alert_id']}/context", params={"max_points": 16}, headers=auth(READ))
    capped = small.json()
    assert len(capped["points"]) <= 16 and len(capped["reference_points"]) == 16
    assert {p["index"] for p in capped["points"] if p["flagged"]} == {s["index"] for s in capped["flagged"]}


def test_transition_flags_and_context_errors(
    filled: tuple[TestClient, int], reference_run: tuple[RLHFMonitor, dict[int, bool | None]]
) -> None:
    client, run_id = filled
    rows = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "C"}, headers=auth(READ)).json()["rows"]
    _, flags = reference_run
    assert {r["step"]: r["transition"] for r in rows} == flags
    assert any(flags[s] for s in range(ONSET, STEPS)) and not any(flags[s] for s in range(ONSET))
    alert = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"][-1]
    ctx = client.get(f"/v1/alerts/{alert['alert_id']}/context", headers=auth(READ)).json()
    assert ctx["transition"] is flags[alert["step"]]


def test_runs_carry_open_alerts_and_live_status(filled: tuple[TestClient, int]) -> None:
    client, run_id = filled
    alerts = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"]
    run = client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()
    assert run["open_alerts"] == len(alerts) >= 1 and run["status"] == "live"
    empty = client.post("/v1/runs", json={"name": "empty", "latent_dim": 4}, headers=auth()).json()
    assert empty["open_alerts"] == 0 and empty["status"] == "idle"  # no step received yet

    # a read token cannot review (403, nothing written); a write token can, and the alert leaves the count
    first = alerts[0]["alert_id"]
    body = {"decision": "dismissed", "reviewer": "ana", "note": "benign"}
    sessions = client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        before = storage.counts(session)
    denied = client.post(f"/v1/alerts/{first}/review", json=body, headers=auth(READ))
    assert denied.status_code == 403 and "read-only" in denied.json()["detail"]
    with sessions() as session:
        assert storage.counts(session) == before
    assert client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()["open_alerts"] == len(alerts)
    assert client.post(f"/v1/alerts/{first}/review", json=body, headers=auth()).status_code == 200
    listed = {r["run_id"]: r for r in client.get("/v1/runs", headers=auth(READ)).json()["runs"]}
    assert listed[run_id]["open_alerts"] == len(alerts) - 1 and listed[empty["run_id"]]["open_alerts"] == 0

    # idle once the last step is older than live_window_s (60 s here)
    with sessions() as session:
        session.execute(
            update(storage.Run).where(storage.Run.id == run_id).values(last_step_at=utcnow() - timedelta(seconds=61))
        )
        session.commit()
    assert client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()["status"] == "idle"

    # errors and auth of the context route
    missing = client.get("/v1/alerts/999999/context", headers=auth(READ))
    assert missing.status_code == 404 and missing.json()["detail"] == "alert 999999 does not exist"
    alert_id = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"][0]["alert_id"]
    assert client.get(f"/v1/alerts/{alert_id}/context").status_code == 401
    assert client.get(f"/v1/alerts/{alert_id}/context", headers=auth("nope")).status_code == 401
    assert client.get(f"/v1/alerts/{alert_id}/context", params={"k": 0}, headers=auth(READ)).status_code == 422
    assert client.get(f"/v1/alerts/{alert_id}/context", params={"k": 101}, headers=auth(READ)).status_code == 422


def test_static_page_needs_no_token_and_a_missing_folder_says_where(database_url: str, tmp_path: Path) -> None:
    storage.upgrade(database_url)
    settings = Settings(database_url=database_url, api_tokens=[WRITE])
    with TestClient(create_app(settings, start_workers=False)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "review/app.js" in page.text and not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no CDN
        for path in ("/review/app.js", "/review/app.css", "/review/vendor/uPlot.iife.min.js"):
            assert client.get(path).status_code == 200, path
        assert client.get("/review/nothing.js").status_code == 404
        assert client.get("/v1/runs").status_code == 401  # the data keeps its auth
    empty = tmp_path / "no-page"
    with TestClient(create_app(settings.model_copy(update={"review_dir": empty}), start_workers=False)) as client:
        resp = client.get("/")
        assert resp.status_code == 404 and str(empty / "index.html") in resp.text and "FPMON_REVIEW_DIR" in resp.text


def test_migration_0002_adds_nullable_columns_to_existing_rows(database_url: str) -> None:
    engine = storage.make_engine(database_url)
    try:
        assert storage.upgrade(engine, "0001_initial") == "0001_initial"
        with engine.begin() as conn:  # a row as 0001 wrote it (today's ORM knows columns 0001 lacks)
            conn.execute(
                text("INSERT INTO runs (name, latent_dim, config, created_at) VALUES ('old', 4, '{}', :now)"),
                {"now": datetime.now(UTC)},
            )
        assert storage.upgrade(engine, "0002_review_page") == "0002_review_page"
        columns = {c["name"]: c for c in inspect(engine).get_columns("step_samples")}
        assert {"x", "y", "prompt"} <= set(columns) and all(columns[c]["nullable"] for c in ("x", "y", "prompt"))
        assert inspect(engine).get_columns("steps")[-1]["name"] == "transition"
        assert storage.upgrade(engine) == storage.head_revision()  # and on to head, with the row
        with storage.session_factory(engine)() as session:
            assert storage.get_run_by_name(session, "old") is not None
    finally:
        engine.dispose()


def test_spread_is_even_and_bounded() -> None:
    assert spread(5, 8) == [0, 1, 2, 3, 4]
    assert spread(100, 1) == [0]
    picked = spread(1000, 7)
    assert picked[0] == 0 and picked[-1] == 999 and len(picked) == 7
    gaps = [b - a for a, b in itertools.pairwise(picked)]
    assert max(gaps) - min(gaps) <= 1


def test_step_context_of_any_processed_step(filled: tuple[TestClient, int], payloads: list[bytes]) -> None:
    """GET /v1/runs/{id}/steps/{step}/context: any processed step, the alert context's content (one shared
    function); 404 for an unknown run or a step never received, 409 for a step not processed yet."""
    client, run_id = filled
    step = ONSET - 3  # before the change: no alert there
    resp = client.get(f"/v1/runs/{run_id}/steps/{step}/context", params={"k": K}, headers=auth(READ))
    assert resp.status_code == 200, resp.text
    ctx = resp.json()
    n = decode_step(payloads[step]).latents.shape[0]
    assert (ctx["run_id"], ctx["step"], ctx["n"], ctx["k"]) == (run_id, step, n, K)
    assert (ctx["prev_step"], ctx["next_step"], ctx["alert_ids"]) == (step - 1, step + 1, [])
    assert ctx["extra"] == {} and ctx["step_scalars"]["C"] is not None
    # flagged: the step's largest witness scores, largest first; typical: the smallest, none of them flagged
    flagged = [s["witness"] for s in ctx["flagged"]]
    assert len(flagged) == K and flagged == sorted(flagged, reverse=True)
    typical = [s["witness"] for s in ctx["typical"]]
    assert len(typical) == K and typical == sorted(typical) and max(typical) < min(flagged)
    assert ctx["reference_step"] == 0 and [s["index"] for s in ctx["reference"]] == spread(n, K)
    assert [p["index"] for p in ctx["points"]] == list(range(n))
    assert {p["index"] for p in ctx["points"] if p["flagged"]} == {s["index"] for s in ctx["flagged"]}

    # the alert's step: the same content as the alert's context, bar the flagged list the alert leads
    alert = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"][-1]
    at = client.get(f"/v1/runs/{run_id}/steps/{alert['step']}/context", headers=auth(READ)).json()
    of_alert = client.get(f"/v1/alerts/{alert['alert_id']}/context", headers=auth(READ)).json()
    assert alert["alert_id"] in at["alert_ids"]
    for key in ("step_scalars", "transition", "reference_step", "reference", "n", "reference_points", "prev_step"):
        assert at[key] == of_alert[key], key
    assert of_alert["step"] == alert["step"] and of_alert["run_id"] == run_id
    # the ends of the run: no step before the first, none after the last
    first = client.get(f"/v1/runs/{run_id}/steps/0/context", headers=auth(READ)).json()
    last = client.get(f"/v1/runs/{run_id}/steps/{STEPS - 1}/context", headers=auth(READ)).json()
    assert first["prev_step"] is None and first["next_step"] == 1 and last["next_step"] is None

    # errors: unknown run, a step never received, a step received but not processed, bad input, no token
    unknown = client.get("/v1/runs/999999/steps/0/context", headers=auth(READ))
    assert unknown.status_code == 404 and "run 999999 does not exist" in unknown.json()["detail"]
    never = client.get(f"/v1/runs/{run_id}/steps/{STEPS + 5}/context", headers=auth(READ))
    assert never.status_code == 404 and "was not received" in never.json()["detail"]
    body = payload_with_prompts(STEPS)
    assert client.post(f"/v1/runs/{run_id}/steps", content=body, headers={**OCTET, **auth()}).status_code == 202
    pending = client.get(f"/v1/runs/{run_id}/steps/{STEPS}/context", headers=auth(READ))
    assert pending.status_code == 409 and "pending, not processed yet" in pending.json()["detail"]
    assert client.get(f"/v1/runs/{run_id}/steps/-1/context", headers=auth(READ)).status_code == 422
    assert client.get(f"/v1/runs/{run_id}/steps/{step}/context", params={"k": 0}, headers=auth(READ)).status_code == 422
    assert client.get(f"/v1/runs/{run_id}/steps/{step}/context").status_code == 401


def test_verdicts_and_reopening(filled: tuple[TestClient, int]) -> None:
    """RunOut.verdict by precedence (confirmed > open > dismissed > none) with the counts per status; re-open
    (decision open) keeps the history and withdraws a pending re-baseline; bad reviews change nothing."""
    client, run_id = filled
    alerts = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"]
    assert len(alerts) >= 1
    ids = [a["alert_id"] for a in alerts]

    def run() -> dict:
        return client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()

    def review(alert_id: int, **body: object) -> httpx.Response:
        return client.post(f"/v1/alerts/{alert_id}/review", json={"reviewer": "ana", **body}, headers=auth())

    assert run()["verdict"] == "open"
    assert run()["alert_counts"] == {"open": len(ids), "acknowledged": 0, "confirmed": 0, "dismissed": 0}
    empty = client.post("/v1/runs", json={"name": "quiet", "latent_dim": 4}, headers=auth()).json()
    assert empty["verdict"] == "none" and empty["alert_counts"] == dict.fromkeys(storage.ALERT_STATUSES, 0)

    # bad input: 4xx and nothing changes (re-opening an open alert, re-open with a re-baseline, unknown decision)
    sessions = client.app.state.services.sessions  # type: ignore[attr-defined]
    with sessions() as session:
        before = storage.counts(session)
    again = review(ids[0], decision="open")
    assert again.status_code == 409 and "already open" in again.json()["detail"]
    assert review(ids[0], decision="open", rebaseline=True).status_code == 422
    assert review(ids[0], decision="reopen").status_code == 422
    assert review(999999, decision="open").status_code == 404
    with sessions() as session:
        assert storage.counts(session) == before
        assert storage.list_reviews(session, ids[0]) == []

    # acknowledged is not a decision yet: still open; one confirmed alert makes the run's verdict confirmed
    assert review(ids[0], decision="acknowledged").json()["status"] == "acknowledged"
    assert run()["verdict"] == "open" and run()["alert_counts"]["acknowledged"] == 1
    assert review(ids[0], decision="confirmed").json()["status"] == "confirmed"
    assert run()["verdict"] == "confirmed"
    listed = {r["run_id"]: r for r in client.get("/v1/runs", headers=auth(READ)).json()["runs"]}
    assert listed[run_id]["verdict"] == "confirmed" and listed[empty["run_id"]]["verdict"] == "none"

    # re-open: back to open, the history keeps both decisions
    reopened = review(ids[0], decision="open", note="confirmed too fast")
    assert reopened.status_code == 200 and reopened.json()["status"] == "open"
    assert [(r["decision"], r["note"]) for r in reopened.json()["reviews"]] == [
        ("acknowledged", None),
        ("confirmed", None),
        ("open", "confirmed too fast"),
    ]
    assert run()["verdict"] == "open"

    # every alert dismissed: the run's verdict is dismissed; a re-open withdraws its pending re-baseline
    for alert_id in ids:
        assert review(alert_id, decision="dismissed", rebaseline=alert_id == ids[0]).status_code == 200
    assert run()["verdict"] == "dismissed" and run()["rebaseline_pending"] is True
    assert review(ids[0], decision="open").status_code == 200
    assert run()["verdict"] == "open" and run()["rebaseline_pending"] is False


def test_every_observable_has_a_chart_title_unit_and_meaning() -> None:
    """The page's chart catalogue (api/page/series.js) names every scalar the monitor computes, with a title, a
    value-axis unit and what a rise means: a new observable without them fails here, not silently on the page."""
    from monitor.fpe import SCALAR_NAMES

    source = (Path(__file__).resolve().parent.parent / "api" / "page" / "series.js").read_text(encoding="utf-8")
    block = source[source.index("export const OBSERVABLES = {") : source.index("\n};", source.index("OBSERVABLES"))]
    entries = dict(re.findall(r"\n  (\w+): \{(.*?)\n  \},", block, flags=re.S))
    assert set(SCALAR_NAMES) <= set(entries), set(SCALAR_NAMES) - set(entries)
    for name in SCALAR_NAMES:
        for field in ("title:", "unit:", "rise:"):
            assert field in entries[name], (name, field)
    assert 'const LATENT = "whitened latent units"' in source and "${LATENT}" in entries["W2_ref"]
    assert "nats" in entries["S_dot"]
