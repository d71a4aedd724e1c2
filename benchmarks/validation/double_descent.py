"""Model-wise double descent on scikit-learn's digits, watched by fpmon (seed §9.3).

Setup: the 8×8 digits (1797 images, 64 features scaled to [0, 1]); a random ``n_train`` = 200 for training with
20 % of their labels replaced by uniformly random ones, the other 1597 (clean labels) for testing. A one-hidden-
layer ReLU MLP of width w ∈ {4 … 512} is trained full-batch by Adam (lr 3e-3, 3000 steps, no weight decay) on
the squared error to the one-hot labels, so that wide enough networks interpolate the noisy training set. The
test error (squared error and misclassification rate) peaks near the interpolation threshold (the smallest
width reaching zero training error) and falls again beyond it.

Monitoring: every ``monitor_every`` steps the hidden activations (w-d) of the training images go to
:class:`monitor.RLHFMonitor` with rewards = −(per-sample squared error), the training objective. C_final is the
median of C over the last ``final_window`` monitor steps; C_min the minimum over the run after the monitor's
warm-up. The seed's claim: C collapses (< 0.5) at the test-error peak and restabilises at 2–4 beyond it.

A monitor step that raises (``RLHFMonitor.observe`` failed on some narrow networks' activations, see
docs/validation.md §3.2) is recorded as NaN with its error message in ``monitor_errors``.

Run: ``python -m benchmarks.validation.double_descent [--quick] [--seeds 0 1]``; writes
``double_descent.json`` and ``double_descent.png`` to ``docs/validation/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.validation._common import DEFAULT_OUT, agg_pyplot, markdown_table, single_thread, write_json


@dataclass(frozen=True)
class DoubleDescentConfig:
    """Settings of the width sweep.

    Attributes:
        widths: hidden widths of the sweep.
        n_train: training images (the rest of the 1797 is the test set).
        label_noise: fraction of training labels replaced by uniformly random labels.
        steps: full-batch Adam steps per width; lr: Adam learning rate.
        monitor_every: training steps per monitor step.
        final_window: monitor steps at the end of a run whose median C is C_final.
    """

    widths: tuple[int, ...] = (4, 8, 16, 24, 32, 48, 64, 128, 256, 512)
    n_train: int = 200
    label_noise: float = 0.2
    steps: int = 3000
    lr: float = 3e-3
    monitor_every: int = 100
    final_window: int = 10

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 2:
            raise ValueError("DoubleDescentConfig.widths must be non-empty, each >= 2 (the monitor needs d >= 2)")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"DoubleDescentConfig.label_noise must be in [0, 1), got {self.label_noise}")
        if self.steps < 3 * self.monitor_every or not 10 <= self.n_train < 1700:
            raise ValueError("DoubleDescentConfig needs steps >= 3·monitor_every and 10 <= n_train < 1700")


QUICK = DoubleDescentConfig(widths=(8, 32), n_train=100, steps=200, monitor_every=20, final_window=3)


def load_data(cfg: DoubleDescentConfig, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train (n, 64), noisy y_train (n,), x_test, clean y_test) from sklearn's digits; split and noise by seed."""
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    tr, te = perm[: cfg.n_train], perm[cfg.n_train :]
    y_train = y[tr].clone()
    noisy = torch.rand(cfg.n_train, generator=gen) < cfg.label_noise
    y_train[noisy] = torch.randint(10, (int(noisy.sum()),), generator=gen)
    return x[tr], y_train, x[te], y[te]


def train_width(cfg: DoubleDescentConfig, width: int, seed: int) -> dict[str, Any]:
    """Train one width, monitoring the hidden activations; returns errors and the C history."""
    from monitor import MonitorConfig, RLHFMonitor
    from monitor.fpe import FPEConfig

    x_tr, y_tr, x_te, y_te = load_data(cfg, seed)
    t0 = time.perf_counter()
    torch.manual_seed(1000 * seed + width)
    hidden = nn.Sequential(nn.Linear(x_tr.shape[1], width), nn.ReLU())
    head = nn.Linear(width, 10)
    params = [*hidden.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    target = nn.functional.one_hot(y_tr, 10).float()
    monitor = RLHFMonitor(MonitorConfig(fpe=FPEConfig(w2_ref_method="gaussian")))
    c_hist: list[float] = []
    errors: list[str] = []
    for step in range(1, cfg.steps + 1):
        per_sample = (head(hidden(x_tr)) - target).pow(2).sum(dim=1)
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.monitor_every == 0:
            with torch.no_grad():
                h = hidden(x_tr)
                rewards = -(head(h) - target).pow(2).sum(dim=1)
            try:
                report = monitor.observe(step, h, rewards=rewards, lr=cfg.lr)
            except (RuntimeError, ValueError) as exc:  # an engine failure is a finding, not a reason to stop
                errors.append(f"step {step}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                c_hist.append(math.nan)
                continue
            c_hist.append(float(report.scalars["C"]))
    rescaled = {int(s): sc for s, sc in monitor.history}
    steps = list(range(cfg.monitor_every, cfg.steps + 1, cfg.monitor_every))
    c_hist = [float(rescaled.get(s, {}).get("C", c)) for s, c in zip(steps, c_hist, strict=True)]
    with torch.no_grad():
        out_tr, out_te = head(hidden(x_tr)), head(hidden(x_te))
        test_target = nn.functional.one_hot(y_te, 10).float()
        result: dict[str, Any] = {
            "width": width,
            "seed": seed,
            "params": sum(p.numel() for p in params),
            "train_error": float((out_tr.argmax(1) != y_tr).float().mean()),
            "train_mse": float((out_tr - target).pow(2).sum(1).mean()),
            "test_error": float((out_te.argmax(1) != y_te).float().mean()),
            "test_mse": float((out_te - test_target).pow(2).sum(1).mean()),
        }
    warm = MonitorConfig().warmup_steps
    c_arr = np.asarray(c_hist, dtype=np.float64)
    tail = c_arr[-cfg.final_window :]
    result["C_final"] = float(np.nanmedian(tail)) if np.isfinite(tail).any() else math.nan
    after = c_arr[warm:] if c_arr.size > warm else c_arr
    result["C_min"] = float(np.nanmin(after)) if np.isfinite(after).any() else math.nan
    result["C_history"] = c_hist
    result["monitor_errors"] = errors
    result["dead_units"] = int((hidden(x_tr) <= 0).all(dim=0).sum())
    result["seconds"] = time.perf_counter() - t0
    return result


def analyse(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per seed: the width of the test-MSE peak (among widths past the first local minimum), the
    interpolation threshold, the width of the smallest C_final and whether C_final collapses (< 0.5) there."""
    out: dict[str, Any] = {}
    for seed in sorted({r["seed"] for r in rows}):
        sub = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["width"])
        mse = [r["test_mse"] for r in sub]
        widths = [r["width"] for r in sub]
        peak = widths[int(np.argmax(mse))]
        interp = next((r["width"] for r in sub if r["train_error"] == 0.0), None)
        c_final = [r["C_final"] for r in sub]
        finite = [(c, w) for c, w in zip(c_final, widths, strict=True) if math.isfinite(c)]
        c_min_width = min(finite)[1] if finite else None
        peak_c = sub[widths.index(peak)]["C_final"]
        others = [c for c, w in finite if w != peak]
        out[str(seed)] = {
            "test_mse_peak_width": peak,
            "interpolation_width": interp,
            "C_final_min_width": c_min_width,
            "C_final_at_peak": peak_c,
            "C_final_median_other_widths": statistics.median(others) if others else math.nan,
            "C_collapse_at_peak": bool(math.isfinite(peak_c) and peak_c < 0.5),
            "C_min_at_peak": c_min_width == peak,
        }
    return out


def run_sweep(
    cfg: DoubleDescentConfig, seeds: Sequence[int], out_dir: Path | None, plot: bool = True
) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = [train_width(cfg, w, s) for s in seeds for w in cfg.widths]
    result = {
        "config": dataclasses.asdict(cfg),
        "seeds": list(seeds),
        "rows": rows,
        "analysis": analyse(rows),
        "seconds": time.perf_counter() - t0,
    }
    if out_dir is not None:
        write_json(out_dir / "double_descent.json", result)
        if plot:
            plot_sweep(result, out_dir / "double_descent.png")
    return result


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for seed in result["seeds"]:
        sub = sorted((r for r in result["rows"] if r["seed"] == seed), key=lambda r: r["width"])
        w = [r["width"] for r in sub]
        axes[0].plot(w, [r["test_mse"] for r in sub], "o-", label=f"test MSE, seed {seed}")
        axes[0].plot(w, [r["train_mse"] for r in sub], "x--", label=f"train MSE, seed {seed}")
        axes[1].plot(w, [r["test_error"] for r in sub], "o-", label=f"test error, seed {seed}")
        axes[1].plot(w, [r["train_error"] for r in sub], "x--", label=f"train error, seed {seed}")
        axes[2].plot(w, [r["C_final"] for r in sub], "o-", label=f"C_final, seed {seed}")
        axes[2].plot(w, [r["C_min"] for r in sub], "x:", label=f"C_min, seed {seed}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    axes[2].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].set_title("squared error")
    axes[1].set_title("misclassification")
    axes[2].set_title("C of the hidden activations (seed: < 0.5 at the peak)")
    fig.suptitle("Digits, 200 training images with 20 % label noise, 1-hidden-layer ReLU MLP")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_tables(result: dict[str, Any]) -> str:
    rows = [
        [
            r["seed"],
            r["width"],
            r["params"],
            r["train_error"],
            r["test_error"],
            r["train_mse"],
            r["test_mse"],
            r["C_final"],
            r["C_min"],
        ]
        for r in sorted(result["rows"], key=lambda r: (r["seed"], r["width"]))
    ]
    header = ["seed", "width", "params", "train err", "test err", "train MSE", "test MSE", "C_final", "C_min"]
    a = markdown_table(header, rows)
    rows2 = [
        [
            seed,
            v["interpolation_width"],
            v["test_mse_peak_width"],
            v["C_final_min_width"],
            v["C_final_at_peak"],
            v["C_final_median_other_widths"],
            v["C_collapse_at_peak"],
        ]
        for seed, v in result["analysis"].items()
    ]
    header2 = ["seed", "interpolation width", "test-MSE peak width", "argmin C_final", "C_final at peak"]
    b = markdown_table([*header2, "median C_final elsewhere", "C < 0.5 at peak"], rows2)
    return a + "\n\n" + b


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two widths, 200 steps (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; quick: 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for double_descent.json and PNG")
    args = parser.parse_args(argv)
    single_thread()
    cfg = QUICK if args.quick else DoubleDescentConfig()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    result = run_sweep(cfg, seeds, args.out / "quick" if args.quick else args.out)
    print(format_tables(result))
    print(f"\n{result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
