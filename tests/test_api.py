"""The notebook front door: ``import analysis as ps`` names the documented API, loads nothing heavy until a
name is used, and every entry point's docstring example runs (doctest, on the shipped toy models)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys

import pytest

import analysis

pytestmark = pytest.mark.usefixtures("one_thread")

ENTRY_POINTS = ("load_model", "get_task", "evaluate_task", "attribute_task", "neuron_ig", "copying_scores",
                "select_top_k", "prune_eval", "k_sweep", "attention_maps", "token_relevance", "faithfulness",
                "task_vectors", "ground_truth")
DOCTESTED = ("analysis", "analysis.models.loader", "analysis.tasks.builtin", "analysis.evaluation.icl",
             "analysis.pruning.mask", "analysis.attribution.runs", "analysis.attribution.neuron_ig",
             "analysis.pruning.copying", "analysis.pruning.evaluate", "analysis.pruning.autok", "analysis.attention",
             "analysis.attribution.tokens", "analysis.evaluation.faithfulness", "analysis.evaluation.task_vectors",
             "analysis.evaluation.ground_truth")


def test_every_public_name_resolves_to_a_documented_object():
    assert set(analysis.__all__) == {"PrunescopeError", *analysis._HOMES}
    assert set(ENTRY_POINTS) <= set(analysis.__all__) and set(analysis.__all__) <= set(dir(analysis))
    for name in analysis.__all__:
        value = getattr(analysis, name)
        assert inspect.getdoc(value), f"{name} has no docstring"
        assert value.__module__.startswith("analysis"), name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        analysis.nonexistent  # noqa: B018


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_document_args_returns_raises_and_an_example(name):
    doc = inspect.getdoc(getattr(analysis, name))
    for section in ("Args:", "Returns:", "Raises:", "Example"):
        assert section in doc, f"{name}: no {section}"
    for parameter in inspect.signature(getattr(analysis, name)).parameters:
        assert parameter in doc, f"{name}: parameter {parameter} undocumented"


def test_importing_the_package_loads_no_torch():
    """The CLI and ``import analysis`` start at once: the API's modules load on first use."""
    code = "import sys, analysis; assert 'torch' not in sys.modules; analysis.NeuronMask; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", DOCTESTED)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result
