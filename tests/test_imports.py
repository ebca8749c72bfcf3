"""The architecture, checked from the code: imports point one way (no circle), nothing
imports the command line, and TensorFlow loads through one module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "textgen"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """textgen modules that ``path`` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from textgen.x import y` imports textgen.x.y when that is a module
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            names = [n for n in names if n in known] or [node.module]
        else:
            continue
        found |= {n for n in names if n in known and n != "textgen"}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_circle_of_imports():
    assert circles(graph()) == []


def test_nothing_imports_the_command_line():
    importers = sorted(m for m, deps in graph().items() if "textgen.cli" in deps)
    assert importers == ["textgen.__main__"]


# the areas from the ground up; an area imports only areas below it (and itself)
LAYERS = [
    ["textgen", "textgen._tf", "textgen.errors"],
    ["textgen.config"],
    ["textgen.text", "textgen.model"],
    ["textgen.corpus", "textgen.decoding"],
    ["textgen.rundir"],
    ["textgen.training", "textgen.evaluate", "textgen.plot", "textgen.report"],
    ["textgen.cli"],
    ["textgen.__main__"],
]


def area(module: str) -> tuple[str, int]:
    """The area (package or top-level module) of ``module`` and its floor."""
    for floor, areas in reversed(list(enumerate(LAYERS))):
        for name in areas:
            if name != "textgen" and (module == name or module.startswith(name + ".")):
                return name, floor
    return "textgen", 0


def test_imports_point_down_the_layers():
    wrong = []
    for module, deps in graph().items():
        mine, floor = area(module)
        for dep in deps:
            theirs, their_floor = area(dep)
            if theirs != mine and their_floor >= floor:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []
