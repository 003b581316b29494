"""examples/quickstart.ipynb runs top to bottom (nbclient, a fresh kernel, the shipped toy models) and shows
what it says: the IG heatmap, the top neurons, the verdicts and the change chart, the implicit attention."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_draws_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits it: tiny models, a possibly busy machine
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    outputs = [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in outputs for o in cell if o.output_type == "error"]
    figures = [json.loads(o["data"]["application/vnd.plotly.v1+json"]) if isinstance(
        o["data"]["application/vnd.plotly.v1+json"], str) else o["data"]["application/vnd.plotly.v1+json"]
        for cell in outputs for o in cell if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert [f["data"][0]["type"] for f in figures] == ["heatmap", "scatter", "heatmap"]  # IG, changes, attention
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for cell in outputs for o in cell)
    assert "toy-transformer (transformer, 4 layers" in text and "completeness error: median" in text
    assert "Against the unpruned model:" in text  # the verdict sentences
