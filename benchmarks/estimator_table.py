"""Measured table of the Fokker–Planck estimators' error and stationary noise floor (DESIGN.md §3.3).

Every default of :class:`monitor.fpe.FPEConfig` (k, bandwidth_factor, pool_window, velocity) is chosen
from the tables this script prints; ``docs/estimators.md`` keeps them and says why.

Test flow: an Ornstein–Uhlenbeck process in k whitened coordinates,

    dX = −θ (X − m∞) dt + √(2D) dW,   θ = 0.1 / step,  D = 0.1 / step,  m∞ = 0,

so the stationary law is N(0, (D/θ) I) = N(0, I): the whitened reference. It starts away from
stationarity at N(m0, Σ0), m0 = e₁ − e₂ (a shift of 1 along two directions), Σ0 = diag of eigenvalues
log-spaced in [1/4, 4]. Its marginals are exact Gaussians N(m_t, Σ_t),

    m_t = e^(−θt) m0,   Σ_t = e^(−2θt) Σ0 + (D/θ)(1 − e^(−2θt)) I,

and every step draws a FRESH independent batch from N(m_t, Σ_t) (consecutive RLHF batches are
independent samples, not the same particles moved). The current step is t = 8 (so that a window of up
to 8 previous steps exists); there the true RMS velocity is ≈ 0.08–0.10 whitened units per step (the
size of W2_step) — the mean and the spread each contribute about half — i.e. a reorganisation that
moves the batch by about one standard deviation in 10–20 steps, the speed the monitor must see.

Truth, in closed form at the current samples x (Σ_t diagonal, b = −θ + D/σ², σ̇² = −2θσ² + 2D):

* current velocity v = −θ(x − m∞) + D Σ_t⁻¹(x − m_t) = ṁ + b ⊙ (x − m_t) (the OT tangent: affine, symmetric)
* score s = −Σ_t⁻¹(x − m_t); entropy H = ½ log det(2πe Σ_t); S = −dH/dt = −½ tr(Σ_t⁻¹ Σ̇_t)
* δ = −∂_t log ρ = ½ tr(Σ⁻¹Σ̇) − (x − m)ᵀ Σ⁻¹ ṁ − ½ (x − m)ᵀ Σ⁻¹ Σ̇ Σ⁻¹ (x − m)

The KDE estimates the density convolved with its kernel N(0, h²I), so the "smoothed" references use
Σ_t + h²I; the "n→∞" references are the population limits of the estimators with the engine's pooled
window (the Bures map between the pooled mixture's moments and ρ_t, the finite difference of the
smoothed log-densities over dt_eff). Errors against the TRUE quantities are what a user gets; the
smoothed / n→∞ columns separate bias from noise.

Stationary noise floor: the same estimators on independent batches of the stationary law N(0, I)
(no flow: every true flow quantity is 0).

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python benchmarks/estimator_table.py           # full table, prints markdown
    PYTHONPATH=. .venv/bin/python benchmarks/estimator_table.py --write   # ... into docs/estimators.md
    PYTHONPATH=. .venv/bin/python benchmarks/estimator_table.py --quick   # smoke test (< 30 s)
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from monitor.fpe.config import FPEConfig, VelocityMethod
from monitor.fpe.observables import Observables, observables_from_projected

THETA = 0.1  # mean reversion, 1/step
DIFF = 0.1  # diffusion D, whitened units² / step  (D/θ = 1: stationary law N(0, I))
T_EVAL = 8  # the current step
W_MAX = 8  # largest pooled window measured
SIGMA0_RANGE = (0.25, 4.0)  # eigenvalues of Σ0, log-spaced
DTYPE = torch.float32  # what Projection.transform returns for float32 / bf16 latents

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "estimators.md"
START, END = "<!-- table:start -->", "<!-- table:end -->"
ESTIMATORS: tuple[VelocityMethod, ...] = ("gaussian", "ot")
FLOW, STAT = 0, 1  # modes: OU flow, stationary noise floor


# ----------------------------------------------------------------------------------------------------
# Ornstein–Uhlenbeck truth (Σ_t diagonal; everything in closed form)


@dataclass(frozen=True)
class OU:
    k: int

    @property
    def m0(self) -> np.ndarray:
        m0 = np.zeros(self.k)
        m0[0] = 1.0
        if self.k > 1:
            m0[1] = -1.0
        return m0

    @property
    def var0(self) -> np.ndarray:
        return np.geomspace(SIGMA0_RANGE[0], SIGMA0_RANGE[1], self.k)

    def mean(self, t: float) -> np.ndarray:
        return math.exp(-THETA * t) * self.m0

    def var(self, t: float) -> np.ndarray:
        e2 = math.exp(-2.0 * THETA * t)
        return e2 * self.var0 + (DIFF / THETA) * (1.0 - e2)

    def mean_dot(self, t: float) -> np.ndarray:
        return -THETA * self.mean(t)

    def var_dot(self, t: float) -> np.ndarray:
        return -2.0 * THETA * self.var(t) + 2.0 * DIFF

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        """v = −θ x + D Σ_t⁻¹ (x − m_t)  (m∞ = 0)."""
        return -THETA * x + DIFF * (x - self.mean(t)) / self.var(t)

    def velocity_rms(self, t: float) -> float:
        """‖v‖_ρ = (|ṁ|² + Σ b² σ²)^½ with b = −θ + D/σ²."""
        b = -THETA + DIFF / self.var(t)
        return math.sqrt(float(self.mean_dot(t) @ self.mean_dot(t) + np.sum(b * b * self.var(t))))

    def score(self, x: np.ndarray, t: float, h: float = 0.0) -> np.ndarray:
        return -(x - self.mean(t)) / (self.var(t) + h * h)

    def entropy(self, t: float) -> float:
        return 0.5 * float(np.sum(np.log(2.0 * math.pi * math.e * self.var(t))))

    def smoothed_cross_entropy(self, t: float, h: float) -> float:
        """−E_ρ log(ρ * N(0, h²I)): what the resubstituted KDE entropy converges to."""
        var, var_h = self.var(t), self.var(t) + h * h
        return 0.5 * float(np.sum(np.log(2.0 * math.pi * var_h) + var / var_h))

    def s_dot(self, t: float, h: float = 0.0) -> float:
        """S = E[v·s] = −dH/dt = −½ tr(Σ⁻¹ Σ̇); with h > 0, E[v·s_h] for the smoothed score s_h (what Ṡ
        converges to with the KDE score)."""
        var = self.var(t)
        return -0.5 * float(np.sum(self.var_dot(t) / (var + h * h)))

    def neg_dlogrho_dt(self, x: np.ndarray, t: float, h: float = 0.0) -> np.ndarray:
        """−∂_t log ρ(x, t) of N(m_t, Σ_t + h²I) (h = 0: the true density)."""
        var = self.var(t) + h * h
        vd, md = self.var_dot(t), self.mean_dot(t)
        c = x - self.mean(t)
        return 0.5 * np.sum(vd / var) - c @ (md / var) - 0.5 * (c * c) @ (vd / var**2)

    def log_density(self, x: np.ndarray, t: float, h: float = 0.0) -> np.ndarray:
        var = self.var(t) + h * h
        c = x - self.mean(t)
        return -0.5 * np.sum(np.log(2.0 * math.pi * var)) - 0.5 * (c * c) @ (1.0 / var)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    evals, evecs = np.linalg.eigh(0.5 * (a + a.T))
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


def limit_velocity(ou: OU, x: np.ndarray, t: float, steps: Sequence[float], dt_eff: float) -> np.ndarray:
    """n→∞ limit of the ``gaussian`` velocity with the pooled window ``steps``: the Bures map from
    N(m_t, Σ_t) back to the moments of the pooled mixture, as a displacement over dt_eff."""
    means = np.stack([ou.mean(s) for s in steps])
    mix_mean = means.mean(axis=0)
    mix_cov = np.diag(np.mean([ou.var(s) for s in steps], axis=0)) + np.cov(means.T, bias=True).reshape(ou.k, ou.k)
    s_half = np.diag(np.sqrt(ou.var(t)))
    s_inv_half = np.diag(1.0 / np.sqrt(ou.var(t)))
    a_back = s_inv_half @ _sym_sqrt(s_half @ mix_cov @ s_half) @ s_inv_half
    pre_image = mix_mean + (x - ou.mean(t)) @ a_back
    return (x - pre_image) / dt_eff


def limit_delta(ou: OU, x: np.ndarray, t: float, steps: Sequence[float], dt_eff: float, h: float) -> np.ndarray:
    """n→∞ limit of the engine's δ: −(log ρ_h,t(x) − log mean_s ρ_h,s(x)) / dt_eff."""
    logs = np.stack([ou.log_density(x, s, h) for s in steps])
    log_prev = np.logaddexp.reduce(logs, axis=0) - math.log(len(steps))
    return -(ou.log_density(x, t, h) - log_prev) / dt_eff


# ----------------------------------------------------------------------------------------------------
# one measurement


@dataclass(frozen=True)
class Case:
    n: int
    k: int
    bandwidth_factor: float = 1.0
    pool_window: int = 4
    velocity: VelocityMethod = "gaussian"

    def config(self) -> FPEConfig:
        return FPEConfig(
            k=self.k,
            bandwidth_factor=self.bandwidth_factor,
            pool_window=self.pool_window,
            velocity=self.velocity,
        )


class Batches:
    """Independent batches per (n, k, rep, mode, step), generated once and shared by all cases, so that
    estimators, bandwidths and windows are compared on the same samples (paired)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: dict[tuple[int, int, int, int, int], np.ndarray] = {}

    def get(self, n: int, k: int, rep: int, mode: int, step: int) -> np.ndarray:
        key = (n, k, rep, mode, step)
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, n, k, rep, mode, step])
            ou = OU(k)
            if mode == FLOW:
                mean, sd = ou.mean(step), np.sqrt(ou.var(step))
            else:
                mean, sd = np.zeros(k), np.full(k, math.sqrt(DIFF / THETA))
            self._cache[key] = mean + sd * rng.standard_normal((n, k))
        return self._cache[key]


def _rel_rms(est: np.ndarray, true: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.sum((est - true) ** 2, axis=1))) / float(np.mean(np.sum(true**2, axis=1))))


def _rms(a: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.sum(a * a, axis=1))))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def run_case(case: Case, rep: int, mode: int, batches: Batches) -> dict[str, float]:
    """Run the engine on one (case, repetition, mode) and score it against the closed-form truth."""
    ou = OU(case.k)
    t = T_EVAL
    w = case.pool_window
    steps = list(range(t - w, t))
    x_np = batches.get(case.n, case.k, rep, mode, t)
    prev_np = [batches.get(case.n, case.k, rep, mode, s) for s in steps]
    x = torch.as_tensor(x_np, dtype=DTYPE)
    x_prev = [torch.as_tensor(p, dtype=DTYPE) for p in prev_np]
    t0 = time.perf_counter()
    obs: Observables = observables_from_projected(x_prev, x, case.config(), dt=1.0)
    elapsed_ms = 1e3 * (time.perf_counter() - t0)

    h, dt_eff = obs.h, obs.dt_eff
    x64 = obs.x.to(torch.float64).numpy()  # the float32 samples the engine saw
    v_hat = obs.velocity.to(torch.float64).numpy()
    s_hat = obs.score.to(torch.float64).numpy()
    div = obs.div.to(torch.float64).numpy()
    div_flow = obs.div_flow.to(torch.float64).numpy()
    out: dict[str, float] = {
        "ms": elapsed_ms,
        "h": h,
        "dt_eff": dt_eff,
        "v_hat_rms": _rms(v_hat),
        "S_hat": obs.scalars["S_dot"],
        "abs_S_hat": abs(obs.scalars["S_dot"]),
        "div_q99": obs.scalars["div_q99"],
        "delta_mean": float(np.mean(div)),
    }
    if mode == STAT:
        return out
    v_true = ou.velocity(x64, t)
    s_true = ou.s_dot(t)
    v_lim = limit_velocity(ou, x64, t, steps, dt_eff)
    delta_true = ou.neg_dlogrho_dt(x64, t)
    delta_lim = limit_delta(ou, x64, t, steps, dt_eff, h)
    out.update(
        {
            "v_rms": ou.velocity_rms(t),
            "v_err": _rel_rms(v_hat, v_true),
            "v_err_lim": _rel_rms(v_lim, v_true),
            "v_err_vs_lim": _rel_rms(v_hat, v_lim),
            "S_true": s_true,
            "S_ratio": obs.scalars["S_dot"] / s_true,
            "S_err": abs(obs.scalars["S_dot"] - s_true) / abs(s_true),
            "S_h_ratio": ou.s_dot(t, h) / s_true,
            "H_err": obs.scalars["H"] - ou.entropy(t),
            "H_err_smooth": obs.scalars["H"] - ou.smoothed_cross_entropy(t, h),
            "score_err": _rel_rms(s_hat, ou.score(x64, t)),
            "score_err_smooth": _rel_rms(s_hat, ou.score(x64, t, h)),
            "corr_delta": _corr(div, delta_true),
            "corr_delta_lim": _corr(div, delta_lim),
            "corr_lim": _corr(delta_lim, delta_true),
            "corr_delta_flow": _corr(div_flow, delta_true),
            "div_q99_true": float(np.quantile(np.abs(delta_true), 0.99)),
        }
    )
    return out


class Runner:
    """Runs cases over repetitions and both modes, caching results (the default case recurs in sweeps)."""

    def __init__(self, seed: int, reps: int, ot_sinkhorn_reps: int, log: Callable[[str], None]) -> None:
        self.batches = Batches(seed)
        self.reps = reps
        self.ot_sinkhorn_reps = ot_sinkhorn_reps
        self.log = log
        self._cache: dict[Case, tuple[list[dict[str, float]], list[dict[str, float]]]] = {}

    def results(self, case: Case) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        if case not in self._cache:
            t0 = time.perf_counter()
            reps = self.reps_for(case)
            flow = [run_case(case, r, FLOW, self.batches) for r in range(reps)]
            stat = [run_case(case, r, STAT, self.batches) for r in range(reps)]
            self._cache[case] = (flow, stat)
            self.log(f"  {case} x{reps}: {time.perf_counter() - t0:.1f}s")
        return self._cache[case]

    def reps_for(self, case: Case) -> int:
        """Repetitions of a case: fewer for the ``ot`` velocity in its Sinkhorn regime (10–150 s a call)."""
        sinkhorn = case.velocity == "ot" and case.n * case.pool_window > FPEConfig().ot_exact_max
        return min(self.reps, self.ot_sinkhorn_reps) if sinkhorn else self.reps

    def summary(self, case: Case) -> dict[str, float]:
        """Means over repetitions (flow keys as is, floor keys prefixed ``floor_``), spreads ``sd_*``,
        and the median time over all calls."""
        flow, stat = self.results(case)
        out: dict[str, float] = {}
        for key in flow[0]:
            vals = [r[key] for r in flow]
            out[key] = float(np.mean(vals))
            out["sd_" + key] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        for key in stat[0]:
            out["floor_" + key] = float(np.mean([r[key] for r in stat]))
        out["ms"] = statistics.median([r["ms"] for r in flow + stat])
        out["reps"] = float(len(flow))
        out["floor_v_ratio"] = out["floor_v_hat_rms"] / out["v_rms"]
        out["floor_S_ratio"] = out["floor_abs_S_hat"] / abs(out["S_true"])
        return out


# ----------------------------------------------------------------------------------------------------
# tables


def _f(x: float, digits: int = 2) -> str:
    if not math.isfinite(x):
        return "nan"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 10 ** (-digits)):
        return f"{x:.{digits}e}"
    return f"{x:.{digits}f}"


def _pm(mean: float, sd: float, digits: int = 2) -> str:
    return _f(mean, digits) if not math.isfinite(sd) else f"{_f(mean, digits)} ± {_f(sd, digits)}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


VELOCITY_HEADER = (
    "velocity",
    "reps",
    "‖v‖ true",
    "v err",
    "v err, n→∞",
    "Ṡ/S",
    "S_h/S",
    "Ṡ rel err",
    "corr δ_flow",
    "floor ‖v̂‖/‖v‖",
    "floor abs(Ṡ)/abs(S)",
    "ms",
)


def _velocity_row(lead: Sequence[str], est: str, s: dict[str, float]) -> list[str]:
    return [
        *lead,
        est,
        str(int(s["reps"])),
        _f(s["v_rms"], 3),
        _pm(s["v_err"], s["sd_v_err"]),
        _f(s["v_err_lim"]),
        _f(s["S_ratio"]),
        _f(s["S_h_ratio"]),
        _f(s["S_err"]),
        _f(s["corr_delta_flow"]),
        _f(s["floor_v_ratio"]),
        _f(s["floor_S_ratio"]),
        _f(s["ms"], 0),
    ]


KDE_HEADER = (
    "h",
    "H err (nats)",
    "H err vs smoothed",
    "score err",
    "score err vs smoothed",
    "corr δ",
    "corr δ vs n→∞",
    "corr n→∞ vs true",
    "div_q99 true",
    "div_q99 flow",
    "div_q99 floor",
    "floor mean δ",
)


def _kde_row(lead: Sequence[str], s: dict[str, float]) -> list[str]:
    return [
        *lead,
        _f(s["h"], 3),
        _f(s["H_err"]),
        _f(s["H_err_smooth"]),
        _f(s["score_err"]),
        _f(s["score_err_smooth"]),
        _pm(s["corr_delta"], s["sd_corr_delta"]),
        _f(s["corr_delta_lim"]),
        _f(s["corr_lim"]),
        _f(s["div_q99_true"]),
        _f(s["div_q99"]),
        _f(s["floor_div_q99"]),
        _f(s["floor_delta_mean"], 3),
    ]


CANDIDATE_HEADER = (
    "n",
    "k",
    "bandwidth_factor",
    "w",
    "v err",
    "v err, n→∞ (lag)",
    "floor ‖v̂‖/‖v‖",
    "Ṡ/S",
    "floor abs(Ṡ)/abs(S)",
    "corr δ",
    "corr δ_flow",
    "div_q99 true / flow / floor",
    "H err (nats)",
    "score err",
    "ms",
)


def _candidate_row(case: Case, s: dict[str, float]) -> list[str]:
    return [
        str(case.n),
        str(case.k),
        _f(case.bandwidth_factor),
        str(case.pool_window),
        _pm(s["v_err"], s["sd_v_err"]),
        _f(s["v_err_lim"]),
        _f(s["floor_v_ratio"]),
        _f(s["S_ratio"]),
        _f(s["floor_S_ratio"]),
        _pm(s["corr_delta"], s["sd_corr_delta"]),
        _f(s["corr_delta_flow"]),
        f"{_f(s['div_q99_true'])} / {_f(s['div_q99'])} / {_f(s['floor_div_q99'])}",
        _f(s["H_err"]),
        _f(s["score_err"]),
        _f(s["ms"], 0),
    ]


@dataclass(frozen=True)
class Plan:
    ns: tuple[int, ...]
    ks: tuple[int, ...]
    sweep_n: int
    sweep_k: int
    bandwidths: tuple[float, ...]
    windows: tuple[int, ...]
    candidates: tuple[tuple[int, float, int], ...]  # (k, bandwidth_factor, pool_window), gaussian velocity
    reps: int
    ot_sinkhorn_reps: int


CANDIDATES = (
    (8, 1.0, 4),
    (8, 1.5, 4),
    (8, 1.5, 8),
    (8, 2.0, 8),
    (4, 1.0, 4),
    (4, 1.5, 4),
    (4, 1.5, 8),
    (4, 2.0, 8),
    (16, 1.5, 8),
)
FULL = Plan(
    ns=(256, 1024, 2048),
    ks=(2, 4, 8, 16),
    sweep_n=1024,
    sweep_k=8,
    bandwidths=(0.5, 0.75, 1.0, 1.5, 2.0),
    windows=(1, 2, 4, 8),
    candidates=CANDIDATES,
    reps=3,
    ot_sinkhorn_reps=1,
)
QUICK = Plan(
    ns=(256,),
    ks=(2, 8),
    sweep_n=256,
    sweep_k=8,
    bandwidths=(0.5, 1.0),
    windows=(1, 4),
    candidates=((8, 1.0, 4), (4, 1.5, 8)),
    reps=1,
    ot_sinkhorn_reps=1,
)


def build_tables(
    plan: Plan,
    seed: int,
    log: Callable[[str], None],
    quick: bool = False,
    bandwidth_factor: float | None = None,
    pool_window: int | None = None,
) -> str:
    """The markdown tables; the base setting is FPEConfig's defaults unless given."""
    runner = Runner(seed, plan.reps, plan.ot_sinkhorn_reps, log)
    default = FPEConfig()
    base = Case(
        n=0,
        k=0,
        bandwidth_factor=default.bandwidth_factor if bandwidth_factor is None else bandwidth_factor,
        pool_window=default.pool_window if pool_window is None else pool_window,
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    parts: list[str] = []
    grid = [(n, k) for n in plan.ns for k in plan.ks]
    fixed = f"bandwidth_factor = {_f(base.bandwidth_factor)}, pool_window = {base.pool_window}"

    parts.append(f"#### 1. Velocity estimators against n and k ({fixed})\n")
    rows = [
        _velocity_row([str(n), str(k)], est, runner.summary(replace(base, n=n, k=k, velocity=est)))
        for n, k in grid
        for est in ESTIMATORS
    ]
    parts.append(_table(("n", "k", *VELOCITY_HEADER), rows))

    parts.append(f"\n#### 2. KDE quantities against n and k ({fixed}; the same for both velocity estimators)\n")
    rows = [_kde_row([str(n), str(k)], runner.summary(replace(base, n=n, k=k))) for n, k in grid]
    parts.append(_table(("n", "k", *KDE_HEADER), rows))

    n, k = plan.sweep_n, plan.sweep_k
    parts.append(f"\n#### 3. Bandwidth sweep (n = {n}, k = {k}, pool_window = {base.pool_window})\n")
    rows = [_kde_row([_f(c)], runner.summary(replace(base, n=n, k=k, bandwidth_factor=c))) for c in plan.bandwidths]
    parts.append(_table(("bandwidth_factor", *KDE_HEADER), rows))
    parts.append("")
    rows = [
        _velocity_row([_f(c)], est, runner.summary(replace(base, n=n, k=k, bandwidth_factor=c, velocity=est)))
        for c in plan.bandwidths
        for est in ESTIMATORS
    ]
    parts.append(_table(("bandwidth_factor", *VELOCITY_HEADER), rows))

    parts.append(f"\n#### 4. Pool-window sweep (n = {n}, k = {k}, bandwidth_factor = {_f(base.bandwidth_factor)})\n")
    header = (
        "w",
        "velocity",
        "reps",
        "dt_eff",
        "v err",
        "v err, n→∞ (lag)",
        "v err vs n→∞ (noise)",
        "Ṡ rel err",
        "floor ‖v̂‖/‖v‖",
        "floor ratio to w=1",
        "1/√w",
        "floor abs(Ṡ)/abs(S)",
        "corr δ",
        "corr δ_flow",
        "div_q99 flow",
        "div_q99 floor",
        "ms",
    )
    rows = []
    for est in ESTIMATORS:
        s1 = runner.summary(replace(base, n=n, k=k, pool_window=1, velocity=est)) if 1 in plan.windows else None
        for w in plan.windows:
            s = runner.summary(replace(base, n=n, k=k, pool_window=w, velocity=est))
            ratio = s["floor_v_hat_rms"] / s1["floor_v_hat_rms"] if s1 is not None else float("nan")
            rows.append(
                [
                    str(w),
                    est,
                    str(int(s["reps"])),
                    _f(s["dt_eff"], 1),
                    _pm(s["v_err"], s["sd_v_err"]),
                    _f(s["v_err_lim"]),
                    _f(s["v_err_vs_lim"]),
                    _f(s["S_err"]),
                    _f(s["floor_v_ratio"]),
                    _f(ratio),
                    _f(1.0 / math.sqrt(w)),
                    _f(s["floor_S_ratio"]),
                    _f(s["corr_delta"]),
                    _f(s["corr_delta_flow"]),
                    _f(s["div_q99"]),
                    _f(s["floor_div_q99"]),
                    _f(s["ms"], 0),
                ]
            )
    parts.append(_table(header, rows))

    parts.append("\n#### 5. Candidate defaults (gaussian velocity)\n")
    rows = []
    for n in plan.ns:
        for k, c, w in plan.candidates:
            case = Case(n=n, k=k, bandwidth_factor=c, pool_window=w)
            rows.append(_candidate_row(case, runner.summary(case)))
    parts.append(_table(CANDIDATE_HEADER, rows))

    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    parts.insert(
        0,
        f"_Generated by `PYTHONPATH=. python benchmarks/estimator_table.py --seed {seed}"
        f"{' --quick' if quick else ''}`: {plan.reps} repetition(s) per cell with fixed seeds "
        f"({plan.ot_sinkhorn_reps} for `ot` cells in the Sinkhorn regime, n·w > ot_exact_max), float32 "
        f"samples, torch {torch.__version__} with {torch.get_num_threads()} thread(s), {platform.machine()}; "
        f"{cpu:.1f} s CPU, {wall:.1f} s wall. OU flow θ = {THETA}/step, D = {DIFF}/step, current step "
        f"t = {T_EVAL}._\n",
    )
    return "\n".join(parts) + "\n"


def write_doc(tables: str, path: Path = DOC_PATH) -> None:
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), flags=re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {START} … {END} markers")
    path.write_text(pattern.sub(lambda _: f"{START}\n{tables}{END}", text, count=1), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=256, k∈{2,8}, one repetition (smoke test)")
    parser.add_argument("--write", action="store_true", help=f"write the tables into docs/{DOC_PATH.name}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=int, default=None, help="repetitions per cell (default 3; quick: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--bandwidth-factor", type=float, default=None, help="base bandwidth factor (default: FPEConfig's)"
    )
    parser.add_argument("--pool-window", type=int, default=None, help="base pool window (default: FPEConfig's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = replace(plan, reps=args.reps)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tables = build_tables(
        plan,
        args.seed,
        log,
        quick=args.quick,
        bandwidth_factor=args.bandwidth_factor,
        pool_window=args.pool_window,
    )
    print(tables)
    if args.write:
        write_doc(tables)
        log(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
