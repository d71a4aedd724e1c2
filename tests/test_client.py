"""MonitorClient: in-process mode (same storage, same results as the sidecar), a real sidecar over SQLite
and PostgreSQL, input validation on the calling thread, and the spool's building blocks."""

from __future__ import annotations

import math
import os
import random
import time
import zlib
from pathlib import Path

import httpx
import pytest
import torch
from api_helpers import ServerProcess, reference_scalars, step_payload, wait_processed

import storage
from monitor import ClientConfig, MonitorClient
from monitor.client import monitor_config_diff
from monitor.client.sinks import RetryPolicy
from monitor.client.spool import RunInfo, RunSpool, sanitise_run_name
from monitor.fpe import FPEConfig
from monitor.rlhf import MonitorConfig
from monitor.stepfile import StepPayload, decode_step

torch.set_num_threads(1)


def decoded(n_steps: int, seed: int, onset: int | None = None) -> list[StepPayload]:
    return [decode_step(step_payload(s, seed=seed, onset=onset)) for s in range(n_steps)]


def observe_payload(client: MonitorClient, p: StepPayload) -> None:
    client.observe(p.step, p.texts, p.rewards, latents=p.latents, sample_ids=p.sample_ids, lr=p.lr)


def text_embedder(texts: list[str]) -> torch.Tensor:
    """A tiny deterministic encoder: each text → a fixed 16-d Gaussian vector seeded by its crc32."""
    return torch.stack(
        [torch.randn(16, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
    )


def test_in_process_mode_same_storage_same_results(tmp_path: Path) -> None:
    """url=None: 30 steps (an exploit cluster from step 20) are stored and processed in SQLite by the
    sidecar's own worker code; the scalars equal an uninterrupted RLHFMonitor's (float32 on the wire), and
    the alert is in the database and in client.alerts()."""
    db = f"sqlite:///{tmp_path / 'inproc.db'}"
    config = ClientConfig(spool_dir=tmp_path / "spool", latent_dtype=torch.float32, database_url=db, poll_alerts_s=0.1)
    payloads = decoded(30, seed=1, onset=20)
    with MonitorClient(url=None, run_name="inproc", config=config) as client:
        for p in payloads:
            observe_payload(client, p)
        assert client.flush(120)
        stats = client.stats
        assert (stats.sent, stats.spooled, stats.dropped, stats.rejected, stats.queued_steps) == (30, 0, 0, 0, 0)
        assert client.sender_pid not in (None, os.getpid())  # the observables were computed in the sender
        deadline = time.monotonic() + 10
        while not client.alerts() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = client.alerts()
    engine = storage.make_engine(db)
    with storage.session_factory(engine)() as session:
        run = storage.get_run_by_name(session, "inproc")
        assert run is not None and client.run_id == run.id
        assert (run.latent_dim, run.steps_received, run.steps_processed) == (32, 30, 30)
        steps = storage.list_steps(session, run.id, limit=100)
        assert [s.step for s in steps] == list(range(30)) and {s.status for s in steps} == {"done"}
        assert len(storage.step_samples(session, run.id, 29, order="index", limit=1000)) == 96
        alerts = storage.list_alerts(session, run_id=run.id)
        assert alerts and 20 <= min(a.step for a in alerts) <= 25  # e-detectors: a few steps of evidence
        rows = storage.metrics(session, run.id, None, None, None, 1000)
    engine.dispose()
    assert seen and {a["step"] for a in seen} == {a.step for a in alerts}
    expected = reference_scalars([step_payload(s, seed=1, onset=20) for s in range(30)])
    assert [r["step"] for r in rows] == sorted(expected)
    for row in rows:
        for name, value in row["scalars"].items():
            want = expected[row["step"]][name]
            assert (value is None and math.isnan(want)) or value == pytest.approx(want, rel=1e-9, abs=1e-12), name


def test_in_process_drops_nonfinite_rows_and_counts_them(tmp_path: Path) -> None:
    """NaN/Inf rows (latents or rewards) are removed before storing: the step keeps its other rows."""
    db = f"sqlite:///{tmp_path / 'nan.db'}"
    config = ClientConfig(spool_dir=tmp_path / "spool", database_url=db)
    with MonitorClient(url=None, run_name="nan", config=config) as client:
        for p in decoded(4, seed=2):
            z, r = p.latents.clone(), p.rewards.clone()
            if p.step == 2:
                z[0, 0], z[5, 3], r[7] = float("nan"), float("inf"), float("nan")
            observe_payload(client, StepPayload(p.step, z, r, p.lr, p.sample_ids, p.texts))
        assert client.flush(60)
        assert client.stats.dropped_rows == 3 and client.stats.sent == 4
    engine = storage.make_engine(db)
    with storage.session_factory(engine)() as session:
        run = storage.get_run_by_name(session, "nan")
        assert run is not None and run.id == client.run_id and run.steps_processed == 4
        samples = storage.step_samples(session, run.id, 2, order="index", limit=1000)
        assert len(samples) == 93 and {"s2-0", "s2-5", "s2-7"}.isdisjoint(s.sample_id for s in samples)
    engine.dispose()


def test_real_sidecar_embeds_responses_in_background(tmp_path: Path, database_url: str) -> None:
    """A real `fpmon serve` (SQLite and PostgreSQL): 30 steps given as responses + an embedder arrive once
    each, in order, and are processed; the texts are stored with the samples."""
    storage.upgrade(database_url)
    server = ServerProcess(database_url, tmp_path / "server.log", FPMON_WORKER_MODE="thread").start()
    config = ClientConfig(spool_dir=tmp_path / "spool", timeout_s=5, poll_alerts_s=0.2)
    try:
        with MonitorClient(server.url, run_name="embedded", embedder=text_embedder, config=config) as client:
            for s in range(30):
                texts = [f"step {s} answer {i} " + "x" * (i % 7) for i in range(24)]
                client.observe(s, texts, rewards=[0.1 * i for i in range(24)], prompts=["p"] * 24, lr=1e-6)
            assert client.flush(60)
            stats = client.stats
            assert (stats.sent, stats.spooled, stats.retried, stats.rejected) == (30, 0, 0, 0)
            assert stats.embed_seconds > 0
            run_id = client.run_id
        assert isinstance(run_id, int) and run_id >= 1  # known once the first step was delivered
        with httpx.Client(base_url=server.url, timeout=10) as http:
            run = wait_processed(http, run_id, 30)
            assert (run["steps_received"], run["steps_processed"], run["latent_dim"]) == (30, 30, 16)
            samples = http.get(f"/v1/runs/{run_id}/steps/29/samples", params={"order": "index"}).json()["samples"]
            assert [s["text"] for s in samples] == [f"step 29 answer {i} " + "x" * (i % 7) for i in range(24)]
        engine = storage.make_engine(database_url)
        with storage.session_factory(engine)() as session:
            assert [(s.step, s.status) for s in storage.list_steps(session, run_id, limit=100)] == [
                (s, "done") for s in range(30)
            ]
        engine.dispose()
    finally:
        server.stop()


def test_observe_rejects_bad_input_at_once(tmp_path: Path) -> None:
    """The caller's bugs raise on the calling thread with a message that says what to change; the
    sidecar (not listening here) plays no part."""
    config = ClientConfig(spool_dir=tmp_path / "spool", max_retries=0, timeout_s=1)
    client = MonitorClient("http://127.0.0.1:9", run_name="bad", config=config)
    z = torch.randn(4, 8)
    try:
        cases: list[tuple[type[Exception], str, dict]] = [
            (ValueError, "between 0 and", {"step": -1, "latents": z}),
            (TypeError, "step must be an int", {"step": True, "latents": z}),
            (TypeError, "latents must be a torch.Tensor", {"step": 0, "latents": [[0.0] * 8] * 4}),
            (ValueError, "2-D float tensor", {"step": 0, "latents": torch.randn(8)}),
            (ValueError, "rewards has 3 entries", {"step": 0, "latents": z, "rewards": [1.0, 2.0, 3.0]}),
            (ValueError, "responses has 3 entries", {"step": 0, "latents": z, "responses": ["a", "b", "c"]}),
            (TypeError, "sequence of strings", {"step": 0, "responses": "one string"}),
            (ValueError, "no latents and no embedder", {"step": 0, "responses": ["a", "b"]}),
            (ValueError, "pass the responses", {"step": 0}),
            (ValueError, "at least 2", {"step": 0, "latents": z[:1]}),
            (ValueError, "lr must be", {"step": 0, "latents": z, "lr": -1.0}),
            (ValueError, "prompts has 2 entries", {"step": 0, "latents": z, "prompts": ["p", "q"]}),
        ]
        for exc_type, message, kwargs in cases:
            with pytest.raises(exc_type, match=message):
                client.observe(**kwargs)
        client.observe(3, latents=z)
        with pytest.raises(ValueError, match="steps must increase"):
            client.observe(3, latents=z)
        with pytest.raises(ValueError, match="latent dimension is 8"):
            client.observe(4, latents=torch.randn(4, 5))
    finally:
        client.close(timeout=10)
    with pytest.raises(RuntimeError, match="closed"):
        client.observe(5, latents=z)
    assert client.stats.spooled == 1 and RunSpool(tmp_path / "spool", "bad").steps() == [3]
    with pytest.raises(ValueError, match="latent_dtype"):
        ClientConfig(latent_dtype=torch.int8)


def test_spool_building_blocks(tmp_path: Path) -> None:
    """Folder names are safe and distinct, writes leave no temporary files, the backoff stays in its bounds,
    and only non-default MonitorConfig entries (never inf) go into the run's JSON config."""
    assert sanitise_run_name("grpo-7b.run_3") == "grpo-7b.run_3"
    assert sanitise_run_name("a b") != sanitise_run_name("a/b") and "/" not in sanitise_run_name("a/b")
    with pytest.raises(ValueError, match="non-empty"):
        sanitise_run_name("  ")
    spool = RunSpool(tmp_path, "r/1")
    spool.write_info(RunInfo("r/1", 8, {"monitor": {}}))
    for step in (12, 3, 7):
        spool.write_step(step, b"payload")
    spool.reject(7, None, "HTTP 422: bad")
    assert spool.steps() == [3, 12] and spool.rejected() == [7]
    assert (spool.path / "rejected" / "step-0000000007.txt").read_text() == "HTTP 422: bad\n"
    assert not [p for p in spool.path.rglob("*") if p.name.startswith(".tmp")]
    assert RunSpool.from_folder(spool.path).run_name == "r/1"
    policy = RetryPolicy(max_retries=5, base_s=0.5, max_s=3.0)
    rng = random.Random(0)
    for attempt in range(1, 10):
        cap = min(3.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap and max(delays) > 0.8 * cap
    assert policy.delay(1, retry_after=2.0, rng=rng) >= 2.0
    assert monitor_config_diff(MonitorConfig()) == {}
    custom = MonitorConfig(warmup_steps=5, fpe=FPEConfig(k=4))
    assert monitor_config_diff(custom) == {"warmup_steps": 5, "fpe": {"k": 4}}
    assert MonitorConfig.from_dict(monitor_config_diff(custom)) == custom


def test_embedder_failure_drops_that_step_with_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An embedder that raises (or returns the wrong shape) in the background: that step is counted as
    dropped with an error log, the other steps go through, and observe never raised."""

    def broken(texts: list[str]) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory (simulated)")

    def wrong_shape(texts: list[str]) -> torch.Tensor:
        return torch.zeros(len(texts) + 1, 16)

    db = f"sqlite:///{tmp_path / 'emb.db'}"
    config = ClientConfig(spool_dir=tmp_path / "spool", database_url=db)
    responses = [[f"step {s} answer {i}" for i in range(8)] for s in range(4)]
    client = MonitorClient(url=None, run_name="emb", embedder=text_embedder, config=config)
    with caplog.at_level("ERROR", logger="fpmon.client"):
        client.observe(0, responses[0])
        client.observe(1, responses[1], embedder=broken)
        client.observe(2, responses[2], embedder=wrong_shape)
        client.observe(3, responses[3])
        assert client.flush(60)
        client.close()
    stats = client.stats
    assert (stats.sent, stats.dropped, stats.rejected, stats.spooled) == (2, 2, 0, 0)
    assert "embed" in (stats.last_error or "")
    dropped_logs = [r.getMessage() for r in caplog.records if "DROPPED" in r.getMessage()]
    assert len(dropped_logs) == 2 and "out of memory" in dropped_logs[0] and "shape (9, 16)" in dropped_logs[1]
    engine = storage.make_engine(db)
    with storage.session_factory(engine)() as session:
        run = storage.get_run_by_name(session, "emb")
        assert run is not None and [s.step for s in storage.list_steps(session, run.id)] == [0, 3]
    engine.dispose()


# ------------------------------------------------------------------------ reference_rewards (a held-out judge)
def test_observe_checks_reference_rewards_at_once(tmp_path: Path) -> None:
    config = ClientConfig(spool_dir=tmp_path / "spool", max_retries=0, timeout_s=1, transport="thread")
    client = MonitorClient("http://127.0.0.1:9", run_name="judge-bad", config=config)
    z = torch.randn(4, 8)
    try:
        cases: list[tuple[type[Exception], str, dict]] = [
            (ValueError, "reference_rewards need rewards", {"reference_rewards": [1.0, 2.0, 3.0, 4.0]}),
            (
                ValueError,
                "reference_rewards has 3 entries for a batch of 4",
                {"rewards": [0.0] * 4, "reference_rewards": [1.0, 2.0, 3.0]},
            ),
            (
                TypeError,
                "reference_rewards must be real numbers",
                {"rewards": [0.0] * 4, "reference_rewards": torch.randn(4, dtype=torch.complex64)},
            ),
            (
                TypeError,
                "reference_rewards must be a tensor or a sequence of real numbers",
                {"rewards": [0.0] * 4, "reference_rewards": ["a", "b", "c", "d"]},
            ),
        ]
        for exc_type, message, kwargs in cases:
            with pytest.raises(exc_type, match=message):
                client.observe(0, latents=z, **kwargs)
        assert client.queue_length == 0 and client.stats.queued_steps == 0  # nothing was queued
    finally:
        client.close(timeout=10)


@pytest.mark.parametrize("transport", ["process", "thread"])
def test_reference_rewards_reach_the_payload_and_nan_rows_leave_every_array(tmp_path: Path, transport: str) -> None:
    """No sidecar: the steps are spooled as payloads. A row with a NaN/Inf latent, reward or reference reward is
    dropped from the latents, rewards, reference rewards and every string list alike."""
    config = ClientConfig(
        spool_dir=tmp_path / "spool", max_retries=0, timeout_s=1, transport=transport, latent_dtype=torch.float32
    )
    client = MonitorClient("http://127.0.0.1:9", run_name="judge-spool", config=config)
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    r = torch.arange(6, dtype=torch.float32)
    ref = r - 0.5
    z[4, 0], r[3], ref[1] = float("inf"), float("nan"), float("nan")
    ids = [f"s{i}" for i in range(6)]
    try:
        client.observe(0, [f"t{i}" for i in range(6)], r, ["p"] * 6, latents=z, sample_ids=ids, reference_rewards=ref)
        client.observe(1, latents=z[:3], rewards=[1.0, 2.0, 3.0])  # no judge at this step
        client.flush(30)
    finally:
        client.close(timeout=30)
    assert client.stats.spooled == 2 and client.stats.dropped_rows == 3
    spool = RunSpool(tmp_path / "spool", "judge-spool")
    first = decode_step(spool.read_step(0))
    keep = [0, 2, 5]
    assert first.sample_ids == [ids[i] for i in keep] and first.texts == [f"t{i}" for i in keep]
    assert torch.equal(first.latents, z[keep]) and torch.equal(first.rewards, r[keep])
    assert first.reference_rewards is not None and torch.equal(first.reference_rewards, ref[keep])
    assert decode_step(spool.read_step(1)).reference_rewards is None


def test_in_process_mode_stores_the_judges_rewards(tmp_path: Path) -> None:
    """url=None: steps with reference_rewards are validated, stored with them and processed."""
    db = f"sqlite:///{tmp_path / 'judge.db'}"
    config = ClientConfig(spool_dir=tmp_path / "spool", latent_dtype=torch.float32, database_url=db)
    payloads = decoded(4, seed=4)
    with MonitorClient(url=None, run_name="judge", config=config) as client:
        for p in payloads:
            assert p.rewards is not None
            client.observe(p.step, p.texts, p.rewards, latents=p.latents, reference_rewards=p.rewards - 0.25)
        assert client.flush(120)
        assert (client.stats.sent, client.stats.rejected, client.stats.dropped) == (4, 0, 0)
    engine = storage.make_engine(db)
    with storage.session_factory(engine)() as session:
        run = storage.get_run_by_name(session, "judge")
        assert run is not None and run.steps_processed == 4
        assert {s.status for s in storage.list_steps(session, run.id, limit=10)} == {"done"}
        for p in payloads:
            body = storage.load_payload(session, run.id, p.step)
            assert body is not None and len(body) > 0
            stored = decode_step(body)
            assert stored.step == p.step and stored.texts == p.texts
            assert stored.reference_rewards is not None and p.rewards is not None
            torch.testing.assert_close(stored.reference_rewards, p.rewards - 0.25)
    engine.dispose()
