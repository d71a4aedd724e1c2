"""A shortened `make demo`: the GRPO demo through the CLI, with its own sidecar, writes steps and metrics to SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import storage
from benchmarks.render_demo_doc import structure_differences
from monitor.cli import app

pytestmark = pytest.mark.slow

STEPS = 6


def test_fpmon_demo_grpo_short_run_fills_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--steps", str(STEPS), "--warmup-steps", "20", "--out", str(out), "--sidecar-timeout", "120"]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Per step: rewards (TRL) and observables (sidecar)" in result.output
    assert f"fpmon serve --database-url sqlite:///{out / 'fpmon.db'}" in result.output
    assert "Hook errors" not in result.output
    assert not (drift := structure_differences(result.output)), drift  # docs/demo.md shows what the demo prints

    db = sqlite3.connect(out / "fpmon.db")
    runs = db.execute("SELECT id, name, latent_dim, steps_processed FROM runs").fetchall()
    assert len(runs) == 1
    run_id, name, latent_dim, processed = runs[0]
    assert name.startswith("toy-grpo-proxy-seed0-")
    assert latent_dim == 64  # ModelEmbedder on the tiny LM: its hidden size
    assert processed == STEPS
    rows = db.execute("SELECT step, status, n, scalars FROM steps WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()
    assert [r[0] for r in rows] == list(range(1, STEPS + 1))  # TRL's global_step, as the hook ships it
    assert all(status == "done" and n == 64 for _, status, n, _ in rows)  # 8 prompts × 8 generations
    later = [json.loads(r[3]) for r in rows[2:]]  # from the third step on, the flow between steps is defined
    for scalars in later:
        for key in ("C", "S_dot", "W2_ref", "div_q99", "reward_mean"):
            assert scalars.get(key) is not None, (key, scalars)
    # the judge's and the proxy's step means travel as extra scalars: /metrics rows' "extra" (storage.metrics)
    engine = storage.make_engine(f"sqlite:///{out / 'fpmon.db'}")
    try:
        with storage.session_factory(engine)() as session:
            extra_rows = storage.metrics(session, run_id)
    finally:
        engine.dispose()
    assert [r["step"] for r in extra_rows] == list(range(1, STEPS + 1))
    for r in extra_rows:
        true, proxy = r["extra"]["true_reward"], r["extra"]["proxy_reward"]
        assert 0.0 <= true <= 1.0 and true <= proxy <= true + 1.0, r  # proxy = true + 1.0 × the exploit share
    texts = db.execute("SELECT COUNT(*), COUNT(text), COUNT(reward) FROM step_samples WHERE run_id = ?", (run_id,))
    total, with_text, with_reward = texts.fetchone()
    assert total == with_text == with_reward == STEPS * 64
    assert not list(tmp_path.glob("fpmon-spool*"))  # the client's spool lives in the demo folder
    db.close()


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
