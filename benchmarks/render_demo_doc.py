"""Render the output block of docs/demo.md from a real run of ``fpmon demo``, so that the page cannot drift.

    python benchmarks/render_demo_doc.py                 # run `fpmon demo` (seed 0, 120 steps), rewrite the block
    python benchmarks/render_demo_doc.py --from out.txt  # use the saved standard output of a `fpmon demo` run
    make docs-demo                                       # the first line, with the project's interpreter

The block lies between ``<!-- demo-output:start -->`` and ``<!-- demo-output:end -->``: a ``text`` fence with
the demo's standard output (the progress bars go to standard error and are not shown), the demo's folder
written as ``$PWD/fpmon-demo``, and a line saying when it was rendered. Nothing else of the page changes.

:func:`structure_differences` compares the structure of the block with the output of a (shorter) demo run:
the tables' titles and columns and the fixed sentences, numbers and run-dependent parts (alerts, the onset)
aside. ``tests/test_review_demo_page.py`` checks it on the full demo run it makes anyway, and fails when the demo prints
something the page does not show: then run this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "demo.md"
START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"
#: the demo prints its tables at least this wide (monitor.demo.particles.wide_console); fixed for the render
COLUMNS = "120"

#: a progress bar (tqdm: ``desc:  42%|████   | 5/12 [00:01<00:02, 3.1it/s]``), up to its closing bracket
_PROGRESS = re.compile(r"^.*\d+%\|.*?\]")
#: a number as the demo prints it (not the digits inside names such as W2_ref or div_q99)
_NUMBER = re.compile(r"(?<![A-Za-z_\d])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
#: paragraphs whose presence depends on the run (its alerts, whether the rewards split): left out of the structure
RUN_DEPENDENT = (
    re.compile(r"^[A-Z_]+ at step #:"),  # an alert and its reasons
    re.compile(r"^columns: text \| reward \| evidence \(witness\)$"),  # an alert's responses
    re.compile(r"^… and # more alert"),
    re.compile(r"^The exploit's prevalence passed"),
    re.compile(r"^First alert from then on"),
    re.compile(r"^No alert from that step on"),
    re.compile(r"^Alerts: #\.$"),
    re.compile(r"^Hook errors"),
)


def _template(paragraph: str) -> str:
    text = re.sub(r"sqlite:///\S+", "<database>", paragraph)
    text = _NUMBER.sub("#", text)
    return re.sub(r"fixed in advance\): (?:never|at step #)\.", "fixed in advance): <when>.", text)


def skeleton(output: str) -> list[str]:
    """The structure of a ``fpmon demo`` output: one item per table header (``columns: a | b | …``) and per
    printed line of text (a line that Rich wrapped, which it ends with a space, joined with its continuation;
    numbers as ``#``, the database URL as ``<database>``), in order. Table borders, table rows and progress
    bars (a captured stream that mixes standard error in) are dropped."""
    items: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            items.append(_template(" ".join(pending)))
            pending.clear()

    for raw in output.splitlines():  # splits at \r too: each progress-bar redraw is a line
        raw = _PROGRESS.sub("", raw)  # a bar left on the line that the next output continues
        line = raw.strip()
        if not line or line[0] in "┏┗└┡┌╭╰":
            flush()
        elif line[0] == "┃":
            flush()
            items.append("columns: " + " | ".join(cell.strip() for cell in line.strip("┃").split("┃")))
        elif line[0] == "│":
            flush()
        else:
            pending.append(line)
            if not raw.endswith(" ") or raw.startswith(" "):  # not wrapped (a centred title is padded both sides)
                flush()
    flush()
    return items


def core(output: str) -> list[str]:
    """:func:`skeleton` without the run-dependent paragraphs (:data:`RUN_DEPENDENT`)."""
    return [item for item in skeleton(output) if not any(p.search(item) for p in RUN_DEPENDENT)]


def _check_markers(doc_text: str) -> None:
    if doc_text.count(START) != 1 or doc_text.count(END) != 1 or doc_text.index(START) > doc_text.index(END):
        raise ValueError(f"the page needs exactly one {START} followed by one {END}")


def read_block(doc_text: str) -> str:
    """The demo output shown between the markers (the ``text`` fence's content). ValueError, saying what to
    fix, when the markers or the fence are missing."""
    _check_markers(doc_text)
    inner = doc_text.split(START, 1)[1].split(END, 1)[0]
    fence = re.search(r"^```text\n(.*?)^```$", inner, flags=re.S | re.M)
    if fence is None:
        raise ValueError(f"no ```text fence between {START} and {END}")
    return fence.group(1)


def structure_differences(output: str, doc: Path = DOC) -> str:
    """Empty when the block of ``doc`` has the structure of ``output`` (:func:`core` of both equal); otherwise
    what differs and the command that fixes it."""
    shown, printed = core(read_block(doc.read_text(encoding="utf-8"))), core(output)
    if shown == printed:
        return ""
    only_doc = [i for i in shown if i not in printed]
    only_run = [i for i in printed if i not in shown]
    return (
        f"{doc.name}'s demo output block no longer has the structure of what `fpmon demo` prints "
        f"(only in the page: {only_doc}; only in the demo's output: {only_run}; or the order differs). "
        "Regenerate it: python benchmarks/render_demo_doc.py (or make docs-demo)."
    )


def render_block(output: str, folder: str | None = None, when: dt.date | None = None) -> str:
    """The block's Markdown for the demo's standard output ``output``: ``folder`` (the demo run's working
    folder) written as ``$PWD``, progress bars (if standard error was saved with it) dropped, and the rendering
    note. Trailing spaces are kept: they mark the lines that Rich wrapped (:func:`skeleton`)."""
    if folder:
        output = output.replace(folder.rstrip("/"), "$PWD")
    body = "\n".join(_PROGRESS.sub("", line) for line in output.strip("\n").splitlines())
    when = when or dt.datetime.now(dt.UTC).date()
    return (
        f"```text\n{body}\n```\n\n"
        f"(The standard output of `fpmon demo` on {when.isoformat()}, written here by "
        "`python benchmarks/render_demo_doc.py`; the progress bars go to standard error and are not shown.)\n"
    )


def replace_block(doc_text: str, block: str) -> str:
    """``doc_text`` with the text between the markers replaced by ``block`` (ValueError without markers)."""
    _check_markers(doc_text)
    head, rest = doc_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def run_demo(args: list[str], timeout_s: float = 1800) -> tuple[str, str]:
    """``fpmon demo ARGS`` (this interpreter, this checkout's code) in a temporary folder; returns its standard
    output and the folder. Raises RuntimeError with the end of its output when it fails."""
    folder = tempfile.mkdtemp(prefix="fpmon-demo-doc-")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": COLUMNS}
    env = {k: v for k, v in env.items() if not k.startswith("FPMON_")}
    proc = subprocess.run(
        [sys.executable, "-m", "api.cli", "demo", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fpmon demo exited with {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="saved standard output of a `fpmon demo` run")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page to rewrite (default docs/demo.md)")
    parser.add_argument("demo_args", nargs="*", help="options for `fpmon demo` (after --), e.g. -- --seed 1")
    args = parser.parse_args(argv)
    if args.source is not None:
        output, folder = args.source.read_text(encoding="utf-8"), None
    else:
        print("running fpmon demo (≈ 1 min on 2 idle cores) …", file=sys.stderr)
        output, folder = run_demo(args.demo_args)
    if not any(item.startswith("columns: step |") for item in skeleton(output)):
        raise SystemExit("that output has no per-step table: is it the standard output of `fpmon demo`?")
    doc = args.doc
    doc.write_text(replace_block(doc.read_text(encoding="utf-8"), render_block(output, folder)), encoding="utf-8")
    print(f"wrote the demo output into {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
