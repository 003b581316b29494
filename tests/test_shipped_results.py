"""The results shipped in assets/precomputed answer every page's default requests on both real built-in models
in a fresh process with an empty results cache and another HOME, as on a new host: nothing is computed (a write to the
results cache, which every computation ends with, fails the run)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    from analysis.attribution.runs import stored_attribution
    from analysis.cache import ResultsCache
    import sys
    from analysis.demo import ATTRIBUTION, PRUNE_CONTROLS, PRUNE_TASKS, SCORING, SETTINGS, TASK_VECTORS, pruning_tasks
    from analysis.evaluation import evaluate_task
    from analysis.evaluation.task_vectors import stored_task_vectors
    from analysis.models import load_model
    from analysis.pruning.autok import K_GRID, k_sweep
    from analysis.pruning.copying import random_mask_like, select_top_k, stored_copying_scores
    from analysis.pruning.evaluate import prune_eval
    from analysis.tasks import builtin_tasks

    def computed(*args, **kwargs):
        raise SystemExit(f"computed a result the demo ships: {args[1]}")

    ResultsCache.put = computed
    loaded = load_model(sys.argv[1], device="cpu")
    cache = ResultsCache()
    scores = stored_copying_scores(loaded, **SCORING, cache=cache)
    assert scores is not None, "copying scores not shipped"
    mask = select_top_k(scores.scores, SETTINGS["k"])
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    result = prune_eval(loaded, mask, tasks, shots=[SETTINGS["shots"]], n=SETTINGS["n"],
                        random_controls=PRUNE_CONTROLS, seed=SETTINGS["seed"], cache=cache)
    assert stored_attribution(loaded, builtin_tasks()[SETTINGS["task"]], ATTRIBUTION["target"], ATTRIBUTION["n"],
                              SETTINGS["shots"], SETTINGS["seed"], ATTRIBUTION["steps"], ATTRIBUTION["quadrature"],
                              cache=cache) is not None, "attribution not shipped"
    sweep = k_sweep(loaded, scores.scores, K_GRID, cache=cache)
    task = builtin_tasks()[SETTINGS["task"]]
    for condition in (None, mask):  # the task-vector page: unpruned and with the active mask
        assert stored_task_vectors(loaded, task, SETTINGS["shots"], TASK_VECTORS["n"], TASK_VECTORS["dummies"],
                                   seed=SETTINGS["seed"], mask=condition, cache=cache) is not None
    from analysis.evaluation.general import stored_general_capability
    from analysis.pruning.evaluate import control_masks
    assert stored_general_capability(loaded, mask, control_masks(loaded, mask, PRUNE_CONTROLS),
                                     cache=cache) is not None, "general text not shipped"
    random_mask = random_mask_like(mask, loaded.adapter.neuron_counts(), 0)
    for condition in (None, mask, random_mask):  # the Compare page's mask options
        evaluate_task(loaded, task, SETTINGS["shots"], SETTINGS["n"], seed=SETTINGS["seed"], mask=condition,
                      cache=cache)
    print("shipped", len(result.records), sweep.chosen)
""")


@pytest.mark.parametrize("model", ["default", "gemma3-270m"])
def test_a_new_host_finds_every_shipped_default_result(tmp_path, model):
    """The dequantized weights are the suite's shared copy (as for every test: tests/conftest.py), so on a
    clean machine they were dequantized in this run; the results cache is empty."""
    from analysis.paths import cache_dir

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PRUNESCOPE_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="2")
    run = subprocess.run([sys.executable, "-c", SCRIPT, model], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1].startswith("shipped ")


@pytest.mark.parametrize("model", ["default", "gemma3-270m"])
def test_the_readme_science_tables_measured_the_masks_the_app_ships(model):
    """One source of truth: the README's tables cite the digest of each mask they measured (bench/copying_bench.py
    prints it), and the default-option rows must be the masks shipped in assets/precomputed."""
    from analysis.demo import mask_file_name
    from analysis.pruning import NeuronMask

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shipped = NeuronMask.load(ROOT / "assets" / "precomputed" / mask_file_name(model))
    assert f"`{shipped.digest()}`" in readme
    echo = NeuronMask.load(ROOT / "assets" / "precomputed" / f"echo-mask-{model}-k20.json")  # the echo-mask column
    assert f"`{echo.digest()}`" in readme and len(echo) == 20
    assert (echo.meta["target"], echo.meta["task"], echo.meta["shots"]) == ("echo", "english-spanish", 1)
