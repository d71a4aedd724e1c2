"""The GRPO demo's other modes and option checks (the full `make demo` run, its output and its database are checked
by tests/test_review_demo_page.py, which also takes the README's hero screenshot of its alert)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitor.cli import app

pytestmark = pytest.mark.slow


def test_fpmon_demo_control_run_and_option_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    bad = runner.invoke(app, ["demo", "--embedder", "bert"])
    assert bad.exit_code != 0 and "--embedder must be 'reference' or 'minilm'" in bad.output
    out = tmp_path / "demo"
    args = ["demo", "--control", "--steps", "3", "--warmup-steps", "5", "--out", str(out), "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "rewarded by control_reward (no exploit)" in result.output
    assert "split (trailing 5-step mean gap > 0.3, fixed in advance): never" in result.output
    db = sqlite3.connect(out / "fpmon.db")
    ((name, processed),) = db.execute("SELECT name, steps_processed FROM runs").fetchall()
    db.close()
    assert name.startswith("toy-grpo-control-seed1-") and processed == 3
    # the particle-solver demo stays reachable
    particles = runner.invoke(
        app, ["demo", "--particles", "--steps", "30", "--transition", "20", "--n", "96", "--latent-dim", "32"]
    )
    assert particles.exit_code == 0, particles.output
    assert "Observables per step" in particles.output and "Known transition at step 20" in particles.output
    assert "--transition must be between" in runner.invoke(app, ["demo", "--particles", "--steps", "10"]).output
