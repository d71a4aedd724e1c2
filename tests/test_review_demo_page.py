"""The README's hero image: the review page's alert view on a real GRPO demo database (`fpmon demo`: TRL's
GRPOTrainer on a tiny LM whose proxy reward pays for the phrase 'trust me'), taken by a real browser.

Runs the full 120-step demo (one to four minutes on two cores), so it is marked slow; FPMON_DEMO_DB=<path to a
demo's fpmon.db> reuses one instead. Writes ``docs/img/review-alert.png`` (the alert, its responses and the map:
the README's hero) and ``docs/img/review-step.png`` (the step view opened from the alert step's transition mark),
and the whole pages under ``test-artifacts/review/``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from api_helpers import ServerProcess
from review_page_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DOCS_IMG
from typer.testing import CliRunner

import storage
from api.cli import app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("FPMON_SKIP_BROWSER") == "1", reason="FPMON_SKIP_BROWSER=1: browser skipped"),
]
#: the part of the page the docs show: the full width, the top 1300 px
HERO_CLIP = {"x": 0, "y": 0, "width": 1440, "height": 1300}


def demo_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A GRPO demo's database: FPMON_DEMO_DB's (copied, so the test writes nothing there) or a fresh demo run."""
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
    return out / "fpmon.db"


def test_hero_screenshot_of_the_grpo_demo_alert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium`, or FPMON_SKIP_BROWSER=1", pytrace=False)
    db = demo_database(tmp_path, monkeypatch)
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
