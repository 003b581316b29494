"""Copying neurons (arXiv 2410.01288): score, select the top-k, random controls, and a k-sweep.

**Copying score.** Neuron IG of the ``copy`` target (logit of the copied demonstration answer minus logit
of the gold answer) on N prompts of the copying task's *fit* split. Each prompt's attribution map is
divided by its total absolute attribution over all layers and neurons (so every prompt weighs the same,
whatever its logit scale), then the maps are averaged. A positive score means the neuron pushes the model
toward copying; the top-k scores are the mask.

**Choosing k.** :func:`k_sweep` prunes the top-k for each k of a grid and evaluates the copying task's
*held-out* split and a few ICL dev tasks (with a seed the final evaluation does not use); the chosen k
maximises their mean accuracy among k >= 1 (ties: the smaller k). k = 0, the unpruned model, stays in the
table as the reference: on SmolLM2-135M no k beats it, so choosing it would make every later comparison
of "pruned" against "unpruned" vacuous.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import pandas as pd
import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.attribution.runs import attribute_task
from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from analysis.evaluation.icl import evaluate_task
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask
from analysis.tasks.builtin import builtin_tasks
from analysis.tasks.task import Task

COPYING_TASK = "vowel-count"
DEV_TASKS = ("antonyms", "present-past", "next-letter")
DEV_SEED = 1000
K_GRID = (0, 1, 2, 5, 10, 20, 50, 100, 200)


def copying_splits(seed: int = 0) -> tuple[Task, Task]:
    """(fit, held-out) splits of the copying task: scores come from fit, k is chosen on held-out."""
    return builtin_tasks()[COPYING_TASK].split(heldout_fraction=0.3, seed=seed)


def normalized_copy_scores(result: NeuronIGResult) -> torch.Tensor:
    """Mean over prompts of each prompt's attributions divided by its total absolute attribution: [L, N]."""
    per_prompt = result.per_prompt
    total = per_prompt.abs().sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return (per_prompt / total).mean(dim=0)


def copying_scores(loaded: LoadedModel, n: int = 64, shots: int = 4, seed: int = 0, steps: int = 20,
                   quadrature: str = "riemann", cache: ResultsCache | None = None,
                   progress: Callable[[int, int], None] | None = None, compute_missing: bool = True
                   ) -> tuple[torch.Tensor, NeuronIGResult] | None:
    """(copying scores [L, N], the underlying IG result) from the copying task's fit split (None when
    ``compute_missing`` is False and nothing is cached)."""
    if n < 1:
        raise PrunescopeError(f"need at least one prompt to score copying neurons (got N = {n})")
    fit, _ = copying_splits()
    result = attribute_task(loaded, fit, "copy", n=n, shots=shots, seed=seed, steps=steps, quadrature=quadrature,
                            cache=cache, progress=progress, compute_missing=compute_missing)
    return None if result is None else (normalized_copy_scores(result), result)


def select_top_k(scores: torch.Tensor, k: int, per_layer: bool = False, **meta) -> NeuronMask:
    """The ``k`` highest-scoring neurons overall, or the ``k`` highest in each layer (``per_layer``)."""
    layers, width = scores.shape
    limit = width if per_layer else layers * width
    if not 0 <= k <= limit:
        raise PrunescopeError(f"k={k} is out of range: the model has {limit} neurons "
                              + ("per layer" if per_layer else "in all") + ("" if k >= 0 else "; k must be >= 0"))
    if per_layer:
        index = scores.topk(k, dim=1).indices if k else torch.empty(layers, 0, dtype=torch.long)
        pairs = [(layer, int(i)) for layer in range(layers) for i in index[layer]]
    else:
        flat = scores.flatten().topk(k).indices if k else torch.empty(0, dtype=torch.long)
        pairs = [(int(i) // width, int(i) % width) for i in flat]
    return NeuronMask.from_pairs(pairs, method="copying-ig", k=k, per_layer=per_layer, **meta)


def random_mask_like(mask: NeuronMask, neuron_counts: Sequence[int], seed: int) -> NeuronMask:
    """A control mask with the same number of neurons in each layer, drawn uniformly among the neurons
    ``mask`` leaves alone."""
    rng = random.Random(f"random-control|{seed}")
    pairs = []
    for layer, indices in mask.by_layer().items():
        taken = set(indices)
        pool = [i for i in range(neuron_counts[layer]) if i not in taken]
        pairs += [(layer, i) for i in rng.sample(pool, min(len(indices), len(pool)))]
    return NeuronMask.from_pairs(pairs, method="random-control", seed=seed)


def k_sweep(loaded: LoadedModel, scores: torch.Tensor, ks: Sequence[int] = K_GRID,
            dev_tasks: Sequence[str] = DEV_TASKS, shots: int = 2, n: int = 40, per_layer: bool = False,
            cache: ResultsCache | None = None,
            progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, int]:
    """(one row per (k, task) with accuracy and copy-error rate, the chosen k); see the module docstring."""
    limit = scores.shape[1] if per_layer else scores.numel()
    ks = [k for k in ks if k <= limit]
    tasks = [copying_splits()[1], *(builtin_tasks()[name] for name in dev_tasks)]
    rows, done, total = [], 0, len(ks) * len(tasks)
    for k in ks:
        mask = select_top_k(scores, k, per_layer)
        for task in tasks:
            result = evaluate_task(loaded, task, shots, n, seed=DEV_SEED, mask=mask, cache=cache)
            rows.append({"k": k, "mask_size": len(mask), "task": task.name, "accuracy": result.accuracy,
                         "copy_error_rate": result.copy_error_rate})
            done += 1
            if progress:
                progress(done, total)
    table = pd.DataFrame(rows)
    objective = table[table.k > 0].groupby("k", sort=True)["accuracy"].mean()
    if objective.empty:
        raise PrunescopeError("the k-sweep needs at least one k >= 1")
    best = int(objective.index[objective.to_numpy().argmax()])  # first maximum = smallest k
    return table, best
