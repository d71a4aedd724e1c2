"""Grokking on modular addition, watched by fpmon, with and without fpmon-triggered resets (seed §9.1).

Setup: a + b mod p with p = 53, a random 40 % of the p² pairs for training, embedding 12 per operand → MLP
hidden 48 (GELU) → p logits, Adam (lr 5e-3, coupled L2 weight decay 2e-4, i.e.
``torch.optim.Adam(weight_decay=...)``), batch 128; about 1 ms per step on one idle CPU thread. Measured with
seeds 0–3: the test accuracy jumps from chance to ~1 after 14.5k, 23.3k and 36.1k steps (seeds 3, 0, 2; seed 1
not within 50k), while the training accuracy has been 1 since ~2k steps.

Monitoring: every ``monitor_every`` training steps (one monitor step) the hidden activations (48-d) on a fixed
probe set of 256 training pairs go to :class:`monitor.RLHFMonitor` with rewards = −(per-sample cross-entropy)
of those pairs, the training objective (so C is the seed's ratio of the loss-gradient drift to the diffusion
flux, DESIGN.md §3.4; the test pairs are never shown to the monitor). In the reset arm a flag of the monitor's
streaming detector (``reset_trigger="flag"``; a ``PHASE_TRANSITION`` alert never fired in these runs) perturbs
the network (``monitor.trl.apply_reset`` when available, else the same
rule implemented here: p ← p + noise_scale·std(p)·ε on a random fraction alpha of each floating tensor's
entries), at most once per ``reset_cooldown`` training steps. The no-reset arm runs the same seeds (same
initialisation, split and batch order up to the first reset).

Beside C, the cheap signals of the literature are recorded per monitor step: the weight norm and the variance
and lag-1 autocorrelation of the per-step training loss over the interval (critical slowing down). Each series
is fed to its own :class:`monitor.detect.StreamingDetector` (default config, both directions), so every signal
is judged by the same rule; the lead of a signal is the jump step minus its first flag in the
``lead_window`` training steps before the jump.

Run: ``python -m benchmarks.validation.grokking [--quick] [--seeds 0 1 2 3] [--steps 50000]``; writes
``grokking.json`` and ``grokking_*.png`` to ``docs/validation/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.validation._common import DEFAULT_OUT, agg_pyplot, markdown_table, single_thread, write_json

#: series recorded per monitor step and judged by a streaming detector each
SIGNALS: tuple[str, ...] = ("C", "weight_norm", "loss_var", "loss_ac1")


@dataclass(frozen=True)
class GrokConfig:
    """Settings of one grokking run (defaults: the full experiment).

    Attributes:
        p: modulus; inputs are pairs (a, b) ∈ [0, p)², the label (a + b) mod p.
        train_fraction: fraction of the p² pairs used for training (the rest is the test set).
        embed_dim: embedding width per operand; the MLP input is the concatenation (2·embed_dim).
        hidden: hidden width of the MLP (GELU); the monitored latents are these activations.
        lr: Adam learning rate.
        weight_decay: Adam's coupled L2 coefficient (``torch.optim.Adam(weight_decay=...)``).
        batch_size: training batch size (sampled with replacement from the training split).
        steps: number of training steps.
        monitor_every: training steps per monitor step (evaluation, probe latents, RLHFMonitor).
        probe_size: number of fixed probe pairs whose hidden activations are the latents.
        reset_alpha: fraction of each parameter tensor's entries perturbed by a reset.
        reset_noise_scale: perturbation size in units of each tensor's standard deviation.
        reset_cooldown: at least this many training steps between two resets.
        reset_trigger: ``"flag"``: reset when the monitor's streaming detector flags a step (after the
            warm-up); ``"alert"``: only on a ``PHASE_TRANSITION`` alert (which also needs a cluster of
            arriving samples; it never fired in these runs, see docs/validation.md §3.1).
        gen_threshold: "generalised" = first monitor step with test accuracy ≥ this.
        jump_threshold: the jump step = first monitor step with test accuracy ≥ this (mid-jump).
        lead_window: a signal "leads" the jump when it first flags within this many training steps before it.
    """

    p: int = 53
    train_fraction: float = 0.4
    embed_dim: int = 12
    hidden: int = 48
    lr: float = 5e-3
    weight_decay: float = 2e-4
    batch_size: int = 128
    steps: int = 50_000
    monitor_every: int = 100
    probe_size: int = 256
    reset_alpha: float = 0.15
    reset_noise_scale: float = 0.1
    reset_cooldown: int = 2_000
    reset_trigger: str = "flag"
    gen_threshold: float = 0.9
    jump_threshold: float = 0.5
    lead_window: int = 5_000

    def __post_init__(self) -> None:
        for name in ("p", "embed_dim", "hidden", "batch_size", "steps", "monitor_every", "probe_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"GrokConfig.{name} must be an integer >= 2, got {value!r}")
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"GrokConfig.train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.steps < 3 * self.monitor_every:
            raise ValueError("GrokConfig.steps must cover at least 3 monitor steps (steps >= 3·monitor_every)")
        if self.reset_trigger not in ("flag", "alert"):
            raise ValueError(f"GrokConfig.reset_trigger must be 'flag' or 'alert', got {self.reset_trigger!r}")
        if not (0 < self.reset_alpha <= 1 and self.reset_noise_scale >= 0):
            raise ValueError("GrokConfig.reset_alpha must be in (0, 1] and reset_noise_scale >= 0")


QUICK = GrokConfig(steps=600, monitor_every=20, probe_size=64, lead_window=200, reset_cooldown=100)


class ModAddMLP(nn.Module):
    """Embedding (p → embed_dim) per operand, concatenated → Linear(hidden) → GELU → Linear(p)."""

    def __init__(self, p: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(p, embed_dim)
        self.l1 = nn.Linear(2 * embed_dim, hidden)
        self.l2 = nn.Linear(hidden, p)

    def hidden(self, a: Tensor, b: Tensor) -> Tensor:
        """Hidden activations (n, hidden) of the pairs (a_i, b_i)."""
        return nn.functional.gelu(self.l1(torch.cat([self.emb(a), self.emb(b)], dim=1)))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.l2(self.hidden(a, b))


def apply_reset_local(model: nn.Module, alpha: float, noise_scale: float, generator: torch.Generator) -> int:
    """p ← p + noise_scale·σ_p·ε on a random fraction ``alpha`` of each floating tensor's entries; in place.

    A copy of the rule of ``monitor.trl.apply_reset`` (issue 4; same draws in the same order: a Bernoulli(alpha)
    mask, then N(0, 1) noise, per trainable floating parameter; σ_p the population standard deviation of p, or
    its RMS when that is 0), used when ``monitor.trl`` is not importable. Returns the number of perturbed entries.
    """
    changed = 0
    with torch.no_grad():
        for param in model.parameters():
            if not param.is_floating_point() or not param.requires_grad or param.numel() == 0:
                continue
            pf = param.detach().float()
            scale = float(pf.std(correction=0)) if param.numel() > 1 else 0.0
            if not (math.isfinite(scale) and scale > 0):
                scale = float(pf.pow(2).mean().sqrt())
            mask = torch.rand(param.shape, generator=generator) < alpha
            noise = torch.randn(param.shape, generator=generator)
            if not (math.isfinite(scale) and scale > 0):
                continue
            param.add_((noise * mask).mul_(noise_scale * scale).to(param.dtype))
            changed += int(mask.sum())
    return changed


def _reset_function() -> tuple[Callable[[nn.Module, float, float, torch.Generator], Any], str]:
    try:
        from monitor.trl import apply_reset  # written concurrently by another engineer (issue 4)
    except ImportError:
        return apply_reset_local, "benchmarks.validation.grokking.apply_reset_local"
    return apply_reset, "monitor.trl.apply_reset"


def _lag1_autocorrelation(x: Sequence[float]) -> float:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size < 3:
        return math.nan
    a, b = arr[:-1] - arr[:-1].mean(), arr[1:] - arr[1:].mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def run_grokking(cfg: GrokConfig, seed: int, resets: bool) -> dict[str, Any]:
    """Train one model, monitoring every ``cfg.monitor_every`` steps; with ``resets``, reset on PHASE_TRANSITION.

    Returns a dict with per-monitor-step lists (``step``, ``test_acc``, ``train_acc``, ``loss``,
    ``weight_norm``, ``loss_var``, ``loss_ac1``, ``C``, ``S_dot``, ``H``, ``W2_step``, ``div_q99``), the alert
    steps and types, the reset steps, and ``seconds`` (wall time).
    """
    from monitor import MonitorConfig, RLHFMonitor
    from monitor.fpe import FPEConfig

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p = cfg.p
    grid_a, grid_b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a_all, b_all = grid_a.flatten(), grid_b.flatten()
    y_all = (a_all + b_all) % p
    perm = torch.randperm(p * p, generator=gen)
    n_train = int(cfg.train_fraction * p * p)
    train_idx, test_idx = perm[:n_train], perm[n_train:]
    probe_gen = torch.Generator().manual_seed(10_000 + seed)
    probe_idx = train_idx[torch.randperm(n_train, generator=probe_gen)[: cfg.probe_size]]
    model = ModAddMLP(p, cfg.embed_dim, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # W2_ref by the Gaussian (Bures) formula: the exact OT on 256 points per side costs more than the training
    monitor = RLHFMonitor(MonitorConfig(fpe=FPEConfig(w2_ref_method="gaussian")))
    reset_fn, reset_name = _reset_function()
    reset_gen = torch.Generator().manual_seed(20_000 + seed)
    hist: dict[str, list[float]] = {k: [] for k in ("step", "test_acc", "train_acc", "loss", "weight_norm")}
    hist.update({k: [] for k in ("loss_var", "loss_ac1", "C", "S_dot", "H", "W2_step", "div_q99")})
    alerts: list[tuple[int, str]] = []
    reset_steps: list[int] = []
    flags: list[int] = []
    interval_losses: list[float] = []
    last_reset = -(10**9)
    for step in range(1, cfg.steps + 1):
        batch = train_idx[torch.randint(n_train, (cfg.batch_size,), generator=gen)]
        loss = nn.functional.cross_entropy(model(a_all[batch], b_all[batch]), y_all[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        interval_losses.append(float(loss.detach()))
        if step % cfg.monitor_every:
            continue
        with torch.no_grad():
            test_acc = float((model(a_all[test_idx], b_all[test_idx]).argmax(1) == y_all[test_idx]).float().mean())
            train_acc = float((model(a_all[train_idx], b_all[train_idx]).argmax(1) == y_all[train_idx]).float().mean())
            latents = model.hidden(a_all[probe_idx], b_all[probe_idx])
            rewards = -nn.functional.cross_entropy(model.l2(latents), y_all[probe_idx], reduction="none")
            weight_norm = math.sqrt(sum(float(q.pow(2).sum()) for q in model.parameters()))
        report = monitor.observe(step, latents, rewards=rewards, lr=cfg.lr, dt=1.0)
        hist["step"].append(step)
        hist["test_acc"].append(test_acc)
        hist["train_acc"].append(train_acc)
        hist["loss"].append(float(np.mean(interval_losses)))
        hist["weight_norm"].append(weight_norm)
        hist["loss_var"].append(float(np.var(interval_losses)))
        hist["loss_ac1"].append(_lag1_autocorrelation(interval_losses))
        for key in ("C", "S_dot", "H", "W2_step", "div_q99"):
            hist[key].append(float(report.scalars.get(key, math.nan)))
        interval_losses = []
        if report.detection is not None and report.detection.flagged:
            flags.append(step)
        if report.alert is not None:
            alerts.append((step, str(report.alert.type)))
        if resets and step - last_reset >= cfg.reset_cooldown:
            alerted = report.alert is not None and report.alert.type == "PHASE_TRANSITION"
            flagged = report.detection is not None and report.detection.flagged
            if alerted or (cfg.reset_trigger == "flag" and flagged):
                reset_fn(model, cfg.reset_alpha, cfg.reset_noise_scale, reset_gen)
                reset_steps.append(step)
                last_reset = step
    # the warm-up steps' C and S_dot were computed with D0 = 1; the monitor's history holds them rescaled
    rescaled = {int(s): sc for s, sc in monitor.history}
    for key in ("C", "S_dot"):
        hist[key] = [float(rescaled.get(int(s), {}).get(key, v)) for s, v in zip(hist["step"], hist[key], strict=True)]
    return {
        "seed": seed,
        "resets": resets,
        "history": hist,
        "alerts": alerts,
        "monitor_flags": flags,
        "reset_steps": reset_steps,
        "reset_function": reset_name,
        "seconds": time.perf_counter() - t_start,
    }


def _first_at_least(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    for s, v in zip(steps, values, strict=True):
        if v >= threshold:
            return int(s)
    return None


def signal_flags(run: dict[str, Any], names: Sequence[str] = SIGNALS) -> dict[str, list[int]]:
    """Steps at which a default StreamingDetector (both directions) fed one series alone flags, per series."""
    from monitor.detect import StreamingConfig, StreamingDetector

    hist = run["history"]
    out: dict[str, list[int]] = {}
    for name in names:
        det = StreamingDetector(StreamingConfig(watch={name: "both"}))
        flags = []
        for step, value in zip(hist["step"], hist[name], strict=True):
            if det.update(int(step), {name: float(value)}).flagged:
                flags.append(int(step))
        out[name] = flags
    return out


def summarise_run(cfg: GrokConfig, run: dict[str, Any]) -> dict[str, Any]:
    """Steps to generalisation, the jump step, C around the jump and each signal's lead (training steps)."""
    hist = run["history"]
    steps, acc, c_series = hist["step"], hist["test_acc"], np.asarray(hist["C"], dtype=np.float64)
    t_gen = _first_at_least(steps, acc, cfg.gen_threshold)
    t_jump = _first_at_least(steps, acc, cfg.jump_threshold)
    flags = signal_flags(run)
    out: dict[str, Any] = {"seed": run["seed"], "resets": run["resets"], "t_gen": t_gen, "t_jump": t_jump}
    out["n_resets"] = len(run["reset_steps"])
    out["first_reset"] = run["reset_steps"][0] if run["reset_steps"] else None
    out["alerts_pt"] = [s for s, kind in run["alerts"] if kind == "PHASE_TRANSITION"]
    out["seconds"] = run["seconds"]
    if t_jump is None:
        return out | {"C_plateau": None, "C_min_before": None, "C_3_before": None, "C_collapse": None, "leads": {}}
    j = steps.index(t_jump)
    lw = max(1, cfg.lead_window // cfg.monitor_every)
    plateau = c_series[max(0, j - 2 * lw) : max(0, j - lw)]
    window = c_series[max(0, j - lw) : j + 1]
    c_plateau = float(np.nanmedian(plateau)) if plateau.size and np.isfinite(plateau).any() else math.nan
    c_min = float(np.nanmin(window)) if window.size and np.isfinite(window).any() else math.nan
    out["C_plateau"] = c_plateau
    out["C_min_before"] = c_min
    out["C_min_step"] = int(steps[max(0, j - lw) + int(np.nanargmin(window))]) if math.isfinite(c_min) else None
    out["C_3_before"] = float(c_series[j - 3]) if j >= 3 else None
    out["C_at_jump"] = float(c_series[j])
    out["C_collapse"] = bool(math.isfinite(c_min) and math.isfinite(c_plateau) and c_min < 0.5 * c_plateau)
    leads: dict[str, int | None] = {}
    early: dict[str, int] = {}
    for name, fl in flags.items():
        inside = [s for s in fl if t_jump - cfg.lead_window < s <= t_jump]
        leads[name] = t_jump - inside[0] if inside else None
        early[name] = sum(1 for s in fl if s <= t_jump - cfg.lead_window)
    for name, fl in (("monitor flag", run["monitor_flags"]), ("PHASE_TRANSITION alert", out["alerts_pt"])):
        inside = [s for s in fl if t_jump - cfg.lead_window < s <= t_jump]
        leads[name] = t_jump - inside[0] if inside else None
        early[name] = sum(1 for s in fl if s <= t_jump - cfg.lead_window)
    out["leads"] = leads
    out["flags_before_window"] = early
    return out


def _mean(values: Sequence[float | int | None]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(finite) if finite else math.nan


def run_experiment(cfg: GrokConfig, seeds: Sequence[int], out_dir: Path | None, plot: bool = True) -> dict[str, Any]:
    """Both arms over ``seeds``; returns (and writes, with ``out_dir``) the runs, summaries and comparison."""
    runs = {"no_reset": [run_grokking(cfg, s, resets=False) for s in seeds]}
    runs["reset"] = [run_grokking(cfg, s, resets=True) for s in seeds]
    summaries = {arm: [summarise_run(cfg, r) for r in rs] for arm, rs in runs.items()}
    ratios = []
    for base, reset in zip(summaries["no_reset"], summaries["reset"], strict=True):
        if base["t_gen"] is not None and reset["t_gen"] is not None:
            ratios.append(base["t_gen"] / reset["t_gen"])
    comparison = {
        "mean_t_gen": {arm: _mean([s["t_gen"] for s in ss]) for arm, ss in summaries.items()},
        "generalised": {arm: sum(s["t_gen"] is not None for s in ss) for arm, ss in summaries.items()},
        "speedup_per_seed": ratios,
        "speedup_mean": _mean(ratios),
        "speedup_geomean": math.exp(_mean([math.log(r) for r in ratios])) if ratios else math.nan,
        "C_collapse_count": sum(bool(s.get("C_collapse")) for s in summaries["no_reset"]),
    }
    result = {"config": dataclasses.asdict(cfg), "seeds": list(seeds), "summaries": summaries}
    result["comparison"] = comparison
    result["runs"] = {arm: [{k: v for k, v in r.items()} for r in rs] for arm, rs in runs.items()}
    if out_dir is not None:
        write_json(out_dir / "grokking.json", result)
        if plot:
            plot_experiment(cfg, result, out_dir)
    return result


def plot_experiment(cfg: GrokConfig, result: dict[str, Any], out_dir: Path) -> list[Path]:
    """grokking_runs.png (test accuracy and C per seed, both arms) and grokking_signals.png (signals vs jump)."""
    plt = agg_pyplot()
    seeds = result["seeds"]
    fig, axes = plt.subplots(2, len(seeds), figsize=(4.2 * len(seeds), 6), squeeze=False, sharex=True)
    for col, seed in enumerate(seeds):
        for arm, style in (("no_reset", "-"), ("reset", "--")):
            run = next(r for r in result["runs"][arm] if r["seed"] == seed)
            h = run["history"]
            axes[0][col].plot(h["step"], h["test_acc"], style, label=f"test acc ({arm})")
            axes[1][col].semilogy(h["step"], np.clip(np.asarray(h["C"], dtype=float), 1e-3, None), style, label=arm)
            for s in run["reset_steps"]:
                axes[0][col].axvline(s, color="red", alpha=0.3, lw=0.8)
        base = next(r for r in result["runs"]["no_reset"] if r["seed"] == seed)
        for s in base["monitor_flags"]:
            axes[1][col].axvline(s, color="grey", alpha=0.5, lw=0.8, ls=":")
        axes[0][col].set_title(f"seed {seed}")
        axes[1][col].set_xlabel("training step")
    axes[0][0].set_ylabel("test accuracy")
    axes[1][0].set_ylabel("C (probe latents)")
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.suptitle("Grokking, p=53: red = fpmon-triggered resets (reset arm), grey = monitor flags (no-reset arm)")
    fig.tight_layout()
    paths = [out_dir / "grokking_runs.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    names = ("test_acc", *SIGNALS)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.7 * len(names)), sharex=True)
    for run, summ in zip(result["runs"]["no_reset"], result["summaries"]["no_reset"], strict=True):
        if summ["t_jump"] is None:
            continue
        h = run["history"]
        rel = np.asarray(h["step"]) - summ["t_jump"]
        for ax, name in zip(axes, names, strict=True):
            ax.plot(rel, h[name], lw=0.8, label=f"seed {run['seed']}")
            ax.set_ylabel(name, fontsize=8)
    for ax, name in zip(axes, names, strict=True):
        ax.axvline(0, color="k", lw=0.8)
        if name in ("C", "loss_var"):
            ax.set_yscale("log")
    if axes[0].get_legend_handles_labels()[0]:  # no line when no run reached the jump (e.g. --quick)
        axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("training steps relative to the test-accuracy jump (acc ≥ 0.5)")
    fig.suptitle("No-reset runs aligned on the jump: C and the cheap signals")
    fig.tight_layout()
    paths.append(out_dir / "grokking_signals.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def format_tables(result: dict[str, Any]) -> str:
    """The three tables of docs/validation.md §3.1: per run, leads of the signals, comparison."""
    rows = []
    for arm in ("no_reset", "reset"):
        for s in result["summaries"][arm]:
            rows.append(
                [
                    arm,
                    s["seed"],
                    s["t_jump"],
                    s["t_gen"],
                    s["n_resets"],
                    s["first_reset"],
                    s.get("C_plateau"),
                    s.get("C_min_before"),
                    s.get("C_3_before"),
                    s.get("C_collapse"),
                    f"{s['seconds']:.0f}",
                ]
            )
    header = ["arm", "seed", "jump (acc≥0.5)", "t_gen (acc≥0.9)", "resets", "1st reset"]
    header += ["C plateau", "min C before jump", "C 3 mon. steps before", "C collapse (<½)", "s"]
    t1 = markdown_table(header, rows)
    names = [*SIGNALS, "monitor flag", "PHASE_TRANSITION alert"]
    rows2 = []
    for s in result["summaries"]["no_reset"]:
        if s["t_jump"] is None:
            continue
        rows2.append([s["seed"], *[f"{s['leads'].get(n)} / {s['flags_before_window'].get(n)}" for n in names]])
    t2 = markdown_table(["seed", *[f"{n}: lead / earlier flags" for n in names]], rows2)
    comp = result["comparison"]
    rows3 = [
        ["mean steps to generalisation", comp["mean_t_gen"]["no_reset"], comp["mean_t_gen"]["reset"]],
        ["runs that generalised", comp["generalised"]["no_reset"], comp["generalised"]["reset"]],
    ]
    t3 = markdown_table(["", "no reset", "fpmon resets"], rows3)
    ratio = ", ".join(f"{r:.2f}" for r in comp["speedup_per_seed"])
    t3 += f"\n\nspeed-up (t_gen without / with resets) per seed: {ratio}; mean {comp['speedup_mean']:.3g}"
    return "\n\n".join([t1, t2, t3])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few hundred steps, one seed (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2 3; quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 50000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for grokking.json and PNGs")
    args = parser.parse_args(argv)
    single_thread()
    cfg = QUICK if args.quick else GrokConfig()
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3])
    out_dir = args.out / "quick" if args.quick else args.out
    result = run_experiment(cfg, seeds, out_dir)
    print(format_tables(result))
    return result


if __name__ == "__main__":
    main()
