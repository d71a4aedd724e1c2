"""Per-step cost of ``RLHFMonitor.observe`` with the evidence streams, against the same monitor without them.

    python benchmarks/bench_monitor_step.py [--sizes 256x768,2048x1024] [--steps 40] [--threads 1]

"with evidence" is the shipped monitor (FPE observables, streaming detector, the e-detectors of
``monitor.detect.streams`` that raise the alerts); "without" is the same monitor whose evidence tracker is
replaced by one that computes nothing — the per-step work of the monitor before the e-detectors (issue 14).
Both run on the same synthetic batches (Gaussian latents with 8-dim structure, rewards) in alternation, step
by step, so that the machine's load affects both alike; the table gives the median over the steps after the
first 12 (the windows are full by then) and the ratio. Target (issue 14): ≤ 50 ms per step at n = 256,
d = 768 on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from monitor.detect.streams import EvidenceStep  # noqa: E402
from monitor.rlhf import MonitorConfig, RLHFMonitor  # noqa: E402


class _NoEvidence:
    """Stands in for the evidence tracker: no stream, no state (the monitor's work before issue 14)."""

    def observe(self, z: torch.Tensor, rewards: object = None, reference_rewards: object = None) -> EvidenceStep:
        return EvidenceStep(log_values={}, rates={}, log_threshold=6.9)


def batches(n: int, d: int, steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, d, generator=gen)
    out = []
    for _ in range(steps):
        z = torch.randn(n, 8, generator=gen) @ basis + 0.3 * torch.randn(n, d, generator=gen)
        out.append((z, torch.rand(n, generator=gen)))
    return out


def bench(n: int, d: int, steps: int) -> dict[str, float]:
    data = batches(n, d, steps)
    texts = [f"answer {i}" for i in range(n)]
    full, bare = RLHFMonitor(MonitorConfig()), RLHFMonitor(MonitorConfig())
    bare.evidence = _NoEvidence()  # type: ignore[assignment]
    t_full, t_bare = [], []
    for step, (z, r) in enumerate(data):
        for mon, sink in ((full, t_full), (bare, t_bare)) if step % 2 else ((bare, t_bare), (full, t_full)):
            t0 = time.perf_counter()
            mon.observe(step, z, rewards=r, texts=texts)
            sink.append(time.perf_counter() - t0)
    skip = min(12, steps // 2)
    ms_full = 1000 * statistics.median(t_full[skip:])
    ms_bare = 1000 * statistics.median(t_bare[skip:])
    return {"n": n, "d": d, "with": ms_full, "without": ms_bare, "ratio": ms_full / ms_bare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256x768,2048x1024")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the sidecar's worker)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = Table(title=f"RLHFMonitor.observe per step (median of steps 12…{args.steps - 1}, {args.threads} thread)")
    for col in ("n", "d", "with evidence (ms)", "without (ms)", "ratio", "target"):
        table.add_column(col, justify="right")
    for size in args.sizes.split(","):
        n, d = (int(v) for v in size.lower().split("x"))
        row = bench(n, d, args.steps)
        target = "≤ 50 ms" if (n, d) == (256, 768) else "–"
        table.add_row(str(n), str(d), f"{row['with']:.1f}", f"{row['without']:.1f}", f"{row['ratio']:.2f}", target)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
