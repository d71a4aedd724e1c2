"""The house rules of docs/architecture.md: import contracts (import-linter), private names, module size.

``lint-imports`` runs in ``make lint`` too; here it is also shown to *fail* when a fixture breaks a rule in a
copy of the tree, so a contract that can never fail would be caught.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "monitor", "storage")
#: "no library module over about 500 lines"
MAX_MODULE_LINES = 520


def lint_imports(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint), "--no-cache", *(arg for c in contracts for arg in ("--contract", c))]
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def library_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_the_tree_keeps_every_import_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The three packages and pyproject.toml (the contracts) in a temporary folder."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "source", "contract", "chain"),
    [
        ("monitor/fpe/leak.py", "import api\n", "pure-math", "monitor.fpe.leak -> api"),
        ("monitor/fpe/leak.py", "import api\n", "one-way", "monitor.fpe.leak -> api"),
        ("storage/leak.py", "import monitor.rlhf\n", "one-way", "storage.leak -> monitor.rlhf"),
        ("monitor/trl/leak.py", "import storage\n", "storage-doors", "monitor.trl.leak -> storage"),
        ("monitor/detect/leak.py", "import httpx\n", "pure-math", "monitor.detect.leak -> httpx"),
        ("monitor/fpe/leak.py", "import monitor.rlhf\n", "no-circles", "fpe"),
    ],
)
def test_a_broken_rule_fails_lint_imports(tree_copy: Path, module: str, source: str, contract: str, chain: str) -> None:
    clean = lint_imports(tree_copy, contract)
    assert clean.returncode == 0, clean.stdout  # the copy itself keeps the contract
    (tree_copy / module).write_text(source)
    broken = lint_imports(tree_copy, contract)
    assert broken.returncode == 1, broken.stdout
    assert "BROKEN" in broken.stdout
    assert chain in broken.stdout


def private_names_defined(tree: ast.Module) -> set[str]:
    """``_names`` a module defines: functions, classes, assignments, and ``self._x``/``cls._x`` members."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def foreign_private_uses(path: Path, root: Path = ROOT) -> list[str]:
    """Uses of another module's private names: ``from x import _y``, or ``obj._y`` where this module
    defines no ``_y`` (so ``_y`` belongs to another module's class or to a third-party library)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = private_names_defined(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found += [
                f"{path.relative_to(root)}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in own
        ):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [hit for path in library_modules() for hit in foreign_private_uses(path)]
    assert not found, "make these names public, or move the code that needs them:\n" + "\n".join(found)


def test_the_private_name_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from monitor.client import _helper\n\ndef f(client):\n    return client._cond\n")
    ok = tmp_path / "ok.py"
    ok.write_text(
        "class A:\n    def __init__(self):\n        self._x = 1\n\n"
        "    def same(self, other):\n        return other._x\n"
    )
    assert [h.split(": ", 1)[1] for h in foreign_private_uses(bad, tmp_path)] == [
        "from monitor.client import _helper",
        "client._cond",
    ]
    assert foreign_private_uses(ok, tmp_path) == []


def test_library_modules_are_small() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in library_modules()}
    large = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not large, f"split these modules by responsibility (limit {MAX_MODULE_LINES} lines): {large}"
