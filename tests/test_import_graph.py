"""The import graph of analysis/ has no circles. Twice: a module-level import (what runs when the module is
imported; ``if TYPE_CHECKING`` blocks never run) never leads back to the importing module, so no import order
fails; and counting imports inside functions too, no module depends on itself at all (a deferred import only
hides a circle from Python, not from a reader). Read from the source, so a new circle fails here before it
fails at import time in some order nobody tried. And importing the package never loads streamlit (the
app's dependency, not the library's)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "analysis"


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    names = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level(body: list[ast.stmt]):
    """The import statements that run at import time (into try/if/with blocks, not functions or classes'
    methods, not ``if TYPE_CHECKING``)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _top_level(node.body)


def _anywhere(body: list[ast.stmt]):
    """Every import statement, in functions and methods too, except those under ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _anywhere(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _anywhere([c for c in children if isinstance(c, (ast.stmt, ast.excepthandler,
                                                                            ast.match_case))])


def imports_of(name: str, path: Path, known: dict[str, Path], deferred: bool = False) -> set[str]:
    """The package's modules that importing ``name`` imports directly (a submodule import also runs its
    parent packages' __init__); with ``deferred``, also those its functions import when called."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for node in (_anywhere if deferred else _top_level)(body):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for candidate in candidates:
            parts = candidate.split(".")
            for end in range(1, len(parts) + 1):  # the module and every parent package it runs
                prefix = ".".join(parts[:end])
                if prefix in known and prefix != name and not name.startswith(prefix + "."):
                    targets.add(prefix)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_analysis_package_has_no_import_cycles():
    known = module_names()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert sum(map(len, graph.values())) > 50  # the graph was read (analysis/ has many internal imports)
    assert cycles(graph) == []


def test_no_module_depends_on_itself_counting_imports_inside_functions():
    known = module_names()
    graph = {name: imports_of(name, path, known, deferred=True) for name, path in known.items()}
    assert sum(map(len, graph.values())) > sum(len(imports_of(n, p, known)) for n, p in known.items())
    assert cycles(graph) == []


def test_imports_inside_functions_count_and_type_checking_ones_do_not(tmp_path):
    path = tmp_path / "a.py"
    path.write_text("from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from analysis.b import X\n"
                    "def f():\n    from analysis.c import Y\n"
                    "class K:\n    def m(self):\n        try:\n            import analysis.d\n"
                    "        except ImportError:\n            pass\n", encoding="utf-8")
    known = {name: path for name in ("analysis.a", "analysis.b", "analysis.c", "analysis.d")}
    assert imports_of("analysis.a", path, known) == set()
    assert imports_of("analysis.a", path, known, deferred=True) == {"analysis.c", "analysis.d"}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# Run in a fresh interpreter (this one has loaded streamlit for the app's tests): import the package and every
# module pkgutil finds in it (a package that fails to import fails the walk), then report what was imported.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import analysis

def fail(name):
    raise ImportError(f"cannot import {name} while walking the package")

names = ["analysis", *(m.name for m in pkgutil.walk_packages(analysis.__path__, "analysis.", onerror=fail))]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "streamlit": sorted(m for m in sys.modules if m.split(".")[0] == "streamlit")}))
"""


def test_importing_analysis_and_every_submodule_never_loads_streamlit():
    """The library runs without the app (the CLI, notebooks, Ray workers): no module of analysis/ may import
    streamlit, directly or through another package, at import time."""
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(report["modules"]) == sorted(module_names())  # every module on disk was imported
    assert report["streamlit"] == []
