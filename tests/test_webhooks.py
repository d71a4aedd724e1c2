"""Webhook notifications: the outbox (written with the alert, leased, retried, given up), the notifier against
a real HTTP receiver on loopback (every alert exactly once across a sidecar restart and a receiver outage),
signatures, the Slack body, the settings' checks, and one alert raised by the sidecar's own worker."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import ServerProcess, step_payload
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import storage
from api.main import create_app
from api.settings import Settings
from api.webhooks import delivery_headers, slack_body, target_id, verify_signature
from storage import (
    Delivery,
    RetryPolicy,
    claim_deliveries,
    claim_next_step,
    complete_step,
    get_or_create_run,
    ingest_step,
    list_deliveries,
    make_engine,
    mark_delivered,
    outbox_counts,
    retry_delivery,
    session_factory,
)
from storage.models import WebhookDelivery

SECRET = "s3cret-for-tests"
ALERT = {
    "type": "PHASE_TRANSITION",
    "scalars": {"C": 0.1},
    "reasons": ["C fell below its floor"],
    "top_samples": [
        {"index": i, "div": -2.0, "sample_id": f"s{i}", "text": f"answer {i}", "reward": 1.0} for i in range(5)
    ],
    "recommendation": "review the flagged samples",
}


# ---------------------------------------------------------------------------------------------- helpers
class Receiver:
    """A real HTTP server on loopback that records every request and answers ``status`` (settable)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.port = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        """Listen (again, on the same port once it had one)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.status
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers.items()), "body": body, "status": status}
                    )
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        """Close the port (connections are refused until :meth:`start`)."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def taken(self) -> list[dict[str, Any]]:
        """The requests answered 2xx (the receiver took them)."""
        with self.lock:
            return [r for r in self.requests if 200 <= r["status"] < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    if r.server is not None:
        r.stop()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    storage.upgrade(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.02)


def raise_alert(session: Session, run_id: int, step: int, targets: list[str], alert: dict | None = None) -> int:
    """Ingest, claim and complete one step of ``run_id`` with an alert queued for ``targets``; its id."""
    assert ingest_step(session, run_id, step, f"{run_id}:{step}".encode(), 1) == "queued"
    row = claim_next_step(session, "w")
    assert row is not None and row.step == step
    complete_step(
        session, row, {"C": 0.1}, [], {**ALERT, "step": step, **(alert or {})}, {}, b"", notify_targets=targets
    )
    return max(a.id for a in storage.list_alerts(session, run_id=run_id))


def rows(session: Session) -> list[WebhookDelivery]:
    return list_deliveries(session, limit=1000)


def fast_settings(database_url: str, urls: list[str], **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        webhook_urls=urls,
        webhook_secret=SECRET,
        webhook_backoff_s=0.05,
        webhook_backoff_max_s=0.2,
        webhook_poll_s=0.02,
        webhook_max_attempts=10_000,
        public_url="https://fpmon.example/",
        **extra,
    )


def recomputed_signature(secret: str, request: dict[str, Any]) -> str:
    """What docs/sidecar.md tells a receiver to compute, written out independently of api.webhooks."""
    signed = request["headers"]["X-Fpmon-Timestamp"].encode() + b"." + request["body"]
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------- the outbox
def test_outbox_rows_are_written_with_the_alert_and_only_with_it(engine: Engine) -> None:
    with session_factory(engine)() as s:
        run, _ = get_or_create_run(s, "r", 4)
        alert_id = raise_alert(s, run.id, 0, ["wh_a", "wh_b", "wh_a"])
        assert sorted((r.alert_id, r.target, r.status, r.attempts) for r in rows(s)) == [
            (alert_id, "wh_a", "pending", 0),
            (alert_id, "wh_b", "pending", 0),
        ]
        # a step without an alert queues nothing, even with targets
        assert ingest_step(s, run.id, 1, b"1", 1) == "queued"
        row = claim_next_step(s, "w")
        assert row is not None
        complete_step(s, row, {"C": 1.0}, [], None, {}, b"", notify_targets=["wh_a"])
        # an alert that cannot be stored takes its notifications with it (one transaction), and a bad
        # target id is refused before anything is written
        assert ingest_step(s, run.id, 2, b"2", 1) == "queued"
        row = claim_next_step(s, "w")
        assert row is not None
        before = storage.counts(s)
        with pytest.raises(TypeError):
            complete_step(s, row, {}, [], {**ALERT, "scalars": {"C": object()}}, {}, b"", notify_targets=["wh_a"])
        with pytest.raises(ValueError, match="target id"):
            complete_step(s, row, {}, [], ALERT, {}, b"", notify_targets=["x" * 65])
        assert storage.counts(s) == before
        assert outbox_counts(s) == {"pending": 2, "delivered": 0, "failed": 0}


def test_claims_lease_fence_retry_and_give_up(engine: Engine) -> None:
    policy = RetryPolicy(max_attempts=3, base_s=0.01, max_s=0.02)
    with session_factory(engine)() as s:
        run, _ = get_or_create_run(s, "r", 4)
        alert_id = raise_alert(s, run.id, 0, ["wh_a", "wh_b"])
        # a notifier claims only the targets it knows; a leased row is nobody else's until the lease ends
        (first,) = claim_deliveries(s, "n1", ["wh_a"], lease_s=60)
        assert (first.alert_id, first.target, first.attempt, first.leased_by) == (alert_id, "wh_a", 1, "n1")
        assert claim_deliveries(s, "n2", ["wh_a"], lease_s=60) == []
        # a failed attempt: pending again, due after the backoff (not before), same id, next attempt
        assert retry_delivery(s, first, "HTTP 503: busy", policy) == "pending"
        time.sleep(0.05)  # past the longest backoff (0.02 s)
        (second,) = claim_deliveries(s, "n2", ["wh_a"], lease_s=0.01)
        assert (second.id, second.attempt, second.leased_by) == (first.id, 2, "n2")
        assert not mark_delivered(s, first)  # an old attempt's outcome is fenced off
        # n2's lease runs out (it died mid-delivery): n3 takes the row, and n2's late outcome is refused
        time.sleep(0.05)
        (third,) = claim_deliveries(s, "n3", ["wh_a"], lease_s=0.01)
        assert (third.id, third.attempt) == (first.id, 3)
        assert retry_delivery(s, second, "late", policy) is None and not mark_delivered(s, second)
        # the lease of the last allowed attempt ran out too: the next claim gives the row up
        time.sleep(0.05)
        assert claim_deliveries(s, "n4", ["wh_a"], lease_s=60, max_attempts=3) == []
        (gone,) = list_deliveries(s, status="failed")
        assert gone.id == first.id and gone.attempts == 3 and "never reported" in (gone.last_error or "")
        # the other target: delivered on the first attempt, then never claimed again
        (other,) = claim_deliveries(s, "n1", ["wh_a", "wh_b"], lease_s=60)
        assert other.target == "wh_b" and mark_delivered(s, other)
        assert outbox_counts(s) == {"pending": 0, "delivered": 1, "failed": 1}
        assert claim_deliveries(s, "n1", ["wh_a", "wh_b"], lease_s=0.01) == []


def test_a_failed_last_attempt_marks_the_row_failed_with_its_error(engine: Engine) -> None:
    policy = RetryPolicy(max_attempts=2, base_s=0.01, max_s=0.01)
    with session_factory(engine)() as s:
        run, _ = get_or_create_run(s, "r", 4)
        raise_alert(s, run.id, 0, ["wh_a"])
        (d,) = claim_deliveries(s, "n", ["wh_a"], lease_s=60)
        assert retry_delivery(s, d, "ConnectError: refused", policy) == "pending"
        time.sleep(0.03)
        (d,) = claim_deliveries(s, "n", ["wh_a"], lease_s=60)
        assert retry_delivery(s, d, "HTTP 500: " + "x" * 5000, policy) == "failed"
        (row,) = rows(s)
        assert row.status == "failed" and row.attempts == 2 and (row.last_error or "").startswith("HTTP 500: x")
        assert len(row.last_error or "") <= storage.outbox.MAX_ERROR_CHARS


def test_concurrent_notifiers_claim_disjoint_rows(engine: Engine) -> None:
    """Four notifiers claim at once (SKIP LOCKED on PostgreSQL, the write lock on SQLite): each row once."""
    sessions = session_factory(engine)
    with sessions() as s:
        run, _ = get_or_create_run(s, "r", 4)
        for step in range(8):
            raise_alert(s, run.id, step, ["wh_a", "wh_b", "wh_c"])
    claimed: list[Delivery] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def notifier(name: str) -> None:
        try:
            with sessions() as session:
                while batch := claim_deliveries(session, name, ["wh_a", "wh_b", "wh_c"], lease_s=60, limit=2):
                    with lock:
                        claimed.extend(batch)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=notifier, args=(f"n{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(claimed) == 24 and len({d.id for d in claimed}) == 24
    assert all(d.attempt == 1 for d in claimed)


def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=2.0, max_s=30.0)
    rng = random.Random(0)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 30.0), (50, 30.0), (10_000, 30.0)]:
        draws = [policy.delay_s(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > ceiling / 10  # jittered, not one fixed delay
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="base_s <= max_s"):
        RetryPolicy(base_s=10.0, max_s=1.0)


# ---------------------------------------------------------------------------------------------- the notifier
def test_every_alert_is_received_exactly_once_across_a_sidecar_restart_and_a_receiver_outage(
    database_url: str, receiver: Receiver
) -> None:
    """The receiver answers 503, then is down (port closed) while alerts are raised; the sidecar stops and a new
    one starts on the same database; then the receiver is back: each alert is taken exactly once, signed."""
    storage.upgrade(database_url)
    settings = fast_settings(database_url, [receiver.url()])
    (target,) = settings.webhook_targets()
    engine = make_engine(database_url)
    sessions = session_factory(engine)

    def outbox() -> list[WebhookDelivery]:
        with sessions() as s:
            return rows(s)

    receiver.status = 503
    alert_ids: list[int] = []
    with TestClient(create_app(settings, start_workers=False)):
        with sessions() as s:
            run, _ = get_or_create_run(s, "restart", 4)
            alert_ids += [raise_alert(s, run.id, step, [target.id]) for step in range(3)]
        wait_for(lambda: len(outbox()) == 3 and all(r.attempts >= 2 for r in outbox()), "retries of the 503s")
        receiver.stop()  # the receiver's port is closed now
        with sessions() as s:
            alert_ids += [raise_alert(s, run.id, step, [target.id]) for step in (3, 4)]
        wait_for(
            lambda: all(r.attempts >= 1 and "Connect" in (r.last_error or "") for r in outbox()[3:]),
            "attempts against the closed port",
        )
    # the sidecar is gone: nothing was taken, nothing is lost
    assert receiver.taken() == [] and {r.status for r in outbox()} == {"pending"} and len(outbox()) == 5
    assert {int(r["headers"]["X-Fpmon-Delivery"]) for r in receiver.requests} <= {r.id for r in outbox()}

    receiver.status = 200
    receiver.start()  # same port
    app = create_app(settings, start_workers=False)  # the restarted sidecar
    with TestClient(app) as client:
        wait_for(lambda: all(r.status == "delivered" for r in outbox()), "every notification delivered")
        metrics = client.get("/metrics").text
    taken = receiver.taken()
    bodies = [json.loads(r["body"]) for r in taken]
    assert sorted(b["alert_id"] for b in bodies) == sorted(alert_ids)  # every alert, exactly once
    by_alert = {r.alert_id: r.id for r in outbox()}
    for request, body in zip(taken, bodies, strict=True):
        headers = request["headers"]
        assert headers["X-Fpmon-Signature"] == recomputed_signature(SECRET, request)
        assert int(headers["X-Fpmon-Delivery"]) == body["delivery_id"] == by_alert[body["alert_id"]]
        assert body["url"] == f"https://fpmon.example/#/alerts/{body['alert_id']}"
        assert body["run_name"] == "restart" and body["type"] == "PHASE_TRANSITION"
        assert [s["text"] for s in body["top_samples"]] == ["answer 0", "answer 1", "answer 2"]
    # retries of one notification carried its one id (what lets a receiver drop duplicates)
    ids_per_alert: dict[int, set[int]] = {}
    for request in receiver.requests:
        alert_id = json.loads(request["body"])["alert_id"]
        ids_per_alert.setdefault(alert_id, set()).add(int(request["headers"]["X-Fpmon-Delivery"]))
    assert all(len(ids) == 1 for ids in ids_per_alert.values())
    refused = {json.loads(r["body"])["alert_id"] for r in receiver.requests if r["status"] == 503}
    assert refused == set(alert_ids[:3])  # the outage did refuse the first three
    assert 'fpmon_webhook_outbox{status="delivered"} 5.0' in metrics
    assert 'fpmon_webhook_attempts_total{outcome="delivered"} 5.0' in metrics
    engine.dispose()


def test_the_signature_scheme_verifies_and_refuses_tampering_and_replays() -> None:
    delivery = Delivery(id=42, alert_id=7, target="wh_x", attempt=3, leased_by="n", created_at=datetime.now(UTC))
    body = b'{"alert_id":7}'
    headers = delivery_headers(delivery, body, SECRET, now=1_900_000_000)
    assert headers["X-Fpmon-Delivery"] == "42" and headers["X-Fpmon-Attempt"] == "3"
    assert headers["X-Fpmon-Timestamp"] == "1900000000"
    request = {"headers": headers, "body": body}
    assert headers["X-Fpmon-Signature"] == recomputed_signature(SECRET, request)
    ts, sig = headers["X-Fpmon-Timestamp"], headers["X-Fpmon-Signature"]
    assert verify_signature(SECRET, body, ts, sig, now=1_900_000_100)
    assert not verify_signature(SECRET, body + b" ", ts, sig, now=1_900_000_100)  # body changed
    assert not verify_signature("other", body, ts, sig, now=1_900_000_100)  # wrong secret
    assert not verify_signature(SECRET, body, "1900000001", sig, now=1_900_000_100)  # timestamp changed
    assert not verify_signature(SECRET, body, ts, sig, now=1_900_000_000 + 301)  # too old: a replay
    assert not verify_signature(SECRET, body, None, sig) and not verify_signature(SECRET, body, ts, None)
    assert "X-Fpmon-Signature" not in delivery_headers(delivery, body, None)  # no secret, no signature
    # the receiver's snippet in docs/sidecar.md agrees
    docs = (Path(__file__).resolve().parents[1] / "docs" / "sidecar.md").read_text()
    snippet = next(block for block in docs.split("```python")[1:] if "def verify(" in block).split("```")[0]
    scope: dict[str, Any] = {}
    exec(snippet, scope)
    fresh = delivery_headers(delivery, body, SECRET)
    assert scope["verify"](SECRET, body, fresh) and not scope["verify"](SECRET, body + b"x", fresh)
    assert not scope["verify"](SECRET, body, headers)  # the 1_900_000_000 timestamp is far from now


def test_slack_body_shape_and_escaping() -> None:
    alert = storage.Alert(
        id=9,
        run_id=2,
        step=17,
        type="REWARD_HACKING",
        status="open",
        created_at=datetime(2026, 12, 2, tzinfo=UTC),
        scalars={"C": 0.1},
        reasons=["reward up & C down"],
        top_samples=[{"index": 0, "text": "<!channel> see <http://evil|here>\nnow"}, {"index": 1, "text": None}],
        recommendation="review",
    )
    body = slack_body(alert, "grpo<7b>", "https://fpmon.example", samples=3)
    assert set(body) == {"text", "blocks"} and isinstance(body["text"], str)
    assert "REWARD_HACKING" in body["text"] and "<https://fpmon.example/#/alerts/9|review>" in body["text"]
    types = [b["type"] for b in body["blocks"]]
    assert types == ["header", "section", "section", "actions"]
    assert body["blocks"][0]["text"] == {"type": "plain_text", "text": "REWARD_HACKING at step 17"}
    run_section, samples_section = body["blocks"][1]["text"], body["blocks"][2]["text"]
    assert run_section["type"] == "mrkdwn" and "grpo&lt;7b&gt;" in run_section["text"]
    assert "reward up &amp; C down" in run_section["text"]
    # a sample's text cannot mention @channel nor add a link: Slack's control characters are escaped
    assert "&lt;!channel&gt; see &lt;http://evil|here&gt; now" in samples_section["text"]
    assert "<!channel>" not in json.dumps(body)
    (button,) = body["blocks"][3]["elements"]
    assert button["type"] == "button" and button["url"] == "https://fpmon.example/#/alerts/9"


def test_settings_refuse_bad_webhook_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FPMON_WEBHOOK_URLS", " slack:https://hooks.example/T/B/x , https://a.example/hook,")
    monkeypatch.setenv("FPMON_WEBHOOK_FORMAT", "json")
    targets = Settings().webhook_targets()
    assert [(t.format, t.url) for t in targets] == [
        ("slack", "https://hooks.example/T/B/x"),
        ("json", "https://a.example/hook"),
    ]
    assert targets[0].id == target_id("https://hooks.example/T/B/x") and "hooks" not in targets[0].id
    monkeypatch.delenv("FPMON_WEBHOOK_URLS")
    for bad, message in [
        ({"webhook_urls": ["ftp://a.example/x"]}, "FPMON_WEBHOOK_URLS entry 'ftp://a.example/x' is not an absolute"),
        ({"webhook_urls": "https://ok.example/a, hooks.example/b"}, "entry 'hooks.example/b' is not an absolute"),
        ({"webhook_urls": ["slack:not a url"]}, "entry 'not a url'"),
        ({"webhook_urls": ["http:///path-only"]}, "with a host"),
        ({"webhook_format": "xml"}, "webhook_format"),
        ({"public_url": "fpmon.example"}, "FPMON_PUBLIC_URL 'fpmon.example' is not an absolute"),
        ({"webhook_backoff_s": 10.0, "webhook_backoff_max_s": 1.0}, "must not exceed FPMON_WEBHOOK_BACKOFF_MAX_S"),
        ({"webhook_timeout_s": 0}, "webhook_timeout_s"),
    ]:
        with pytest.raises(ValidationError, match=message):
            Settings(**bad)
    assert Settings(host="::1", port=9).resolved_public_url() == "http://[::1]:9"
    # what a worker process gets (api.worker: the settings as JSON) names the same targets
    settings = Settings(webhook_urls="slack:https://a.example/x,https://b.example/y", webhook_format="slack")
    again = Settings(**settings.model_dump(mode="json"))
    assert again.webhook_targets() == settings.webhook_targets()
    assert [t.format for t in again.webhook_targets()] == ["slack", "slack"]


def test_an_alert_raised_by_the_sidecars_worker_is_notified(tmp_path: Path, receiver: Receiver) -> None:
    """The real path: steps posted to the sidecar, its worker thread raises an alert, the notifier sends it
    to a JSON target and a Slack target."""
    url = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(url)
    settings = fast_settings(
        url,
        [receiver.url("/json"), "slack:" + receiver.url("/slack")],
        worker_mode="thread",
        device="cpu",
        worker_poll_s=0.01,
    )
    with TestClient(create_app(settings)) as client:
        run_id = client.post("/v1/runs", json={"name": "real", "latent_dim": 32}).json()["run_id"]
        for step in range(20):
            resp = client.post(
                f"/v1/runs/{run_id}/steps",
                content=step_payload(step, onset=15),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert resp.status_code == 202
        wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["steps_processed"] == 20, "20 steps processed")
        alerts = client.get("/v1/alerts", params={"run_id": run_id}).json()["alerts"]
        assert alerts, "the cluster from step 15 must raise an alert"
        wanted = {(path, a["alert_id"]) for a in alerts for path in ("/json", "/slack")}
        wait_for(lambda: len(receiver.taken()) >= len(wanted), "the alerts delivered to both targets")
    taken = receiver.taken()
    json_alerts = [json.loads(r["body"]) for r in taken if r["path"] == "/json"]
    slack = [json.loads(r["body"]) for r in taken if r["path"] == "/slack"]
    assert len(taken) == len(wanted) and sorted(b["alert_id"] for b in json_alerts) == sorted(
        a["alert_id"] for a in alerts
    )
    first = next(b for b in json_alerts if b["alert_id"] == alerts[-1]["alert_id"])
    assert (first["run_id"], first["run_name"], first["step"]) == (run_id, "real", alerts[-1]["step"])
    assert all(s["text"].startswith(f"step {first['step']} answer ") for s in first["top_samples"])
    assert len(slack) == len(alerts) and all(set(b) == {"text", "blocks"} for b in slack)
    assert all(r["headers"]["X-Fpmon-Signature"] == recomputed_signature(SECRET, r) for r in taken)


@pytest.mark.slow
def test_a_killed_sidecar_process_loses_no_notification(tmp_path: Path, receiver: Receiver) -> None:
    """``fpmon serve`` as a real process (worker processes, the default): its workers raise alerts while the
    receiver answers 503; the server is SIGKILLed (no shutdown handler runs) and started again; the receiver
    comes back: each alert is taken exactly once."""
    url = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(url)
    env = {
        "FPMON_WEBHOOK_URLS": receiver.url(),
        "FPMON_WEBHOOK_SECRET": SECRET,
        "FPMON_WEBHOOK_BACKOFF_S": "0.05",
        "FPMON_WEBHOOK_BACKOFF_MAX_S": "0.2",
        "FPMON_WEBHOOK_POLL_S": "0.02",
        "FPMON_WEBHOOK_MAX_ATTEMPTS": "10000",
        "FPMON_WEBHOOK_TIMEOUT_S": "1",  # the killed notifier's lease (3 · 1 + 5 s) ends soon after the restart
        "FPMON_DEVICE": "cpu",
    }
    engine = make_engine(url)
    sessions = session_factory(engine)
    receiver.status = 503
    # generous waits: two server starts (torch imports, a spawned worker) on a loaded CI machine
    server = ServerProcess(url, tmp_path / "server.log", **env).start(timeout_s=180)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            run_id = client.post("/v1/runs", json={"name": "killed", "latent_dim": 32}).json()["run_id"]
            for step in range(20):
                body = step_payload(step, onset=15)
                headers = {"Content-Type": "application/octet-stream"}
                assert client.post(f"/v1/runs/{run_id}/steps", content=body, headers=headers).status_code == 202
            wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["steps_processed"] == 20, "20 steps", 180)

        def refused_all() -> bool:
            with sessions() as s:
                queued = rows(s)
            return bool(queued) and all(r.attempts >= 2 for r in queued)

        wait_for(refused_all, "every notification refused at least twice", 180)
        server.kill()
        with sessions() as s:
            alert_ids = sorted(a.id for a in storage.list_alerts(s, run_id=run_id))
            assert alert_ids and outbox_counts(s)["delivered"] == 0
        receiver.status = 200
        server = ServerProcess(url, tmp_path / "server.log", **env).start(timeout_s=180)

        def all_delivered() -> bool:
            with sessions() as s:
                return outbox_counts(s) == {"pending": 0, "delivered": len(alert_ids), "failed": 0}

        wait_for(all_delivered, "every notification delivered after the restart", 180)
    finally:
        server.stop()
        engine.dispose()
    taken = sorted(json.loads(r["body"])["alert_id"] for r in receiver.taken())
    assert taken == alert_ids


def test_fpmon_serve_refuses_a_bad_webhook_url_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A malformed FPMON_WEBHOOK_URLS stops ``fpmon serve`` with exit 2 and a one-line message naming the entry
    (no traceback), before anything is bound or created."""
    from typer.testing import CliRunner

    from api.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FPMON_WEBHOOK_URLS", "hooks.example/b")
    result = CliRunner().invoke(app, ["serve", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2, result.output
    assert "fpmon serve:" in result.output and "'hooks.example/b' is not an absolute" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.db").exists()
