"""Confidence neurons (arXiv 2507.09185): the neurons that drive a dataset's high-confidence predictions.

Prompts of a task whose top next-token probability at the answer position is at least ``min_prob`` are
the *confidently answered* examples. Neuron IG of the ``confidence`` target (the logit of that top token)
is averaged over them; the top ``percent`` % of one chosen layer's neurons form the mask, which is then
evaluated on other tasks (:func:`analysis.pruning.evaluate.prune_eval`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from analysis.attribution.neuron_ig import neuron_ig
from analysis.attribution.targets import clean_logits, prepare_inputs
from analysis.cache import ResultsCache, task_fingerprint
from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask
from analysis.tasks.task import Task

CONFIDENCE_VERSION = "confidence-ig/1"


@dataclass
class ConfidenceNeurons:
    mask: NeuronMask
    layer_scores: torch.Tensor  # [neurons] mean confidence IG in the chosen layer
    scores: torch.Tensor  # [layers, neurons] over all layers
    n_confident: int
    n_prompts: int


def confidence_scores(loaded: LoadedModel, task: Task, n: int = 64, shots: int = 4, seed: int = 0,
                      steps: int = 4, quadrature: str = "adaptive", min_prob: float = 0.5,
                      cache: ResultsCache | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, int]:
    """(mean confidence-target IG [layers, neurons] over the confidently answered prompts, their count)."""

    def compute() -> tuple[torch.Tensor, int]:
        items = prepare_inputs(loaded, task.sample_prompts(shots, n, seed), "confidence")
        confident = [item for item in items if _top_prob(loaded, item.input_ids) >= min_prob]
        if not confident:
            raise PrunescopeError(f"no prompt of task {task.name!r} is answered with probability >= {min_prob}; "
                                  "lower the threshold")
        return neuron_ig(loaded, confident, steps=steps, quadrature=quadrature, progress=progress).scores, \
            len(confident)

    if cache is None:
        return compute()
    parts = {"model": loaded.fingerprint(), "task": task_fingerprint(task), "n": n, "shots": shots, "seed": seed,
             "steps": steps, "quadrature": quadrature, "min_prob": min_prob}
    return cache.get_or_compute("confidence-ig", CONFIDENCE_VERSION, parts, compute)[0]


def confidence_neurons(loaded: LoadedModel, task: Task, layer: int, percent: float, **kwargs) -> ConfidenceNeurons:
    """The top ``percent`` % of ``layer``'s neurons by confidence attribution (``kwargs``: see
    :func:`confidence_scores`)."""
    if not 0 <= layer < loaded.n_layers:
        raise PrunescopeError(f"layer {layer} does not exist (the model has {loaded.n_layers})")
    if not 0 < percent <= 100:
        raise PrunescopeError(f"percent must be in (0, 100] (got {percent})")
    scores, n_confident = confidence_scores(loaded, task, **kwargs)
    width = loaded.adapter.neuron_counts()[layer]  # scores beyond it: NaN padding of a narrower layer
    count = max(1, math.ceil(width * percent / 100))
    top = scores[layer, :width].topk(count).indices.tolist()
    mask = NeuronMask.from_pairs([(layer, i) for i in top], method="confidence-ig", task=task.name, layer=layer,
                                 percent=percent)
    return ConfidenceNeurons(mask, scores[layer, :width], scores, n_confident, kwargs.get("n", 64))


def _top_prob(loaded: LoadedModel, ids) -> float:
    return float(torch.softmax(clean_logits(loaded, list(ids)).float(), dim=-1).max())
