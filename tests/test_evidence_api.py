"""Evidence of change over HTTP, and the reviewer's re-baseline, on SQLite and PostgreSQL (in-process app, the
worker drained synchronously).

* ``GET /v1/runs/{id}/metrics?evidence=…``: the stored log e-values of every processed step are the
  in-process monitor's (finite), with the run's threshold log(1/α); unknown names are refused (422).
* ``GET …/steps/{step}/samples``: each sample's witness score, the monitor's.
* ``POST /v1/alerts/{id}/review`` with ``rebaseline``: a run whose responses moved for good alerts once, is
  dismissed as the new normal, and stays quiet on the same change — across a restart of the sidecar between the
  dismissal and the next step — while the same run without the re-baseline (confirmed) alerts again after the
  cool-down. ``rebaseline`` with another decision is refused and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from fastapi.testclient import TestClient

import storage
from api.main import create_app
from api.settings import Settings
from monitor.processing import EVIDENCE_SERIES, StepProcessor
from monitor.rlhf import MonitorConfig, RLHFMonitor
from monitor.stepfile import StepPayload, decode_step, encode_step

WRITE, READ = "write-token", "read-token"
OCTET = {"Content-Type": "application/octet-stream"}
D, N, ONSET, STEPS = 16, 64, 20, 50
#: both embedding streams: the reference stream keeps seeing a change that lasts (the lagged one forgets it)
CONFIG = {"monitor": {"evidence": {"streams": ["embedding_lagged", "embedding_reference"]}}}
LOG_THRESHOLD = math.log(1000.0)  # the default alpha = 1e-3


def auth(token: str = WRITE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def payload(step: int) -> bytes:
    """Gaussian responses around a 4-D subspace; from ONSET on, every response moves (for good) along one axis."""
    gen = torch.Generator().manual_seed(step)
    basis = torch.randn(4, D, generator=torch.Generator().manual_seed(7))
    z = torch.randn(N, 4, generator=gen) @ basis + 0.3 * torch.randn(N, D, generator=gen)
    if step >= ONSET:
        z = z + 2.0 * basis[1]
    texts = [f"step {step} answer {i}" for i in range(N)]
    return encode_step(StepPayload(step=step, latents=z, texts=texts, sample_ids=[f"s{step}-{i}" for i in range(N)]))


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return [payload(s) for s in range(STEPS)]


def in_process(payloads: list[bytes], rebaseline_before: int | None = None) -> dict[int, object]:
    """An uninterrupted in-process monitor over the payloads (re-baselined before step ``rebaseline_before``):
    its report per step."""
    monitor = RLHFMonitor(MonitorConfig.from_dict(CONFIG["monitor"]))
    reports = {}
    for body in payloads:
        p = decode_step(body)
        if p.step == rebaseline_before:
            monitor.rebaseline()
        reports[p.step] = monitor.observe(p.step, p.latents, texts=p.texts, sample_ids=p.sample_ids)
    return reports


@contextmanager
def sidecar(database_url: str) -> Iterator[tuple[TestClient, StepProcessor]]:
    """A sidecar app (its own engine) and a worker; a new one is a restarted sidecar."""
    settings = Settings(database_url=database_url, api_tokens=[WRITE], read_tokens=[READ])
    app = create_app(settings, start_workers=False)
    processor = StepProcessor(app.state.services.sessions, torch.device("cpu"), claim_stale_s=60)
    with TestClient(app) as client:
        yield client, processor


def send(client: TestClient, processor: StepProcessor, run_id: int, bodies: list[bytes]) -> None:
    for body in bodies:
        assert client.post(f"/v1/runs/{run_id}/steps", content=body, headers={**OCTET, **auth()}).status_code == 202
    while processor.process_one():
        pass


def alerts_of(client: TestClient, run_id: int) -> list[dict]:
    alerts = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"]
    return sorted(alerts, key=lambda a: a["step"])


def send_until_alert(client: TestClient, processor: StepProcessor, run_id: int, payloads: list[bytes]) -> dict:
    """Send the steps one by one until the first alert; returns it."""
    for step, body in enumerate(payloads):
        send(client, processor, run_id, [body])
        if alerts := alerts_of(client, run_id):
            assert step >= ONSET and alerts[0]["step"] == step
            return alerts[0]
    raise AssertionError("the change at ONSET raised no alert")


def stored_evidence(client: TestClient, run_id: int) -> tuple[dict[int, dict[str, float | None]], dict]:
    body = client.get(f"/v1/runs/{run_id}/metrics", params={"evidence": "all"}, headers=auth(READ)).json()
    return {r["step"]: r["evidence"] for r in body["rows"]}, body


def assert_evidence_is(stored: dict[int, dict[str, float | None]], reports: dict[int, object]) -> None:
    """What /metrics shows is what the in-process monitor computed, finite values only."""
    assert stored.keys() == reports.keys()
    for step, report in reports.items():
        want = {k: v for k, v in report.evidence.items() if math.isfinite(v)}  # type: ignore[attr-defined]
        got = {k: v for k, v in stored[step].items() if v is not None}
        assert got.keys() == want.keys(), step
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (step, name)


def test_metrics_carry_each_streams_evidence_with_the_threshold(database_url: str, payloads: list[bytes]) -> None:
    storage.upgrade(database_url)
    reports = in_process(payloads[:30])
    with sidecar(database_url) as (client, processor):
        run_id = client.post("/v1/runs", json={"name": "ev", "latent_dim": D, "config": CONFIG}, headers=auth()).json()[
            "run_id"
        ]
        without = client.get(f"/v1/runs/{run_id}/metrics", params={"evidence": "all"}, headers=auth(READ)).json()
        assert without == {"rows": [], "evidence_threshold": None, "evidence_alpha": None}  # nothing processed yet
        send(client, processor, run_id, payloads[:30])

        stored, body = stored_evidence(client, run_id)
        assert body["evidence_threshold"] == pytest.approx(LOG_THRESHOLD) and body["evidence_alpha"] == pytest.approx(
            1e-3
        )
        assert_evidence_is(stored, reports)
        # the lagged stream once it has a window, the reference stream once the first 3 steps are pooled: finite
        assert stored[0] == stored[1] == {"embedding": None, "embedding_lagged": None, "embedding_reference": None}
        assert stored[2]["embedding_lagged"] is not None and stored[2]["embedding_reference"] is None
        for step in range(4, 30):
            assert all(v is not None and math.isfinite(v) for v in stored[step].values()), step
        embedding = [stored[s]["embedding"] or -math.inf for s in range(30)]
        assert max(embedding[:ONSET]) < LOG_THRESHOLD <= max(embedding[ONSET:])
        assert "reward" not in stored[5]  # no rewards sent: no reward evidence (left out of evidence=all)

        # by name: only those, null where a step has none; scalars untouched; decimation keeps rows aligned
        named = client.get(
            f"/v1/runs/{run_id}/metrics",
            params={"names": "C", "evidence": "embedding,reward", "max_points": 4},
            headers=auth(READ),
        ).json()
        assert [r["step"] for r in named["rows"]] == [0, 9, 19, 29]
        assert all(
            set(r["evidence"]) == {"embedding", "reward"} and r["evidence"]["reward"] is None for r in named["rows"]
        )
        assert named["rows"][0]["evidence"]["embedding"] is None  # the first step has no window yet
        assert named["rows"][3]["evidence"]["embedding"] == pytest.approx(reports[29].evidence["embedding"])
        assert all(set(r["scalars"]) == {"C"} for r in named["rows"])
        assert named["evidence_threshold"] == pytest.approx(LOG_THRESHOLD)
        plain = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "C"}, headers=auth(READ)).json()
        assert plain["evidence_threshold"] is None and all(r["evidence"] is None for r in plain["rows"])

        # unknown evidence names: 422 naming the valid ones (scalars keep answering null for an unknown name)
        for bad in ("embedding,nope", "", "all,embedding", "evidence.embedding"):
            resp = client.get(f"/v1/runs/{run_id}/metrics", params={"evidence": bad}, headers=auth(READ))
            assert resp.status_code == 422, bad
            assert resp.json()["errors"][0]["loc"] == ["query", "evidence"]
            assert all(name in resp.json()["detail"] for name in EVIDENCE_SERIES)
        assert client.get(f"/v1/runs/{run_id}/metrics", params={"names": "nope"}, headers=auth(READ)).json()["rows"][0][
            "scalars"
        ] == {"nope": None}
        assert client.get("/v1/runs/999/metrics", params={"evidence": "all"}, headers=auth(READ)).status_code == 404

        # the samples carry the monitor's witness score; order=witness ranks by it
        alert = alerts_of(client, run_id)[0]
        step = alert["step"]
        samples = client.get(
            f"/v1/runs/{run_id}/steps/{step}/samples", params={"order": "index", "limit": N}, headers=auth(READ)
        ).json()["samples"]
        witness = reports[step].witness
        assert witness is not None and witness.shape == (N,) and bool(torch.isfinite(witness).all())
        assert [s["witness"] for s in samples] == pytest.approx(witness.tolist(), rel=1e-6)
        ranked = client.get(
            f"/v1/runs/{run_id}/steps/{step}/samples", params={"order": "witness", "limit": 5}, headers=auth(READ)
        ).json()["samples"]
        assert [s["witness"] for s in ranked] == sorted((s["witness"] for s in samples), reverse=True)[:5]
        first = client.get(
            f"/v1/runs/{run_id}/steps/0/samples", params={"order": "witness", "limit": 3}, headers=auth(READ)
        ).json()["samples"]
        assert all(s["witness"] is None for s in first)  # no window at the first step

        # the alert's listed responses (by evidence) are the context's flagged ones, in its order, with scores
        ctx = client.get(f"/v1/alerts/{alert['alert_id']}/context", params={"k": 8}, headers=auth(READ)).json()
        assert [s["index"] for s in ctx["flagged"]] == [s["index"] for s in alert["top_samples"]][:8]
        assert [s["witness"] for s in ctx["flagged"]] == pytest.approx([s["witness"] for s in alert["top_samples"]][:8])
        typical = [s["witness"] for s in ctx["typical"]]
        assert typical == sorted(typical) and max(typical) < min(s["witness"] for s in ctx["flagged"])


def test_dismissing_as_the_new_normal_rebaselines_the_run_and_nothing_else_does(
    database_url: str, payloads: list[bytes]
) -> None:
    storage.upgrade(database_url)
    cooldown = MonitorConfig().cooldown_steps
    with sidecar(database_url) as (client, processor):
        runs = {
            name: client.post(
                "/v1/runs", json={"name": name, "latent_dim": D, "config": CONFIG}, headers=auth()
            ).json()["run_id"]
            for name in ("confirmed", "dismissed")
        }

        # --- control: the same change, confirmed (the detector is left as it is): it alerts again after the cool-down
        control = runs["confirmed"]
        first = send_until_alert(client, processor, control, payloads)
        assert first["type"] == "PHASE_TRANSITION"
        sessions = client.app.state.services.sessions  # type: ignore[attr-defined]
        with sessions() as session:
            before = storage.counts(session)
        for decision in ("confirmed", "acknowledged"):
            refused = client.post(
                f"/v1/alerts/{first['alert_id']}/review",
                json={"decision": decision, "reviewer": "ana", "rebaseline": True},
                headers=auth(),
            )
            assert refused.status_code == 422, refused.text
            assert refused.json()["errors"][0]["loc"] == ["body", "rebaseline"]
            assert "rebaseline is only valid with decision 'dismissed'" in refused.json()["detail"]
        with sessions() as session:
            assert storage.counts(session) == before  # nothing written
        got = client.get(f"/v1/alerts/{first['alert_id']}", headers=auth(READ)).json()
        assert got["status"] == "open" and got["reviews"] == []
        assert client.get(f"/v1/runs/{control}", headers=auth(READ)).json()["rebaseline_pending"] is False
        confirm = client.post(
            f"/v1/alerts/{first['alert_id']}/review", json={"decision": "confirmed", "reviewer": "ana"}, headers=auth()
        )
        assert confirm.status_code == 200 and confirm.json()["reviews"][0]["rebaseline"] is False
        assert client.get(f"/v1/runs/{control}", headers=auth(READ)).json()["rebaseline_pending"] is False
        send(client, processor, control, payloads[first["step"] + 1 :])
        again = [a for a in alerts_of(client, control) if a["step"] > first["step"]]
        assert again and all(a["type"] == first["type"] for a in again)  # the same change alerts again …
        assert again[0]["step"] > first["step"] + cooldown  # … once the cool-down is over
        stored, _ = stored_evidence(client, control)
        assert_evidence_is(stored, in_process(payloads))  # confirmed: no re-baseline

        # --- dismissed as the new normal: re-baselined before the next step, then quiet on the same change
        run_id = runs["dismissed"]
        alert = send_until_alert(client, processor, run_id, payloads)
        assert (alert["step"], alert["type"]) == (first["step"], first["type"])
        dismiss = client.post(
            f"/v1/alerts/{alert['alert_id']}/review",
            json={"decision": "dismissed", "reviewer": "ana", "note": "intended", "rebaseline": True},
            headers=auth(),
        )
        assert dismiss.status_code == 200, dismiss.text
        review = dismiss.json()["reviews"][0]
        assert (review["decision"], review["rebaseline"], review["rebaseline_step"]) == ("dismissed", True, None)
        assert client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()["rebaseline_pending"] is True

    # the sidecar restarts between the dismissal and the next step: the request waits in the database
    with sidecar(database_url) as (client, processor):
        assert client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()["rebaseline_pending"] is True
        send(client, processor, run_id, payloads[alert["step"] + 1 :])
        assert client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()["rebaseline_pending"] is False
        reviews = client.get(f"/v1/alerts/{alert['alert_id']}", headers=auth(READ)).json()["reviews"]
        assert reviews[0]["rebaseline_step"] == alert["step"] + 1
        assert [a["alert_id"] for a in alerts_of(client, run_id)] == [alert["alert_id"]]  # no new alert
        stored, _ = stored_evidence(client, run_id)
        # exactly an in-process monitor re-baselined before the step after the alert, and under 1/α ever since
        assert_evidence_is(stored, in_process(payloads, rebaseline_before=alert["step"] + 1))
        after = [stored[s]["embedding"] for s in range(alert["step"] + 1, STEPS)]
        assert max(v for v in after if v is not None) < LOG_THRESHOLD
        # a second dismissal (without rebaseline) of the same alert asks for nothing more
        plain = client.post(
            f"/v1/alerts/{alert['alert_id']}/review", json={"decision": "dismissed", "reviewer": "bo"}, headers=auth()
        )
        assert plain.status_code == 200 and plain.json()["reviews"][1]["rebaseline"] is False
        assert client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()["rebaseline_pending"] is False
