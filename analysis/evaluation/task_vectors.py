"""Task vectors (Hendel et al. 2023): is the task compressed into one hidden state?

The task vector at layer L is the residual stream entering block L at the last token of k-shot prompts,
averaged over a few prompts. It is patched into the zero-shot prompt ``"{x} ->"`` at the same layer and
position (prefill only), and the patched model answers greedily. Accuracy per layer, the best layer, and
as references the zero-shot (unpatched) and the k-shot ICL accuracy, all optionally under a NeuronMask.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch

from analysis.cache import ResultsCache, task_fingerprint
from analysis.evaluation.icl import classify, evaluate_task, generate_answers
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask
from analysis.tasks.task import Task


@dataclass
class TaskVectorResult:
    task: str
    shots: int
    n: int
    table: pd.DataFrame  # layer, accuracy
    icl_accuracy: float
    zero_shot_accuracy: float
    masked: bool

    @property
    def best_layer(self) -> int:
        return int(self.table.loc[self.table.accuracy.idxmax(), "layer"])

    @property
    def best_accuracy(self) -> float:
        return float(self.table.accuracy.max())


TASK_VECTOR_VERSION = "task-vectors/1"


def task_vectors(loaded: LoadedModel, task: Task, shots: int = 4, n: int = 40, vector_prompts: int = 8,
                 seed: int = 0, mask: NeuronMask | None = None, batch_size: int = 16,
                 progress: Callable[[int, int], None] | None = None,
                 cache: ResultsCache | None = None) -> TaskVectorResult:
    """Patched zero-shot accuracy at every layer (see the module docstring); read from ``cache`` when the same
    weights, task, settings and mask were run before."""
    if cache is None:
        return _task_vector_run(loaded, task, shots, n, vector_prompts, seed, mask, batch_size, progress)
    parts = {"model": loaded.fingerprint(), "task": task_fingerprint(task), "shots": shots, "n": n,
             "vector_prompts": vector_prompts, "seed": seed, "mask": sorted(mask.neurons) if mask else []}
    result, hit = cache.get_or_compute("task-vectors", TASK_VECTOR_VERSION, parts, lambda: _task_vector_run(
        loaded, task, shots, n, vector_prompts, seed, mask, batch_size, progress))
    if hit and progress:
        progress(loaded.n_layers, loaded.n_layers)
    result.task = task.name
    return result


def _task_vector_run(loaded, task, shots, n, vector_prompts, seed, mask, batch_size, progress) -> TaskVectorResult:
    adapter = loaded.adapter
    queries = task.sample_prompts(0, n, seed)
    vectors = _task_vectors(loaded, task.sample_prompts(shots, vector_prompts, seed + 1), mask)
    rows = []
    for layer in range(adapter.n_layers):
        answers = generate_answers(loaded, queries, task, mask=mask, batch_size=batch_size,
                                   intervention=lambda layer=layer: _patched(loaded, layer, vectors[layer]))
        rows.append({"layer": layer, "accuracy": _accuracy(task, queries, answers)})
        if progress:
            progress(layer + 1, adapter.n_layers)
    zero_shot = _accuracy(task, queries, generate_answers(loaded, queries, task, mask=mask, batch_size=batch_size))
    icl = evaluate_task(loaded, task, shots, n, seed=seed, mask=mask, batch_size=batch_size).accuracy
    return TaskVectorResult(task.name, shots, n, pd.DataFrame(rows), icl, zero_shot, bool(mask))


def _task_vectors(loaded: LoadedModel, prompts, mask: NeuronMask | None) -> torch.Tensor:
    """[layers, H]: mean last-token input of every block over ``prompts``."""
    total = None
    captured: dict[int, torch.Tensor] = {}
    with loaded.session(mask), torch.no_grad(), \
            loaded.adapter.hook_block_inputs(lambda layer, h: captured.__setitem__(layer, h[0, -1].float())):
        for prompt in prompts:
            ids = torch.tensor([loaded.tokenizer(prompt.text).input_ids], device=loaded.device)
            loaded.adapter.base_model(input_ids=ids, use_cache=False)
            stacked = torch.stack([captured[layer] for layer in range(loaded.n_layers)])
            total = stacked if total is None else total + stacked
    return total / len(prompts)


@contextmanager
def _patched(loaded: LoadedModel, layer: int, vector: torch.Tensor):
    """Replace block ``layer``'s input at the last position during prefill (not during decoding)."""

    def patch(_: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if hidden.shape[1] < 2:
            return None
        hidden = hidden.clone()
        hidden[:, -1] = vector.to(hidden.dtype)
        return hidden

    with loaded.adapter.hook_block_inputs(patch, layers=[layer]):
        yield


def _accuracy(task: Task, prompts, answers) -> float:
    outcomes = [classify(a, p.gold, (), task.case_sensitive) for p, a in zip(prompts, answers)]
    return sum(o == "correct" for o in outcomes) / len(outcomes)
