"""The reward-hacking benchmark's command: record toy GRPO runs, then evaluate every detector on them.

    python benchmarks/detection/run.py              # record (5 seeds × hackable/control × 200 steps) + evaluate
    python benchmarks/detection/run.py record       # only record, into bench-out/detection/
    python benchmarks/detection/run.py evaluate     # only evaluate the recordings (a few minutes)
    python benchmarks/detection/run.py --seeds 5 6 7 8 9 --out bench-out/detection-holdout \
        --doc-dir docs/validation/detection-holdout --no-doc   # the held-out seeds of docs/validation.md §1

``evaluate`` writes docs/validation/detection/ (results.json, table.csv, table.md, one PNG per run) and the
table into docs/validation.md between the ``detection-table`` markers. ``--quick`` shrinks everything
(a few steps of 32 completions, short windows) so the pipeline can be exercised in seconds; it writes nothing into
docs/ unless ``--doc-dir`` says where.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.detection` importable
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.detection.evaluate import EvalConfig, evaluate  # noqa: E402
from benchmarks.detection.record import EMBEDDERS, RecordConfig, record_run  # noqa: E402

QUICK_STEPS = 10


def configs(args: argparse.Namespace) -> tuple[RecordConfig, EvalConfig]:
    out = Path(args.out)
    seeds = tuple(args.seeds)
    embedders = tuple(args.embedders)
    if args.quick:
        rec = RecordConfig(
            out_dir=out,
            seeds=seeds,
            max_steps=args.steps or QUICK_STEPS,
            warmup_steps=20,
            prompts_per_step=4,
            embedders=embedders,
        )
        ev = EvalConfig(
            runs_dir=out,
            doc_dir=Path(args.doc_dir) if args.doc_dir else out / "results",
            monitor_warmup=3,
            detector_min_history=3,
            zscore_window=5,
            zscore_min_history=3,
            mmd_reference_steps=2,
            n_permutations=50,
            write_doc=False,
        )
    else:
        rec = RecordConfig(
            out_dir=out, seeds=seeds, max_steps=args.steps or RecordConfig.max_steps, embedders=embedders
        )
        ev = EvalConfig(runs_dir=out, doc_dir=Path(args.doc_dir) if args.doc_dir else EvalConfig.doc_dir)
    return rec, ev


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("all", "record", "evaluate"), default="all")
    parser.add_argument("--out", default="bench-out/detection", help="folder of the recorded runs")
    parser.add_argument(
        "--doc-dir", default=None, help="where results and plots go (default docs/validation/detection)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run")
    parser.add_argument("--embedders", nargs="+", default=list(EMBEDDERS), choices=EMBEDDERS)
    parser.add_argument("--quick", action="store_true", help="a few steps, short windows: a smoke run")
    parser.add_argument(
        "--no-doc", action="store_true", help="do not write the table into docs/validation.md (e.g. held-out seeds)"
    )
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("give at least two seeds: calibration uses a control run of a different seed")
    rec, ev = configs(args)
    if args.no_doc:
        ev = dataclasses.replace(ev, write_doc=False)
    t0 = time.perf_counter()
    if args.command in ("all", "record"):
        for seed in rec.seeds:
            for kind in rec.kinds:
                record_run(rec, kind, seed)
        print(f"recording took {time.perf_counter() - t0:.0f} s")
    if args.command in ("all", "evaluate"):
        t1 = time.perf_counter()
        evaluate(ev)
        print(f"evaluation took {time.perf_counter() - t1:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
