"""analysis/ is pure: it imports nothing from the probes, the lab, the CLI or the file format
(docs/architecture.md, shared STYLE.md), so every rule in it runs on factories and stored
recordings alone. Checked on the source of every module, so an import inside a function counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import startprof.analysis

ANALYSIS = Path(startprof.analysis.__file__).parent
FORBIDDEN = ("startprof.probes", "startprof.lab", "startprof.cli", "startprof.recording")
FORBIDDEN_THIRD_PARTY = ("bcc", "click")
MODULES = sorted(ANALYSIS.glob("*.py"))


def imported(path: Path) -> set[str]:
    """Every module a file imports, by absolute name (relative imports resolved)."""
    package = "startprof.analysis"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def test_every_analysis_module_is_checked() -> None:
    assert {p.name for p in MODULES} >= {"__init__.py", "phases.py", "processes.py", "model.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_analysis_module_imports_nothing_impure(path: Path) -> None:
    bad = sorted(
        name
        for name in imported(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN + FORBIDDEN_THIRD_PARTY)
    )
    assert not bad, f"{path.name} imports {bad}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from startprof.probes.netlink import type_name\n")
    assert "startprof.probes.netlink" in imported(module)
    module.write_text("from ..recording import read_recording\n")
    assert "startprof.recording" in imported(module)
