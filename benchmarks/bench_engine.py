"""Speed and peak memory of ``compute_observables`` against the plain numpy/scipy/POT baseline.

Run::

    python benchmarks/bench_engine.py [--device cpu|cuda] [--sizes 256x768,1024x1024,2048x1024,2048x4096]
                                      [--repeats N] [--quick] [--json PATH] [--threads N]
                                      [--baseline-prev pooled|last] [--budget-s S]

Inputs, per (n, d): latents with a low-rank structure plus noise, like sentence embeddings (a shared
offset direction, 32 factors with a decaying spectrum, isotropic noise, rows L2-normalised), float32.
A reference batch (n samples), the ``FPEConfig().pool_window`` previous batches (n samples each, the
factor means drifting a little per step), the current batch and its rewards. ``Projection.fit(z_ref,
k=FPEConfig().k)`` is fitted once, untimed.

What is timed:

* **fpmon**: ``compute_observables(z_prev_window, z_cur, projection=proj, rewards=r, z_ref=z_ref)``,
  all float32 tensors on ``--device`` (on CUDA, ``torch.cuda.synchronize()`` before and after).
* **baseline**: what a user would write on numpy for the same quantities from the same inputs:
  the same projection applied with numpy; ``scipy.stats.gaussian_kde`` of the current batch evaluated
  at the current points and the KDE of the previous window evaluated at the current points (the
  density change); POT ``ot.emd2`` (uniform weights, exact) between the previous window and the
  current batch (W2_step) and between the current batch and the reference (W2_ref). By default
  "previous" is the pooled window fpmon is given (``--baseline-prev last`` uses only the last batch).
  The baseline uses all samples; fpmon subsamples W2_ref to ``w2_ref_max_samples``. It always runs on
  the CPU, from numpy arrays prepared untimed.

Each is warmed up (one call, two for calls under 0.5 s), then both are timed alternately (fpmon,
baseline, fpmon, ...) so that the load of a shared machine hits both alike, each after a 0.3 s pause
(so that the spinning worker threads of the other library, OpenBLAS or OpenMP, have parked and do not
compete for the cores with the call being timed); the medians are reported
and the speed-up is baseline median / fpmon median of the same run. ``--repeats`` (default 7) is
lowered for the big sizes so that the repeats fit ``--budget-s`` (never below 3). The 1-minute load
average before and after is printed: on a busy shared machine absolute times are inflated (torch's
OpenMP threads suffer most from oversubscription; try ``--threads 1``), the speed-ups less so.

Peak memory (MiB), CPU: each (n, d, fpmon|baseline) runs in a fresh child process
(``bench_engine.py --child ...``) that imports everything, runs the same computation once on a tiny
problem (so that lazily loaded code and thread pools are already resident), builds the real inputs and
the projection, collects garbage and returns freed heap memory to the OS (glibc ``malloc_trim``), then
resets the peak-RSS counter (writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM``) and reads
``VmRSS``; it runs the computation once and reads ``VmHWM``. The peak increase is VmHWM − VmRSS: the
resident memory the computation added at its peak, inputs excluded. Where ``clear_refs`` cannot be
written, it falls back to the growth of ``ru_maxrss`` (a lower bound when building the inputs peaked
higher). On CUDA, fpmon's peak is ``torch.cuda.max_memory_allocated()`` − ``memory_allocated()``
before the call (GPU memory, after ``reset_peak_memory_stats``); the baseline's is measured as on CPU.

Targets (this 2-core CPU): fpmon ≤ 50 ms at (256, 768), ≤ 2000 ms at (2048, 1024), peak ≤ 1024 MiB
at (2048, 4096). CUDA: ≤ 2 ms at (2048, 1024). The script reports them and always exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ot
import scipy
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import gaussian_kde

try:
    from monitor.fpe import FPEConfig, Projection, compute_observables
except ImportError:  # run from a checkout without installing: python benchmarks/bench_engine.py
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from monitor.fpe import FPEConfig, Projection, compute_observables

DEFAULT_SIZES = ((256, 768), (1024, 1024), (2048, 1024), (2048, 4096))
RANK = 32  # factors of the synthetic latents
EMD_MAX_ITER = 10_000_000
MIB = 1024.0 * 1024.0

#: (n, d) → (kind, limit): "ms" on fpmon's median time, "mib" on fpmon's peak memory increase
TARGETS: dict[str, dict[tuple[int, int], tuple[str, float]]] = {
    "cpu": {(256, 768): ("ms", 50.0), (2048, 1024): ("ms", 2000.0), (2048, 4096): ("mib", 1024.0)},
    "cuda": {(2048, 1024): ("ms", 2.0)},
}


# --------------------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    z_ref: torch.Tensor
    z_prev: list[torch.Tensor]
    z_cur: torch.Tensor
    rewards: torch.Tensor


def make_inputs(n: int, d: int, window: int, seed: int = 0) -> Inputs:
    """Sentence-embedding-like float32 latents on the CPU (deterministic in n, d, window, seed)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + n * 7919 + d)
    r = min(RANK, d)
    basis = torch.linalg.qr(torch.randn(d, r, generator=g)).Q  # (d, r) orthonormal
    scales = torch.logspace(0.0, -1.5, r)  # decaying spectrum
    offset = torch.randn(d, generator=g)
    offset = 1.5 * offset / offset.norm()  # shared direction (anisotropy of embedding models)
    drift = 0.05 * torch.randn(r, generator=g) * scales  # factor-mean shift per step
    reward_dir = torch.randn(r, generator=g)
    noise = 0.3 / math.sqrt(d)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.randn(n, r, generator=g) * scales + step * drift
        z = offset + c @ basis.T
        z += noise * torch.randn(n, d, generator=g)
        z /= z.norm(dim=1, keepdim=True)
        return z.float(), c

    z_ref, _ = batch(0)
    z_prev = [batch(s)[0] for s in range(window)]
    z_cur, c_cur = batch(window)
    rewards = (c_cur @ reward_dir / scales.norm() + 0.1 * torch.randn(n, generator=g)).float()
    return Inputs(z_ref=z_ref, z_prev=z_prev, z_cur=z_cur, rewards=rewards)


def to_device(inp: Inputs, device: str) -> Inputs:
    return Inputs(
        z_ref=inp.z_ref.to(device),
        z_prev=[z.to(device) for z in inp.z_prev],
        z_cur=inp.z_cur.to(device),
        rewards=inp.rewards.to(device),
    )


# ---------------------------------------------------------------------------------- the two pipelines


#: environment variable carrying ``--w2-ref-method`` to the memory-measuring child processes
W2_REF_ENV = "FPMON_BENCH_W2_REF_METHOD"


def bench_config() -> FPEConfig:
    """The default FPEConfig, with ``w2_ref_method`` from ``--w2-ref-method`` when given."""
    method = os.environ.get(W2_REF_ENV)
    return FPEConfig(w2_ref_method=method) if method else FPEConfig()  # type: ignore[arg-type]


def fpmon_call(inp: Inputs, proj: Projection) -> dict[str, float]:
    obs = compute_observables(
        inp.z_prev, inp.z_cur, projection=proj, config=bench_config(), rewards=inp.rewards, z_ref=inp.z_ref
    )
    return {"W2_step": obs.scalars["W2_step"], "W2_ref": obs.scalars["W2_ref"]}


@dataclass
class NumpyInputs:
    z_ref: np.ndarray
    z_prev: list[np.ndarray]
    z_cur: np.ndarray
    mean: np.ndarray  # (d,) float32
    weights: np.ndarray  # (d, k) float32: components / sqrt(variances)
    pooled: bool


def numpy_inputs(inp: Inputs, proj: Projection, pooled: bool) -> NumpyInputs:
    """The baseline's inputs: numpy float32 arrays on the CPU, the same projection as matrices."""
    weights = (proj.components / proj.variances.sqrt()).cpu().numpy().astype(np.float32)
    return NumpyInputs(
        z_ref=inp.z_ref.cpu().numpy(),
        z_prev=[z.cpu().numpy() for z in inp.z_prev],
        z_cur=inp.z_cur.cpu().numpy(),
        mean=proj.mean.cpu().numpy().astype(np.float32),
        weights=weights,
        pooled=pooled,
    )


def baseline_call(b: NumpyInputs, parts: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Density change, W2_step and W2_ref with numpy, scipy's gaussian_kde and POT's exact emd2."""
    t0 = time.perf_counter()
    x = (b.z_cur - b.mean) @ b.weights
    x_prev_list = [(z - b.mean) @ b.weights for z in b.z_prev]
    x_ref = (b.z_ref - b.mean) @ b.weights
    x_prev = np.concatenate(x_prev_list) if b.pooled else x_prev_list[-1]
    t1 = time.perf_counter()
    dt_eff = (len(b.z_prev) + 1) / 2.0 if b.pooled else 1.0
    log_rho = gaussian_kde(x.T).logpdf(x.T)
    log_rho_prev = gaussian_kde(x_prev.T).logpdf(x.T)
    density_change = (log_rho - log_rho_prev) / dt_eff
    t2 = time.perf_counter()
    w2_step = math.sqrt(
        max(ot.emd2(ot.unif(len(x_prev)), ot.unif(len(x)), ot.dist(x_prev, x), numItermax=EMD_MAX_ITER), 0.0)
    )
    t3 = time.perf_counter()
    w2_ref = math.sqrt(
        max(ot.emd2(ot.unif(len(x)), ot.unif(len(x_ref)), ot.dist(x, x_ref), numItermax=EMD_MAX_ITER), 0.0)
    )
    t4 = time.perf_counter()
    if parts is not None:
        for key, dt in (
            ("projection", t1 - t0),
            ("kde", t2 - t1),
            ("emd_step", t3 - t2),
            ("emd_ref", t4 - t3),
        ):
            parts.setdefault(key, []).append(dt * 1e3)
    return {"W2_step": w2_step, "W2_ref": w2_ref, "div_max": float(np.abs(density_change).max())}


# ---------------------------------------------------------------------------------------- measuring


#: pause before each timed call, so that the worker threads of the library used last (OpenBLAS spins
#: ~0.1 s after a numpy product, OpenMP a little) are parked and do not compete with the next call
GAP_S = 0.3


def timed(fn: Callable[[], Any], cuda: bool) -> float:
    """Wall-clock milliseconds of one call (synchronised on CUDA), after a pause of GAP_S."""
    time.sleep(GAP_S)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (empty where /proc is missing)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def child_peak(n: int, d: int, which: str, baseline_prev: str) -> dict[str, Any]:
    """In a fresh process: peak resident memory increase (bytes) of one fpmon or baseline call."""
    cfg = bench_config()
    pooled = baseline_prev == "pooled"

    def run(inp: Inputs) -> Callable[[], Any]:
        proj = Projection.fit(inp.z_ref, k=cfg.k)
        if which == "fpmon":
            return lambda: fpmon_call(inp, proj)
        b = numpy_inputs(inp, proj, pooled)
        return lambda: baseline_call(b)

    run(make_inputs(64, 64, cfg.pool_window, seed=1))()  # load lazy code and thread pools, untimed
    call = run(make_inputs(n, d, cfg.pool_window))
    gc.collect()
    _malloc_trim()
    maxrss_before = _ru_maxrss_bytes()
    method = "clear_refs" if _reset_peak_rss() and "VmHWM" in _proc_status() else "ru_maxrss"
    rss_before = _proc_status().get("VmRSS", 0)
    call()
    status = _proc_status()
    maxrss_after = _ru_maxrss_bytes()
    # clear_refs: the peak since the reset; else the growth of the lifetime peak (a lower bound)
    peak = status["VmHWM"] - rss_before if method == "clear_refs" else maxrss_after - maxrss_before
    return {
        "n": n,
        "d": d,
        "which": which,
        "method": method,
        "peak_increase_bytes": max(peak, 0),
        "rss_before_bytes": rss_before,
        "hwm_after_bytes": status.get("VmHWM"),
        "ru_maxrss_before_bytes": maxrss_before,
        "ru_maxrss_after_bytes": maxrss_after,
    }


def measure_peak_subprocess(n: int, d: int, which: str, baseline_prev: str) -> dict[str, Any] | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--n", str(n), "--d", str(d)]
    cmd += ["--which", which, "--baseline-prev", baseline_prev, "--threads", str(torch.get_num_threads())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        Console(stderr=True).print(f"[red]peak-memory child {which} {n}x{d} timed out[/red]")
        return None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        Console(stderr=True).print(f"[red]peak-memory child {which} {n}x{d} failed:[/red] " + " | ".join(tail))
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_peak_mib(fn: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MIB


def time_size(n: int, d: int, args: argparse.Namespace) -> dict[str, Any]:
    """Timings of both pipelines at (n, d) in this process (and fpmon's GPU peak on CUDA)."""
    cfg = bench_config()
    cuda = args.device == "cuda"
    inp_cpu = make_inputs(n, d, cfg.pool_window)
    inp = to_device(inp_cpu, args.device)
    proj = Projection.fit(inp.z_ref, k=cfg.k)
    b = numpy_inputs(inp_cpu, proj, args.baseline_prev == "pooled")

    def f_fpmon() -> Any:
        return fpmon_call(inp, proj)

    def f_base() -> Any:
        return baseline_call(b)

    # warm-up: one call each, a second one for fast calls
    warm_f, warm_b = timed(f_fpmon, cuda), timed(f_base, cuda)
    warmup = 1
    if min(warm_f, warm_b) < 500.0:
        warm_f, warm_b = timed(f_fpmon, cuda), timed(f_base, cuda)
        warmup = 2
    repeats = args.repeats
    per_pair_s = (warm_f + warm_b) / 1e3
    if per_pair_s * repeats > args.budget_s:
        repeats = max(min(3, args.repeats), int(args.budget_s / per_pair_s))

    fp_ms: list[float] = []
    base_ms: list[float] = []
    parts: dict[str, list[float]] = {}
    values_f: dict[str, float] = {}
    values_b: dict[str, float] = {}

    def run_f() -> None:
        values_f.update(f_fpmon())

    def run_b() -> None:
        values_b.update(baseline_call(b, parts))

    for _ in range(repeats):  # alternate, so that load changes hit both alike
        fp_ms.append(timed(run_f, cuda))
        base_ms.append(timed(run_b, cuda))

    fp_med, base_med = statistics.median(fp_ms), statistics.median(base_ms)
    row: dict[str, Any] = {
        "n": n,
        "d": d,
        "device": args.device,
        "pool_window": cfg.pool_window,
        "k": cfg.k,
        "baseline_prev": args.baseline_prev,
        "warmup": warmup,
        "repeats": repeats,
        "fpmon_ms": fp_med,
        "fpmon_ms_runs": fp_ms,
        "fpmon_ms_min": min(fp_ms),
        "baseline_ms": base_med,
        "baseline_ms_runs": base_ms,
        "baseline_ms_min": min(base_ms),
        "baseline_parts_ms": {key: statistics.median(v) for key, v in parts.items()},
        "speedup": base_med / fp_med,
        "explained": proj.explained,
        "values": {"fpmon": values_f, "baseline": values_b},
    }

    if cuda:
        row["fpmon_peak_mib"] = cuda_peak_mib(f_fpmon)
        row["fpmon_peak_kind"] = "cuda_max_memory_allocated"
    return row


def bench_size(n: int, d: int, args: argparse.Namespace) -> dict[str, Any]:
    """One row: timings here, then the CPU peak memory of each pipeline in fresh processes."""
    cuda = args.device == "cuda"
    row = time_size(n, d, args)  # its inputs are freed on return
    gc.collect()
    for which in ("baseline",) if cuda else ("fpmon", "baseline"):
        res = measure_peak_subprocess(n, d, which, args.baseline_prev)
        row[f"{which}_peak_mib"] = res["peak_increase_bytes"] / MIB if res else None
        if which == "fpmon":
            row["fpmon_peak_kind"] = f"rss_{res['method']}" if res else None
        else:
            row["baseline_peak_kind"] = f"rss_{res['method']}" if res else None

    target = TARGETS[args.device].get((n, d))
    if target is None:
        row["target"], row["passed"] = None, None
    else:
        kind, limit = target
        value = row["fpmon_ms"] if kind == "ms" else row["fpmon_peak_mib"]
        row["target"] = f"≤ {limit:g} ms" if kind == "ms" else f"peak ≤ {limit:g} MiB"
        row["passed"] = None if value is None else bool(value <= limit)
    return row


# ------------------------------------------------------------------------------------------ reporting


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "device": device,
        "device_name": device_name(device),
        "cpu_cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pot": ot.__version__,
        "python": platform.python_version(),
        "loadavg_start": _loadavg(),
        "fpe_config": {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in bench_config().to_dict().items()
        },
    }


def _loadavg() -> float | None:
    """1-minute load average (None where unavailable): above the core count, timings are inflated."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def print_table(rows: list[dict[str, Any]], env: dict[str, Any], console: Console) -> None:
    gpu = env["device"] == "cuda"
    table = Table(title=f"compute_observables vs numpy/scipy/POT baseline — {env['device_name']}")
    for col in ("n", "d", "fpmon median ms", "baseline median ms", "speed-up ×"):
        table.add_column(col, justify="right")
    table.add_column("fpmon peak MiB" + (" (GPU)" if gpu else ""), justify="right")
    table.add_column("baseline peak MiB", justify="right")
    table.add_column("target")
    table.add_column("pass/fail")
    for r in rows:
        verdict = "—" if r["passed"] is None else ("[green]pass[/green]" if r["passed"] else "[red]FAIL[/red]")
        table.add_row(
            str(r["n"]),
            str(r["d"]),
            _fmt(r["fpmon_ms"], 2 if r["fpmon_ms"] < 100 else 1),
            _fmt(r["baseline_ms"], 2 if r["baseline_ms"] < 100 else 1),
            f"{r['speedup']:.1f}",
            _fmt(r.get("fpmon_peak_mib")),
            _fmt(r.get("baseline_peak_mib")),
            r["target"] or "—",
            verdict,
        )
    console.print(table)
    reps = ", ".join(f"{r['n']}x{r['d']}: {r['warmup']}+{r['repeats']}" for r in rows)
    console.print(
        f"device: {env['device_name']} ({env['cpu_cores']} CPU cores) | torch {env['torch']}, "
        f"{env['torch_threads']} threads | numpy {env['numpy']}, scipy {env['scipy']}, POT {env['pot']}"
    )
    cfg = env["fpe_config"]
    console.print(
        f"FPEConfig: k={cfg['k']}, pool_window={cfg['pool_window']}, velocity={cfg['velocity']}, "
        f"w2_ref_method={cfg['w2_ref_method']}, w2_ref_max_samples={cfg['w2_ref_max_samples']}"
        f" | baseline previous side: {rows[0]['baseline_prev'] if rows else '?'} | warm-up+repeats: {reps}"
    )
    start, end = env.get("loadavg_start"), env.get("loadavg_end")
    if start is not None and end is not None:
        busy = start >= env["cpu_cores"] / 2  # others already used half the cores before this run
        console.print(
            ("[yellow]" if busy else "")
            + f"1-min load average: {start:.1f} at start, {end:.1f} at end, on {env['cpu_cores']} cores"
            + ("; shared machine busy: absolute timings are inflated, compare the speed-ups[/yellow]" if busy else "")
        )
    for r in rows:
        p = r["baseline_parts_ms"]
        console.print(
            f"baseline {r['n']}x{r['d']} median ms: projection {p['projection']:.1f}, kde {p['kde']:.1f}, "
            f"emd2 step {p['emd_step']:.1f}, emd2 ref {p['emd_ref']:.1f}"
        )


# ----------------------------------------------------------------------------------------------- main


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        try:
            n, d = (int(v) for v in item.lower().split("x"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"size {item!r} is not NxD (e.g. 2048x1024)") from exc
        if n < 16 or d < 8:
            raise argparse.ArgumentTypeError(f"size {item!r} too small: need n >= 16 and d >= 8")
        sizes.append((n, d))
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES), help="comma-separated NxD")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per size (default 7)")
    p.add_argument("--budget-s", type=float, default=25.0, help="seconds of timed repeats per size")
    p.add_argument("--quick", action="store_true", help="smallest size, 2 repeats (smoke test)")
    p.add_argument("--json", type=Path, default=None, help="write the rows (and environment) here")
    p.add_argument("--baseline-prev", choices=("pooled", "last"), default="pooled")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--w2-ref-method",
        choices=("exact", "sinkhorn", "gaussian"),
        default=None,
        help="FPEConfig.w2_ref_method for fpmon (default: FPEConfig's)",
    )
    # internal: one peak-memory measurement in a fresh process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    p.add_argument("--which", choices=("fpmon", "baseline"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.quick:
        args.sizes = [DEFAULT_SIZES[0]]
        args.repeats = 2
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.w2_ref_method is not None:
        os.environ[W2_REF_ENV] = args.w2_ref_method  # inherited by the --child processes
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_peak(args.n, args.d, args.which, args.baseline_prev)))
        return 0
    console = Console()
    if console.width < 150:  # not a terminal (CI log, pipe): do not squeeze the table to 80 columns
        console = Console(width=150)
    env = environment(args.device)
    console.print(
        f"[bold]bench_engine[/bold] on {env['device_name']} | torch {env['torch']} | "
        f"{env['torch_threads']} threads | sizes {', '.join(f'{n}x{d}' for n, d in args.sizes)}"
    )
    rows = []
    for n, d in args.sizes:
        t0 = time.perf_counter()
        row = bench_size(n, d, args)
        rows.append(row)
        console.print(
            f"  {n}x{d}: fpmon {row['fpmon_ms']:.2f} ms, baseline {row['baseline_ms']:.1f} ms, "
            f"×{row['speedup']:.1f} ({time.perf_counter() - t0:.0f} s)"
        )
    env["loadavg_end"] = _loadavg()
    print_table(rows, env, console)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
        console.print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
