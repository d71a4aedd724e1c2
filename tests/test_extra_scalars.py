"""Extra per-step scalars end to end: the step file's ``scalars`` metadata, REST ingest → ``steps.extra_scalars`` →
``/metrics`` rows' ``extra`` (SQLite and PostgreSQL), and ``MonitorClient.observe(scalars=...)`` through the
in-process sink (both transports), the spool and a real sidecar."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from api_helpers import D, ServerProcess, step_payload, wait_processed
from fastapi.testclient import TestClient
from safetensors.torch import save as st_save

import storage
from api.main import create_app
from api.settings import Settings
from monitor.client import ClientConfig, MonitorClient
from monitor.client.items import Item
from monitor.client.pipe import item_from_wire, item_to_wire
from monitor.client.spool import RunSpool
from monitor.processing import StepProcessor
from monitor.stepfile import (
    MAX_SCALAR_NAME_CHARS,
    MAX_SCALARS,
    StepPayload,
    check_scalars,
    decode_step,
    encode_step,
    payload_digest,
)

OCTET = {"Content-Type": "application/octet-stream"}
SENT = {"true_reward": 0.25, "kl": 0.0125, "missing": None}


def payload_with(step: int, scalars: Any, seed: int = 0) -> bytes:
    """``api_helpers.step_payload`` with ``scalars`` (through encode_step, so they are checked)."""
    p = decode_step(step_payload(step, seed=seed))
    return encode_step(
        StepPayload(p.step, p.latents, p.rewards, p.lr, p.sample_ids, p.texts, p.prompts, scalars=scalars)
    )


def raw_payload(step: int, scalars_meta: str) -> bytes:
    """A step file whose ``scalars`` metadata is written by hand (bypassing encode_step's checks)."""
    z = torch.randn(4, D, generator=torch.Generator().manual_seed(step))
    return st_save({"latents": z}, metadata={"step": str(step), "scalars": scalars_meta})


# ---------------------------------------------------------------------------------------------- the wire format
def test_scalars_round_trip_and_old_payloads_still_decode() -> None:
    z = torch.randn(3, 4)
    values = {
        "true_reward": 0.5,
        "kl": np.float32(0.25),
        "tensor": torch.tensor(2.0),
        "n": 3,
        "nan": math.nan,
        "none": None,
    }
    p = StepPayload(step=7, latents=z, scalars=values)
    back = decode_step(encode_step(p))
    assert back.scalars == {"true_reward": 0.5, "kl": 0.25, "tensor": 2.0, "n": 3.0, "nan": None, "none": None}
    assert payload_digest(back) == payload_digest(p)
    # a payload written before the field existed, and one without scalars: None, the same digest as before
    old = st_save({"latents": z}, metadata={"step": "7"})
    assert decode_step(old).scalars is None
    plain = StepPayload(step=7, latents=z)
    assert decode_step(encode_step(plain)).scalars is None
    assert payload_digest(decode_step(old)) == payload_digest(plain) == payload_digest(StepPayload(7, z, scalars={}))
    # other scalars are other content
    assert payload_digest(StepPayload(7, z, scalars={"kl": 0.5})) != payload_digest(
        StepPayload(7, z, scalars={"kl": 0.6})
    )
    # JSON's NaN token (Python's json.dumps writes it) reads as no value
    assert decode_step(raw_payload(1, '{"kl": NaN, "x": 1}')).scalars == {"kl": None, "x": 1.0}


@pytest.mark.parametrize(
    ("scalars", "error", "message"),
    [
        ({"": 1.0}, ValueError, "has 0 characters; use 1 to 64"),
        ({"x" * (MAX_SCALAR_NAME_CHARS + 1): 1.0}, ValueError, "has 65 characters"),
        ({"a\x00b": 1.0}, ValueError, "unprintable characters"),
        ({"line\nbreak": 1.0}, ValueError, "unprintable characters"),
        ({"\ud800": 1.0}, ValueError, "unprintable characters"),
        ({f"s{i}": 1.0 for i in range(MAX_SCALARS + 1)}, ValueError, "more than 64"),
        ({"kl": math.inf}, ValueError, "scalars['kl'] is inf; send a finite number"),
        ({"kl": -math.inf}, ValueError, "is -inf"),
        ({"kl": "0.5"}, TypeError, "scalars['kl'] must be a real number"),
        ({"kl": True}, TypeError, "got bool"),
        ({"kl": torch.ones(2)}, TypeError, "Tensor of shape (2,)"),
        ({"kl": 1 + 2j}, TypeError, "got complex"),
        ({3: 1.0}, TypeError, "names must be strings"),
        ([("kl", 1.0)], TypeError, "must be a mapping"),
    ],
)
def test_bad_scalars_are_refused_with_what_to_change(scalars: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_scalars(scalars)
    # the step file refuses them too, always as ValueError (a payload is data, not a call)
    with pytest.raises(ValueError, match="scalars"):
        encode_step(StepPayload(step=0, latents=torch.zeros(2, 2), scalars=scalars))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("[1, 2]", "metadata 'scalars' must be a JSON object"),
        ("{not json", "metadata 'scalars' must be a JSON object"),
        ('{"kl": "high"}', "metadata 'scalars'['kl'] must be a real number"),
        ('{"kl": Infinity}', "metadata 'scalars'['kl'] is inf"),
        ('{"kl": 1e999}', "is inf"),
        ('{"kl": [1]}', "must be a real number"),
        ('{"a\\u0000": 1}', "unprintable characters"),
    ],
)
def test_decode_refuses_bad_scalars_metadata(meta: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_step(raw_payload(0, meta))


# ---------------------------------------------------------------------------------------------- REST ingest
@pytest.fixture
def api(database_url: str) -> Iterator[tuple[TestClient, StepProcessor]]:
    """The sidecar in-process (no tokens, loopback) and a processor on its database."""
    storage.upgrade(database_url)
    app = create_app(Settings(database_url=database_url, max_n=512, max_d=64), start_workers=False)
    processor = StepProcessor(app.state.services.sessions, torch.device("cpu"), claim_stale_s=60)
    with TestClient(app) as client:
        yield client, processor


def stored_extra(client: TestClient, run_id: int) -> dict[int, Any]:
    """step → the ``steps.extra_scalars`` column as stored (None: SQL NULL)."""
    with client.app.state.services.sessions() as session:  # type: ignore[attr-defined]
        return {s.step: s.extra_scalars for s in storage.list_steps(session, run_id, limit=100)}


def test_rest_ingest_stores_scalars_and_metrics_return_them(api: tuple[TestClient, StepProcessor]) -> None:
    client, processor = api
    run_id = client.post("/v1/runs", json={"name": "extra", "latent_dim": D}).json()["run_id"]
    url = f"/v1/runs/{run_id}/steps"
    first = payload_with(0, SENT)
    assert client.post(url, content=first, headers=OCTET).status_code == 202
    assert client.post(url, content=first, headers=OCTET).json()["status"] == "duplicate"
    # the same step with other scalars is other content: 409, the first copy stays
    other = client.post(url, content=payload_with(0, {"true_reward": 9.0}), headers=OCTET)
    assert other.status_code == 409 and "different content" in other.json()["detail"]
    assert client.post(url, content=step_payload(1), headers=OCTET).status_code == 202  # no scalars
    assert client.post(url, content=payload_with(2, {"kl": np.float64(0.5)}), headers=OCTET).status_code == 202
    assert stored_extra(client, run_id) == {0: SENT, 1: None, 2: {"kl": 0.5}}  # None: SQL NULL, not JSON null
    while processor.process_one():
        pass
    rows = client.get(f"/v1/runs/{run_id}/metrics", params={"names": "C"}).json()["rows"]
    assert [(r["step"], r["extra"]) for r in rows] == [(0, SENT), (1, {}), (2, {"kl": 0.5})]
    assert all(set(r["scalars"]) == {"C"} for r in rows)  # names select observables, never the extra scalars


def test_bad_scalars_get_a_4xx_and_store_nothing(api: tuple[TestClient, StepProcessor]) -> None:
    client, _ = api
    run_id = client.post("/v1/runs", json={"name": "bad-extra", "latent_dim": D}).json()["run_id"]
    with client.app.state.services.sessions() as session:  # type: ignore[attr-defined]
        before = storage.counts(session)
    for meta, message in [
        ('{"a\\u0000": 1}', "unprintable characters"),
        ('{"kl": Infinity}', "send a finite number"),
        ('{"kl": "x"}', "must be a real number"),
        (json.dumps({f"s{i}": 1 for i in range(MAX_SCALARS + 1)}), "more than 64"),
        ('"kl"', "must be a JSON object"),
    ]:
        resp = client.post(f"/v1/runs/{run_id}/steps", content=raw_payload(0, meta), headers=OCTET)
        assert resp.status_code == 400, (meta, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert message in resp.json()["detail"], (meta, resp.json())
    with client.app.state.services.sessions() as session:  # type: ignore[attr-defined]
        assert storage.counts(session) == before


# ---------------------------------------------------------------------------------------------- the client
def observe_steps(client: MonitorClient, steps: int) -> list[dict[str, float | None]]:
    """Observe ``steps`` steps of 8 random latents, with python, numpy and tensor scalars; what should be stored."""
    sent = []
    for s in range(steps):
        z = torch.randn(8, 4, generator=torch.Generator().manual_seed(s))
        scalars = {"true_reward": s / 4, "kl": np.float32(0.5), "loss": torch.tensor(float(s)), "gap": math.nan}
        client.observe(s, latents=z, rewards=torch.arange(8.0), scalars=scalars)
        sent.append({"true_reward": s / 4, "kl": 0.5, "loss": float(s), "gap": None})
    return sent


def test_observe_in_process_stores_scalars(tmp_path: Path, database_url: str) -> None:
    """The in-process sink (thread transport: the process transport's pipe is checked below and over HTTP)."""
    config = ClientConfig(spool_dir=tmp_path / "spool", database_url=database_url, transport="thread")
    with MonitorClient(url=None, run_name="local-extra", config=config) as client:
        sent = observe_steps(client, 4)
        client.observe(4, latents=torch.randn(8, 4))  # none at this step
        assert client.flush(120)
        assert (client.stats.sent, client.stats.rejected, client.stats.dropped) == (5, 0, 0)
        run_id = client.run_id
    assert isinstance(run_id, int) and run_id >= 1  # the run was created in the database
    engine = storage.make_engine(database_url)
    try:
        with storage.session_factory(engine)() as session:
            rows = storage.metrics(session, run_id)
    finally:
        engine.dispose()
    assert [r["extra"] for r in rows] == [*sent, {}]


def test_observe_checks_scalars_at_once(tmp_path: Path) -> None:
    config = ClientConfig(
        spool_dir=tmp_path / "spool", database_url=f"sqlite:///{tmp_path / 'x.db'}", transport="thread"
    )
    z = torch.randn(4, 3)
    with MonitorClient(url=None, run_name="checks", config=config) as client:
        with pytest.raises(ValueError, match=r"scalars\['kl'\] is inf"):
            client.observe(0, latents=z, scalars={"kl": math.inf})
        with pytest.raises(TypeError, match="scalars must be a mapping"):
            client.observe(0, latents=z, scalars=[0.5])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"scalars\['kl'\] must be a real number"):
            client.observe(0, latents=z, scalars={"kl": torch.ones(3)})
        with pytest.raises(ValueError, match="unprintable"):
            client.observe(0, latents=z, scalars={"k\x00l": 1.0})
        client.observe(0, latents=z, scalars={"kl": 1.0})  # the refused calls did not use up step 0
        assert client.flush(60) and client.stats.sent == 1


def test_nan_rows_are_dropped_but_the_scalars_stay_and_spool_keeps_them(tmp_path: Path) -> None:
    """No sidecar: the step goes to the spool as a payload that carries its scalars (the HTTP sender's bytes)."""
    config = ClientConfig(spool_dir=tmp_path / "spool", max_retries=0, timeout_s=1, transport="thread")
    client = MonitorClient("http://127.0.0.1:9", run_name="spooled", config=config)
    z = torch.randn(5, 4)
    z[1, 0] = math.nan
    try:
        client.observe(3, latents=z, scalars={"true_reward": 0.75})
        client.flush(30)
    finally:
        client.close(timeout=30)
    assert client.stats.spooled == 1 and client.stats.dropped_rows == 1
    stored = decode_step(RunSpool(tmp_path / "spool", "spooled").read_step(3))
    assert stored.latents.shape == (4, 4) and stored.scalars == {"true_reward": 0.75}


def test_the_sender_process_pipe_carries_the_scalars() -> None:
    item = Item.of(5, torch.randn(3, 2), None, None, None, None, None, scalars={"kl": 0.5, "gap": None})
    back = item_from_wire(pickle.loads(pickle.dumps(item_to_wire(item))))
    assert back.scalars == {"kl": 0.5, "gap": None} and back.nbytes == item.nbytes > 3 * 2 * 4 + 3 * 4


@pytest.mark.slow
def test_observe_over_http_to_a_real_sidecar(tmp_path: Path) -> None:
    """The process transport (sender process, HTTP) → ``fpmon serve`` → ``GET /metrics`` rows' ``extra``."""
    db = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(db)
    server = ServerProcess(db, tmp_path / "server.log").start()
    try:
        config = ClientConfig(spool_dir=tmp_path / "spool", transport="process")
        with MonitorClient(server.url, run_name="http-extra", config=config) as client:
            sent = observe_steps(client, 3)
            assert client.flush(60) and client.stats.sent == 3
            run_id = client.run_id
        with httpx.Client(base_url=server.url, timeout=10) as http:
            wait_processed(http, int(run_id or 0), 3)
            rows = http.get(f"/v1/runs/{run_id}/metrics").json()["rows"]
        assert [r["extra"] for r in rows] == sent
    finally:
        server.stop()
