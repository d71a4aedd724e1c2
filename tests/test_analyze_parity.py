"""``fpmon analyze`` and the sidecar give the same rows for the same steps, the warm-up steps included.

With ``D0="auto"`` the monitor reports the warm-up steps at D₀ = 1 and, at the step that finishes the
calibration, those steps' scalars rescaled to the calibrated D₀ (``StepReport.recalibrated``). The sidecar
replaces the stored rows with them (``storage.complete_step(rescaled=…)``); ``fpmon analyze`` does the same
through ``monitor.rlhf.with_recalibration``. Here the same steps go (a) through ``monitor.processing`` into a
SQLite database (what a sidecar worker does) and (b) as step files (``monitor.stepfile.save_step``) through
``fpmon analyze --json``; every scalar of every step agrees to a relative 1e-9 (both run the same float64
code; the sidecar additionally round-trips the monitor's state through the database between steps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from api_helpers import D, step_payload
from typer.testing import CliRunner

import storage
from monitor.cli import app
from monitor.processing import StepProcessor, ingest_step
from monitor.rlhf import MonitorConfig, RLHFMonitor, with_recalibration
from monitor.stepfile import decode_step, save_step

WARMUP, STEPS, ONSET = 6, 14, 10
REL = 1e-9


def sidecar_rows(database_url: str, payloads: list[bytes]) -> dict[int, dict[str, float | None]]:
    """The steps through ``monitor.processing`` into the database; the stored scalars per step."""
    storage.upgrade(database_url)
    sessions = storage.session_factory(storage.make_engine(database_url))
    with sessions() as session:
        run, _ = storage.get_or_create_run(session, "parity", D, {"monitor": {"warmup_steps": WARMUP}})
        run_id = run.id
        for body in payloads:
            ingest_step(session, run_id, body)
    processor = StepProcessor(sessions, torch.device("cpu"))
    while processor.process_one():
        pass
    with sessions() as session:
        return {row["step"]: row["scalars"] for row in storage.metrics(session, run_id)}


def analyze_rows(folder: Path, payloads: list[bytes]) -> dict[int, dict[str, float | None]]:
    """The same steps as step files through ``fpmon analyze --json``; its scalars per step."""
    files = []
    for body in payloads:
        payload = decode_step(body)
        files.append(str(folder / f"step_{payload.step:03d}.safetensors"))
        save_step(files[-1], payload)
    out = folder / "report.json"
    result = CliRunner().invoke(app, ["analyze", *files, "--warmup", str(WARMUP), "--json", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return {row["step"]: row["scalars"] for row in json.loads(out.read_text())["rows"]}


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def test_analyze_rows_equal_the_sidecars_including_the_warm_up(tmp_path: Path) -> None:
    payloads = [step_payload(step, seed=3, onset=ONSET) for step in range(STEPS)]
    stored = sidecar_rows(f"sqlite:///{tmp_path / 'fpmon.db'}", payloads)
    offline = analyze_rows(tmp_path, payloads)
    assert sorted(stored) == sorted(offline) == list(range(STEPS))
    for step in range(STEPS):
        assert stored[step].keys() == offline[step].keys(), step
        differ = {
            k: (stored[step][k], offline[step][k]) for k in stored[step] if not same(stored[step][k], offline[step][k])
        }
        assert not differ, f"step {step}: sidecar vs analyze {differ}"
    # the warm-up rows really were rescaled: C is of the same order before and after the calibration step,
    # not ≈ 1/D₀ times smaller (what analyze printed before)
    warm_c = [offline[s]["C"] for s in range(1, WARMUP)]
    later_c = [offline[s]["C"] for s in range(WARMUP, ONSET)]
    assert all(c is not None for c in warm_c + later_c)
    assert 0.1 < sorted(warm_c)[len(warm_c) // 2] / sorted(later_c)[len(later_c) // 2] < 10


def test_with_recalibration_replaces_the_named_steps_only() -> None:
    monitor = RLHFMonitor(MonitorConfig(warmup_steps=3))
    reports = [monitor.observe(s, torch.randn(64, D, generator=torch.Generator().manual_seed(s))) for s in range(5)]
    raw_c = reports[1].scalars["C"]
    fixed = with_recalibration(reports)
    calibrating = [r for r in reports if r.recalibrated]
    assert len(calibrating) == 1 and [s for s, _ in calibrating[0].recalibrated] == [0, 1, 2]
    rescaled = dict(calibrating[0].recalibrated)
    for before, after in zip(reports, fixed, strict=True):
        assert after.step == before.step and after.div is before.div
        expected = rescaled.get(before.step, before.scalars)
        assert after.scalars.keys() == expected.keys()
        assert all(same(after.scalars[k], expected[k]) or math.isnan(expected[k]) for k in expected)
    assert not same(fixed[1].scalars["C"], raw_c)  # the warm-up report was rescaled, in a copy:
    assert reports[1].scalars["C"] == raw_c and fixed[4] is reports[4]
