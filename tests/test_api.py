"""The sidecar in-process (FastAPI TestClient), on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from api_helpers import D, N, reference_scalars, step_payload
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save

import storage
from api.main import create_app
from api.settings import Settings
from monitor.processing import StepProcessor
from monitor.stepfile import StepPayload, encode_step

WRITE, READ = "write-token", "read-token"
OCTET = {"Content-Type": "application/octet-stream"}


def auth(token: str = WRITE) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def app_client(database_url: str) -> Iterator[tuple[TestClient, StepProcessor]]:
    storage.upgrade(database_url)
    settings = Settings(database_url=database_url, api_tokens=[WRITE], read_tokens=[READ], max_n=512, max_d=64)
    settings_small = settings.model_copy(update={"max_body_bytes": 2_000_000})
    app = create_app(settings_small, start_workers=False)
    services = app.state.services
    processor = StepProcessor(services.sessions, torch.device("cpu"), claim_stale_s=60)
    with TestClient(app) as client:
        yield client, processor


def drain(processor: StepProcessor) -> int:
    done = 0
    while processor.process_one():
        done += 1
    return done


def row_counts(client: TestClient) -> dict[str, int]:
    with client.app.state.services.sessions() as session:  # type: ignore[attr-defined]
        return storage.counts(session)


def create_run(client: TestClient, name: str = "run-a", latent_dim: int = D) -> int:
    resp = client.post("/v1/runs", json={"name": name, "latent_dim": latent_dim, "config": {}}, headers=auth())
    assert resp.status_code in (200, 201), resp.text
    return int(resp.json()["run_id"])


def test_fifty_step_ingest_with_retries_and_out_of_order_arrival(
    app_client: tuple[TestClient, StepProcessor],
) -> None:
    client, processor = app_client
    run_id = create_run(client)
    again = client.post("/v1/runs", json={"name": "run-a", "latent_dim": D}, headers=auth())
    assert again.status_code == 200 and again.json()["run_id"] == run_id
    payloads = [step_payload(s, seed=1, onset=35) for s in range(50)]
    order = [s ^ 1 for s in range(50)]  # 1, 0, 3, 2, …: every pair arrives swapped
    for s in order:
        resp = client.post(f"/v1/runs/{run_id}/steps", content=payloads[s], headers={**OCTET, **auth()})
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"run_id": run_id, "step": s, "status": "queued"}
        retry = client.post(f"/v1/runs/{run_id}/steps", content=payloads[s], headers={**OCTET, **auth()})
        assert retry.status_code == 200 and retry.json()["status"] == "duplicate"
    assert drain(processor) == 50
    run = client.get(f"/v1/runs/{run_id}", headers=auth(READ)).json()
    assert run["steps_received"] == 50 and run["steps_processed"] == 50 and run["D0"] > 0
    rows = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "C,S_dot,W2_step"}, headers=auth(READ)).json()
    assert [r["step"] for r in rows["rows"]] == list(range(50))
    assert set(rows["rows"][10]["scalars"]) == {"C", "S_dot", "W2_step"}
    # identical to an uninterrupted in-process monitor, warm-up rows rescaled to the calibrated D0 included
    expected = reference_scalars(payloads)
    full = client.get(f"/v1/runs/{run_id}/metrics", headers=auth(READ)).json()["rows"]
    for row in full:
        for name, value in row["scalars"].items():
            want = expected[row["step"]][name]
            assert (value is None and math.isnan(want)) or value == pytest.approx(want, rel=1e-9, abs=1e-12)
    down = client.get(f"/v1/runs/{run_id}/metrics", params={"max_points": 5}, headers=auth(READ)).json()["rows"]
    assert [r["step"] for r in down] == [0, 12, 24, 36, 49]
    alerts = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ)).json()["alerts"]
    assert alerts and 35 <= alerts[-1]["step"] <= 40  # the evidence crosses 1/α within a few steps of the onset
    assert alerts[-1]["type"] == "POTENTIAL_REWARD_HACKING" and alerts[-1]["status"] == "open"
    samples = client.get(
        f"/v1/runs/{run_id}/steps/{alerts[-1]['step']}/samples", params={"limit": 10}, headers=auth(READ)
    ).json()["samples"]
    divs = [abs(s["div"]) for s in samples]
    assert divs == sorted(divs, reverse=True) and len(samples) == 10
    assert samples[0]["text"].startswith(f"step {alerts[-1]['step']} answer")
    review = client.post(
        f"/v1/alerts/{alerts[-1]['alert_id']}/review",
        json={"decision": "confirmed", "reviewer": "ana", "note": "keyword exploit"},
        headers=auth(),
    )
    assert review.status_code == 200 and review.json()["status"] == "confirmed"
    got = client.get(f"/v1/alerts/{alerts[-1]['alert_id']}", headers=auth(READ)).json()
    assert got["reviews"][0]["reviewer"] == "ana" and got["reviews"][0]["note"] == "keyword exploit"
    assert client.get("/v1/alerts", params={"status": "confirmed"}, headers=auth(READ)).json()["alerts"]
    metrics_text = client.get("/metrics").text
    assert "fpmon_steps_processed_total 50.0" in metrics_text
    assert "fpmon_steps_duplicate_total 50.0" in metrics_text
    assert "fpmon_steps_ingested_total 50.0" in metrics_text
    assert 'fpmon_alerts_total{type="POTENTIAL_REWARD_HACKING"}' in metrics_text
    assert 'fpmon_observable{name="C",run="run-a"}' in metrics_text
    assert "fpmon_queue_depth 0.0" in metrics_text
    assert 'fpmon_processing_latency_seconds{quantile="0.99"}' in metrics_text


def _bad_payloads() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    good = step_payload(0)
    nan = torch.randn(N, D)
    nan[3, 3] = float("nan")
    rewards_inf = torch.zeros(N)
    rewards_inf[0] = float("inf")
    not_step = st_save({"latents": torch.randn(N, D)})  # no metadata
    return [
        ("NaN latents", encode_step(StepPayload(step=1, latents=nan)), {}, 422, "NaN or Inf"),
        (
            "Inf rewards",
            encode_step(StepPayload(step=1, latents=torch.randn(N, D), rewards=rewards_inf)),
            {},
            422,
            "rewards contain NaN or Inf",
        ),
        ("wrong d", encode_step(StepPayload(step=1, latents=torch.randn(N, D + 1))), {}, 422, "latent_dim=32"),
        ("n too large", encode_step(StepPayload(step=1, latents=torch.randn(600, D))), {}, 422, "exceed the limits"),
        ("truncated", good[: len(good) // 2], {}, 400, "not a safetensors step payload"),
        ("not safetensors", b"hello world", {}, 400, "not a safetensors step payload"),
        ("no step metadata", not_step, {}, 400, "no 'step'"),
        ("too large", b"\0" * 2_100_000, {}, 413, "exceeds"),
        ("json body", b"{}", {"Content-Type": "application/json"}, 415, "application/octet-stream"),
        ("missing token", good, {"Authorization": ""}, 401, "missing bearer token"),
        ("invalid token", good, auth("nope"), 401, "invalid bearer token"),
        ("read token", good, auth(READ), 403, "read-only"),
    ]


def test_bad_input_gets_a_clear_4xx_and_writes_nothing(app_client: tuple[TestClient, StepProcessor]) -> None:
    client, _ = app_client
    run_id = create_run(client)
    before = row_counts(client)
    for name, body, headers, code, message in _bad_payloads():
        merged = {**OCTET, **auth(), **headers}
        merged = {k: v for k, v in merged.items() if v}
        resp = client.post(f"/v1/runs/{run_id}/steps", content=body, headers=merged)
        assert resp.status_code == code, (name, resp.status_code, resp.text)
        assert message in resp.json()["detail"], (name, resp.json())
    unknown = client.post("/v1/runs/999999/steps", content=step_payload(0), headers={**OCTET, **auth()})
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["detail"]
    missing_run = client.get("/v1/runs/999999", headers=auth(READ))
    assert missing_run.status_code == 404
    assert missing_run.json()["detail"] == "run 999999 does not exist (GET /v1/runs lists the runs)"  # no POST hint
    assert client.get("/v1/alerts/999999", headers=auth(READ)).status_code == 404
    alerts_of_missing = client.get("/v1/alerts", params={"run_id": 999999}, headers=auth(READ))
    assert alerts_of_missing.status_code == 404 and "run 999999 does not exist" in alerts_of_missing.json()["detail"]
    assert alerts_of_missing.headers["content-type"].startswith("application/problem+json")
    known = client.get("/v1/alerts", params={"run_id": run_id}, headers=auth(READ))
    assert known.status_code == 200 and known.json()["alerts"] == []
    bad_review = client.post("/v1/alerts/1/review", json={"decision": "maybe", "reviewer": "x"}, headers=auth())
    assert bad_review.status_code == 422
    bad_run = client.post("/v1/runs", json={"name": "", "latent_dim": 0}, headers=auth())
    assert bad_run.status_code == 422
    bad_config = client.post(
        "/v1/runs", json={"name": "cfg", "latent_dim": D, "config": {"monitor": {"warmup_steps": 1}}}, headers=auth()
    )
    assert bad_config.status_code == 422 and "warmup_steps must be >= 3" in bad_config.json()["detail"]
    other_d = client.post("/v1/runs", json={"name": "run-a", "latent_dim": D + 5}, headers=auth())
    assert other_d.status_code == 409 and "latent_dim" in other_d.json()["detail"]
    assert row_counts(client) == before
    # a conflicting re-send of an accepted step: 409, nothing changes
    assert client.post(f"/v1/runs/{run_id}/steps", content=step_payload(0), headers={**OCTET, **auth()}).is_success
    after_one = row_counts(client)
    conflict = client.post(f"/v1/runs/{run_id}/steps", content=step_payload(0, seed=9), headers={**OCTET, **auth()})
    assert conflict.status_code == 409 and "different content" in conflict.json()["detail"]
    assert row_counts(client) == after_one


def test_every_write_route_rejects_a_missing_token(app_client: tuple[TestClient, StepProcessor]) -> None:
    client, _ = app_client
    paths = client.get("/openapi.json").json()["paths"]  # every route the app serves
    write_routes = [
        (path, method.upper())
        for path, operations in paths.items()
        for method in operations
        if method.upper() in {"POST", "PUT", "PATCH", "DELETE"}
    ]
    assert {path for path, _ in write_routes} >= {
        "/v1/runs",
        "/v1/runs/{run_id}/steps",
        "/v1/alerts/{alert_id}/review",
    }
    before = row_counts(client)
    for path, method in write_routes:
        url = path.replace("{run_id}", "1").replace("{alert_id}", "1")
        resp = client.request(method, url, content=b"{}", headers={"Content-Type": "application/json"})
        assert resp.status_code == 401, (method, path, resp.status_code)
        read = client.request(method, url, content=b"{}", headers={"Content-Type": "application/json", **auth(READ)})
        assert read.status_code == 403, (method, path, read.status_code)
    assert row_counts(client) == before
    for path in ("/v1/runs", "/v1/alerts"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=auth(READ)).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_server_refuses_an_unmigrated_database(database_url: str) -> None:
    with pytest.raises(storage.SchemaError, match="fpmon db upgrade"):
        create_app(Settings(database_url=database_url), start_workers=False)


def test_server_refuses_public_bind_without_tokens(database_url: str) -> None:
    storage.upgrade(database_url)
    with pytest.raises(ValueError, match="without authentication"):
        create_app(Settings(database_url=database_url, host="0.0.0.0"), start_workers=False)
    create_app(Settings(database_url=database_url, host="0.0.0.0", api_tokens=["t"]), start_workers=False)


def test_retention_drops_old_raw_latents_but_keeps_results(app_client: tuple[TestClient, StepProcessor]) -> None:
    client, processor = app_client
    processor.retention_steps = 5
    run_id = create_run(client, "retained")
    for s in range(20):
        client.post(f"/v1/runs/{run_id}/steps", content=step_payload(s, seed=4), headers={**OCTET, **auth()})
    assert drain(processor) == 20  # the purge runs every PURGE_EVERY (20) processed steps
    with client.app.state.services.sessions() as session:  # type: ignore[attr-defined]
        assert len(storage.list_steps(session, run_id, limit=100)) == 20  # the step rows stay
        kept = storage.payload_steps(session, run_id)  # the payloads live in step_payloads
    assert kept == list(range(15, 20))
    rows = client.get(f"/v1/runs/{run_id}/metrics", headers=auth(READ)).json()["rows"]
    assert len(rows) == 20  # results stay
    again = client.post(f"/v1/runs/{run_id}/steps", content=step_payload(0, seed=4), headers={**OCTET, **auth()})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"  # retries still recognised
