"""Training-free baselines for the copying mask, run as conditions of the same paired evaluation.

The paper compared its pruning with prompting only. Three baselines answer "is it the *copying* neurons, or any
intervention of this size?", "would a plain prompt do?" and "would removing the bias at the output do?":

- ``magnitude``: prune the k neurons with the largest mean |activation| at the answer position on the same
  scoring prompts the copying scores use (the copying task's fit split, the page's scoring settings), as many
  as the mask has. Magnitude pruning is the standard training-free pruning criterion; it needs no gradient.
- ``instruction``: no pruning; every prompt starts with a line that names the task
  (:func:`instruction_task`), the same demonstrations and queries otherwise.
- ``calibration``: no pruning; contextual calibration of the answer's first token (Zhao et al. 2021,
  analysis/evaluation/calibration.py): subtract what the model predicts for a content-free query.

Each is compared with the unpruned model on the very same prompts (analysis/evaluation/paired.py), in one
table beside the mask and the random masks (:meth:`PruneEvalResult.method_table`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from analysis.evaluation.calibration import evaluate_calibrated
from analysis.evaluation.icl import evaluate_task
from analysis.evaluation.paired import AVERAGE, BASELINE, RESAMPLES, compare
from analysis.models.loader import LoadedModel
from analysis.pruning.copying import copying_splits, select_top_k
from analysis.pruning.evaluate import condition_records
from analysis.pruning.mask import NeuronMask
from analysis.tasks.task import Prompt, Task

BASELINES = ("magnitude", "instruction", "calibration")
SCORING_PROMPTS = {"n": 32, "shots": 4, "seed": 0}  # analysis.demo.SCORING's prompts


def check_baselines(names: Sequence[str]) -> list[str]:
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise PrunescopeError(f"unknown baseline {unknown[0]!r}: use {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))


def activation_magnitudes(loaded: LoadedModel, prompts: Sequence[Prompt]) -> torch.Tensor:
    """Mean |activation| of every neuron at each prompt's last position: float64 [layers, neurons]."""
    adapter = loaded.adapter
    totals = [torch.zeros(width, dtype=torch.float64) for width in adapter.neuron_counts()]

    def record(layer: int, activation: torch.Tensor) -> None:
        last = activation.reshape(1, -1, activation.shape[-1])[0, -1]  # one prompt: [positions, neurons]
        totals[layer] += last.detach().abs().double().cpu()

    for prompt in prompts:
        ids = torch.tensor([loaded.tokenizer(prompt.text).input_ids], device=loaded.device)
        with adapter.hook_sites(record), torch.no_grad():  # holds the model's lock
            adapter.base_model(input_ids=ids, use_cache=False)
    # [layers, widest]; a narrower layer is padded with NaN, which select_top_k never picks (attribution/ragged.py)
    out = torch.full((len(totals), max(len(t) for t in totals)), float("nan"), dtype=torch.float64)
    for layer, total in enumerate(totals):
        out[layer, :len(total)] = total / max(len(prompts), 1)
    return out


def magnitude_mask(loaded: LoadedModel, k: int, n: int = SCORING_PROMPTS["n"],
                   shots: int = SCORING_PROMPTS["shots"], seed: int = SCORING_PROMPTS["seed"]) -> NeuronMask:
    """The ``k`` neurons with the largest mean |activation| on the copying task's scoring prompts."""
    fit, _ = copying_splits()
    magnitudes = activation_magnitudes(loaded, fit.sample_prompts(shots, n, seed))
    top = select_top_k(magnitudes.float(), k)
    return NeuronMask.from_pairs(top.neurons, method="magnitude", k=k, n=n, shots=shots, seed=seed)


def instruction_task(task: Task) -> Task:
    """``task`` whose prompts start with one line naming it (from its description, else a generic line)."""
    what = task.description.split(" (")[0] if task.description else "input -> output"
    return dataclasses.replace(task, instruction=f"Task: {what}. Answer the last line the same way.\n")


METHOD_LABELS = {"pruned": "copying mask", "magnitude": "magnitude pruning (same k)",
                 "instruction": "instruction prompt", "calibration": "contextual calibration"}


def evaluate_baselines(loaded: LoadedModel, mask: NeuronMask, tasks: Sequence[Task], shots: Sequence[int], n: int,
                       seed: int, names: Sequence[str], cache: ResultsCache | None = None,
                       progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The baselines' rows of a pruning table (conditions named as in :data:`BASELINES`), on the prompts of
    :func:`analysis.pruning.evaluate.prune_eval` with the same ``n`` and ``seed``."""
    names = check_baselines(names)
    magnitude = magnitude_mask(loaded, len(mask)) if "magnitude" in names else None
    frames, done, total = [], 0, len(tasks) * len(shots) * len(names) * n
    for task in tasks:
        for k in shots:
            for name in names:
                if name == "calibration":
                    result = evaluate_calibrated(loaded, task, k, n, seed=seed, cache=cache)
                else:
                    evaluated = task if name == "magnitude" else instruction_task(task)
                    result = evaluate_task(loaded, evaluated, k, n, seed=seed, mask=magnitude if name == "magnitude"
                                           else None, cache=cache)
                frames.append(condition_records(result, task.name, k, name))
                done += n
                if progress is not None:
                    progress(done, total)
    return pd.concat(frames, ignore_index=True)


def method_table(records: pd.DataFrame, resamples: int = RESAMPLES) -> pd.DataFrame:
    """One row per method (the copying mask and each baseline present) and shot count: the task average's
    paired change vs the unpruned model per outcome class, in points, with its 95 % interval and p."""
    rows = []
    for method, label in METHOD_LABELS.items():
        if method not in set(records["condition"]):
            continue
        part = records[records["condition"].isin([BASELINE, method])]
        for cell in compare(part, resamples=resamples, treatment=method):
            if cell.task != AVERAGE:
                continue
            row: dict = {"method": label, "shots": cell.shots}
            for metric, estimate in cell.vs_baseline.items():
                row.update({f"d_{metric}": estimate.delta, f"d_{metric}_lo": estimate.ci95[0],
                            f"d_{metric}_hi": estimate.ci95[1], f"d_{metric}_p": estimate.p})
            rows.append(row)
    return pd.DataFrame(rows)
