"""The library's ``fpmon`` commands: ``demo`` (a run with a known transition), ``analyze`` (saved step files) and
``sync`` (replay a client's spool).

The ``fpmon`` command itself is assembled in :mod:`api.cli` (these commands plus the server's: ``serve``, ``db``);
this module never imports the server.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from tqdm.auto import tqdm

#: ``fpmon --help``'s description.
HELP = "Fokker–Planck monitoring of RLHF runs: find the steps where the policy's answers reorganised."

app = typer.Typer(
    name="fpmon",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
)


def _console() -> Console:
    from .demo.particles import wide_console

    return wide_console()


@app.command()
def demo(
    particles: Annotated[
        bool, typer.Option("--particles", help="Run the particle-solver demo instead of the GRPO run.")
    ] = False,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: 120 for GRPO, 100 for --particles).", min=2)
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option(help="GRPO: the demo's folder (SQLite database, sidecar log).")] = Path(
        "fpmon-demo"
    ),
    embedder: Annotated[
        str, typer.Option(help="GRPO: 'reference' (the frozen warmed-up policy) or 'minilm' (sentence encoder).")
    ] = "reference",
    control: Annotated[bool, typer.Option("--control", help="GRPO: train on the reward without the exploit.")] = False,
    sidecar_timeout: Annotated[float, typer.Option(help="GRPO: seconds to wait for the sidecar.")] = 180.0,
    warmup_steps: Annotated[
        int, typer.Option(help="GRPO: supervised warm-up batches of the tiny LM before RL.", min=0)
    ] = 300,
    transition: Annotated[
        int | None, typer.Option(help="--particles: step at which the exploit minimum appears (default 60).")
    ] = None,
    n: Annotated[int | None, typer.Option(help="--particles: responses (particles) per step (default 256).")] = None,
    latent_dim: Annotated[
        int | None, typer.Option(help="--particles: dimension of the simulated embedding space (default 256).")
    ] = None,
) -> None:
    """A real TRL GRPO run on a tiny model that learns to game its reward, watched by fpmon through a sidecar.

    --particles runs the particle-solver demo instead (also selected by --transition, --n or --latent-dim).
    """
    console = _console()
    if particles or transition is not None or n is not None or latent_dim is not None:
        _particle_demo(
            console, steps or 100, 60 if transition is None else transition, n or 256, latent_dim or 256, seed
        )
        return
    from .demo.grpo import GrpoDemoConfig, print_grpo_demo, run_grpo_demo
    from .demo.toy import ToyRunConfig

    if embedder not in ("reference", "minilm"):
        raise typer.BadParameter(f"--embedder must be 'reference' or 'minilm', got {embedder!r}")
    config = GrpoDemoConfig(
        run=ToyRunConfig(seed=seed, max_steps=steps or 120, warmup_steps=warmup_steps),
        reward="control" if control else "proxy",
        out_dir=out,
        embedder="minilm" if embedder == "minilm" else "reference",
        sidecar_timeout_s=sidecar_timeout,
    )
    console.print(
        f"[bold]fpmon demo[/]: TRL GRPO on a tiny causal LM ({config.run.max_steps} steps, "
        f"{config.run.completions_per_step} completions per step), rewarded by "
        + (
            "control_reward (no exploit)."
            if control
            else "proxy_reward, which pays for the phrase 'trust me' (true_reward does not); the policy finds it."
        )
    )
    result = run_grpo_demo(config, console)
    print_grpo_demo(result, console)


def _particle_demo(console: Console, steps: int, transition: int, n: int, latent_dim: int, seed: int) -> None:
    """Watch a particle-solver run with a known transition, as RLHFMonitor watches an RLHF run."""
    from .demo.particles import print_demo, run_demo

    if not 0 < transition < steps:
        raise typer.BadParameter(f"--transition must be between 1 and --steps - 1 = {steps - 1}")
    console.print(
        f"[bold]fpmon demo[/]: {n} responses per step in {latent_dim} dimensions; at step {transition} a "
        "deeper reward minimum (an exploit) appears and the policy's answers migrate to it."
    )
    result = run_demo(n=n, latent_dim=latent_dim, n_steps=steps, transition_step=transition, seed=seed)
    print_demo(result, console)
    if result.delay is None:
        raise typer.Exit(code=1)


@app.command()
def analyze(
    files: Annotated[
        list[Path], typer.Argument(help="Step files (safetensors: latents, rewards, reference_rewards, step, texts).")
    ],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every step's scalars and alerts.")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up steps (no alert before).")] = 10,
) -> None:
    """Run RLHFMonitor over saved step files (in step order) and print the observables and alerts; the warm-up
    rows are rescaled to the calibrated D₀, as the sidecar stores them."""
    from .demo.particles import observables_table
    from .rlhf import MonitorConfig, RLHFMonitor, with_recalibration

    console = _console()
    from .stepfile import load_step

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise typer.BadParameter(f"no such file: {', '.join(missing)}")
    try:
        payloads = sorted((load_step(f) for f in files), key=lambda p: p.step)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    steps = [p.step for p in payloads]
    if len(set(steps)) != len(steps):
        raise typer.BadParameter("two files carry the same step; pass one file per step")
    monitor = RLHFMonitor(MonitorConfig(warmup_steps=warmup))
    reports = []
    for p in tqdm(payloads, desc="analyzing", unit="step"):
        reports.append(
            monitor.observe(
                p.step,
                p.latents,
                rewards=p.rewards,
                texts=p.texts,
                lr=p.lr,
                sample_ids=p.sample_ids,
                reference_rewards=p.reference_rewards,
            )
        )
    # the warm-up rows rescaled to the calibrated D₀, as the sidecar stores them
    reports = with_recalibration(reports)
    console.print(observables_table(reports, steps, f"{len(steps)} steps"))
    for rep in reports:
        if rep.alert:
            console.print(f"[bold red]{rep.alert.type}[/] at step {rep.step}: " + "; ".join(rep.alert.reasons))
            for s in rep.alert.top_samples:
                console.print(f"   #{s.index} δ={s.div:.3g} reward={s.reward} {s.text or ''}")
    if json_out is not None:
        rows = [
            {
                "step": rep.step,
                "scalars": {k: (v if math.isfinite(v) else None) for k, v in rep.scalars.items()},
                "alert": rep.alert.to_dict() if rep.alert else None,
                # e-detector statistics per stream (``judge_gap`` when the files carry reference_rewards)
                "evidence": {k: (v if math.isfinite(v) else None) for k, v in rep.evidence.items()},
            }
            for rep in reports
        ]
        json_out.write_text(json.dumps({"D0": monitor.D0, "rows": rows}, indent=1))
        console.print(f"wrote {json_out}")


@app.command()
def sync(
    spool_dir: Annotated[Path, typer.Argument(help="The client's spool directory (ClientConfig.spool_dir).")],
    url: Annotated[str, typer.Option(envvar="FPMON_URL", help="The sidecar.")] = "http://127.0.0.1:8700",
    token: Annotated[str | None, typer.Option(envvar="FPMON_TOKEN", help="Bearer (write) token.")] = None,
    run: Annotated[str | None, typer.Option(help="Replay only this run (its name).")] = None,
) -> None:
    """Replay spooled steps to the sidecar, in step order; each file is deleted once acknowledged.

    Exit code 1 when a step was refused (moved to <run>/rejected/ with the server's message) or the sidecar
    was unreachable (the files stay; run it again). Running it twice sends nothing the second time.
    """
    from rich.table import Table

    from .client.replay import sync_spool

    if not spool_dir.is_dir():
        raise typer.BadParameter(f"{spool_dir} is not a directory")
    results = sync_spool(spool_dir, url, token=token, run=run)
    table = Table(title=f"fpmon sync {spool_dir} → {url}")
    for column in ("run", "run id", "sent", "duplicates", "rejected", "left", "error"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.run,
            str(r.run_id or "-"),
            str(r.sent),
            str(r.duplicates),
            str(r.rejected),
            str(r.remaining),
            r.error or "",
        )
    console = _console()
    console.print(table if results else f"nothing to replay in {spool_dir}" + (f" for run {run!r}" if run else ""))
    if any(r.rejected or r.error for r in results):
        raise typer.Exit(code=1)
