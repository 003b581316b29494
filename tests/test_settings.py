"""The table of linked settings (components/settings.py): every setting the app links has exactly one entry
there, its default is the demo's where the demo precomputes it, its range is the library's where the library
checks that quantity, and analysis/bounds.py holds nothing the library does not check."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.bounds import BOUNDS
from analysis.demo import SCORING, SETTINGS
from components.settings import TABLE, Setting, _table, limit, options

ROOT = Path(__file__).resolve().parents[1]
QUERY_PARAMS = {"page", "model", "present"}  # the app's other query parameters (app/main.py)


def linked_names() -> tuple[set[str], set[str]]:
    """The setting names the app's sources read, write or bind (``state.get/put/bound``, and get/put inside
    components/state.py): literal names, and the literal prefixes of f-string names."""
    names, prefixes = set(), set()
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "components").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "state":
                position = {"get": 0, "put": 0, "bound": 2}.get(func.attr)
            elif isinstance(func, ast.Name) and path.name == "state.py":
                position = {"get": 0, "put": 0}.get(func.id)
            else:
                continue
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                prefixes.add(str(arg.values[0].value))
    return names, prefixes


def test_every_setting_the_app_links_has_exactly_one_entry():
    names, prefixes = linked_names()
    assert names, "no state.get/put/bound calls found"
    assert names <= TABLE.keys(), f"linked but not in components/settings.py: {sorted(names - TABLE.keys())}"
    for prefix in prefixes:
        assert any(name.startswith(prefix) for name in TABLE), f"no setting named {prefix}..."
    pages = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "app").rglob("*.py"))
    unused = [name for name in TABLE if name not in names and not any(name.startswith(p) for p in prefixes)
              and f'"{name}"' not in pages]  # e.g. the attention page's own choose(..., "form", ...)
    assert not unused, f"in components/settings.py but linked nowhere: {unused}"
    assert not TABLE.keys() & QUERY_PARAMS
    assert all(name == entry.name for name, entry in TABLE.items())
    with pytest.raises(ValueError, match="the setting n has two entries"):
        _table(*TABLE.values(), TABLE["n"])


def test_the_table_takes_the_demos_defaults_and_the_librarys_ranges():
    for name, value in SETTINGS.items():  # what the demo precomputes is what the app opens on
        assert TABLE[name].default == value, name
    for name, value in SCORING.items():
        assert TABLE[f"score_{name}"].default == value, name
    for name, entry in TABLE.items():
        assert isinstance(entry, Setting) and entry.kind in ("int", "text", "choice", "list"), name
        if entry.kind == "int":
            assert isinstance(entry.default, int) and entry.bound is not None, name
            assert entry.bound.low <= entry.default <= entry.bound.high, name
            if entry.quantity is not None:
                assert entry.bound is BOUNDS[entry.quantity], name
        else:
            assert isinstance(entry.default, str) and len(entry.default) <= entry.limit, name
        if entry.options is not None:
            assert entry.kind == "choice" and entry.default in entry.options, name
    assert limit("text") == 600 and options("score_prompts") == ("all", "copied")
    with pytest.raises(KeyError):
        options("task")  # the page offers the tasks


def test_bounds_hold_only_what_the_library_or_the_cli_checks():
    used = set()
    for path in (ROOT / "analysis").rglob("*.py"):
        if path.name != "bounds.py":
            used |= set(re.findall(r"\b(?:check|check_number|bounded)\(\"(\w+)\"", path.read_text(encoding="utf-8")))
    assert set(BOUNDS) == used, f"unused: {sorted(set(BOUNDS) - used)}, missing: {sorted(used - set(BOUNDS))}"


def test_a_links_text_is_parsed_by_its_entry():
    assert TABLE["n"].parse("1000000000000") == 1000 and TABLE["n"].parse("-4") == 1
    assert TABLE["seed"].parse("x" * 10_000) == 0 and TABLE["score_n"].parse(" 300 ") == 256
    assert TABLE["prune"].parse("7") == 1 and TABLE["score_shots"].parse("0") == 1
    assert TABLE["layers"].parse("0-" + "9" * 5000) == "0-" + "9" * 14
    assert TABLE["cmp_model"].parse("m" * 500) == "m" * 200  # any text keeps 200 characters unless its entry says


def test_the_table_never_loads_streamlit():
    code = ("import json, sys; import components.settings; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == []
