"""The particle-solver demo: a run with a known transition, watched by RLHFMonitor as if it were RLHF.

The particles of :func:`monitor.fpe.scenarios.new_minimum_scenario` play the policy's responses: each
step's particle cloud is embedded into a d-dimensional "latent space" (a fixed random linear map plus
noise, like a sentence encoder's output), each particle's reward is minus its loss (a proxy reward), and
``RLHFMonitor.observe`` is fed one batch per step. At ``transition_step`` a deeper minimum appears far
away — an exploit — and the cloud slides into it. The demo prints the observables around it, the alert
with the samples that drove it, and the delay between the known transition and the alert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from ..detect import detect_phase_transitions
from ..fpe.scenarios import new_minimum_scenario
from ..rlhf import MonitorConfig, RLHFMonitor, StepReport

TABLE_COLUMNS = ("C", "S_dot", "sigma_tot", "H", "W2_step", "W2_ref", "div_q99", "reward_mean")
#: lag of the offline detector's differences in the demo (the transition takes ~5 steps)
OFFLINE_WINDOW = 3


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` measured."""

    transition_step: int
    reports: list[StepReport]
    first_alert_step: int | None
    offline_events: list[int]

    @property
    def delay(self) -> int | None:
        if self.first_alert_step is None:
            return None
        return self.first_alert_step - self.transition_step

    @property
    def false_alarms(self) -> int:
        return sum(1 for rep in self.reports if rep.alert and rep.step < self.transition_step)


def run_demo(
    n: int = 256,
    latent_dim: int = 256,
    n_steps: int = 100,
    transition_step: int = 60,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Run the scenario and the monitor; returns every step's report (see the module docstring)."""
    scenario = new_minimum_scenario(n=n, d=4, seed=seed, transition_step=transition_step, n_steps=n_steps)
    dyn = scenario.dynamics
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(4, latent_dim, generator=torch.Generator().manual_seed(seed + 1)) / 2.0
    monitor = RLHFMonitor(MonitorConfig())
    z = scenario.z_init
    texts = [f"response #{i}" for i in range(n)]
    reports: list[StepReport] = []
    for step in tqdm(range(n_steps), desc="training (particle solver)", disable=not progress, unit="step"):
        t = step * scenario.dt
        z = dyn.step(z, t, scenario.dt, gen)
        latents = z @ embed + 0.05 * torch.randn(n, latent_dim, generator=gen)
        rewards = -dyn.loss_fn(z, t) / 100.0
        reports.append(monitor.observe(step, latents, rewards=rewards, texts=texts))
    alerts = [rep.step for rep in reports if rep.alert]
    history = {name: [rep.scalars[name] for rep in reports] for name in ("C", "S_dot")}
    history["loss"] = [-rep.scalars["reward_mean"] for rep in reports]
    offline = detect_phase_transitions(history, loss_key=None, window=OFFLINE_WINDOW)
    return DemoResult(
        transition_step=transition_step,
        reports=reports,
        first_alert_step=next((s for s in alerts if s >= transition_step), None),
        offline_events=offline,
    )


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def observables_table(reports: list[StepReport], steps: list[int], title: str) -> Table:
    """A rich table of the scalars at ``steps``, with the alert type where one was raised."""
    table = Table(title=title, header_style="bold")
    table.add_column("step", justify="right")
    for name in TABLE_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("alert")
    by_step = {rep.step: rep for rep in reports}
    for step in steps:
        rep = by_step[step]
        flag = rep.alert.type if rep.alert else ("warm-up" if rep.warming_up else "")
        style = "bold red" if rep.alert else None
        table.add_row(str(step), *(_fmt(rep.scalars[c]) for c in TABLE_COLUMNS), flag, style=style)
    return table


def wide_console() -> Console:
    """A console at least 120 columns wide, so that the tables are not truncated in logs and CI."""
    return Console(width=max(Console().width, 120))


def print_demo(result: DemoResult, console: Console | None = None) -> None:
    """Print the observables around the transition, the alerts and the verdict."""
    console = console or wide_console()
    t0 = result.transition_step
    last = result.reports[-1].step
    steps = sorted(set(range(0, last + 1, 10)) | set(range(max(0, t0 - 3), min(last, t0 + 5) + 1)))
    console.print(observables_table(result.reports, steps, f"Observables per step (transition at step {t0})"))
    for rep in result.reports:
        if rep.alert is None:
            continue
        alert = rep.alert
        console.print(f"\n[bold red]{alert.type}[/] at step {alert.step}: " + "; ".join(alert.reasons))
        samples = Table(show_header=True, header_style="bold")
        for col in ("index", "text", "δ (div)", "reward"):
            samples.add_column(col)
        for s in alert.top_samples:
            samples.add_row(str(s.index), s.text or "", f"{s.div:.3g}", "" if s.reward is None else f"{s.reward:.3g}")
        console.print(samples)
        console.print(f"[italic]{alert.recommendation}[/]")
    console.print()
    if result.delay is None:
        console.print(f"[bold red]No alert after the transition at step {t0}.[/]")
    else:
        console.print(
            f"Known transition at step {t0}; first alert at step {result.first_alert_step} "
            f"(delay {result.delay} steps); false alarms before it: {result.false_alarms}."
        )
    console.print(
        f"Offline detector (C drop and S_dot spike within 3 steps, lag {OFFLINE_WINDOW}, causal) "
        f"events at steps: {result.offline_events}"
    )
