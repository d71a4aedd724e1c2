"""fpmon in the trainer's own loggers (``monitor.trl.loggers``): ``fpmon/…`` values in every ``report_to``
integration, alerts as warnings with their review link, and ``on_alert`` on the training thread.

- A tiny GRPO run (in-process client, process transport) with ``report_to=["tensorboard"]``: the event files,
  read back, hold ``train/fpmon/<observable>`` equal to what was stored for the processed step they name.
- A plain ``Trainer`` (tiny Llama, no generation) with a fake client whose alerts the test schedules: one
  warning and one ``on_alert`` call per alert; ``on_alert`` stops training and checkpoints; a raising
  ``on_alert`` does not break training.
- ``MonitorClient.latest()`` in-process (thread transport) equals the run's latest processed step in the database;
  over HTTP, ``GET /v1/runs/{id}`` carries ``latest_step`` / ``latest_scalars`` and ``HttpSink.latest`` reads them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from api_helpers import step_payload
from test_api import OCTET, app_client, auth, create_run, drain
from test_trl_hook import FakeClient, PoolEmbedder, count_a, tiny_model, tiny_tokenizer, trainer_args
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

import storage
from monitor.client import ClientConfig, LatestStep, MonitorClient
from monitor.trl import FPEMonitorCallback, wrap_reward_funcs
from monitor.trl.loggers import log_values, place_before_loggers, review_link

__all__ = ["app_client"]  # test_api's in-process sidecar (TestClient + StepProcessor), on SQLite and PostgreSQL

URL = "http://sidecar.test:8700"


class ScheduledClient(FakeClient):
    """A fake client at ``URL`` whose alerts appear at the training steps of ``schedule`` (step → alerts) and
    whose latest processed step is ``latest``."""

    url = URL

    def __init__(self, schedule: dict[int, list[dict[str, Any]]], latest: LatestStep | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.latest_step = latest

    def latest(self) -> LatestStep | None:
        return self.latest_step


class Scheduler(TrainerCallback):
    """Publishes ``client.schedule[s]`` (newest first, as the API) when training step s begins."""

    def __init__(self, client: ScheduledClient) -> None:
        self.client = client

    def on_step_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        for alert in self.client.schedule.get(state.global_step + 1, []):
            self.client.alert_list.insert(0, alert)


def no_embedder(texts: list[str]) -> torch.Tensor:
    """The plain-Trainer runs ship nothing; an embedder keeps the hook from copying the policy to embed."""
    return torch.zeros(len(texts), 2)


def alert(alert_id: int, step: int) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "run_id": 1,
        "step": step,
        "type": "PHASE_TRANSITION",
        "status": "open",
        "reasons": [f"evidence crossed 1/alpha at step {step}", "C rose", "W2_ref rose"],
    }


def run_trainer(
    tmp_path: Path, callbacks: list[TrainerCallback], max_steps: int, added: TrainerCallback | None = None, **kw: Any
) -> Any:
    """A plain ``Trainer`` on the tiny Llama (language modelling of fixed token rows): fast, no generation.
    ``added``: a callback added with ``trainer.add_callback`` after construction."""
    from datasets import Dataset
    from transformers import Trainer

    rows = [[1, 4 + i % 20, 5 + i % 7, 6, 2] for i in range(64)]
    args = TrainingArguments(**trainer_args(tmp_path, max_steps=max_steps, per_device_train_batch_size=2, **kw))
    trainer = Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": rows, "labels": rows}),
        callbacks=callbacks,
    )
    if added is not None:
        trainer.add_callback(added)
    trainer.train()
    return trainer


def warnings_about(caplog: pytest.LogCaptureFixture, alert_id: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fpmon.trl" and f"alert #{alert_id} " in r.getMessage()]


# ------------------------------------------------------------------------------------------------ units
def test_log_values_pick_finite_observables_and_the_link_names_the_alert_route() -> None:
    latest = LatestStep(7, {"C": 0.25, "S_dot": None, "W2_ref": 1.5, "degenerate": 1.0})
    assert log_values(latest, 2, None) == {
        "fpmon/C": 0.25,
        "fpmon/W2_ref": 1.5,
        "fpmon/processed_step": 7.0,
        "fpmon/alerts": 2.0,
    }
    assert log_values(latest, None, ["degenerate", "nope"]) == {"fpmon/degenerate": 1.0, "fpmon/processed_step": 7.0}
    assert log_values(None, 0, None) == {"fpmon/alerts": 0.0}
    assert LatestStep.of(3, {"C": float("nan"), "H": 2, "x": "text", "f": True}) == LatestStep(3, {"C": None, "H": 2.0})
    assert LatestStep.of(None, {"C": 1.0}) is None
    assert review_link(URL + "/", 12) == f"{URL}/#/alerts/12"
    assert "#/alerts/12" in review_link(None, 12)
    with pytest.raises(TypeError, match="on_alert"):
        FPEMonitorCallback(FakeClient(), on_alert="stop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="log_scalars"):
        FPEMonitorCallback(FakeClient(), log_scalars="C")


def test_the_callback_moves_before_the_integrations() -> None:
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback

    cb = FPEMonitorCallback(FakeClient())
    other = TrainerCallback()
    callbacks = [DefaultFlowCallback(), TensorBoardCallback(), other, cb, PrinterCallback()]
    assert place_before_loggers(callbacks, cb)
    assert [type(c) for c in callbacks] == [
        DefaultFlowCallback,
        FPEMonitorCallback,
        TensorBoardCallback,
        TrainerCallback,
        PrinterCallback,
    ]
    assert not place_before_loggers(callbacks, FPEMonitorCallback(FakeClient()))  # not in the list: untouched


def test_a_callback_added_after_construction_still_reaches_tensorboard(tmp_path: Path) -> None:
    from transformers.integrations import TensorBoardCallback

    client = ScheduledClient({2: [alert(1, 1)]}, latest=LatestStep(1, {"W2_ref": 0.75}))
    cb = FPEMonitorCallback(client, embedder=no_embedder)
    trainer = run_trainer(tmp_path, [Scheduler(client)], max_steps=3, added=cb, report_to=["tensorboard"])
    order = [type(c) for c in trainer.callback_handler.callbacks]
    assert cb.trainer_logs.placed and order.index(FPEMonitorCallback) < order.index(TensorBoardCallback)
    tags = read_scalars(tmp_path / "out")
    assert tags["train/fpmon/W2_ref"] == {1: 0.75, 2: 0.75, 3: 0.75}
    assert tags["train/fpmon/alerts"] == {1: 0.0, 2: 1.0, 3: 1.0}


def test_alerts_from_before_a_resume_are_not_announced(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    client = ScheduledClient({})
    cb = FPEMonitorCallback(client, embedder=no_embedder, on_alert=lambda a, c: calls.append(a["alert_id"]))
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    state, control = TrainerState(global_step=5), TrainerControl()
    cb.on_train_begin(args, state, control)
    client.alert_list = [alert(2, 6), alert(1, 4)]
    with caplog.at_level(logging.WARNING, logger="fpmon.trl"):
        state.global_step = 6
        cb.on_step_end(args, state, control)
        cb.on_step_end(args, state, control)
    assert calls == [2] and not warnings_about(caplog, 1) and len(warnings_about(caplog, 2)) == 1


# ------------------------------------------------------------------------------------ training runs
def test_each_alert_is_warned_once_with_its_link_and_handed_to_on_alert_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = ScheduledClient({2: [alert(7, 1)], 4: [alert(8, 3)]}, latest=LatestStep(3, {"C": 0.5, "H": None}))
    seen: list[tuple[int, int]] = []
    state_of: dict[str, TrainerState] = {}

    class Keep(TrainerCallback):
        def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            state_of["state"] = state

    def on_alert(a: dict[str, Any], control: TrainerControl) -> None:
        seen.append((a["alert_id"], state_of["state"].global_step))

    cb = FPEMonitorCallback(client, embedder=no_embedder, on_alert=on_alert)
    with caplog.at_level(logging.WARNING, logger="fpmon.trl"):
        trainer = run_trainer(tmp_path, [Scheduler(client), Keep(), cb], max_steps=6)
    assert trainer.state.global_step == 6 and not cb.stats.errors
    assert seen == [(7, 2), (8, 4)]  # at the end of the step that first saw it, once
    for alert_id, step in ((7, 1), (8, 3)):
        (line,) = warnings_about(caplog, alert_id)
        assert f"{URL}/#/alerts/{alert_id}" in line and f"at step {step}" in line and "PHASE_TRANSITION" in line
        assert "evidence crossed 1/alpha" in line and "(+1 more)" in line
    # on_log: every training log carries the values, and trainer_state's log history too
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["fpmon/alerts"] for h in logs] == [0, 1, 1, 2, 2, 2]
    assert all(h["fpmon/C"] == 0.5 and h["fpmon/processed_step"] == 3 and "fpmon/H" not in h for h in logs)


def test_on_alert_can_checkpoint_and_stop_training(tmp_path: Path) -> None:
    client = ScheduledClient({3: [alert(1, 2)]})

    def stop(a: dict[str, Any], control: TrainerControl) -> None:
        control.should_save = True
        control.should_training_stop = True

    cb = FPEMonitorCallback(client, embedder=no_embedder, on_alert=stop)
    trainer = run_trainer(tmp_path, [Scheduler(client), cb], max_steps=8)
    assert trainer.state.global_step == 3
    assert (tmp_path / "out" / "checkpoint-3").is_dir() and not (tmp_path / "out" / "checkpoint-8").exists()


def test_a_raising_on_alert_does_not_break_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = ScheduledClient({1: [alert(1, 1)], 2: [alert(2, 2)]})

    def broken(a: dict[str, Any], control: TrainerControl) -> None:
        raise ValueError(f"my handler failed on {a['alert_id']}")

    cb = FPEMonitorCallback(client, embedder=no_embedder, on_alert=broken)
    with caplog.at_level(logging.WARNING, logger="fpmon.trl"):
        trainer = run_trainer(tmp_path, [Scheduler(client), cb], max_steps=4)
    assert trainer.state.global_step == 4
    assert cb.stats.errors == {"on_alert:ValueError": 2}
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "on_alert raised" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


class WaitProcessed(TrainerCallback):
    """After each step: flush the client and wait until it has polled that step's results (never a sleep-and-
    hope: the fpmon values logged for step s then belong to step s)."""

    def __init__(self, client: MonitorClient) -> None:
        self.client = client

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        assert self.client.flush(60)
        wait_for(lambda: (self.client.latest() or LatestStep(-1)).step >= state.global_step, 60)


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """tag → {step: value} from TensorBoard's event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def stored_scalars(database_url: str, run_name: str) -> dict[int, dict[str, Any]]:
    engine = storage.make_engine(database_url)
    try:
        with storage.session_factory(engine)() as session:
            run = storage.get_run_by_name(session, run_name)
            assert run is not None
            return {s.step: s.scalars or {} for s in storage.list_steps(session, run.id) if s.status == "done"}
    finally:
        engine.dispose()


def test_tensorboard_records_the_fpmon_values_of_a_grpo_run(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    database_url = f"sqlite:///{tmp_path / 'fpmon.db'}"
    cfg = ClientConfig(
        spool_dir=tmp_path / "spool",
        database_url=database_url,
        latent_dtype=torch.float32,
        poll_alerts_s=0.05,
        transport="process",  # the latest step travels from the sender process's Reporter
    )
    client = MonitorClient(None, run_name="grpo-tensorboard", config=cfg)
    cb = FPEMonitorCallback(client, embedder=PoolEmbedder())
    args = GRPOConfig(
        **trainer_args(tmp_path, report_to=["tensorboard"]),
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=6,
        max_steps=4,
        learning_rate=1e-3,
    )
    try:
        trainer = GRPOTrainer(
            model=tiny_model(),
            reward_funcs=wrap_reward_funcs([count_a], cb),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [f"say {c}" for c in "abcdefghijklmnop"] * 4}),
            processing_class=tiny_tokenizer(),
            callbacks=[cb, WaitProcessed(client)],
        )
        trainer.train()
    finally:
        client.close()
    assert trainer.state.global_step == 4 and not cb.stats.errors and cb.trainer_logs.placed
    tags = read_scalars(tmp_path / "out")
    stored = stored_scalars(database_url, "grpo-tensorboard")
    assert tags["train/fpmon/processed_step"] == {s: float(s) for s in (1, 2, 3, 4)}
    assert tags["train/fpmon/alerts"] == dict.fromkeys((1, 2, 3, 4), 0.0)  # 4 steps: the detectors still warm up
    observables = {t.removeprefix("train/fpmon/") for t in tags if t.startswith("train/fpmon/")}
    observables -= {"processed_step", "alerts"}
    assert {"C", "W2_ref", "reward_mean"} <= observables
    for name in observables:
        for step, value in tags[f"train/fpmon/{name}"].items():
            want = stored[step][name]
            assert want is not None and math.isfinite(want) and value == pytest.approx(want, rel=1e-6, abs=1e-9)
    # the trainer's own values are still there, beside fpmon's
    assert "train/loss" in tags


def test_latest_in_process_is_the_runs_latest_processed_step(tmp_path: Path) -> None:
    """The thread transport (the process transport: the TensorBoard run above)."""
    database_url = f"sqlite:///{tmp_path / 'fpmon.db'}"
    cfg = ClientConfig(spool_dir=tmp_path / "spool", database_url=database_url, transport="thread", poll_alerts_s=0.05)
    gen = torch.Generator().manual_seed(0)
    with MonitorClient(None, run_name="latest", config=cfg) as client:
        assert client.latest() is None
        for step in range(1, 6):
            client.observe(step, latents=torch.randn(24, 8, generator=gen), rewards=torch.rand(24, generator=gen))
        assert client.flush(60)
        wait_for(lambda: client.latest() is not None and client.latest().step == 5, 30)  # type: ignore[union-attr]
        latest = client.latest()
    assert latest is not None
    stored = stored_scalars(database_url, "latest")[5]
    assert latest.scalars == {k: (v if v is None or math.isfinite(v) else None) for k, v in stored.items()}
    assert latest.scalars["reward_mean"] is not None


def test_the_run_resource_carries_the_latest_step_and_the_http_sink_reads_it(app_client: Any) -> None:
    from monitor.client.sinks import HttpSink

    client, processor = app_client
    run_id = create_run(client, "latest-http")
    sink = HttpSink("http://testserver")
    sink.http = client  # the TestClient is an httpx.Client on the app
    client.headers.update(auth())
    first = client.get(f"/v1/runs/{run_id}").json()
    assert first["latest_step"] is None and first["latest_scalars"] is None and sink.latest(run_id) is None
    for s in range(3):
        resp = client.post(f"/v1/runs/{run_id}/steps", content=step_payload(s, seed=2), headers=OCTET)
        assert resp.status_code == 202, resp.text
    assert drain(processor) == 3
    run = client.get(f"/v1/runs/{run_id}").json()
    (row,) = client.get(f"/v1/runs/{run_id}/metrics", params={"start": 2}).json()["rows"]
    assert run["latest_step"] == 2 and run["latest_scalars"] == row["scalars"]
    assert sink.latest(run_id) == LatestStep.of(2, row["scalars"])


def test_one_warning_per_alert_when_the_client_logs_alerts_itself(caplog: pytest.LogCaptureFixture) -> None:
    """MonitorClient warns about each alert itself (``announces_alerts``): the hook then keeps its line at DEBUG,
    so a hooked run shows one warning per alert, and still hands each alert to ``on_alert`` once."""
    assert MonitorClient.announces_alerts is True
    calls: list[int] = []
    client = ScheduledClient({})
    client.announces_alerts = True  # type: ignore[attr-defined]
    cb = FPEMonitorCallback(client, embedder=no_embedder, on_alert=lambda a, c: calls.append(a["alert_id"]))
    args = TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True)
    state, control = TrainerState(global_step=1), TrainerControl()
    cb.on_train_begin(args, state, control)
    client.alert_list = [alert(3, 2)]
    with caplog.at_level(logging.DEBUG, logger="fpmon.trl"):
        state.global_step = 2
        cb.on_step_end(args, state, control)
        cb.on_step_end(args, state, control)
    (line,) = [r for r in caplog.records if r.name == "fpmon.trl" and "alert #3 " in r.getMessage()]
    assert line.levelno == logging.DEBUG and f"{URL}/#/alerts/3" in line.getMessage()
    assert calls == [3]
