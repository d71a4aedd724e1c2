"""Does an FPE observable add to the e-detectors? An e-detector on W2_ref, on the development runs only.

    python benchmarks/detection/fpe_stream.py [--runs bench-out/detection] [--observable W2_ref]

W2_ref rose 3–5× at every onset of the first benchmark (docs/validation.md §1). This script gives it the same
kind of e-process as the shipped streams (``monitor.detect``): at each step the observable scores 1 when it
exceeds the conformal 0.9 quantile of its values over the lagged window (the 10 steps that end 10 steps ago),
one block per step (one value), null rate β + ε = 0.15, the shipped bets and α = 1e-3; after a crossing the
statistic restarts. It prints, per development run (phrase and control seeds 0–4), the steps where it
crosses, beside the onset and the first alert of the shipped monitor. It is run on the development runs only:
the held-out runs had been evaluated once already when it was written.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.detection.evaluate import load_run  # noqa: E402
from benchmarks.detection.kinds import kind_of  # noqa: E402
from monitor.demo.toy.grpo import onset_step  # noqa: E402
from monitor.detect.evidence import EDetectorConfig, ShiryaevRoberts, exceedance_log_evalues  # noqa: E402
from monitor.detect.witness import conformal_quantile  # noqa: E402
from monitor.rlhf import MonitorConfig, RLHFMonitor  # noqa: E402

DEV_RUNS = [f"phrase-s{i}" for i in range(5)] + [f"control-s{i}" for i in range(5)]


def crossings(
    values: list[float], lag: int = 10, window: int = 10, beta: float = 0.1, epsilon: float = 0.05
) -> list[int]:
    """Indices where the scalar e-detector crosses log(1/α) (restarting after each crossing)."""
    cfg = EDetectorConfig()
    det, out = ShiryaevRoberts(cfg), []
    for t, value in enumerate(values):
        base = [v for v in values[max(0, t - lag - window) : max(0, t - lag)] if math.isfinite(v)]
        if len(base) < 2 or not math.isfinite(value):
            continue
        score = 1.0 if value > conformal_quantile(torch.tensor(base), beta) else 0.0
        det.update(exceedance_log_evalues([score], beta + epsilon, cfg.bets))
        if det.alarm:
            out.append(t)
            det.reset()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="bench-out/detection")
    parser.add_argument("--observable", default="W2_ref")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"| run | onset | fpmon's first alert | {args.observable} e-detector crossings |")
    print("|---|---|---|---|")
    for name in DEV_RUNS:
        run = load_run(Path(args.runs) / name)
        monitor = RLHFMonitor(MonitorConfig())
        series, first_alert = [], None
        for i, step in enumerate(run.steps.tolist()):
            rep = monitor.observe(int(step), run.latents["model"][i], rewards=run.rewards[i])
            series.append(rep.scalars.get(args.observable, math.nan))
            if first_alert is None and rep.alert is not None:
                first_alert = int(step)
        kind = kind_of(run.kind)
        onset = (
            onset_step(run.scalars["proxy_mean"].tolist(), run.scalars["true_mean"].tolist(), kind.onset_threshold)
            if kind.role == "exploit"
            else None
        )
        hits = [int(run.steps[t]) for t in crossings(series)]
        print(f"| {name} | {onset} | {first_alert} | {', '.join(map(str, hits)) or '–'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
