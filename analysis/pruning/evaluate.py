"""Pruning evaluation: unpruned vs pruned vs random masks of the same size and layer distribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from analysis.cache import ResultsCache
from analysis.evaluation.icl import evaluate_task
from analysis.models.loader import LoadedModel
from analysis.pruning.copying import random_mask_like
from analysis.pruning.mask import NeuronMask
from analysis.tasks.task import Task

METRICS = ("accuracy", "copy_error_rate", "other_error_rate")


@dataclass
class PruneEvalResult:
    """``table``: one row per (task, shots, condition, control seed); ``flipped``: prompts whose prediction
    changed between the unpruned and the pruned model."""

    model: str
    mask_size: int
    table: pd.DataFrame
    flipped: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Per (task, shots): baseline, pruned, and random mean/std of each metric; plus an 'average' task."""
        rows = []
        for (task, shots), group in self.table.groupby(["task", "shots"], sort=False):
            row = {"task": task, "shots": shots, "n": int(group["n"].iloc[0])}
            for condition in ("baseline", "pruned"):
                picked = group[group.condition == condition]
                row.update({f"{condition}_{m}": float(picked[m].iloc[0]) if len(picked) else float("nan")
                            for m in METRICS})
            controls = group[group.condition == "random"]
            for m in METRICS:
                row[f"random_{m}_mean"] = float(controls[m].mean()) if len(controls) else float("nan")
                row[f"random_{m}_std"] = float(controls[m].std(ddof=0)) if len(controls) else float("nan")
            rows.append(row)
        summary = pd.DataFrame(rows)
        averages = summary.drop(columns=["task", "n"]).groupby("shots", sort=False).mean().reset_index()
        averages.insert(0, "task", "average")
        averages.insert(2, "n", summary.groupby("shots", sort=False)["n"].sum().to_numpy())
        return pd.concat([summary, averages], ignore_index=True)

    def to_json(self) -> dict:
        """The CLI's ``prune-eval --json`` object (per task and shots, the average rows included)."""
        results = []
        for row in self.summary().to_dict("records"):
            results.append({
                "task": row["task"], "shots": int(row["shots"]), "n": int(row["n"]),
                "baseline": {"accuracy": row["baseline_accuracy"], "copy_error_rate": row["baseline_copy_error_rate"]},
                "pruned": {"accuracy": row["pruned_accuracy"], "copy_error_rate": row["pruned_copy_error_rate"]},
                "random": {"accuracy_mean": row["random_accuracy_mean"], "accuracy_std": row["random_accuracy_std"],
                           "copy_error_rate_mean": row["random_copy_error_rate_mean"],
                           "copy_error_rate_std": row["random_copy_error_rate_std"]},
            })
        return {"model": self.model, "mask_size": self.mask_size, "results": results}


def prune_eval(loaded: LoadedModel, mask: NeuronMask | None, tasks: Sequence[Task], shots: Sequence[int] = (1, 2, 4),
               n: int = 50, random_controls: int = 3, seed: int = 0, cache: ResultsCache | None = None,
               progress: Callable[[int, int], None] | None = None) -> PruneEvalResult:
    """Evaluate every task at every shot count without the mask, with it, and with ``random_controls``
    random masks (seeds 0..R-1) of the same size and layer distribution; the same prompts throughout.
    ``mask=None`` evaluates the unpruned model only (the pruned and random columns of the summary are NaN)."""
    if mask is not None:
        mask.validate(loaded.adapter.neuron_counts())
    controls = [] if mask is None else [random_mask_like(mask, loaded.adapter.neuron_counts(), s)
                                        for s in range(random_controls)]
    rows, flips = [], []
    done, total = 0, len(tasks) * len(shots) * (1 + (mask is not None) + len(controls))

    def run(task, k, condition, m, control_seed=None):
        nonlocal done
        result = evaluate_task(loaded, task, k, n, seed=seed, mask=m, cache=cache)
        rows.append({"task": task.name, "shots": k, "condition": condition, "control_seed": control_seed,
                     "n": result.n, **{metric: getattr(result, metric) for metric in METRICS}})
        done += 1
        if progress:
            progress(done, total)
        return result

    for task in tasks:
        for k in shots:
            base = run(task, k, "baseline", None)
            if mask is None:
                continue
            pruned = run(task, k, "pruned", mask)
            for control_seed, control in enumerate(controls):
                run(task, k, "random", control, control_seed)
            flips.append(_flipped(task.name, k, base.records, pruned.records))
    flipped = pd.concat(flips, ignore_index=True) if flips else pd.DataFrame()
    return PruneEvalResult(loaded.name, len(mask or ()), pd.DataFrame(rows), flipped)


def _flipped(task: str, shots: int, base: pd.DataFrame, pruned: pd.DataFrame) -> pd.DataFrame:
    changed = base["prediction"] != pruned["prediction"]
    out = pd.DataFrame({"task": task, "shots": shots, "query": base["query"][changed],
                        "gold": base["gold"][changed], "baseline": base["prediction"][changed],
                        "pruned": pruned["prediction"][changed], "baseline_outcome": base["outcome"][changed],
                        "pruned_outcome": pruned["outcome"][changed]})
    out["change"] = [("fixed" if p == "correct" else "broken" if b == "correct" else "changed")
                     for b, p in zip(out.baseline_outcome, out.pruned_outcome)]
    return out.reset_index(drop=True)
