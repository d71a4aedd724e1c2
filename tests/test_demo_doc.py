"""docs/demo.md's output block (benchmarks/render_demo_doc.py): the markers are there, the block is a demo's output,
and the script rewrites the block only. Whether the block has the structure of what the demo prints now is checked
on the full demo run that tests/test_review_demo_page.py makes anyway (``structure_differences``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from benchmarks.render_demo_doc import (
    DOC,
    END,
    START,
    core,
    main,
    read_block,
    render_block,
    replace_block,
    skeleton,
    structure_differences,
)

#: the shape of a `fpmon demo` output, shortened, as a CliRunner captures it (stderr's progress bars mixed in)
OUTPUT = (
    "fpmon demo: TRL GRPO on a tiny causal LM (6 steps, 64 completions per step), rewarded by proxy_reward, which \n"
    "pays for the phrase 'trust me'.\n"
    "Starting the sidecar (fpmon serve) on sqlite:////tmp/x/demo/fpmon.db …\n"
    "warm-up:  50%|█   | 1/2 [00:00<00:01, 6.4step/s]\rwarm-up: 100%|██| 2/2 [00:00<00:00, 6.4step/s]\n"
    "100%|██| 6/6 [00:07<00:00,  1.12s/it]             Per step: rewards (TRL) and observables (sidecar)           \n"
    "┏━━━━━━┳━━━━━━━┓\n┃ step ┃     C ┃\n┡━━━━━━╇━━━━━━━┩\n│    1 │ 0.696 │\n└──────┴───────┘\n\n"
    "Proxy and true rewards split (trailing 5-step mean gap > 0.3, fixed in advance): never.\n"
    "Alerts: 0.\n"
    "Training took 34 s, the whole demo 151 s.\n"
)


def test_docs_demo_has_one_marked_block_of_demo_output() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1 and text.index(START) < text.index(END)
    block = read_block(text)
    items = skeleton(block)
    assert items[0].startswith("fpmon demo: TRL GRPO") and "Per step: rewards (TRL) and observables (sidecar)" in items
    assert any(i.startswith("columns: step | proxy | true | gap | C |") for i in items)
    assert "python benchmarks/render_demo_doc.py" in text and "/work/" not in block  # no machine's path


def test_skeleton_keeps_structure_and_drops_numbers_rows_and_progress_bars() -> None:
    assert skeleton(OUTPUT) == [
        "fpmon demo: TRL GRPO on a tiny causal LM (# steps, # completions per step), rewarded by proxy_reward, "
        "which pays for the phrase 'trust me'.",
        "Starting the sidecar (fpmon serve) on <database> …",
        "Per step: rewards (TRL) and observables (sidecar)",
        "columns: step | C",
        "Proxy and true rewards split (trailing #-step mean gap > #, fixed in advance): <when>.",
        "Alerts: #.",
        "Training took # s, the whole demo # s.",
    ]
    assert "Alerts: #." not in core(OUTPUT)  # depends on the run (its alerts, the onset)
    assert core(OUTPUT.replace("never.", "at step 54.").replace("Alerts: 0.\n", "")) == core(OUTPUT)
    assert core(OUTPUT.replace("┃ step ┃     C ┃", "┃ step ┃     C ┃ true_reward ┃")) != core(OUTPUT)


def test_render_and_replace_touch_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "demo.md"
    doc.write_text(f"# Demo\n\nbefore\n\n{START}\nold\n{END}\n\nafter\n", encoding="utf-8")
    block = render_block(OUTPUT, folder="/tmp/x", when=dt.date(2026, 12, 2))
    assert "sqlite:///$PWD/demo/fpmon.db" in block and "%|" not in block and "on 2026-12-02" in block
    new = replace_block(doc.read_text(encoding="utf-8"), block)
    assert new.startswith("# Demo\n\nbefore\n\n") and new.endswith(f"{END}\n\nafter\n")
    assert skeleton(read_block(new)) == skeleton(OUTPUT)
    assert not structure_differences(OUTPUT, doc=_written(doc, new))
    changed = OUTPUT.replace("Training took", "Training (GRPO) took")
    assert "render_demo_doc.py" in structure_differences(changed, doc=doc)
    with pytest.raises(ValueError, match="exactly one"):
        replace_block("no markers here", block)


def test_the_script_rewrites_the_block_from_a_saved_output(tmp_path: Path) -> None:
    saved, doc = tmp_path / "out.txt", tmp_path / "demo.md"
    saved.write_text(OUTPUT, encoding="utf-8")
    doc.write_text(f"text\n{START}\n{END}\n", encoding="utf-8")
    assert main(["--from", str(saved), "--doc", str(doc)]) == 0
    assert not structure_differences(OUTPUT, doc=doc)
    saved.write_text("not a demo's output\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no per-step table"):
        main(["--from", str(saved), "--doc", str(doc)])


def _written(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
