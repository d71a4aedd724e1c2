"""The reward-hacking benchmark's command: record toy GRPO runs, then evaluate every detector on them.

    python benchmarks/detection/run.py all --plan full -j 2 --split all  # the pre-registered benchmark, ≈ 1 h
    python benchmarks/detection/run.py record --kinds phrase control --seeds 0 1 2 3 4 -j 2  # bench-out/detection/
    python benchmarks/detection/run.py evaluate                   # development split (phrase, control seeds 0–4)
    python benchmarks/detection/run.py evaluate --split heldout    # every other recorded run
    python benchmarks/detection/run.py evaluate --split all -j 2   # both, fpmon replayed in 2 processes

``evaluate --split dev`` writes docs/validation/detection/ and the tables into docs/validation.md between the
``detection-table`` markers; ``--split heldout`` writes docs/validation/detection-heldout/ and the
``detection-heldout`` markers (results.json, table.md, traces/, per-run PNGs, summary.png; see
``evaluate.py``). Baselines are calibrated on the development controls in both. fpmon's replays are cached in
bench-out/detection-cache/ (``--no-cache`` to recompute). ``--quick`` shrinks everything (a few steps of 32
completions, short windows) so the pipeline runs in seconds; it writes nothing into docs/ unless ``--doc-dir``
says where (and never into docs/validation.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks.detection` importable
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.detection.evaluate import EvalConfig, evaluate  # noqa: E402
from benchmarks.detection.kinds import KINDS  # noqa: E402
from benchmarks.detection.record import EMBEDDERS, RecordConfig, record_run  # noqa: E402

QUICK_STEPS = 10


QUICK_EVIDENCE = {"lag": 2, "window": 3, "recent": 2, "reference_steps": 2}
"""Evidence windows of the quick smoke run (a few steps only)."""


def configs(args: argparse.Namespace) -> tuple[RecordConfig, EvalConfig]:
    out = Path(args.out)
    kinds = tuple(args.kinds)
    common: dict[str, Any] = {"out_dir": out, "seeds": tuple(args.seeds), "kinds": kinds}
    common["embedders"] = tuple(args.embedders)
    doc_dir = Path(args.doc_dir) if args.doc_dir else None
    heldout_dir = Path(args.heldout_doc_dir) if args.heldout_doc_dir else None
    ev_common: dict[str, Any] = {"runs_dir": out, "split": args.split, "jobs": args.jobs}
    if args.no_cache:
        ev_common["cache_dir"] = None
    elif args.cache_dir:
        ev_common["cache_dir"] = Path(args.cache_dir)
    if args.quick:
        rec = RecordConfig(**common, max_steps=args.steps or QUICK_STEPS, warmup_steps=20, prompts_per_step=4)
        doc_dir = doc_dir or out / "results"
        ev = EvalConfig(
            **ev_common,
            doc_dir=doc_dir,
            heldout_doc_dir=heldout_dir or doc_dir.with_name(doc_dir.name + "-heldout"),
            monitor_warmup=3,
            evidence=dict(QUICK_EVIDENCE),
            zscore_window=5,
            zscore_min_history=3,
            mmd_reference_steps=2,
            n_permutations=50,
            plot_controls=1,
            write_doc=False,
        )
        if "cache_dir" not in ev_common:
            ev = dataclasses.replace(ev, cache_dir=out / "eval-cache")
    else:
        rec = RecordConfig(**common, max_steps=args.steps or RecordConfig.max_steps)
        ev = EvalConfig(**ev_common)
        if doc_dir is not None:
            ev = dataclasses.replace(ev, doc_dir=doc_dir)
        if heldout_dir is not None:
            ev = dataclasses.replace(ev, heldout_doc_dir=heldout_dir)
    return rec, ev


FULL_PLAN: tuple[tuple[str, int], ...] = tuple(
    [(kind, seed) for kind in ("phrase", "control") for seed in range(5)]  # development runs first
    + [("phrase", seed) for seed in range(5, 10)]
    + [(kind, seed) for kind in ("gradual", "format", "discovery") for seed in range(10)]
    + [("control", seed) for seed in range(5, 20)]
)
"""The pre-registered runs (kind, seed): 60 runs of 200 steps."""


def _record_one(job: tuple[RecordConfig, str, int]) -> str:
    rec, kind, seed = job
    return str(record_run(rec, kind, seed))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("all", "record", "evaluate"), default="all")
    parser.add_argument(
        "--plan",
        choices=("full",),
        default=None,
        help="record the pre-registered plan (docs/validation/detection-preregistration.md): phrase, gradual, "
        "format and discovery seeds 0-9, control seeds 0-19 (overrides --kinds/--seeds when recording)",
    )
    parser.add_argument("--out", default="bench-out/detection", help="folder of the recorded runs")
    parser.add_argument("--split", choices=("dev", "heldout", "all"), default="dev", help="runs to evaluate")
    parser.add_argument("--doc-dir", default=None, help="development results (default docs/validation/detection)")
    parser.add_argument(
        "--heldout-doc-dir", default=None, help="held-out results (default docs/validation/detection-heldout)"
    )
    parser.add_argument("--cache-dir", default=None, help="fpmon replay cache (default bench-out/detection-cache)")
    parser.add_argument("--no-cache", action="store_true", help="replay fpmon afresh, cache nothing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run")
    parser.add_argument("--kinds", nargs="+", default=["phrase", "control"], choices=sorted(KINDS))
    parser.add_argument(
        "-j", "--jobs", type=int, default=1, help="runs recorded / replayed in parallel (one CPU thread each)"
    )
    parser.add_argument("--embedders", nargs="+", default=list(EMBEDDERS), choices=EMBEDDERS)
    parser.add_argument("--quick", action="store_true", help="a few steps, short windows: a smoke run")
    parser.add_argument("--no-doc", action="store_true", help="do not write the tables into docs/validation.md")
    args = parser.parse_args(argv)
    rec, ev = configs(args)
    if args.no_doc:
        ev = dataclasses.replace(ev, write_doc=False)
    t0 = time.perf_counter()
    if args.command in ("all", "record"):
        todo = [(kind, seed) for seed in rec.seeds for kind in rec.kinds] if args.plan is None else list(FULL_PLAN)
        if args.jobs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
                for done in pool.map(_record_one, [(rec, k, s) for k, s in todo]):
                    print(f"done {done}", flush=True)
        else:
            for kind, seed in todo:
                record_run(rec, kind, seed)
        print(f"recording took {time.perf_counter() - t0:.0f} s")
    if args.command in ("all", "evaluate"):
        t1 = time.perf_counter()
        evaluate(ev)
        print(f"evaluation took {time.perf_counter() - t1:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
