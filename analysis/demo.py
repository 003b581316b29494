"""The app's defaults that a hosted demo ships precomputed results for, and the precomputation.

The app opens on these settings (components/settings.py builds its linked settings from them), so precomputing
exactly these requests for the default model (``python -m analysis precompute-demo``) puts their cache entries
under ``assets/precomputed/``; :class:`analysis.cache.ResultsCache` reads that folder when its own has no
entry, so a fresh CPU host answers the first clicks at once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from analysis.attribution.quadrature import Quadrature
from analysis.attribution.runs import attribute_task
from analysis.attribution.targets import CopyTarget, TargetKind
from analysis.cache import ResultsCache
from analysis.evaluation.general import general_capability
from analysis.evaluation.task_vectors import task_vectors
from analysis.models.loader import LoadedModel
from analysis.paths import PRECOMPUTED_DIR
from analysis.pruning.autok import DEV_TASKS, K_GRID, k_sweep
from analysis.pruning.copying import COPYING_TASK, ScorePrompts, copying_scores, copying_splits, select_top_k
from analysis.pruning.evaluate import control_masks, prune_eval
from analysis.runner import Runner
from analysis.tasks import builtin_tasks


class Scoring(TypedDict):
    """copying_scores' settings on the pruning page."""

    n: int
    shots: int
    steps: int
    target: CopyTarget
    prompts: ScorePrompts


class Settings(TypedDict):
    """The shared settings the demo precomputes (the app's other linked settings: components/settings.py)."""

    task: str
    shots: int
    n: int
    seed: int
    k: int


class AttributionDefaults(TypedDict):
    target: TargetKind
    n: int
    steps: int
    quadrature: Quadrature


class TaskVectorDefaults(TypedDict):
    n: int
    dummies: int


# copying scores on the pruning page: IG run (n, shots, steps), target (copy | copy-prob), prompts (all | copied)
SCORING: Scoring = {"n": 32, "shots": 4, "steps": 4, "target": "copy", "prompts": "all"}
# the shared settings precomputed: the task, its prompts, and k (with SCORING, the default mask: top k over all
# layers)
SETTINGS: Settings = {"task": "antonyms", "shots": 4, "n": 40, "seed": 0, "k": 20}
PRUNE_TASKS = (f"{COPYING_TASK}[heldout]", *DEV_TASKS)  # the pruning page's default tasks (held-out copying split)
PRUNE_CONTROLS = 3  # random-mask seeds on the pruning page (its minimum too: one seed shows no spread)
ATTRIBUTION: AttributionDefaults = {"target": "copy", "n": 8, "steps": 4, "quadrature": "adaptive"}  # its page
TASK_VECTORS: TaskVectorDefaults = {"n": 40, "dummies": 2}  # the task-vector page (unpruned, and pruned with the mask)


def mask_file_name(model_name: str) -> str:
    """File name of the default copying mask of a model (a local directory contributes its last part)."""
    short = Path(model_name).name if Path(model_name).is_dir() else model_name.replace("/", "_")
    return f"copying-mask-{short}-k{SETTINGS['k']}.json"


def pruning_tasks() -> dict:
    """Tasks the pruning page offers: the copying task's held-out split (its fit split scored the neurons, so
    judge the pruning on the other one) and every built-in task."""
    _, heldout = copying_splits()
    return {heldout.name: heldout, **builtin_tasks()}


def precompute_demo(loaded: LoadedModel, out: str | Path = PRECOMPUTED_DIR, sweep: bool = True,
                    progress: Callable[[str], None] | None = None, pool: Runner | None = None) -> ResultsCache:
    """Compute what the app's pages request on their defaults and store it in a cache rooted at ``out``, plus
    the default copying mask as a JSON file there. ``pool`` (:class:`analysis.runner.Runner`, e.g. Ray's
    :class:`analysis.distributed.ModelPool`): the IG, the evaluations and the k-sweep run as shards there
    (task vectors stay here)."""
    cache = ResultsCache(out, fallbacks=())
    say = progress or (lambda _: None)
    say("copying scores")
    scores = copying_scores(loaded, **SCORING, cache=cache, pool=pool).scores
    mask = select_top_k(scores, SETTINGS["k"], model=loaded.name, scoring=SCORING)
    mask.save(Path(out) / mask_file_name(loaded.name))  # also loadable as a file on the pruning page
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    say("pruning table")
    prune_eval(loaded, mask, tasks, shots=[SETTINGS["shots"]], n=SETTINGS["n"], random_controls=PRUNE_CONTROLS,
               seed=SETTINGS["seed"], cache=cache, pool=pool)
    say("general text")
    general_capability(loaded, mask, control_masks(loaded, mask, PRUNE_CONTROLS), cache=cache)
    say("attribution")
    attribute_task(loaded, builtin_tasks()[SETTINGS["task"]], ATTRIBUTION["target"], ATTRIBUTION["n"],
                   SETTINGS["shots"], SETTINGS["seed"], ATTRIBUTION["steps"], ATTRIBUTION["quadrature"], cache=cache,
                   pool=pool)
    say("task vectors")
    for condition in (None, mask):  # the page's two curves; the Compare page's defaults (antonyms without and
        # with the mask, 4-shot, 40 prompts) are cells of the pruning table above
        task_vectors(loaded, builtin_tasks()[SETTINGS["task"]], SETTINGS["shots"], TASK_VECTORS["n"],
                     TASK_VECTORS["dummies"], seed=SETTINGS["seed"], mask=condition, cache=cache)
    if sweep:
        say("k-sweep")
        k_sweep(loaded, scores, K_GRID, cache=cache, pool=pool)
    return cache
