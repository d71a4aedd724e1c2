"""Smoke test of benchmarks/bench_engine.py: it runs, prints its table and writes well-formed rows.

Timings are benchmarked, not tested: no speed or memory target is asserted here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_engine.py"

pytest.importorskip("scipy")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_engine_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = proc.stdout
    for header in ("fpmon median ms", "baseline median ms", "speed-up", "peak MiB", "target", "pass/fail"):
        assert header in text, f"table header {header!r} missing from:\n{text}"
    assert "torch" in text and "threads" in text

    data = json.loads(out.read_text())
    assert data["environment"]["device"] == "cpu"
    rows = data["rows"]
    assert [(r["n"], r["d"]) for r in rows] == [(256, 768)]
    row = rows[0]
    assert row["repeats"] == 2
    assert len(row["fpmon_ms_runs"]) == 2 and len(row["baseline_ms_runs"]) == 2
    for key in ("fpmon_ms", "baseline_ms", "speedup", "fpmon_peak_mib", "baseline_peak_mib"):
        assert _positive(row[key]), f"{key} = {row[key]!r}"
    assert all(_positive(t) for t in row["fpmon_ms_runs"] + row["baseline_ms_runs"])
    assert set(row["baseline_parts_ms"]) == {"projection", "kde", "emd_step", "emd_ref"}
    assert row["target"] == "≤ 50 ms" and row["passed"] in (True, False)
    # both pipelines estimate the same W2_ref (fpmon subsamples): same order of magnitude
    w_f, w_b = row["values"]["fpmon"]["W2_ref"], row["values"]["baseline"]["W2_ref"]
    assert _positive(w_f) and _positive(w_b) and 0.3 < w_f / w_b < 3.0
