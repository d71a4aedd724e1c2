"""Shared by the browser tests of the review page: Chromium's path and flags, the particle-solver run that fills
the sidecar (responses, prompts, a known transition), the seeded true reward, and pixel/DOM probes."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from monitor.fpe.scenarios import new_minimum_scenario
from monitor.stepfile import StepPayload, encode_step

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "review"
#: where the docs' screenshots go: docs/img with FPMON_DOCS_IMAGES=1 (`make docs-images`), else beside the other
#: artifacts, so that `make test` never rewrites tracked files (the captures are taken and checked either way)
DOCS_IMG = ROOT / "docs" / "img" if os.environ.get("FPMON_DOCS_IMAGES") == "1" else ARTIFACTS / "docs-img"
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
N, D, STEPS, TRANSITION, LATE, COMPARE_STEPS = 128, 64, 72, 50, 2, 24
#: a response that would run script if the page ever rendered texts as HTML
XSS_TEXT = '<img src=x onerror="window.__xss = 1"><b>bold?</b> answer'
NOTE = "Benign: the new basin is the task's intended optimum (checked 20 samples)."
#: the series line colour of the charts (app.js) and the flagged colour of the map, RGB
LINE_RGB, FLAGGED_RGB = (56, 96, 224), (214, 51, 108)
#: the evidence chart's embedding evidence, one stream's (shown on demand) and its threshold line (app.js)
EMBEDDING_RGB, STREAM_RGB, THRESHOLD_RGB = (112, 72, 232), (151, 117, 250), (224, 49, 49)
#: the rewards chart's second series (the true_reward extra scalar, series.js's palette)
TRUE_REWARD_RGB = (43, 138, 62)


def particle_run(seed: int = 0, steps: int = STEPS + LATE, transition: int = TRANSITION) -> list[bytes]:
    """The particle solver's new-minimum scenario (transition at TRANSITION) as RLHF steps: each particle is
    a response, embedded in D dimensions by a fixed random map plus noise; reward = −loss/100."""
    torch.manual_seed(seed)
    scenario = new_minimum_scenario(n=N, d=4, seed=seed, transition_step=transition, n_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(4, D, generator=torch.Generator().manual_seed(1)) / 2.0
    z = scenario.z_init
    payloads = []
    for step in range(steps):
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


def true_reward(step: int, proxy: float | None) -> float | None:
    """The seeded ``true_reward`` extra scalar: the proxy until the transition, then falling away from it."""
    return None if proxy is None else proxy - 0.02 * max(0, step - TRANSITION)


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


def chart_title(page: object, key: str) -> str:
    return str(page.locator(f'.chart[data-series="{key}"] .chart-title').inner_text())  # type: ignore[attr-defined]
