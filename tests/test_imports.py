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


def imports_of(path: Path, known: dict[str, Path], source: str | None = None) -> set[str]:
    """textgen modules that ``path`` imports, at module level or inside a function, by
    absolute (``from textgen.x import y``) or relative (``from .x import y``) name."""
    found: set[str] = set()
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module, level - 1 up
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from textgen.x import y` imports textgen.x.y when that is a module
            names = [f"{base}.{a.name}" for a in node.names] + [base]
            names = [n for n in names if n in known] or [base]
        else:
            continue
        found |= {n for n in names if n in known and n != "textgen"}
    return found


def test_the_walker_sees_relative_imports():
    known = {name: Path() for name in ("textgen.text", "textgen.text.base", "textgen.model",
                                       "textgen.model.network", "textgen.errors")}  # fmt: skip
    source = (
        "from . import base\n"
        "from ..errors import DataError\n"
        "def f():\n"
        "    from ..model.network import build_model\n"
        "    from ..model import network\n"
    )
    path = PACKAGE / "text" / "word.py"
    assert imports_of(path, known, source) == {  # a package runs its __init__ too
        "textgen.text", "textgen.text.base", "textgen.errors", "textgen.model",
        "textgen.model.network",
    }  # fmt: skip
    init = PACKAGE / "text" / "__init__.py"
    assert imports_of(init, known, "from .base import Tokenizer\n") == {"textgen.text.base"}


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


# the areas from the ground up, one floor per line of the README's package map; an area
# imports only areas below it (and itself)
LAYERS = [
    ["textgen", "textgen._tf", "textgen.errors", "textgen.machine"],
    ["textgen.config"],
    ["textgen.text"],
    ["textgen.model"],
    ["textgen.corpus"],
    ["textgen.decoding"],
    ["textgen.rundir"],
    ["textgen.training"],
    ["textgen.evaluate", "textgen.plot", "textgen.export", "textgen.serve"],
    ["textgen.report"],
    ["textgen.cli"],
    ["textgen.__main__"],
]


def test_the_floors_are_the_readmes_package_map():
    """Each line of the map that names textgen's files is one floor, in the same order."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("The packages, from the ground up", 1)[1].split("```")[1]
    floors = []
    for line in block.splitlines():
        if not line.startswith("textgen/"):
            continue  # a continued description
        files = line.split("  ")[0].split()  # "textgen/_tf.py errors.py", "textgen/text/"
        floors.append(sorted("textgen." + f.removeprefix("textgen/").strip("/").removesuffix(".py")
                             for f in files))  # fmt: skip
    # the map leaves out the package's own __init__ and __main__
    assert floors == [sorted(n for n in names if n != "textgen") for names in LAYERS[:-1]]
    assert sorted(set(m.split(".")[1] for m in modules() if "." in m)) == sorted(
        name.split(".")[1] for floor in LAYERS for name in floor if name != "textgen"
    ), "a package or module that is on no floor"


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
