"""No import cycle anywhere in ``src/startprof`` (issue 16: one home for each concept).

The graph is built from the source with ``ast``, so nothing is imported and bcc is not needed.
Every ``import`` counts, including those inside functions: a function-local import that closes a
loop only postpones the cycle to call time and hides it from a reader (``lab/containerd.py``
reached ``lab/driver.py`` and ``lab/leaks.py`` that way, and both imported ``containerd``
back). Only imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import startprof

SRC = Path(startprof.__file__).resolve().parent.parent


def _modules(root: Path) -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in (root / "startprof").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: ``from pkg import x`` is an edge to ``pkg.x`` when
    that is a module, else to ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in mods:
                    found.add(full)
                elif base in mods:
                    found.add(base)
    found.discard(name)
    return found


def _runtime_nodes(body: list[ast.stmt]) -> list[ast.AST]:
    """Every node under ``body`` except the bodies of ``if TYPE_CHECKING:``."""
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack += node.orelse
            continue
        nodes.append(node)
        stack += ast.iter_child_nodes(node)
    return nodes


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    u = stack.pop()
                    on_stack.discard(u)
                    component.append(u)
                    if u == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _graph(root: Path) -> dict[str, set[str]]:
    mods = _modules(root)
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_import_cycle_in_startprof() -> None:
    graph = _graph(SRC)
    assert len(graph) > 50  # the whole package was read
    assert _cycles(graph) == []


def test_a_function_local_import_closes_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "startprof"
    (pkg / "lab").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lab" / "__init__.py").write_text("")
    (pkg / "lab" / "a.py").write_text("from startprof.lab.b import f\n")
    (pkg / "lab" / "b.py").write_text("def f():\n    from startprof.lab import a\n")
    (pkg / "lab" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from startprof.lab import a\n"
    )
    graph = _graph(tmp_path)
    assert graph["startprof.lab.c"] == set()
    assert _cycles(graph) == [["startprof.lab.a", "startprof.lab.b"]]
