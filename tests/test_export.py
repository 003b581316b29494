"""Every CSV the app or the CLI writes defuses formula cells (OWASP CSV injection): a text cell starting with
= + - @, a tab or a carriage return gets a leading apostrophe; numbers stay numbers."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis.export import neutralize, safe_csv
from analysis.tasks.task import Task
from tests.app_helpers import MAIN, TIMEOUT, no_exception
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
FORMULAS = ["=cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "+1"]
HOSTILE = [*FORMULAS, "\t=1+1", "\r=1+1"]  # a built task keeps the tab and carriage return an upload strips


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_safe_csv_defuses_text_cells_and_keeps_numbers():
    frame = pd.DataFrame({"query": HOSTILE, "delta": [-0.5, -2.0, 1.0, 0.0, 3.0, -1.0],
                          "index": [-3, 1, 2, 3, 4, 5], "note": ["ok", "a=b", "", "x-1", "@", "-"],
                          "mixed": [-2, "-x", None, 3.5, "=y", "plain"]})
    parsed = rows(safe_csv(frame))
    assert [r["query"] for r in parsed] == ["'" + h for h in HOSTILE]
    assert [r["note"] for r in parsed] == ["ok", "a=b", "", "x-1", "'@", "'-"]  # only a leading character counts
    assert [r["mixed"] for r in parsed] == ["-2", "'-x", "", "3.5", "'=y", "plain"]  # a number in a text column
    back = pd.read_csv(io.StringIO(safe_csv(frame)))
    assert back["delta"].tolist() == [-0.5, -2.0, 1.0, 0.0, 3.0, -1.0]  # negative numbers stay numbers
    assert back["index"].dtype.kind == "i" and back["index"].tolist() == [-3, 1, 2, 3, 4, 5]
    assert list(neutralize(pd.DataFrame({"-x": [1], "ok": [2]})).columns) == ["'-x", "ok"]  # headers too
    assert frame["query"].tolist() == HOSTILE  # the caller's frame is not changed


def test_library_records_csv_defuses_task_items(tiny_loaded):
    """The prune-eval records (the CLI's --records, and the Evaluate page's records through ``safe_csv``)."""
    from analysis.evaluation import evaluate_task
    from analysis.pruning import NeuronMask
    from analysis.pruning.evaluate import prune_eval

    loaded = tiny_loaded("gpt2")
    task = Task("formulas", tuple((item, f"a{i}") for i, item in enumerate(HOSTILE)))
    result = prune_eval(loaded, NeuronMask.from_pairs([(0, 1)]), [task], shots=[1], n=len(HOSTILE),
                        random_controls=1)
    records = rows(result.records_csv())
    assert len(records) == 3 * len(HOSTILE)  # unpruned, pruned, one control
    assert {r["query"] for r in records} == {"'" + h for h in HOSTILE}
    assert {r["shots"] for r in records} == {"1"}
    evaluated = evaluate_task(loaded, task, 1, len(HOSTILE))
    page_rows = rows(safe_csv(evaluated.records[["query", "gold", "prediction", "prompt"]]))
    assert sorted(r["query"] for r in page_rows) == sorted("'" + h for h in HOSTILE)
    # a prompt starts with its first demonstration's input: every one here is a formula
    assert all(r["prompt"].startswith("'") for r in page_rows)


def spy_downloads(monkeypatch) -> dict:
    """File name -> the deferred download's callable, for every download a page offers in this test."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    downloads = {}
    real = MediaFileManager.add_deferred

    def spy(self, data, mimetype, coordinates, file_name=None, **kwargs):
        downloads[file_name] = data
        return real(self, data, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    return downloads


def test_a_table_download_defuses_an_uploaded_tasks_formulas(monkeypatch):
    """What a visitor downloads from the Evaluate page's table (the deferred CSV of ``components.export.table``)."""
    from components.widgets import UPLOAD_OPTION

    downloads = spy_downloads(monkeypatch)
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.session_state["setting_shots"], at.session_state["setting_n"] = 1, len(FORMULAS)
    at.switch_page("views/evaluate.py")
    no_exception(at.run())
    at.selectbox(key="_w_task").set_value(UPLOAD_OPTION).run()
    body = "input,output\n" + "".join(f'"{item}",{item}\n' for item in FORMULAS)
    at.file_uploader(key="task_upload").set_value(("formulas.csv", body.encode(), "text/csv"))
    no_exception(at.run())
    at.button(key="eval_run").click()
    no_exception(at.run())
    assert not at.error, [e.value for e in at.error]
    table = rows(downloads["evaluate-run1.csv"]())
    assert sorted(r["query"] for r in table) == sorted("'" + f for f in FORMULAS)
    assert all(r["gold"] == r["query"] for r in table)  # the outputs are the same formulas
    runs = pd.read_csv(io.StringIO(downloads["evaluate-runs.csv"]()))
    assert runs["n"].tolist() == [len(FORMULAS)] and runs["accuracy"].dtype.kind == "f"


def test_cli_csv_outputs_defuse_formulas(capsys, tiny_dirs, tmp_path):
    from analysis.pruning import NeuronMask

    task = tmp_path / "formulas.csv"
    task.write_text("input,output\n" + "".join(f'"{item}",x{i}\n' for i, item in enumerate(FORMULAS)))
    mask = NeuronMask.from_pairs([(layer, i) for layer in range(2) for i in range(64)]).save(tmp_path / "m.json")
    records, flipped = tmp_path / "records.csv", tmp_path / "flipped.csv"
    code, _, err = run(capsys, "prune-eval", "--model", tiny_dirs["gpt2"], "--mask", str(mask), "--tasks",
                       str(task), "--shots", "1", "--n", str(len(FORMULAS)), "--random-controls", "1",
                       "--records", str(records), "--flipped", str(flipped))
    assert code == 0, err
    written = rows(records.read_text())
    assert {r["query"] for r in written} == {"'" + f for f in FORMULAS}
    assert pd.read_csv(records)["prompt_index"].dtype.kind == "i"
    changed = rows(flipped.read_text())
    assert changed, "pruning every neuron of the tiny model changes some answer"
    assert {r["query"] for r in changed} <= {"'" + f for f in FORMULAS}
    assert all(not re.match(r"[=+\-@\t\r]", cell) for r in changed + written for cell in r.values())


@pytest.mark.parametrize("folder", ["analysis", "components", "app"])
def test_no_csv_is_written_around_the_helper(folder):
    """One way to write CSV: every ``to_csv`` call lives in analysis/export.py."""
    for path in (ROOT / folder).rglob("*.py"):
        if path != ROOT / "analysis" / "export.py":
            assert ".to_csv(" not in path.read_text(encoding="utf-8"), path


def test_the_attention_pages_report_keeps_its_labels(monkeypatch):
    """The attention page's "HTML report" download, as a visitor gets it: its figures were built inside the app
    (Streamlit's placeholder template, margins its frontend widens) and must carry a real template and margins
    for their token labels."""
    import json

    from tests.test_report import _figure_specs

    downloads = spy_downloads(monkeypatch)
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.switch_page("views/attention.py")
    no_exception(at.run())
    tokens = at.session_state["attn_last"]["tokens"]
    report = downloads["prunescope-implicit-attention.html"]()
    attention = _figure_specs(report)[0]
    assert len(attention["data"][0]["x"]) == len(tokens) > 5
    assert "#000001" not in json.dumps(attention["layout"]["template"])  # not Streamlit's placeholders
    assert attention["layout"]["xaxis"]["automargin"] and attention["layout"]["yaxis"]["automargin"]
    longest = max(len(label) for label in attention["data"][0]["y"])
    assert attention["layout"]["margin"]["l"] >= 6 * longest  # the token labels beside the map fit


def test_a_slides_charts_have_large_dark_tick_labels(monkeypatch):
    """In presentation mode the charts the page sends carry explicit 16 px dark tick labels: Streamlit's theme
    draws small light-grey ones wherever the figure leaves them unset."""
    import json

    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "attention", "present": "1"})
    no_exception(at.run())
    specs = {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert {"attn_chart", "rel_chart"} <= set(specs)
    for key in ("attn_chart", "rel_chart"):
        layout = specs[key]["layout"]
        for axis in ("xaxis", "yaxis"):
            assert layout[axis]["tickfont"] == {"size": 16, "color": "#18181b"}, (key, axis)
        assert specs[key]["data"][0]["colorbar"]["tickfont"]["size"] == 16
    assert specs["attn_chart"]["data"][0]["zmin"] == 0  # softmax weights: a scale from 0, not -1..1


def test_a_slide_keeps_every_input_behind_its_toolbar_buttons(monkeypatch):
    """In presentation mode the attention page's inputs (the relevance methods too) sit in the toolbar's
    popovers, so the slide shows figures, not a form."""
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "attention", "present": "1"})
    no_exception(at.run())
    inputs = ("text_area", "text_input", "selectbox", "multiselect", "number_input", "toggle", "button")
    found: list[tuple[str, bool]] = []

    def walk(node, inside: bool) -> None:
        kind = getattr(node, "type", None)
        if kind in inputs:
            found.append((node.key, inside))
        children = getattr(node, "children", None)
        for child in children.values() if isinstance(children, dict) else ():
            walk(child, inside or kind == "popover")

    walk(at.main, False)
    assert "rel_methods" in dict(found) and len(found) >= 10
    assert [key for key, inside in found if not inside] == []
