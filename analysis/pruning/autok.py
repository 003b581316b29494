"""Choosing k for the copying-neuron mask: a held-out sweep with paired intervals, where "none" is an answer.

For each k of a grid the top-k copying neurons are pruned and the *held-out* split of the copying task plus
a few ICL dev tasks are evaluated (a seed the final evaluation does not use), on the same prompts as the
unpruned model (k = 0). Every k is then compared with k = 0, paired by prompt (analysis/evaluation/paired.py:
cluster bootstrap over queries, stratified by task).

**Objective.** The accuracy gain over the unpruned model, averaged over the sweep's tasks, with copy errors
not rising (their change's point estimate <= 0). A k qualifies only when its accuracy gain is above zero
beyond noise: the lower end of its interval at the simultaneous level 1 - 0.05 / m (Bonferroni over the m
candidates, since the best of m noisy gains beats zero by chance) is above 0. Among the qualifying k the
largest mean gain wins (ties: the smaller k). When none qualifies the sweep chooses k = 0 and says so: the
tool never picks a mask that changes nothing measurable and calls it a result.

**Resolution.** The report states how wide the intervals are at this n and whether the chosen k can be told
apart from the runner-up; when they cannot, more prompts (``n``) are needed to separate them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from analysis.evaluation.icl import Evaluation
from analysis.evaluation.paired import AVERAGE, LEVEL, compare
from analysis.evaluation.verdicts import signed_points
from analysis.models.loader import LoadedModel
from analysis.pruning.copying import copying_splits, select_top_k
from analysis.runner import Runner
from analysis.tasks.builtin import builtin_tasks

DEV_TASKS = ("antonyms", "present-past", "next-letter")
# the echo target's default: the built-in tasks (outside the README's evaluation tasks) on which both real
# models echo the query most at the sweep's 2 shots (40 prompts each: prev-letter 42 % / 28 % of answers on
# SmolLM2 / Gemma 3, antonyms 17 / 30, english-spanish 23 / 20; next-letter 30 / 7, to-lower 33 / 5)
ECHO_DEV_TASKS = ("prev-letter", "antonyms", "english-spanish")
DEV_SEED = 1000
K_GRID = (0, 1, 2, 5, 10, 20, 50, 100, 200)
SWEEP_N = 80  # prompts per task and k: intervals of about +-7 points on one task, +-4 over four


def default_dev_tasks(target: str) -> tuple[str, ...]:
    """The sweep's dev tasks for a scoring target: echo-heavy ones for ``echo``, else :data:`DEV_TASKS`."""
    return ECHO_DEV_TASKS if target == "echo" else DEV_TASKS


@dataclass
class KSweep:
    """``table``: one row per (k, task) and the average, with each metric and, for k > 0, its paired change
    against k = 0 (``d_<metric>``, 95 % ``_lo``/``_hi``, and ``d_accuracy_adj_lo``: the lower end at the
    simultaneous level). ``chosen``: the k to prune (0: none beats the unpruned model). ``message``: what
    the sweep found, in words."""

    table: pd.DataFrame
    chosen: int
    message: str
    n: int
    shots: int

    def averages(self) -> pd.DataFrame:
        return self.table[self.table.task == AVERAGE].reset_index(drop=True)


def k_sweep(loaded: LoadedModel, scores: torch.Tensor, ks: Sequence[int] = K_GRID,
            dev_tasks: Sequence[str] = DEV_TASKS, shots: int = 2, n: int = SWEEP_N, per_layer: bool = False,
            layers: tuple[int, int] | None = None, cache: ResultsCache | None = None,
            progress: Callable[[int, int], None] | None = None, resamples: int = 4000,
            pool: Runner | None = None) -> KSweep:
    """Evaluate each k of ``ks`` against the unpruned model and choose one, or none (module docstring).

    Args:
        loaded: the model.
        scores: [layers, neurons] neuron scores; the top k of them are pruned for each k.
        ks: the candidate k (0, the unpruned model, is always added).
        dev_tasks: built-in tasks to choose on, beside the copying task's held-out split
            (:func:`default_dev_tasks`).
        shots, n: demonstrations and prompts per task and k.
        per_layer, layers: selection as in :func:`analysis.select_top_k`.
        cache: a :class:`ResultsCache` for every evaluation; progress: ``progress(done, total)`` in prompts.
        resamples: bootstrap resamples of each interval; pool: run the evaluations on Ray actors.

    Returns:
        A :class:`KSweep`: the table of every k's paired changes, the chosen k (0: none beats the unpruned
        model beyond noise) and a sentence that says why.

    Raises:
        PrunescopeError: no candidate k within the model's neurons, an unknown dev task.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> scores = ps.attribute_task(model, ps.get_task("antonyms"), "gold", n=2, shots=2).scores
        >>> sweep = ps.k_sweep(model, scores, ks=(5,), dev_tasks=("antonyms",), n=4, resamples=200)
        >>> sweep.chosen in (0, 5), sorted(set(sweep.table.k))
        (True, [0, 5])
    """
    window = scores if layers is None else scores[layers[0]:layers[1] + 1]
    counts = (~window.isnan()).sum(dim=1).tolist()  # the neurons each layer has (NaN: a narrower layer's padding)
    limit = (min(counts) if per_layer else sum(counts)) if counts else scores.numel()  # bad range: select_top_k says
    ks = sorted({0, *(k for k in ks if k <= limit)})
    if len(ks) < 2:
        raise PrunescopeError("the k-sweep needs at least one k >= 1 within the model's neurons")
    tasks = [copying_splits()[1], *(builtin_tasks()[name] for name in dev_tasks)]
    masks = {k: select_top_k(scores, k, per_layer, layers) for k in ks}
    requests = [Evaluation(task, shots, n, DEV_SEED, masks[k] if k else None) for k in ks for task in tasks]
    total = len(requests) * n
    if pool is None:  # progress in prompts over the whole sweep, after every batch (where a Cancel stops it)
        results, done = [], 0
        for request in requests:
            step = None if progress is None else (lambda d, _t, start=done: progress(start + d, total))
            results.append(request.run(loaded, cache, step))
            done += n
    else:
        from analysis.pruning.evaluate import evaluate_distributed

        results = evaluate_distributed(loaded, pool, requests, cache,
                                       None if progress is None else (lambda d: progress(d * n, total)))
    frames = []
    for request, k, result in zip(requests, [k for k in ks for _ in tasks], results):
        rec = result.records
        frames.append(pd.DataFrame({"task": request.task.name, "shots": shots, "prompt_index": rec["prompt_index"],
                                    "query": rec["query"], "condition": f"k={k}", "outcome": rec["outcome"],
                                    "k": k, "mask_size": len(masks[k])}))
    records = pd.concat(frames, ignore_index=True)
    table = _sweep_table(records, ks, resamples)
    chosen, message = choose_k(table, n)
    return KSweep(table, chosen, message, n, shots)


def _sweep_table(records: pd.DataFrame, ks: list[int], resamples: int) -> pd.DataFrame:
    candidates = [k for k in ks if k > 0]
    adjusted = 1 - (1 - LEVEL) / len(candidates)
    rows = []
    for k in ks:
        pair = records[records.condition.isin(["k=0", f"k={k}"])]
        treatment = f"k={k}" if k else "none"  # k = 0 is the reference: its rates only
        cells = compare(pair, resamples=resamples, treatment=treatment, baseline="k=0")
        strict = {c.task: c for c in compare(pair, resamples=resamples, level=adjusted, treatment=f"k={k}",
                                             baseline="k=0")} if k else {}
        mask_size = int(records.loc[records.k == k, "mask_size"].iloc[0])
        for cell in cells:
            row = {"k": k, "mask_size": mask_size, "task": cell.task, "n": cell.n}
            for metric, rate in cell.rates["pruned" if k else "baseline"].items():
                row[metric] = rate.value
            for metric, est in cell.vs_baseline.items():
                row.update({f"d_{metric}": est.delta, f"d_{metric}_lo": est.ci95[0], f"d_{metric}_hi": est.ci95[1],
                            f"d_{metric}_p": est.p})
            if k:
                row["d_accuracy_adj_lo"] = strict[cell.task].vs_baseline["accuracy"].ci95[0]
            rows.append(row)
    return pd.DataFrame(rows)


def choose_k(table: pd.DataFrame, n: int) -> tuple[int, str]:
    """(chosen k, the sentence that explains it) from a sweep table (module docstring)."""
    avg = table[(table.task == AVERAGE) & (table.k > 0)].sort_values("k")
    qualifying = avg[(avg.d_accuracy_adj_lo > 0) & (avg.d_copy_error_rate <= 0)]
    best_guess = avg.loc[avg.d_accuracy.idxmax()]
    half_width = float(((avg.d_accuracy_hi - avg.d_accuracy_lo) / 2).median())
    resolution = (f"with {n} prompts per task the accuracy intervals are about ±{100 * half_width:.1f} points "
                  "wide; smaller effects cannot be seen")
    if qualifying.empty:
        return 0, (f"No k beats the unpruned model beyond noise, so no neurons are selected. The best, k="
                   f"{int(best_guess.k)}, changes accuracy by {signed_points(best_guess.d_accuracy)} points "
                   f"(95 % CI {signed_points(best_guess.d_accuracy_lo)} to {signed_points(best_guess.d_accuracy_hi)}) "
                   f"and copy errors by {signed_points(best_guess.d_copy_error_rate)}; {resolution}.")
    best = qualifying.loc[qualifying.d_accuracy.idxmax()]
    others = avg[avg.k != best.k]
    runner = others.loc[others.d_accuracy.idxmax()] if len(others) else None
    separated = runner is None or runner.d_accuracy_hi < best.d_accuracy_lo
    versus = "" if runner is None else (
        f" It is {'clearly ahead of' if separated else 'not separable from'} the runner-up k={int(runner.k)} "
        f"({signed_points(runner.d_accuracy)} points, CI {signed_points(runner.d_accuracy_lo)} to "
        f"{signed_points(runner.d_accuracy_hi)}).")
    return int(best.k), (f"k={int(best.k)} gains {signed_points(best.d_accuracy)} accuracy points over the "
                         f"unpruned model (95 % CI {signed_points(best.d_accuracy_lo)} to "
                         f"{signed_points(best.d_accuracy_hi)}; "
                         f"above zero at the Bonferroni level over {len(avg)} candidates) with copy errors "
                         f"{signed_points(best.d_copy_error_rate)} points.{versus} ({resolution}.)")
