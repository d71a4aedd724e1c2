"""The README's Python snippets run: every fenced ``python`` block of README.md is executed here, unless the line
right before it says why it cannot be (``<!-- not-executed: needs a GPU trainer -->``). A ``print(...)`` line whose
trailing comment is ``# <text>`` must print exactly that text, so the numbers shown in the README are the ones the
code gives.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_EXECUTED = re.compile(r"^<!--\s*not-executed:\s*(?P<reason>.*\S)\s*-->$")
#: a print line with the output it promises in its trailing comment (no '#' inside the call)
PROMISED = re.compile(r"^print\([^#]*\)\s*#\s*(?P<text>.+)$")


@dataclass(frozen=True)
class Block:
    """A fenced ``python`` block: its first code line's number (1-based), its code, and why it is not run."""

    line: int
    code: str
    skip_reason: str | None


def python_blocks(markdown: str) -> list[Block]:
    """The fenced ``python`` blocks of ``markdown``, each with the reason in a ``not-executed`` comment on the
    last non-blank line before its fence (None when there is none)."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marked = NOT_EXECUTED.match(before)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(i + 2, "\n".join(lines[i + 1 : end]), marked["reason"] if marked else None))
            i = end
        i += 1
    return blocks


def run_block(block: Block, name: str) -> tuple[dict, str]:
    """Execute the block in a fresh namespace; returns the namespace and what it printed."""
    namespace: dict = {"__name__": f"readme_block_{block.line}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.code, f"{name}:{block.line}", "exec"), namespace)
    return namespace, out.getvalue()


def test_block_parser_finds_marks() -> None:
    text = "a\n\n<!-- not-executed: needs a GPU -->\n\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [Block(6, "x = 1", "needs a GPU"), Block(12, "y = 2", None)]


def test_every_readme_snippet_is_run_or_says_why_not() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    run = [b for b in blocks if b.skip_reason is None]
    assert len(blocks) >= 4 and run, "README.md lost its Python snippets"
    for block in run:
        _namespace, printed = run_block(block, "README.md")
        promised = [m["text"].strip() for line in block.code.splitlines() if (m := PROMISED.match(line.strip()))]
        if promised:
            assert printed.splitlines() == promised, f"README.md:{block.line} prints other numbers than it shows"


def test_engine_snippet_gives_calibrated_numbers() -> None:
    (engine,) = [b for b in python_blocks(README.read_text(encoding="utf-8")) if "compute_observables" in b.code]
    namespace, _ = run_block(engine, "README.md")
    scalars = namespace["obs"].scalars
    # calibrated on the quiet step (C = 1 there): the moving step's C is of order 1, not the uncalibrated 1e-7
    assert 0.5 < scalars["C"] < 5
    assert math.isfinite(scalars["T_eff"]) and 0.1 < scalars["T_eff"] < 100
    assert namespace["quiet"].with_D0(namespace["d0"]).scalars["C"] == pytest.approx(1.0)
    div = namespace["obs"].div
    assert float(div[:64].mean()) < 0 < float(div[64:].mean()) + 0.1  # mass arrives where the movers went
