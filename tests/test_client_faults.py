"""MonitorClient under faults: no sidecar (spool, then `fpmon sync`), a sidecar that hangs, a sidecar
SIGKILLed and restarted mid-run, 5xx/429 retried, 4xx rejected, and the queue's byte bound."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch
from api_helpers import ServerProcess, reference_scalars, step_payload, wait_processed
from typer.testing import CliRunner

import storage
from monitor import ClientConfig, MonitorClient
from monitor.cli import app
from monitor.client.sender_process import SenderProcess
from monitor.client.spool import RunInfo, RunSpool
from monitor.stepfile import StepPayload, decode_step

torch.set_num_threads(1)
runner = CliRunner()
#: the sidecar processes in one process (worker thread): starts faster on a small machine
SERVER_ENV = {"FPMON_WORKER_MODE": "thread", "FPMON_CLAIM_STALE_S": "1"}


def fast(tmp_path: Path, **overrides: object) -> ClientConfig:
    """Tiny timeouts and backoff, so that faults resolve in fractions of a second."""
    values: dict = {
        "spool_dir": tmp_path / "spool",
        "timeout_s": 2.0,
        "max_retries": 2,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.1,
        "poll_alerts_s": 0.5,
    }
    values.update(overrides)
    return ClientConfig(**values)  # type: ignore[arg-type]


def payloads(n_steps: int, seed: int, onset: int | None = None) -> list[StepPayload]:
    return [decode_step(step_payload(s, seed=seed, onset=onset)) for s in range(n_steps)]


def observe(client: MonitorClient, p: StepPayload) -> float:
    """One observe; returns how long the calling thread was held, seconds."""
    started = time.perf_counter()
    client.observe(p.step, p.texts, p.rewards, latents=p.latents, sample_ids=p.sample_ids, lr=p.lr)
    return time.perf_counter() - started


def wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``condition`` every 10 ms until it holds or ``timeout_s`` passed (the caller asserts afterwards)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def step_rows(database_url: str, run_name: str) -> list[tuple[int, str]]:
    engine = storage.make_engine(database_url)
    try:
        with storage.session_factory(engine)() as session:
            run = storage.get_run_by_name(session, run_name)
            assert run is not None, f"run {run_name!r} was never created in {database_url}"
            assert run.latent_dim > 0 and run.steps_received >= run.steps_processed
            return [(s.step, s.status) for s in storage.list_steps(session, run.id, limit=1000)]
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------- a fake sidecar
class FakeSidecar:
    """A minimal stand-in for the REST API in a thread: records the steps it accepts, in arrival order.

    ``failures``: statuses answered to the next step posts (then it accepts); ``refuse``: step → (status,
    message) answered every time; ``token``: required bearer token; ``delay_s``: time per step post.
    """

    def __init__(self) -> None:
        self.failures: list[int] = []
        self.refuse: dict[int, tuple[int, str]] = {}
        self.token: str | None = None
        self.delay_s = 0.0
        self.accepted: list[int] = []
        self.attempts: dict[int, int] = {}
        self.run_posts = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.reply(200, {"status": "ok"} if self.path == "/healthz" else {"alerts": []})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    with fake.lock:
                        fake.run_posts += self.path == "/v1/runs"
                    return self.reply(401, {"detail": "invalid bearer token"})
                if self.path == "/v1/runs":
                    with fake.lock:
                        fake.run_posts += 1
                    return self.reply(201, {"run_id": 1, **json.loads(body)})
                step = decode_step(body).step
                time.sleep(fake.delay_s)
                with fake.lock:
                    fake.attempts[step] = fake.attempts.get(step, 0) + 1
                    if fake.failures:
                        status = fake.failures.pop(0)
                        return self.reply(status, {"detail": f"transient {status}"})
                    if step in fake.refuse:
                        status, message = fake.refuse[step]
                        return self.reply(status, {"detail": message})
                    duplicate = step in fake.accepted
                    if not duplicate:
                        fake.accepted.append(step)
                self.reply(200 if duplicate else 202, {"run_id": 1, "step": step})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeSidecar]:
    server = FakeSidecar()
    yield server
    server.close()


# ---------------------------------------------------------------------------------------------- (a) no sidecar
def test_no_sidecar_spools_everything_then_sync_delivers_each_step_once(tmp_path: Path) -> None:
    """Nobody listens: the 20-step loop finishes, every step is in the spool; the sidecar starts, `fpmon
    sync` delivers each step exactly once (processed in order), and a second sync sends nothing."""
    db = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(db)
    server = ServerProcess(db, tmp_path / "server.log", **SERVER_ENV)  # its port, not listening yet
    steps = payloads(20, seed=4)
    client = MonitorClient(server.url, run_name="offline run", config=fast(tmp_path))
    loop_started = time.perf_counter()
    for p in steps:
        observe(client, p)
    loop_s = time.perf_counter() - loop_started
    client.close(timeout=20)
    stats = client.stats
    assert loop_s < 5.0  # returned: the loop never waited for the network
    assert (stats.spooled, stats.sent, stats.dropped, stats.rejected) == (20, 0, 0, 0)
    spool = RunSpool(tmp_path / "spool", "offline run")
    assert spool.steps() == list(range(20)) and spool.read_info() is not None
    server.start()
    try:
        result = runner.invoke(app, ["sync", str(tmp_path / "spool"), "--url", server.url])
        assert result.exit_code == 0, result.output
        assert "offline run" in result.output and spool.steps() == []
        with httpx.Client(base_url=server.url, timeout=10) as http:
            run_id = http.get("/v1/runs").json()["runs"][0]["run_id"]
            run = wait_processed(http, run_id, 20)
            assert (run["steps_received"], run["steps_processed"]) == (20, 20)
            again = runner.invoke(app, ["sync", str(tmp_path / "spool"), "--url", server.url])
            assert again.exit_code == 0, again.output
            assert http.get(f"/v1/runs/{run_id}").json()["steps_received"] == 20
        assert step_rows(db, "offline run") == [(s, "done") for s in range(20)]
    finally:
        server.stop()


def test_observe_returns_promptly_while_the_sender_is_stuck(tmp_path: Path) -> None:
    """A 'sidecar' that accepts connections and never answers holds the background thread in its first
    request (timeout 3 s); meanwhile 20 observe calls return at once, and at close every step is spooled."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        client = MonitorClient(url, run_name="stuck", config=fast(tmp_path, timeout_s=3.0, max_retries=0))
        held = [observe(client, p) for p in payloads(20, seed=5)]
        stats = client.stats
        assert stats.sent == 0 and stats.spooled == 0  # the sender has not come back from step 0 yet
        assert max(held) < 0.5 and sum(held) < 2.0, held
        client.close(timeout=0.5)  # the sender is still stuck: close spools what is left once it returns
    assert client.stats.spooled == 20 and RunSpool(tmp_path / "spool", "stuck").steps() == list(range(20))


# ---------------------------------------------------------------------------------------------- (b) SIGKILL
def test_sidecar_killed_and_restarted_mid_run_loses_no_step(tmp_path: Path) -> None:
    """The sidecar is SIGKILLed after ~10 of 40 steps and restarted on the same port and database: the
    client spools while it is down and drains the spool by itself when it answers again — all 40 steps
    arrive once, are processed in order, with the scalars of an uninterrupted in-process run."""
    db = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(db)
    server = ServerProcess(db, tmp_path / "server.log", **SERVER_ENV).start()
    steps = payloads(40, seed=6, onset=28)
    config = fast(tmp_path, latent_dtype=torch.float32, backoff_max_s=0.3)
    client = MonitorClient(server.url, run_name="killed", config=config)
    try:
        for p in steps[:12]:
            observe(client, p)
        wait_for(lambda: client.stats.sent >= 10, 30)
        server.kill()  # mid-run: steps may be in flight, queued or half processed
        for p in steps[12:26]:
            observe(client, p)
        server.start()  # same port, same database
        for p in steps[26:]:
            observe(client, p)
        assert client.flush(90)
        stats = client.stats
        assert stats.spooled > 0 and stats.spool_backlog == 0 and stats.rejected == 0 and stats.dropped == 0
        assert client.spool_path.is_dir() and RunSpool(tmp_path / "spool", "killed").steps() == []
        with httpx.Client(base_url=server.url, timeout=10) as http:
            run = wait_processed(http, client.run_id or 0, 40)
            assert (run["steps_received"], run["steps_processed"]) == (40, 40)
            rows = http.get(f"/v1/runs/{run['run_id']}/metrics").json()["rows"]
        assert step_rows(db, "killed") == [(s, "done") for s in range(40)]
        wait_for(lambda: bool(client.alerts()), 10)  # the alerts, polled by the background thread over HTTP
        assert client.alerts() and 28 <= min(a["step"] for a in client.alerts()) <= 33  # e-detectors: a few steps
        expected = reference_scalars([step_payload(s, seed=6, onset=28) for s in range(40)])
        for row in rows:
            for name, value in row["scalars"].items():
                want = expected[row["step"]][name]
                assert (value is None and want != want) or value == pytest.approx(want, rel=1e-9, abs=1e-12)
    finally:
        client.close(timeout=10)
        server.stop()


# ---------------------------------------------------------------------------------------------- (c) (d) (e)
@pytest.mark.parametrize("transport", ["process", "thread"])
def test_5xx_and_429_are_retried_with_backoff(tmp_path: Path, fake: FakeSidecar, transport: str) -> None:
    """503, 429 and 500 answers are retried (not spooled) and the steps arrive once each, in order (with the
    sender process and with the thread transport)."""
    fake.failures = [503, 429, 500]
    config = fast(tmp_path, max_retries=5, transport=transport)
    with MonitorClient(fake.url, run_name="flaky", config=config) as client:
        for p in payloads(10, seed=7):
            observe(client, p)
        assert client.flush(30)
        stats = client.stats
    assert stats.retried == 3 and stats.sent == 10 and stats.spooled == 0 and "transient" in (stats.last_error or "")
    assert fake.accepted == list(range(10)) and fake.attempts[0] == 4


def test_4xx_goes_to_rejected_with_the_message_and_is_not_retried(tmp_path: Path, fake: FakeSidecar) -> None:
    """A 422 for one step: that step goes to rejected/ with the server's message, once; the others arrive.
    A wrong token (401): each step is rejected after one attempt — never retried forever, never lost."""
    fake.refuse = {3: (422, "latents contain NaN or Inf; drop or fix those samples")}
    with MonitorClient(fake.url, run_name="refused", config=fast(tmp_path)) as client:
        for p in payloads(6, seed=8):
            observe(client, p)
        assert client.flush(30)
        stats = client.stats
    assert (stats.rejected, stats.retried, stats.sent, stats.spooled) == (1, 0, 5, 0)
    assert fake.accepted == [0, 1, 2, 4, 5] and fake.attempts[3] == 1
    spool = RunSpool(tmp_path / "spool", "refused")
    assert spool.rejected() == [3] and spool.steps() == []
    message = (spool.path / "rejected" / "step-0000000003.txt").read_text()
    assert "422" in message and "NaN or Inf" in message
    assert decode_step((spool.path / "rejected" / "step-0000000003.safetensors").read_bytes()).step == 3

    fake.token = "right"
    with MonitorClient(fake.url, token="wrong", run_name="badtoken", config=fast(tmp_path)) as client:
        for p in payloads(3, seed=9):
            observe(client, p)
        assert client.flush(30)
        stats = client.stats
    assert (stats.rejected, stats.retried, stats.sent) == (3, 0, 0) and fake.run_posts == 1 + 3
    assert RunSpool(tmp_path / "spool", "badtoken").rejected() == [0, 1, 2]


@pytest.mark.parametrize("transport", ["process", "thread"])
def test_full_queue_spools_overflow_without_blocking_and_delivers_in_order(
    tmp_path: Path, fake: FakeSidecar, transport: str
) -> None:
    """With a queue bound smaller than one step, every step that finds the queue occupied (with the process
    transport: or still held for the sender) goes straight to the spool from the calling thread; all 30
    arrive later, once each and in step order."""
    fake.delay_s = 0.03
    config = fast(tmp_path, max_queue_bytes=1, transport=transport)
    with MonitorClient(fake.url, run_name="overflow", config=config) as client:
        held = [observe(client, p) for p in payloads(30, seed=10)]
        assert client.stats.spooled > 0  # overflowed while the sender was busy
        assert max(held) < 0.5, held
        assert client.flush(60)
        stats = client.stats
    assert stats.sent == 30 and stats.spool_backlog == 0 and stats.dropped == 0
    assert fake.accepted == list(range(30))


def test_sync_reports_rejections_and_an_unreachable_sidecar(tmp_path: Path, fake: FakeSidecar) -> None:
    """`fpmon sync`: a refused step is moved to rejected/ (exit code 1), the rest is delivered; against a
    sidecar that does not answer the files stay and the exit code is 1."""
    spool = RunSpool(tmp_path / "spool", "later")
    spool.write_info(RunInfo("later", 32, {}))
    for s in range(4):
        spool.write_step(s, step_payload(s, seed=11))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    down = runner.invoke(app, ["sync", str(tmp_path / "spool"), "--url", dead_url])
    assert down.exit_code == 1 and spool.steps() == [0, 1, 2, 3]
    fake.refuse = {2: (409, "step 2 of run 1 was already received with different content")}
    result = runner.invoke(app, ["sync", str(tmp_path / "spool"), "--url", fake.url, "--run", "later"])
    assert result.exit_code == 1, result.output
    assert fake.accepted == [0, 1, 3] and spool.steps() == [] and spool.rejected() == [2]
    assert "different content" in (spool.path / "rejected" / "step-0000000002.txt").read_text()
    again = runner.invoke(app, ["sync", str(tmp_path / "spool"), "--url", fake.url])
    assert again.exit_code == 0 and fake.accepted == [0, 1, 3]


def test_a_vanished_run_is_created_again(tmp_path: Path, fake: FakeSidecar) -> None:
    """A 404 on a step (the sidecar's database was replaced behind the same URL) re-creates the run once
    and sends the step again, instead of rejecting it."""
    with MonitorClient(fake.url, run_name="recreated", config=fast(tmp_path)) as client:
        observe(client, payloads(1, seed=12)[0])
        assert client.flush(30)
        fake.failures = [404]
        observe(client, payloads(2, seed=12)[1])
        assert client.flush(30)
        stats = client.stats
    assert (stats.sent, stats.rejected, stats.spooled) == (2, 0, 0)
    assert fake.run_posts == 2 and fake.accepted == [0, 1]


def test_unwritable_spool_counts_dropped_with_an_error_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No sidecar and a spool that cannot be written (its parent is a file): the steps are counted as
    dropped and each loss is logged as an error — never silent — and observe still never raises."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool's parent folder should be")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    config = fast(tmp_path, spool_dir=blocker / "spool", max_retries=0)
    with caplog.at_level("ERROR", logger="fpmon.client"):
        client = MonitorClient(url, run_name="nowhere", config=config)
        for p in payloads(3, seed=13):
            observe(client, p)
        client.close(timeout=10)
    stats = client.stats
    assert (stats.dropped, stats.spooled, stats.sent, stats.queued_steps) == (3, 0, 0, 0)
    assert "could not be written" in (stats.last_error or "")
    assert sum("DROPPED" in r.getMessage() for r in caplog.records) == 3
    with pytest.raises(ValueError, match="http"):
        MonitorClient("ftp://example.org", run_name="x", config=config)


# ---------------------------------------------------------------------------------------------- the sender process
def test_sender_process_killed_mid_run_loses_no_step(tmp_path: Path, fake: FakeSidecar) -> None:
    """The process transport: the sender is SIGKILLed after some steps were sent; the client starts another,
    hands it every step the dead one had not finished, and all 30 arrive once each, in order."""
    fake.delay_s = 0.01
    client = MonitorClient(fake.url, run_name="sender killed", config=fast(tmp_path))
    assert client.config.transport == "process"
    steps = payloads(30, seed=14)
    try:
        for p in steps[:12]:
            observe(client, p)
        wait_for(lambda: client.stats.sent >= 5, 60)
        first = client.sender_pid
        assert first is not None and first != os.getpid() and client.stats.sent >= 5
        os.kill(first, signal.SIGKILL)  # mid-run: steps are in its queue and in flight
        for p in steps[12:]:
            observe(client, p)
        assert client.flush(60)
        stats = client.stats
        assert client.sender_pid not in (None, first)  # a new sender took over
    finally:
        client.close(timeout=10)
    assert fake.accepted == list(range(30))  # duplicates of re-sent steps are answered 200, not re-added
    assert stats.sent >= 30 and (stats.dropped, stats.rejected, stats.queued_steps, stats.spool_backlog) == (0, 0, 0, 0)


def test_training_process_killed_the_sender_still_delivers(tmp_path: Path, fake: FakeSidecar) -> None:
    """The training process is SIGKILLed (no close, no atexit) while its sender still holds most of the 10
    steps it was handed: the sender sees the pipe close and delivers every one of them before exiting. (Steps
    still in the training process's own memory die with it, as with any in-memory queue.)"""
    fake.delay_s = 0.1
    script = f"""
import os, signal, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from api_helpers import step_payload
from monitor import ClientConfig, MonitorClient
from monitor.stepfile import decode_step
client = MonitorClient({fake.url!r}, run_name="orphan", config=ClientConfig(spool_dir={str(tmp_path / "spool")!r}))
steps = [decode_step(step_payload(s, seed=15)) for s in range(10)]
client.observe(0, steps[0].texts, steps[0].rewards, latents=steps[0].latents)
while client.stats.sent < 1:  # the sender is up and reading its pipe
    time.sleep(0.01)
for p in steps[1:]:
    client.observe(p.step, p.texts, p.rewards, latents=p.latents)
while client.queue_length:  # handed to the sender (the pipe and its memory)
    time.sleep(0.01)
time.sleep(0.05)
print("sent before the kill:", client.stats.sent, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    sent_before = int(proc.stdout.split("sent before the kill:")[1])
    assert sent_before < 8  # most steps were still with the sender when the training process died
    wait_for(lambda: fake.accepted == list(range(10)), 60)
    assert fake.accepted == list(range(10)), proc.stderr[-2000:]
    assert RunSpool(tmp_path / "spool", "orphan").steps() == []


@pytest.mark.parametrize(
    "command", [("/nonexistent/python",), (sys.executable, "-c", "import sys; sys.exit(3)")], ids=["absent", "crashes"]
)
def test_a_sender_that_cannot_run_falls_back_to_the_thread_transport(
    tmp_path: Path, fake: FakeSidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, command: tuple
) -> None:
    """A sender that cannot start, or dies at once every time (max_sender_restarts=2): after the restarts
    the client says so in an error log and sends from its own thread — every step still arrives, in order."""
    monkeypatch.setattr(SenderProcess, "command", command)
    client = MonitorClient(fake.url, run_name="fallback", config=fast(tmp_path, max_sender_restarts=2))
    with caplog.at_level("WARNING", logger="fpmon.client"), client:
        for p in payloads(8, seed=16):
            observe(client, p)
        assert client.flush(60)
        stats = client.stats
    assert fake.accepted == list(range(8)) and (stats.sent, stats.dropped, stats.queued_steps) == (8, 0, 0)
    assert client.sender_pid is None and client.transport == "thread"
    messages = [r.getMessage() for r in caplog.records]
    assert any("from a background thread of the training process" in m for m in messages), messages
    if command[0] != "/nonexistent/python":
        assert sum("starting another" in m for m in messages) == 2 and "3 times" in " ".join(messages)


def test_sender_runs_niced_on_the_cpus_it_was_given(tmp_path: Path, fake: FakeSidecar) -> None:
    """The sender process yields the CPU to training (niceness +10 by default) and keeps to sender_cpus."""
    cpu = max(os.sched_getaffinity(0))
    config = fast(tmp_path, sender_cpus={cpu})
    with MonitorClient(fake.url, run_name="niced", config=config) as client:
        wait_for(lambda: client.sender_pid is not None, 60)
        pid = client.sender_pid
        assert pid is not None and pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        assert os.sched_getaffinity(pid) == {cpu}
        observe(client, payloads(1, seed=17)[0])
        assert client.flush(30)
    assert fake.accepted == [0] and client.sender_pid is None  # closed with the client
    with pytest.raises(ValueError, match="transport"):
        ClientConfig(transport="carrier pigeon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sender_nice"):
        ClientConfig(sender_nice=25)
    with pytest.raises(ValueError, match="sender_cpus"):
        ClientConfig(sender_cpus=frozenset())


def test_a_bug_in_the_forwarding_thread_loses_no_step(
    tmp_path: Path, fake: FakeSidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while handing step 3 to the sender: the error is logged with its traceback,
    the thread transport takes over with that step, and all 8 steps arrive once each, in order."""
    import monitor.client.sender as sender_module

    real = sender_module.item_to_wire

    def flaky(item: object) -> dict:
        if getattr(item, "step", None) == 3:
            raise RuntimeError("simulated bug while encoding for the sender")
        return real(item)  # type: ignore[arg-type]

    monkeypatch.setattr(sender_module, "item_to_wire", flaky)
    with (
        caplog.at_level("ERROR", logger="fpmon.client"),
        MonitorClient(fake.url, run_name="bug", config=fast(tmp_path)) as client,
    ):
        for p in payloads(8, seed=18):
            observe(client, p)
        assert client.flush(60)
        stats = client.stats
    assert fake.accepted == list(range(8)) and (stats.dropped, stats.queued_steps) == (0, 0)
    assert any("simulated bug" in r.getMessage() for r in caplog.records)
