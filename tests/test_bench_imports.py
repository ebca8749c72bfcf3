"""Every name a benchmark script imports from textgen or from another benchmark exists
where it is imported from: a name moved in the package must not leave a ``make bench-*``
target broken until someone runs it (most benchmarks take minutes and are not run here).

The check reads each script's import statements (those inside functions too) without
running the script: textgen modules are imported and asked for the name, a sibling
benchmark's top-level definitions are read from its source."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from .conftest import ROOT

BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def imported_names(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from textgen… / bench… import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ("textgen", "bench"):
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names
                      if alias.name.split(".")[0] == "textgen"]  # fmt: skip
    return found


def top_level_names(path: Path) -> set[str]:
    """What a script defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def missing_names(script: Path, bench: Path = BENCH) -> list[str]:
    """``file:line: module.name`` of each import in ``script`` that would fail."""
    missing = []
    for line, module, name in imported_names(script):
        where = f"{script.name}:{line}: {module}{'.' + name if name else ''}"
        if module.startswith("bench."):
            sibling = bench / (module.removeprefix("bench.") + ".py")
            if not sibling.exists() or name not in top_level_names(sibling):
                missing.append(where)
            continue
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{where} ({exc})")
            continue
        if name and not hasattr(loaded, name):
            try:  # a submodule imported by name: from textgen.decoding import blas
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(where)
    return missing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_what_a_benchmark_imports_exists(script):
    assert missing_names(script) == []


def test_the_check_sees_a_moved_name(tmp_path):
    """The check fails on what it is for: a name that is not (or no longer) there, in a
    textgen module, in a sibling benchmark, or a module that does not exist."""
    (tmp_path / "helper.py").write_text("def here():\n    pass\n", encoding="utf-8")
    script = tmp_path / "moved.py"
    script.write_text(
        "from textgen.machine import machine_line\n"
        "from textgen.report import no_such_name\n"
        "def run():\n"
        "    from bench.helper import here, gone\n"
        "    from textgen.no_such_module import anything\n",
        encoding="utf-8",
    )
    missing = missing_names(script, bench=tmp_path)
    assert [m.split(" (")[0] for m in missing] == [
        "moved.py:2: textgen.report.no_such_name",
        "moved.py:4: bench.helper.gone",
        "moved.py:5: textgen.no_such_module.anything",
    ]
