"""precompute-demo stores exactly what the app asks for on its defaults, so the app finds it in the shipped
folder without computing (checked on a tiny model: every request afterwards is a cache hit)."""

from __future__ import annotations

import pytest

from analysis.attribution import attribute_task
from analysis.cache import ResultsCache
from analysis.demo import ATTRIBUTION, PRUNE_TASKS, SCORING, SETTINGS, mask_file_name, precompute_demo, pruning_tasks
from analysis.evaluation import evaluate_task
from analysis.pruning import NeuronMask
from analysis.pruning.copying import copying_scores, select_top_k
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def test_precomputed_results_answer_the_apps_default_requests(tiny_loaded, tmp_path, monkeypatch):
    loaded = tiny_loaded("llama")
    shipped = tmp_path / "shipped"
    precompute_demo(loaded, shipped, sweep=False)
    mask_file = shipped / mask_file_name(loaded.name)
    user = ResultsCache(tmp_path / "user", fallbacks=(shipped,))
    monkeypatch.setattr("analysis.cache.ResultsCache.put", lambda *a: pytest.fail("recomputed a shipped result"))
    scores = copying_scores(loaded, **SCORING, cache=user, compute_missing=False).scores
    mask = select_top_k(scores, SETTINGS["k"])
    assert NeuronMask.load(mask_file) == mask and len(mask) == SETTINGS["k"]
    for name in PRUNE_TASKS:
        for condition in (None, mask):
            result = evaluate_task(loaded, pruning_tasks()[name], SETTINGS["shots"], SETTINGS["n"],
                                   seed=SETTINGS["seed"], mask=condition, cache=user)
            assert result.n == SETTINGS["n"]
    assert attribute_task(loaded, builtin_tasks()[SETTINGS["task"]], ATTRIBUTION["target"], ATTRIBUTION["n"],
                          SETTINGS["shots"], SETTINGS["seed"], ATTRIBUTION["steps"], ATTRIBUTION["quadrature"],
                          cache=user, compute_missing=False) is not None
