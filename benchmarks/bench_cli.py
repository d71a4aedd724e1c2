"""How long ``fpmon --help`` takes to answer, against a bare interpreter start in the same run.

Run::

    python benchmarks/bench_cli.py [--repeats 10]

Each command runs as a fresh process (what a user's shell does), alternating with the baseline
``python -c pass`` so that the machine's drift hits both alike; the table gives medians and the excess over
the baseline. Target (issue 13): ``fpmon --help`` answers in under 1 s — the CLI imports torch, the client
and the server only inside the commands that need them (``monitor/__init__.py`` is lazy, PEP 562; the results
commands, ``api/results_cli.py``, import httpx, SQLAlchemy and pyarrow only when they run).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

FPMON = str(Path(sys.executable).with_name("fpmon"))
COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "fpmon --help": [FPMON, "--help"],
    "fpmon serve --help": [FPMON, "serve", "--help"],
    "fpmon export --help": [FPMON, "export", "--help"],
    "python -c 'import monitor'": [sys.executable, "-c", "import monitor"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}


def wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for cmd in COMMANDS.values():  # warm the page cache once, unmeasured
        wall(cmd)
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{args.repeats} runs each, alternating; median wall time of a fresh process\n")
    print("| command | median s | min s | over the bare interpreter, s |")
    print("|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| `{name}` | {med:.3f} | {min(values):.3f} | {med - base:+.3f} |")
    help_s = statistics.median(times["fpmon --help"])
    print(f"\nfpmon --help: {help_s:.3f} s — target < 1 s: {'pass' if help_s < 1.0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
