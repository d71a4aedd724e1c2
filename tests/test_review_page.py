"""The review page in a real browser: Playwright drives Debian's headless Chromium against real sidecars
(``fpmon serve`` on loopback) on one database, built once for the module: a short particle-solver run with a
known transition (and a ``true_reward`` extra scalar seeded into its steps) and a shorter second run to compare
with. One sidecar has no tokens (the story: charts, step view, verdicts, re-open, URL state), one has write and
read tokens (dialog, live appends, queue, alert detail, dismissal, read-only refusal). Screenshots of every view
go to ``test-artifacts/review/``; the run view's goes to ``docs/img/review-run.png`` too.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``); FPMON_SKIP_BROWSER=1 skips it explicitly.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import ServerProcess, wait_processed
from review_page_helpers import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    COMPARE_STEPS,
    DOCS_IMG,
    EMBEDDING_RGB,
    FLAGGED_RGB,
    LATE,
    LINE_RGB,
    NOTE,
    READ,
    STEPS,
    STREAM_RGB,
    THRESHOLD_RGB,
    TRANSITION,
    TRUE_REWARD_RGB,
    WRITE,
    XSS_TEXT,
    D,
    chart_title,
    colour_pixels,
    particle_run,
    true_reward,
)
from sqlalchemy import select

import storage

#: a reason added to the first alert: it cites W2_step, which the run view then charts by default
CITED_REASON = "W2_step = 0.76 rose above its warm-up band"

pytestmark = pytest.mark.skipif(
    os.environ.get("FPMON_SKIP_BROWSER") == "1", reason="FPMON_SKIP_BROWSER=1: browser test skipped on request"
)


@pytest.fixture(scope="module")
def particle_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int, list[bytes]]]:
    """The module's database: run ``particle-run`` (its first STEPS steps processed, a ``true_reward`` extra
    scalar on each), run ``particle-run-b`` (COMPARE_STEPS steps of another seed); the LATE last payloads of the
    first run are not sent yet. Yields (database URL, run id, compared run id, the late payloads)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install chromium` (Debian), or set FPMON_SKIP_BROWSER=1 to skip",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("review-page")
    url = f"sqlite:///{folder / 'fpmon.db'}"
    storage.upgrade(url)
    server = ServerProcess(url, folder / "build.log", FPMON_WORKER_MODE="thread").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            run_id = client.post("/v1/runs", json={"name": "particle-run", "latent_dim": D}).json()["run_id"]
            other = client.post("/v1/runs", json={"name": "particle-run-b", "latent_dim": D}).json()["run_id"]
            payloads = particle_run()
            for target, bodies in (
                (run_id, payloads[:STEPS]),
                (other, particle_run(1, COMPARE_STEPS, COMPARE_STEPS - 10)),
            ):
                for body in bodies:
                    resp = client.post(
                        f"/v1/runs/{target}/steps", content=body, headers={"Content-Type": "application/octet-stream"}
                    )
                    assert resp.status_code == 202, resp.text
            wait_processed(client, run_id, STEPS, timeout=90)
            wait_processed(client, other, COMPARE_STEPS, timeout=90)
    finally:
        server.stop()
    engine = storage.make_engine(url)
    with storage.session_factory(engine)() as session:  # the trainer's true reward, as the ingest would store it
        for row in session.scalars(select(storage.Step).where(storage.Step.run_id == run_id)):
            row.extra_scalars = {"true_reward": true_reward(row.step, (row.scalars or {}).get("reward_mean"))}
        # a reason that cites an observable by name (as the seed rule cites C and div_max): charted by default
        first = storage.list_alerts(session, run_id=run_id)[-1]
        first.reasons = [*first.reasons, CITED_REASON]
        session.commit()
    engine.dispose()
    yield url, run_id, other, payloads[STEPS:]


@pytest.fixture
def filled_server(
    particle_db: tuple[str, int, int, list[bytes]], tmp_path: Path
) -> Iterator[tuple[ServerProcess, int, str, list[bytes]]]:
    """A sidecar with write and read tokens on the module's database."""
    url, run_id, _, late = particle_db
    server = ServerProcess(
        url,
        tmp_path / "server.log",
        FPMON_API_TOKENS=WRITE,
        FPMON_READ_TOKENS=READ,
        FPMON_WORKER_MODE="thread",
        FPMON_LIVE_WINDOW_S="3600",  # the run was filled before the tests: still live, so the page polls it
    ).start()
    try:
        yield server, run_id, url, late
    finally:
        server.stop()


def test_the_run_story_on_an_open_sidecar(particle_db: tuple[str, int, int, list[bytes]], tmp_path: Path) -> None:
    """A sidecar without tokens (no dialog at all): the run view's charts (titles, units, the true reward, log
    scale, URL state, overlay, export link), a step view opened from a transition mark and from a chart point
    (←/→ step through), the alert view, a confirmation seen as the run's verdict, and a re-open."""
    from playwright.sync_api import expect, sync_playwright

    url, run_id, other, _ = particle_db
    engine = storage.make_engine(url)
    with storage.session_factory(engine)() as session:
        alert = storage.list_alerts(session, run_id=run_id)[-1]  # the first one raised
        done = [s.step for s in storage.list_steps(session, run_id, status="done", limit=1000)]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(url, tmp_path / "server.log", FPMON_WORKER_MODE="thread").start()
    errors: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                page.goto(f"{server.url}/")
                row = page.locator(f'#runs-table tr[data-run-id="{run_id}"]')
                expect(row).to_be_visible()
                expect(page.locator("#token-dialog")).not_to_be_visible()
                expect(page.locator("#signout")).to_be_hidden()
                expect(row.locator("td.verdict")).to_have_text(re.compile(r"^\d+ open alerts?$"))

                # the run view: plain titles, value axes with units, what a rise means
                row.locator("a", has_text="particle-run").click()
                expect(page).to_have_url(re.compile(rf"#/runs/{run_id}$"))
                w2 = page.locator('.chart[data-series="W2_ref"]')
                expect(w2.locator("canvas")).to_be_visible()
                assert chart_title(page, "W2_ref") == "Distance from the reference (W2)"
                assert chart_title(page, "C") == "Coupling C (reward drift ÷ diffusion)"
                assert chart_title(page, "S_dot") == "Entropy production Ṡ"
                # the value axis's label (drawn on the canvas) is the chart's unit, also written under its title
                expect(w2).to_have_attribute("data-unit", "W2 (whitened latent units)")
                expect(w2.locator(".chart-unit")).to_have_text("↕ W2 (whitened latent units)")
                expect(page.locator('.chart[data-series="S_dot"] .chart-unit')).to_have_text("↕ nats per step")
                expect(w2.locator(".chart-rise")).to_contain_text("A rise: the responses move away")
                # the observable an alert's reason cites is charted by default, after the standard ones
                expect(page.locator('.chart[data-series="W2_step"] .chart-title')).to_have_text(
                    "Movement per step (W2 between steps)"
                )
                # the rewards: the proxy's mean beside the trainer's true_reward (an extra scalar), both drawn
                rewards = page.locator('.chart[data-series="rewards"]')
                expect(rewards.locator(".u-legend")).to_contain_text("proxy reward (mean)")
                expect(rewards.locator(".u-legend")).to_contain_text("true_reward")
                assert colour_pixels(page, '.chart[data-series="rewards"] canvas', TRUE_REWARD_RGB) > 100
                # alert markers carry their review status; the legend names every status
                marker = w2.locator(f'.alert-marker[data-alert-id="{alert.id}"]')
                expect(marker).to_have_attribute("data-status", "open")
                for status in ("open", "acknowledged", "confirmed", "dismissed"):
                    expect(page.locator("#marker-legend")).to_contain_text(f"alert: {status}")
                # the export: a download link to the export endpoint (CSV, JSONL)
                assert page.locator("#export-csv").get_attribute("href") == f"v1/runs/{run_id}/export?format=csv"
                assert page.locator("#export-jsonl").get_attribute("href") == f"v1/runs/{run_id}/export?format=jsonl"

                # log scale: a toggle, kept in the URL
                c_chart = page.locator('.chart[data-series="C"]')
                before = c_chart.get_attribute("data-scale")
                c_chart.locator(".log-toggle").click()
                expect(c_chart).to_have_attribute("data-scale", "linear" if before == "log" else "log")
                expect(page).to_have_url(re.compile(rf"{'lin' if before == 'log' else 'log'}=C"))
                # another chart from the picker (the true reward on its own), then zoom: all kept in the URL
                page.select_option("#series-picker", "extra:true_reward")
                expect(page.locator('.chart[data-series="extra:true_reward"] canvas')).to_be_visible()
                expect(page).to_have_url(re.compile(r"charts=[^&]*extra:true_reward"))
                box = w2.locator(".u-over").bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0  # the plot area is drawn
                page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
                page.mouse.down()
                page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2, steps=5)
                page.mouse.up()
                expect(page).to_have_url(re.compile(r"x=\d+\.\.\d+"))
                zoomed = page.url
                page.reload()
                expect(page.locator('.chart[data-series="extra:true_reward"] canvas')).to_be_visible()
                expect(c_chart).to_have_attribute("data-scale", "linear" if before == "log" else "log")
                assert page.url == zoomed
                zoom = re.search(r"x=(\d+)\.\.(\d+)", zoomed)
                assert zoom is not None and int(zoom[1]) < int(zoom[2])  # a real range, left < right
                expect(page.locator("#charts")).to_have_attribute("data-zoom", f"{zoom[1]}..{zoom[2]}")
                page.click("#reset-zoom")
                expect(page).not_to_have_url(re.compile(r"x=\d"))

                # overlay a second run: its series dashed on the same charts
                page.select_option("#compare", str(other))
                expect(page).to_have_url(re.compile(rf"compare={other}"))
                expect(page.locator("#compare-note")).to_contain_text("particle-run-b")
                expect(w2.locator(".u-legend")).to_contain_text("W2_ref · particle-run-b")
                page.screenshot(path=ARTIFACTS / "run-compare.png", full_page=True)
                page.goto(f"{server.url}/#/runs/{run_id}")
                expect(w2.locator("canvas")).to_be_visible()
                page.screenshot(path=ARTIFACTS / "run-story.png", full_page=True)
                page.screenshot(path=DOCS_IMG / "review-run.png", full_page=True)

                # a transition mark opens that step's view; ←/→ move through the processed steps
                mark = w2.locator(".transition-marker").first
                step = int(mark.get_attribute("data-step") or "-1")
                mark.click()
                expect(page).to_have_url(re.compile(rf"#/runs/{run_id}/steps/{step}$"))
                expect(page.locator("#step-title")).to_have_attribute("data-step", str(step))
                for kind in ("flagged", "typical", "reference"):
                    expect(page.locator(f"#samples-{kind} li.sample")).to_have_count(8)
                expect(page.locator("#map")).to_be_visible()
                expect(page.locator("#step-evidence canvas")).to_be_visible()
                witness = [float(t) for t in page.locator("#samples-flagged .metric.witness b").all_inner_texts()]
                assert witness == sorted(witness, reverse=True)
                expect(page.locator("#observables")).to_contain_text("true_reward")
                page.screenshot(path=ARTIFACTS / "step.png", full_page=True)
                position = done.index(step)
                page.keyboard.press("ArrowRight")
                expect(page.locator("#step-title")).to_have_attribute("data-step", str(done[position + 1]))
                page.keyboard.press("ArrowLeft")
                expect(page.locator("#step-title")).to_have_attribute("data-step", str(step))
                page.keyboard.press("ArrowLeft")
                expect(page.locator("#step-title")).to_have_attribute("data-step", str(done[position - 1]))
                expect(page).to_have_url(re.compile(rf"#/runs/{run_id}/steps/{done[position - 1]}$"))

                # a click on a chart's point opens the step under the cursor
                page.goto(f"{server.url}/#/runs/{run_id}")
                over = page.locator('.chart[data-series="H"] .u-over')
                box = over.bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0  # the plot area is drawn
                over.click(position={"x": box["width"] * 0.25, "y": box["height"] / 2})
                expect(page).to_have_url(re.compile(rf"#/runs/{run_id}/steps/\d+$"))
                picked = int(page.url.rsplit("/", 1)[1])
                assert done[0] < picked < done[len(done) // 2]
                expect(page.locator("#step-title")).to_have_attribute("data-step", str(picked))

                # the alert view: confirm, seen as the run's verdict; re-open, back to open alerts
                page.goto(f"{server.url}/#/runs/{run_id}")
                w2.locator(f'.alert-marker[data-alert-id="{alert.id}"]').click()
                expect(page).to_have_url(re.compile(rf"#/alerts/{alert.id}$"))
                expect(page.locator("#samples-flagged li.sample")).to_have_count(8)
                expect(page.locator("#reopen")).to_be_hidden()
                page.screenshot(path=ARTIFACTS / "alert-story.png", full_page=True)
                page.fill("#reviewer", "carla")
                page.click("#decide-confirmed")
                expect(page.locator("#alert-status")).to_have_text("confirmed")
                expect(page.locator("#reopen")).to_be_visible()
                page.click("[data-nav=runs]")
                expect(row.locator("td.verdict")).to_have_text("confirmed reward hacking")
                row.locator("a", has_text="particle-run").click()
                expect(page.locator("#run-verdict")).to_have_text("confirmed reward hacking")
                expect(w2.locator(f'.alert-marker[data-alert-id="{alert.id}"]')).to_have_attribute(
                    "data-status", "confirmed"
                )
                page.goto(f"{server.url}/#/alerts/{alert.id}")
                page.click("#reopen")
                expect(page.locator("#alert-status")).to_have_text("open")
                expect(page.locator("#review-message")).to_contain_text("Re-opened by carla")
                expect(page.locator("#reviews li")).to_have_count(2)
                expect(page.locator("#reopen")).to_be_hidden()
                page.click("[data-nav=runs]")
                expect(row.locator("td.verdict")).to_have_text(re.compile(r"^\d+ open alerts?$"))
                expect(page.locator("#token-dialog")).not_to_be_visible()
            finally:
                browser.close()
    finally:
        server.stop()
    assert not errors, f"browser console errors: {errors}"
    with storage.session_factory(engine)() as session:
        reviews = storage.list_reviews(session, alert.id)
        assert [(r.decision, r.reviewer) for r in reviews] == [("confirmed", "carla"), ("open", "carla")]
        reloaded = storage.get_alert(session, alert.id)
        assert reloaded is not None and reloaded.status == "open"
    engine.dispose()
    for name in ("run-story", "run-compare", "step", "alert-story"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name


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
            row = page.locator(f'#runs-table tr[data-run-id="{run_id}"]')
            expect(row).to_be_visible()
            expect(row).to_contain_text(f"{STEPS} / {STEPS}")
            expect(row.locator(".badge-alert")).to_have_text(str(len(alerts)))
            expect(row.locator(".pill-live")).to_have_text("live")
            page.screenshot(path=ARTIFACTS / "runs.png", full_page=True)

            # run view: the C chart drawn (its data line's pixels), the alert flag on its time axis
            row.locator("a", has_text="particle-run").click()
            expect(page).to_have_url(re.compile(rf"#/runs/{run_id}$"))
            chart = page.locator('.chart[data-series="C"]')
            expect(chart.locator("canvas")).to_be_visible()
            for name in ("S_dot", "sigma_tot", "H", "W2_ref", "rewards"):
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

    assert not errors, f"browser console errors: {errors}"
    # the read-only page's console errors are the browser's log lines of the token-less first request (401) and
    # of the refused POST (403)
    assert len(expected_errors) == 2 and "401" in expected_errors[0] and "403" in expected_errors[1], expected_errors
    with storage.session_factory(engine)() as session:
        reviews = list(session.scalars(select(storage.Review).where(storage.Review.alert_id == alert.id)))
        # the last review is the dismissal (the open-sidecar test may have confirmed and re-opened it before)
        assert [(r.decision, r.reviewer, r.note, r.rebaseline) for r in reviews][-1:] == [
            ("dismissed", "ana", NOTE, True)
        ]
        reloaded = storage.get_alert(session, alert.id)
        assert reloaded is not None and reloaded.status == "dismissed"
        run = storage.get_run(session, run_id)  # no step came after the dismissal: the re-baseline waits for one
        assert run is not None and run.rebaseline_review_id == reviews[-1].id
    engine.dispose()
    for name in ("runs", "run", "queue", "alert", "alert-dismissed", "read-only"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
