"""The review page in a real browser: Playwright drives Debian's headless Chromium against a real sidecar
(``fpmon serve`` on loopback, write and read tokens) filled by a short particle-solver run with a known
transition. Screenshots of every view go to ``test-artifacts/review/``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``); FPMON_SKIP_BROWSER=1 skips it explicitly.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from api_helpers import ServerProcess, wait_processed
from sqlalchemy import select

import storage
from monitor.fpe.scenarios import new_minimum_scenario
from monitor.stepfile import StepPayload, encode_step

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "review"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WRITE, READ = "page-write-token", "page-read-token"
N, D, STEPS, TRANSITION, LATE = 128, 64, 72, 50, 2
#: a response that would run script if the page ever rendered texts as HTML
XSS_TEXT = '<img src=x onerror="window.__xss = 1"><b>bold?</b> answer'
NOTE = "Benign: the new basin is the task's intended optimum (checked 20 samples)."
#: the series line colour of the charts (app.js) and the flagged colour of the map, RGB
LINE_RGB, FLAGGED_RGB = (56, 96, 224), (214, 51, 108)
#: the evidence chart's embedding evidence, one stream's (shown on demand) and its threshold line (app.js)
EMBEDDING_RGB, STREAM_RGB, THRESHOLD_RGB = (112, 72, 232), (151, 117, 250), (224, 49, 49)

pytestmark = pytest.mark.skipif(
    os.environ.get("FPMON_SKIP_BROWSER") == "1", reason="FPMON_SKIP_BROWSER=1: browser test skipped on request"
)


def particle_run() -> list[bytes]:
    """The particle solver's new-minimum scenario (transition at TRANSITION) as RLHF steps: each particle is
    a response, embedded in D dimensions by a fixed random map plus noise; reward = −loss/100."""
    torch.manual_seed(0)
    scenario = new_minimum_scenario(n=N, d=4, seed=0, transition_step=TRANSITION, n_steps=STEPS + LATE)
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(4, D, generator=torch.Generator().manual_seed(1)) / 2.0
    z = scenario.z_init
    payloads = []
    for step in range(STEPS + LATE):
        t = step * scenario.dt
        z = scenario.dynamics.step(z, t, scenario.dt, gen)
        latents = z @ embed + 0.05 * torch.randn(N, D, generator=gen)
        rewards = -scenario.dynamics.loss_fn(z, t) / 100.0
        texts = [f"Step {step}, response {i}: the answer lands at ‖z‖ = {float(z[i].norm()):.2f}." for i in range(N)]
        texts[0] = XSS_TEXT
        prompts = [f"Question {i % 16}: where is the minimum?" for i in range(N)]
        ids = [f"s{step}-{i}" for i in range(N)]
        payloads.append(
            encode_step(
                StepPayload(
                    step=step, latents=latents, rewards=rewards, texts=texts, prompts=prompts, sample_ids=ids, lr=1e-6
                )
            )
        )
    return payloads


@pytest.fixture
def filled_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, int, str, list[bytes]]]:
    """A sidecar with the run's first STEPS steps processed; the LATE last payloads are not sent yet."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install chromium` (Debian), or set FPMON_SKIP_BROWSER=1 to skip",
            pytrace=False,
        )
    url = f"sqlite:///{tmp_path / 'fpmon.db'}"
    storage.upgrade(url)
    server = ServerProcess(
        url, tmp_path / "server.log", FPMON_API_TOKENS=WRITE, FPMON_READ_TOKENS=READ, FPMON_WORKER_MODE="thread"
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {WRITE}"}) as client:
            run_id = client.post("/v1/runs", json={"name": "particle-run", "latent_dim": D}).json()["run_id"]
            payloads = particle_run()
            for body in payloads[:STEPS]:
                resp = client.post(
                    f"/v1/runs/{run_id}/steps", content=body, headers={"Content-Type": "application/octet-stream"}
                )
                assert resp.status_code == 202, resp.text
            wait_processed(client, run_id, STEPS, timeout=60)
        yield server, run_id, url, payloads[STEPS:]
    finally:
        server.stop()


def colour_pixels(page: object, selector: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of the canvas at ``selector`` within ±12 per channel of ``rgb`` (the drawn data, not the axes)."""
    return int(
        page.evaluate(  # type: ignore[attr-defined]
            """([selector, rgb]) => {
                const canvas = document.querySelector(selector);
                const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
                let hits = 0;
                for (let i = 0; i < data.length; i += 4) {
                    if (data[i + 3] > 200 && Math.abs(data[i] - rgb[0]) <= 12 && Math.abs(data[i + 1] - rgb[1]) <= 12
                        && Math.abs(data[i + 2] - rgb[2]) <= 12) hits++;
                }
                return hits;
            }""",
            [selector, list(rgb)],
        )
    )


def test_review_page_end_to_end(filled_server: tuple[ServerProcess, int, str, list[bytes]]) -> None:
    from playwright.sync_api import expect, sync_playwright

    server, run_id, db_url, late = filled_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    engine = storage.make_engine(db_url)
    with storage.session_factory(engine)() as session:
        alerts = storage.list_alerts(session, run_id=run_id)
    assert alerts, "the particle run's transition must raise an alert"
    alert = alerts[-1]  # the first one raised
    assert TRANSITION <= alert.step <= TRANSITION + 5

    errors: list[str] = []
    expected_errors: list[str] = []
    started = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

            # first load: no token stored -> the API answers 401 -> the token form, which names the variables
            page.goto(f"{server.url}/")
            expect(page.locator("#token-dialog")).to_be_visible()
            expect(page.locator("#token-error")).to_have_text("This sidecar requires a token (401).")
            expect(page.locator("#token-dialog")).to_contain_text("FPMON_READ_TOKENS")
            expect(page.locator("#token-dialog")).to_contain_text("FPMON_API_TOKENS")
            # the browser logs the refused token-less request (401) once; nothing else went wrong
            assert len(errors) == 1 and "401" in errors[0], errors
            errors.clear()
            page.fill("#token-input", WRITE)
            page.click("#token-form button[type=submit]")

            # runs list
            row = page.locator("#runs-table tbody tr", has_text="particle-run")
            expect(row).to_be_visible()
            expect(row).to_contain_text(f"{STEPS} / {STEPS}")
            expect(row.locator(".badge-alert")).to_have_text(str(len(alerts)))
            expect(row.locator(".pill")).to_have_text("live")
            page.screenshot(path=ARTIFACTS / "runs.png", full_page=True)

            # run view: the C chart drawn (its data line's pixels), the alert flag on its time axis
            row.locator("a", has_text="particle-run").click()
            expect(page).to_have_url(re.compile(rf"#/runs/{run_id}$"))
            chart = page.locator('.chart[data-series="C"]')
            expect(chart.locator("canvas")).to_be_visible()
            for name in ("S_dot", "sigma_tot", "H", "W2_ref", "reward_mean"):
                expect(page.locator(f'.chart[data-series="{name}"] canvas')).to_be_visible()
            assert colour_pixels(page, '.chart[data-series="C"] canvas', LINE_RGB) > 200
            marker = chart.locator(f'.alert-marker[data-alert-id="{alert.id}"]')
            expect(marker).to_be_visible()
            assert marker.get_attribute("data-step") == str(alert.step)
            # the evidence of change, default on: the combined evidence against the alarm level log(1/α)
            evidence = page.locator("#evidence")
            expect(evidence.locator("canvas")).to_be_visible()
            expect(evidence.locator(".u-title")).to_have_text("Evidence of change (log e-value)")
            expect(evidence.locator(".u-legend")).to_contain_text("embedding evidence")
            expect(evidence.locator(".u-legend")).to_contain_text("reward evidence")
            assert float(evidence.get_attribute("data-threshold") or "nan") == pytest.approx(math.log(1000))
            expect(page.locator("#evidence-threshold")).to_contain_text("alarm at 1/α = 1000")
            assert colour_pixels(page, "#evidence canvas", EMBEDDING_RGB) > 200
            assert colour_pixels(page, "#evidence canvas", THRESHOLD_RGB) > 200  # the dashed line and its label
            expect(evidence.locator(f'.alert-marker[data-alert-id="{alert.id}"]')).to_be_visible()
            assert colour_pixels(page, "#evidence canvas", STREAM_RGB) == 0  # streams are on demand
            page.check('#evidence-streams input[data-stream="embedding_lagged"]')
            assert colour_pixels(page, "#evidence canvas", STREAM_RGB) > 100
            page.select_option("#series-picker", "div_max")  # any other scalar, from the picker
            expect(page.locator('.chart[data-series="div_max"] canvas')).to_be_visible()
            # live: steps that arrive while the page is open are appended (the page polls every 5 s)
            expect(chart).to_have_attribute("data-last-step", str(STEPS - 1))
            with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {WRITE}"}) as client:
                for body in late:
                    resp = client.post(
                        f"/v1/runs/{run_id}/steps", content=body, headers={"Content-Type": "application/octet-stream"}
                    )
                    assert resp.status_code == 202, resp.text
            expect(chart).to_have_attribute("data-last-step", str(STEPS + LATE - 1), timeout=20_000)
            expect(page.locator("#stat-steps")).to_have_text(f"{STEPS + LATE} / {STEPS + LATE}", timeout=12_000)
            expect(page.locator('.chart[data-series="div_max"]')).to_have_attribute(
                "data-last-step", str(STEPS + LATE - 1)
            )
            page.screenshot(path=ARTIFACTS / "run.png", full_page=True)
            marker.click()  # the alert's flag on the time axis opens the alert
            expect(page).to_have_url(re.compile(rf"#/alerts/{alert.id}$"))
            expect(page.locator("#samples-flagged li.sample")).to_have_count(8)
            expect(page.locator("#alert-evidence canvas")).to_be_visible()
            expect(page.locator("#alert-evidence-threshold")).to_contain_text("alarm at 1/α = 1000")

            # alert queue, filtered by run and type
            page.click("[data-nav=alerts]")
            expect(page.locator("#alerts-table")).to_be_visible()
            page.select_option("#alert-filters #type", alert.type)
            expect(page).to_have_url(re.compile(rf"type={alert.type}"))
            page.select_option("#alert-filters #run", str(run_id))
            expect(page).to_have_url(re.compile(rf"run={run_id}"))
            queue_row = page.locator(f'#alerts-table tr[data-alert-id="{alert.id}"]')
            expect(queue_row).to_be_visible()
            page.screenshot(path=ARTIFACTS / "queue.png", full_page=True)

            # alert detail: flagged | typical | reference, the map, untrusted text shown as text
            queue_row.locator("a", has_text=f"#{alert.id}").click()
            for kind in ("flagged", "typical", "reference"):
                expect(page.locator(f"#samples-{kind} li.sample")).to_have_count(8)
            expect(page.locator("#observables")).to_contain_text("W2_ref")
            expect(page.locator("#map")).to_be_visible()
            assert colour_pixels(page, "#map", FLAGGED_RGB) > 50
            spot = page.evaluate(
                """(rgb) => {
                    const canvas = document.querySelector("#map");
                    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
                    for (let i = 0; i < data.length; i += 4) {
                        if (Math.abs(data[i] - rgb[0]) <= 12 && Math.abs(data[i + 1] - rgb[1]) <= 12
                            && Math.abs(data[i + 2] - rgb[2]) <= 12) {
                            const ratio = canvas.width / canvas.clientWidth;
                            return [((i / 4) % canvas.width) / ratio, Math.floor(i / 4 / canvas.width) / ratio];
                        }
                    }
                    return null;
                }""",
                list(FLAGGED_RGB),
            )
            box = page.locator("#map").bounding_box()
            assert spot is not None and box is not None
            page.mouse.move(box["x"] + spot[0], box["y"] + spot[1] + 3)  # onto a flagged point: its text shows
            expect(page.locator(".tooltip")).to_be_visible()
            expect(page.locator(".tooltip")).to_contain_text(f"Step {alert.step}, response")
            expect(page.locator("#samples-reference li.sample").first).to_contain_text(XSS_TEXT)
            assert page.evaluate("window.__xss") is None
            flagged_text = page.locator("#samples-flagged li.sample").first.inner_text()
            assert "δ" in flagged_text and "Question" in flagged_text and "witness" in flagged_text
            # the flagged responses are the alert's, in its order (by the evidence they carry), with their scores
            shown = [
                int(i)
                for i in page.locator("#samples-flagged li.sample").evaluate_all("els => els.map(e => e.dataset.index)")
            ]
            assert shown == [s["index"] for s in alert.top_samples][:8]
            witness = [float(t) for t in page.locator("#samples-flagged .metric.witness b").all_inner_texts()]
            assert witness == sorted(witness, reverse=True) and witness[0] > 0
            page.screenshot(path=ARTIFACTS / "alert.png", full_page=True)

            # dismiss with a note through the REST API, as the run's new normal (re-baseline the detector)
            page.fill("#reviewer", "ana")
            page.fill("#note", NOTE)
            expect(page.locator("label.check")).to_contain_text("treat as the new normal (re-baseline the detector)")
            page.check("#rebaseline")
            page.click("#decide-dismissed")
            expect(page.locator("#review-message")).to_contain_text("Recorded: dismissed")
            expect(page.locator("#review-message")).to_contain_text("re-baselined before the run's next step")
            expect(page.locator("#alert-status")).to_have_text("dismissed")
            expect(page.locator("#reviews")).to_contain_text(NOTE)
            expect(page.locator("#reviews")).to_contain_text("Treated as the new normal")
            page.screenshot(path=ARTIFACTS / "alert-dismissed.png", full_page=True)
            assert not errors, f"browser console errors: {errors}"

            # a read-only token: the review action says so and writes nothing
            ro = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
            ro.on("console", lambda m: expected_errors.append(m.text) if m.type == "error" else None)
            ro.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            ro.goto(f"{server.url}/#/alerts/{alert.id}")
            ro.fill("#token-input", READ)
            ro.click("#token-form button[type=submit]")
            expect(ro.locator("#samples-flagged li.sample")).to_have_count(8)
            ro.fill("#reviewer", "bob")
            ro.click("#decide-acknowledged")
            expect(ro.locator("#review-message")).to_contain_text("read-only")
            expect(ro.locator("#alert-status")).to_have_text("dismissed")
            ro.screenshot(path=ARTIFACTS / "read-only.png", full_page=True)
        finally:
            browser.close()
    elapsed = time.monotonic() - started

    assert not errors, f"browser console errors: {errors}"
    # the read-only page's console errors are the browser's log lines of the token-less first request (401) and
    # of the refused POST (403)
    assert len(expected_errors) == 2 and "401" in expected_errors[0] and "403" in expected_errors[1], expected_errors
    with storage.session_factory(engine)() as session:
        reviews = list(session.scalars(select(storage.Review).where(storage.Review.alert_id == alert.id)))
        assert [(r.decision, r.reviewer, r.note, r.rebaseline) for r in reviews] == [("dismissed", "ana", NOTE, True)]
        reloaded = storage.get_alert(session, alert.id)
        assert reloaded is not None and reloaded.status == "dismissed"
        run = storage.get_run(session, run_id)  # no step came after the dismissal: the re-baseline waits for one
        assert run is not None and run.rebaseline_review_id == reviews[0].id
    engine.dispose()
    for name in ("runs", "run", "queue", "alert", "alert-dismissed", "read-only"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
    assert elapsed < 60, f"the browser part took {elapsed:.0f} s"


def test_an_open_sidecar_opens_without_a_token_dialog(tmp_path: Path) -> None:
    """A sidecar started without tokens: the page lists its runs and opens a run with no dialog at all."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium`, or FPMON_SKIP_BROWSER=1", pytrace=False)
    url = f"sqlite:///{tmp_path / 'open.db'}"
    storage.upgrade(url)
    server = ServerProcess(url, tmp_path / "server.log", FPMON_WORKER_MODE="thread").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            run_id = client.post("/v1/runs", json={"name": "open-run", "latent_dim": D}).json()["run_id"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{server.url}/")
                row = page.locator("#runs-table tbody tr", has_text="open-run")
                expect(row).to_be_visible()
                expect(page.locator("#token-dialog")).not_to_be_visible()
                expect(page.locator("#signout")).to_be_hidden()
                row.locator("a", has_text="open-run").click()
                expect(page).to_have_url(re.compile(rf"#/runs/{run_id}$"))
                expect(page.locator("#token-dialog")).not_to_be_visible()
                assert errors == []
            finally:
                browser.close()
    finally:
        server.stop()
