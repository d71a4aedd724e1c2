"""`make demo` end to end, and the README's hero image: the full GRPO demo (`fpmon demo`: TRL's GRPOTrainer on a
tiny LM whose proxy reward pays for the phrase 'trust me', with its own sidecar) fills its database, prints what
docs/demo.md shows, raises a reward-hacking alert whose responses are the exploit's, and the review page's alert
view of it is taken by a real browser.

Runs the full 120-step demo (about a minute on two idle cores), so it is marked slow; FPMON_DEMO_DB=<path to a
demo's fpmon.db> reuses one instead (then the demo's output and database checks are not run).
FPMON_SKIP_BROWSER=1 skips the browser half only. Writes the docs' ``review-alert.png`` (the alert, its responses
and the map: the README's hero) and ``review-step.png`` (the step view opened from the alert step's transition
mark) into ``DOCS_IMG`` (docs/img under ``make docs-images``), and the whole pages under ``test-artifacts/review/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from api_helpers import ServerProcess
from review_page_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DOCS_IMG
from typer.testing import CliRunner

import storage
from api.cli import app
from benchmarks.render_demo_doc import structure_differences

pytestmark = pytest.mark.slow
#: the demo's defaults (monitor/demo/grpo.py): steps, and completions per step (8 prompts × 8 generations)
DEMO_STEPS, DEMO_N = 120, 64
#: the part of the page the docs show: the full width, the top 1300 px
HERO_CLIP = {"x": 0, "y": 0, "width": 1440, "height": 1300}


def check_demo_run(output: str, out: Path) -> None:
    """What `fpmon demo` printed and stored: the table docs/demo.md shows, one run of DEMO_STEPS processed steps of
    DEMO_N responses (texts, rewards), the observables from the third step on, and the judge's and the proxy's
    step means as extra scalars (``/metrics`` rows' ``extra``)."""
    assert "Per step: rewards (TRL) and observables (sidecar)" in output
    assert f"fpmon serve --database-url sqlite:///{out / 'fpmon.db'}" in output
    assert "Hook errors" not in output
    assert not (drift := structure_differences(output)), drift  # docs/demo.md shows what the demo prints
    db = sqlite3.connect(out / "fpmon.db")
    try:
        ((run_id, name, latent_dim, processed),) = db.execute(
            "SELECT id, name, latent_dim, steps_processed FROM runs"
        ).fetchall()
        assert name.startswith("toy-grpo-proxy-seed0-")
        assert latent_dim == 64  # ModelEmbedder on the tiny LM: its hidden size
        assert processed == DEMO_STEPS
        rows = db.execute("SELECT step, status, n, scalars FROM steps WHERE run_id = ? ORDER BY step", (run_id,))
        rows = rows.fetchall()
        assert [r[0] for r in rows] == list(range(1, DEMO_STEPS + 1))  # TRL's global_step, as the hook ships it
        assert all(status == "done" and n == DEMO_N for _, status, n, _ in rows)
        for _, _, _, scalars in rows[2:]:  # from the third step on, the flow between steps is defined
            for key in ("C", "S_dot", "W2_ref", "div_q99", "reward_mean"):
                assert json.loads(scalars).get(key) is not None, (key, scalars)
        texts = db.execute("SELECT COUNT(*), COUNT(text), COUNT(reward) FROM step_samples WHERE run_id = ?", (run_id,))
        assert texts.fetchone() == (DEMO_STEPS * DEMO_N,) * 3
    finally:
        db.close()
    engine = storage.make_engine(f"sqlite:///{out / 'fpmon.db'}")
    try:
        with storage.session_factory(engine)() as session:
            extra_rows = storage.metrics(session, run_id)
    finally:
        engine.dispose()
    assert [r["step"] for r in extra_rows] == list(range(1, DEMO_STEPS + 1))
    for r in extra_rows:
        true, proxy = r["extra"]["true_reward"], r["extra"]["proxy_reward"]
        # proxy = true + 1.0 × the exploit share (means of float32 rewards: 1e-6 of rounding)
        assert 0.0 <= true <= 1.0 and true - 1e-6 <= proxy <= true + 1.0 + 1e-6, r
    assert not list(out.parent.glob("fpmon-spool*"))  # the client's spool lives in the demo folder


def demo_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A GRPO demo's database: FPMON_DEMO_DB's (copied, so the test writes nothing there) or a fresh demo run,
    checked with :func:`check_demo_run`."""
    given = os.environ.get("FPMON_DEMO_DB")
    if given:
        copy = tmp_path / "fpmon.db"
        shutil.copyfile(given, copy)
        return copy
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--sidecar-timeout", "300"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    check_demo_run(result.output, out)
    return out / "fpmon.db"


def test_the_grpo_demo_catches_the_exploit_and_the_page_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect, sync_playwright

    db = demo_database(tmp_path, monkeypatch)
    if os.environ.get("FPMON_SKIP_BROWSER") == "1":
        pytest.skip("FPMON_SKIP_BROWSER=1: the demo was checked, its page is not")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium`, or FPMON_SKIP_BROWSER=1", pytrace=False)
    url = f"sqlite:///{db}"
    storage.upgrade(url)  # a database from an older fpmon: to head (no-op otherwise)
    engine = storage.make_engine(url)
    with storage.session_factory(engine)() as session:
        (run,) = storage.list_runs(session)
        alerts = storage.list_alerts(session, run_id=run.id)
    engine.dispose()
    hacking = [a for a in alerts if a.type == "POTENTIAL_REWARD_HACKING"]
    assert hacking, f"the demo raised no reward-hacking alert: {[(a.type, a.step) for a in alerts]}"
    alert = hacking[-1]  # the first one raised
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(url, tmp_path / "server.log", FPMON_WORKER_MODE="thread").start()
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                # the run view; the alert's step opened from its transition mark (the first one if thinned out)
                page.goto(f"{server.url}/#/runs/{run.id}")
                w2 = page.locator('.chart[data-series="W2_ref"]')
                expect(w2.locator("canvas")).to_be_visible()
                page.screenshot(path=ARTIFACTS / "demo-run.png", full_page=True)
                marks = w2.locator(f'.transition-marker[data-step="{alert.step}"]')
                mark = marks if marks.count() else w2.locator(".transition-marker").first
                step = int(mark.get_attribute("data-step") or "-1")
                mark.click()
                expect(page).to_have_url(re.compile(rf"#/runs/{run.id}/steps/{step}$"))
                expect(page.locator("#samples-flagged li.sample").first).to_be_visible()
                page.screenshot(path=ARTIFACTS / "demo-step.png", full_page=True)
                page.screenshot(path=DOCS_IMG / "review-step.png", full_page=True, clip=HERO_CLIP)

                page.goto(f"{server.url}/#/alerts/{alert.id}")
                expect(page.locator("#samples-flagged li.sample").first).to_be_visible()
                expect(page.locator("#alert-evidence canvas")).to_be_visible()
                texts = page.locator("#samples-flagged li.sample .text").all_inner_texts()
                assert texts and all(t.strip() and t != "(no text sent)" for t in texts)
                assert any("trust me" in t.lower() for t in texts), texts  # the exploit the alert is about
                page.screenshot(path=ARTIFACTS / "demo-alert.png", full_page=True)
                # the hero: the alert's header, why, map, review and its responses (the top of the page)
                page.screenshot(path=DOCS_IMG / "review-alert.png", full_page=True, clip=HERO_CLIP)
            finally:
                browser.close()
    finally:
        server.stop()
    assert errors == []
    for path in (DOCS_IMG / "review-alert.png", DOCS_IMG / "review-step.png"):
        assert path.stat().st_size > 20_000, path
