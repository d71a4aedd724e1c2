"""monitor.processing: the one step pipeline behind the sidecar and the in-process client.

Both ways a step can take — ``MonitorClient(url=None)`` and ``POST /v1/runs/{id}/steps`` + a worker — must
refuse the same steps with the same messages, and compute the same observables, samples and alerts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from api_helpers import D, step_payload
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save

import storage
from api.main import create_app
from api.settings import Settings
from monitor import ClientConfig, MonitorClient
from monitor.processing import IngestError, IngestLimits, StepProcessor, alert_to_dict, ingest_step
from monitor.stepfile import StepPayload, decode_step, encode_step

OCTET = {"Content-Type": "application/octet-stream"}
STEPS, ONSET = 30, 20


def read_api(database_url: str) -> TestClient:
    """A sidecar app over an existing database, without workers: for reading what is stored."""
    return TestClient(create_app(Settings(database_url=database_url), start_workers=False))


def run_through_sidecar(database_url: str, payloads: list[bytes]) -> None:
    """POST every step to the sidecar's app, then let one StepProcessor process them all."""
    storage.upgrade(database_url)
    app = create_app(Settings(database_url=database_url), start_workers=False)
    with TestClient(app) as http:
        run = http.post("/v1/runs", json={"name": "parity", "latent_dim": D, "config": {"monitor": {}}})
        assert run.status_code == 201, run.text
        for body in payloads:
            resp = http.post(f"/v1/runs/{run.json()['run_id']}/steps", content=body, headers=OCTET)
            assert resp.status_code == 202, resp.text
        processor = StepProcessor(app.state.services.sessions, torch.device("cpu"))
        while processor.process_one():
            pass


def run_in_process(database_url: str, spool: Path, payloads: list[bytes]) -> list[dict[str, Any]]:
    """The same steps through MonitorClient(url=None); returns client.alerts() once every alert is in."""
    config = ClientConfig(spool_dir=spool, latent_dtype=torch.float32, database_url=database_url, poll_alerts_s=0.1)
    with MonitorClient(url=None, run_name="parity", config=config) as client:
        for p in map(decode_step, payloads):
            client.observe(p.step, p.texts, p.rewards, latents=p.latents, sample_ids=p.sample_ids, lr=p.lr)
        assert client.flush(120)
        assert client.stats.sent == len(payloads)
        engine = storage.make_engine(database_url)
        with storage.session_factory(engine)() as session:
            stored = len(storage.list_alerts(session, run_id=client.run_id))
        engine.dispose()
        deadline = time.monotonic() + 10
        while len(client.alerts()) < stored and time.monotonic() < deadline:
            time.sleep(0.05)
        return client.alerts()


def stored_view(database_url: str) -> dict[str, Any]:
    """What the REST API shows of run "parity": metric rows, alerts (no ids or times), samples at alerts."""
    with read_api(database_url) as http:
        run_id = next(r["run_id"] for r in http.get("/v1/runs").json()["runs"] if r["name"] == "parity")
        rows = http.get(f"/v1/runs/{run_id}/metrics", params={"max_points": 1000, "evidence": "all"}).json()["rows"]
        alerts = http.get("/v1/alerts", params={"run_id": run_id}).json()["alerts"]
        samples = {
            a["step"]: http.get(
                f"/v1/runs/{run_id}/steps/{a['step']}/samples", params={"order": "index", "limit": 1000}
            ).json()["samples"]
            for a in alerts
        }
    strip = ("alert_id", "run_id", "created_at", "reviews")
    return {
        "rows": rows,
        "alerts": [{k: v for k, v in a.items() if k not in strip} for a in alerts],
        "samples": samples,
    }


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal structures; floats equal to 1e-9 relative (the sidecar and the sender may use other BLAS
    threads), None/NaN alike."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def test_in_process_client_and_sidecar_compute_the_same_observables_and_alerts(tmp_path: Path) -> None:
    payloads = [step_payload(s, seed=4, onset=ONSET) for s in range(STEPS)]
    sidecar_db = f"sqlite:///{tmp_path / 'sidecar.db'}"
    local_db = f"sqlite:///{tmp_path / 'local.db'}"
    run_through_sidecar(sidecar_db, payloads)
    seen = run_in_process(local_db, tmp_path / "spool", payloads)
    sidecar, local = stored_view(sidecar_db), stored_view(local_db)

    assert [r["step"] for r in local["rows"]] == list(range(STEPS))
    assert local["rows"][-1]["evidence"]["embedding"] is not None  # the evidence is stored both ways too
    assert local["alerts"], "the exploit cluster from step 20 raises an alert"
    assert min(a["step"] for a in local["alerts"]) >= ONSET
    assert_same(local, sidecar, "in-process vs sidecar")

    # the in-process client reports its alerts in the REST API's own form (alert_to_dict, both ways)
    with read_api(local_db) as http:
        api_alerts = http.get("/v1/alerts", params={"run_id": seen[0]["run_id"]}).json()["alerts"]
    assert seen == [{k: v for k, v in a.items() if k != "reviews"} for a in api_alerts]


@pytest.fixture
def sidecar(database_url: str) -> Iterator[tuple[TestClient, int, str]]:
    storage.upgrade(database_url)
    app = create_app(Settings(database_url=database_url, max_n=128, max_d=64), start_workers=False)
    with TestClient(app) as http:
        run_id = http.post("/v1/runs", json={"name": "checks", "latent_dim": D}).json()["run_id"]
        yield http, run_id, database_url


def bad_payloads() -> dict[str, tuple[bytes, int]]:
    good = decode_step(step_payload(0, seed=5, n=8))
    nan = good.latents.clone()
    nan[1, 2] = float("nan")
    texts, ids = good.texts or [], good.sample_ids or []

    def strings(step: int, **lists: list[str]) -> bytes:
        return encode_step(replace(good, step=step, **lists))

    def rewards(step: int, r: torch.Tensor) -> bytes:
        return st_save({"latents": good.latents, "rewards": r}, metadata={"step": str(step)})

    return {
        "unreadable": (b"not a safetensors file", 400),
        "non-finite": (encode_step(StepPayload(1, nan, good.rewards)), 422),
        "one sample": (encode_step(StepPayload(2, good.latents[:1])), 422),
        "other d": (encode_step(StepPayload(3, torch.randn(8, D + 1))), 422),
        "over max_n": (encode_step(StepPayload(4, torch.randn(129, D))), 422),
        "step too large": (encode_step(StepPayload(2**31, good.latents)), 422),
        "huge latents": (encode_step(StepPayload(5, good.latents * 1e37)), 422),
        "lone surrogate in texts": (strings(6, texts=["\ud800", *texts[1:]]), 422),
        "NUL in prompts": (strings(7, prompts=["a\x00", *texts[1:]]), 422),
        "NUL in texts": (strings(8, texts=[*texts[:-1], "\x00"]), 422),
        "sample id too long": (strings(9, sample_ids=["x" * 201, *ids[1:]]), 422),
        "complex64 rewards": (rewards(10, torch.randn(8, dtype=torch.complex64)), 400),
        "float8 rewards": (rewards(11, torch.randn(8).to(torch.float8_e5m2)), 400),
        "int64 rewards": (rewards(12, torch.arange(8)), 400),
        "conflict": (encode_step(StepPayload(0, good.latents + 1.0)), 409),
    }


def test_ingest_refuses_the_same_steps_with_the_same_messages_both_ways(
    sidecar: tuple[TestClient, int, str],
) -> None:
    http, run_id, database_url = sidecar
    first = step_payload(0, seed=5, n=8)
    assert http.post(f"/v1/runs/{run_id}/steps", content=first, headers=OCTET).status_code == 202
    engine = storage.make_engine(database_url)
    sessions = storage.session_factory(engine)
    limits = IngestLimits(max_n=128, max_d=64)
    try:
        for name, (body, status) in bad_payloads().items():
            with sessions() as session, pytest.raises(IngestError) as caught:
                ingest_step(session, run_id, body, limits)
            assert caught.value.status == status, name
            resp = http.post(f"/v1/runs/{run_id}/steps", content=body, headers=OCTET)
            assert (resp.status_code, resp.json()["detail"]) == (status, str(caught.value)), name
        with sessions() as session, pytest.raises(IngestError) as caught:
            ingest_step(session, run_id + 1000, first, limits)
        assert caught.value.status == 404
        with sessions() as session:
            assert ingest_step(session, run_id, first, limits)[1] == "duplicate"
            assert storage.counts(session)["steps"] == 1  # nothing refused was stored
    finally:
        engine.dispose()


def test_alert_to_dict_is_the_rest_apis_alert(sidecar: tuple[TestClient, int, str]) -> None:
    http, run_id, database_url = sidecar
    for s in range(30):
        body = step_payload(s, seed=6, onset=20)
        assert http.post(f"/v1/runs/{run_id}/steps", content=body, headers=OCTET).status_code == 202
    engine = storage.make_engine(database_url)
    sessions = storage.session_factory(engine)
    try:
        processor = StepProcessor(sessions, torch.device("cpu"))
        while processor.process_one():
            pass
        with sessions() as session:
            alerts = storage.list_alerts(session, run_id=run_id)
            assert alerts
            ours = [alert_to_dict(a) for a in alerts]
    finally:
        engine.dispose()
    theirs = http.get("/v1/alerts", params={"run_id": run_id}).json()["alerts"]
    assert ours == [{k: v for k, v in a.items() if k != "reviews"} for a in theirs]


def test_an_outlier_step_is_stored_flagged_and_off_the_map(sidecar: tuple[TestClient, int, str]) -> None:
    """A step 1e20× the run's scale is processed (202, done), flagged ``outlier`` in its scalars, and its
    samples get no map coordinates (they would be ≈ 1e20 off any map); the steps around it are mapped."""
    http, run_id, database_url = sidecar
    for s in range(12):
        p = decode_step(step_payload(s, seed=7))
        if s == 8:
            p = StepPayload(p.step, p.latents * 1e20, p.rewards, p.lr, p.sample_ids, p.texts)
        resp = http.post(f"/v1/runs/{run_id}/steps", content=encode_step(p), headers=OCTET)
        assert resp.status_code == 202, resp.text
    engine = storage.make_engine(database_url)
    try:
        processor = StepProcessor(storage.session_factory(engine), torch.device("cpu"))
        while processor.process_one():
            pass
    finally:
        engine.dispose()
    rows = {r["step"]: r["scalars"] for r in http.get(f"/v1/runs/{run_id}/metrics").json()["rows"]}
    assert sorted(rows) == list(range(12))
    assert rows[8].get("outlier") == 1.0 and all("outlier" not in rows[s] for s in (7, 9))
    for step in (7, 8, 9):
        samples = http.get(f"/v1/runs/{run_id}/steps/{step}/samples", params={"order": "index"}).json()["samples"]
        if step == 8:
            assert all(s["x"] is None and s["y"] is None and s["witness"] is None for s in samples)
        else:
            assert all(s["x"] is not None and abs(s["x"]) < 1e3 for s in samples), step
            assert all(s["witness"] is not None for s in samples), step
    # the outlier left the evidence untouched: no value at its step, the streams go on around it
    evidence = {
        r["step"]: r["evidence"]
        for r in http.get(f"/v1/runs/{run_id}/metrics", params={"evidence": "embedding,reward"}).json()["rows"]
    }
    assert evidence[8] == {"embedding": None, "reward": None}
    assert all(evidence[s]["embedding"] is not None and evidence[s]["reward"] is not None for s in (7, 9))


def test_reference_rewards_feed_the_judge_gap_evidence(sidecar: tuple[TestClient, int, str]) -> None:
    """A step's ``reference_rewards`` (a held-out judge) reach the monitor: the judge-gap stream is stored and is
    the reward evidence, as in an in-process monitor fed the same steps."""
    from monitor.rlhf import RLHFMonitor

    http, run_id, database_url = sidecar
    monitor = RLHFMonitor()
    want = {}
    for s in range(8):
        p = decode_step(step_payload(s, seed=8))
        assert p.rewards is not None
        p = replace(p, reference_rewards=p.rewards - 0.05 * s)  # the proxy drifts away from the judge
        report = monitor.observe(
            s, p.latents, rewards=p.rewards, reference_rewards=p.reference_rewards, texts=p.texts, lr=p.lr
        )
        want[s] = report.evidence
        assert http.post(f"/v1/runs/{run_id}/steps", content=encode_step(p), headers=OCTET).status_code == 202
    engine = storage.make_engine(database_url)
    try:
        processor = StepProcessor(storage.session_factory(engine), torch.device("cpu"))
        while processor.process_one():
            pass
    finally:
        engine.dispose()
    rows = http.get(f"/v1/runs/{run_id}/metrics", params={"evidence": "all"}).json()["rows"]
    assert "judge_gap" in rows[-1]["evidence"] and rows[-1]["evidence"]["reward"] == rows[-1]["evidence"]["judge_gap"]
    for row in rows:
        got = {k: v for k, v in row["evidence"].items() if v is not None}
        assert got == pytest.approx({k: v for k, v in want[row["step"]].items() if math.isfinite(v)}), row["step"]
