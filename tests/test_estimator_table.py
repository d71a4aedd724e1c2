"""Smoke test of ``benchmarks/estimator_table.py`` (the measured table behind FPEConfig's defaults).

Runs ``--quick`` (n = 256, k ∈ {2, 8}, one repetition) in a subprocess and checks the tables and a few
facts that hold at any seed with a wide margin; also checks the closed-form OU truth the table scores
against (continuity equation, finite differences in t).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from monitor.fpe import FPEConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "estimator_table.py"


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("estimator_table", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("estimator_table", module)
    spec.loader.exec_module(module)
    return module


def _parse_tables(text: str) -> list[list[dict[str, str]]]:
    """Markdown tables of ``text`` as lists of {header: cell} rows."""
    tables: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                assert len(cells) == len(header), lines[i]
                rows.append(dict(zip(header, cells, strict=True)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _num(cell: str) -> float:
    """First number of a cell ("0.92", "0.92 ± 0.10", "0.26 / 1.35 / 1.36")."""
    return float(cell.split()[0])


@pytest.fixture(scope="module")
def quick_output() -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quick_prints_finite_tables(quick_output: str) -> None:
    tables = _parse_tables(quick_output)
    # velocity, KDE, bandwidth sweep (KDE, velocity), pool-window sweep, candidate defaults
    assert len(tables) == 6, quick_output
    for rows in tables:
        assert rows
        for row in rows:
            for header, cell in row.items():
                if header in ("velocity",):
                    continue
                for token in cell.replace("±", " ").replace("/", " ").split():
                    assert math.isfinite(float(token)), (header, row)
    velocity, kde = tables[0], tables[1]
    assert {(r["n"], r["k"], r["velocity"]) for r in velocity} == {
        ("256", "2", "gaussian"),
        ("256", "2", "ot"),
        ("256", "8", "gaussian"),
        ("256", "8", "ot"),
    }
    assert {(r["n"], r["k"]) for r in kde} == {("256", "2"), ("256", "8")}


def test_quick_sanity_facts(quick_output: str) -> None:
    velocity, kde, _, _, pool, _ = _parse_tables(quick_output)
    gauss_k2 = next(r for r in velocity if r["k"] == "2" and r["velocity"] == "gaussian")
    # n=256, k=2, w=4: over 200 seeds the relative velocity error has mean 0.74, sd 0.29, max 2.24
    # (noise of the two Gaussian fits ~0.6 of ‖v‖, plus 0.24 of lag bias). 3 flags a broken estimator,
    # never a bad seed.
    assert _num(gauss_k2["v err"]) < 3.0
    # the n→∞ limit is close to the truth up to the pooled window's lag (closed form, seed-free:
    # 0.24 at w = 4, 0.53 at w = 8, the current default)
    lag_bounds = {4: (0.1, 0.4), 8: (0.4, 0.7)}[FPEConfig().pool_window]
    assert lag_bounds[0] < _num(gauss_k2["v err, n→∞"]) < lag_bounds[1]
    # the KDE δ's population limit correlates with the true −∂t log ρ (smoothing and lag only)
    for row in kde:
        assert _num(row["corr n→∞ vs true"]) > 0.9
    # pooling 4 batches lowers the stationary floor of the velocity: measured ratio to w = 1 is
    # 0.32 ± 0.03 (gaussian, 200 seeds, max 0.40) and 0.24 (ot, 40 seeds, max 0.25)
    for est in ("gaussian", "ot"):
        rows = {r["w"]: r for r in pool if r["velocity"] == est}
        assert _num(rows["4"]["floor ‖v̂‖/‖v‖"]) < 0.7 * _num(rows["1"]["floor ‖v̂‖/‖v‖"])
        # the lag bias of the n→∞ limit grows with the window (closed form)
        assert _num(rows["4"]["v err, n→∞ (lag)"]) > _num(rows["1"]["v err, n→∞ (lag)"])


def test_ou_truth_closed_forms() -> None:
    et = _load_module()
    ou = et.OU(4)
    rng = np.random.default_rng(0)
    t = 3.0
    x = ou.mean(t) + np.sqrt(ou.var(t)) * rng.standard_normal((50, 4))
    # −∂t log ρ against a central difference in t
    eps = 1e-5
    fd = -(ou.log_density(x, t + eps) - ou.log_density(x, t - eps)) / (2 * eps)
    np.testing.assert_allclose(ou.neg_dlogrho_dt(x, t), fd, rtol=1e-5, atol=1e-7)
    # continuity: −∂t log ρ = ∇·v + v·s, ∇·v = Σ(−θ + D/σ²)
    v, s = ou.velocity(x, t), ou.score(x, t)
    div_v = np.sum(-et.THETA + et.DIFF / ou.var(t))
    np.testing.assert_allclose(ou.neg_dlogrho_dt(x, t), div_v + np.sum(v * s, axis=1), rtol=1e-10)
    # S = −dH/dt, and S = E[v·s] on a large sample
    dh = (ou.entropy(t + eps) - ou.entropy(t - eps)) / (2 * eps)
    assert ou.s_dot(t) == pytest.approx(-dh, rel=1e-6)
    big = ou.mean(t) + np.sqrt(ou.var(t)) * rng.standard_normal((200_000, 4))
    assert np.mean(np.sum(ou.velocity(big, t) * ou.score(big, t), axis=1)) == pytest.approx(ou.s_dot(t), rel=0.05)
    # the n→∞ Bures limit with w = 1 tends to the true velocity as the step shrinks (here: 1 step, θ = 0.1)
    v_lim = et.limit_velocity(ou, x, t, [t - 1.0], 1.0)
    assert et._rel_rms(v_lim, v) < 0.15
