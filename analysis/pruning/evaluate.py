"""Pruning evaluation: unpruned vs pruned vs random masks of the same size and layer distribution, on the same
prompts, with paired intervals and tests (analysis/evaluation/paired.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import pandas as pd

from analysis.bounds import check
from analysis.cache import ResultsCache
from analysis.evaluation.conditions import evaluate_conditions
from analysis.evaluation.icl import EvalResult, Evaluation, evaluate_task, is_evaluated
from analysis.evaluation.paired import (
    AVERAGE,
    BASELINE,
    COMPARED,
    PRUNED,
    RANDOM_PREFIX,
    RESAMPLES,
    Cell,
    compare,
)
from analysis.evaluation.verdicts import describe_change, excludes_zero, verdict
from analysis.export import safe_csv
from analysis.models.loader import LoadedModel
from analysis.pruning.copying import random_mask_like
from analysis.pruning.mask import NeuronMask
from analysis.requests import model_key
from analysis.runner import Runner
from analysis.tasks.task import Task

# the --records columns: enough to audit every outcome label (the gold answer and the demonstrations' outputs,
# a JSON list, beside the answer) and to run any other paired test
RECORD_COLUMNS = ["task", "shots", "prompt_index", "query", "condition", "answer", "outcome", "gold",
                  "demonstrations"]
GROUPS = (BASELINE, PRUNED, "random")  # the random group is the mean over the controls
GROUPS_OF_TASKS = ("copy-required tasks", "other tasks")  # group averages, when both kinds of task were run


@dataclass
class PruneEvalResult:
    """``records``: one row per prompt and condition (``RECORD_COLUMNS``), conditions
    ``baseline``, ``pruned`` and ``random-<seed>``; ``flipped``: prompts whose answer changed between the
    unpruned and the pruned model. Rates, intervals and tests are computed once, on first use."""

    model: str
    mask_size: int
    records: pd.DataFrame
    flipped: pd.DataFrame
    resamples: int = RESAMPLES
    copy_required: tuple[str, ...] = ()  # the tasks whose right answer is a copy (Task.requires_copying)
    _cells: list[Cell] | None = field(default=None, repr=False)

    @property
    def cells(self) -> list[Cell]:
        """Per (task, shots) and the average per shot count: rates with intervals and both comparisons; where
        tasks that require copying were run beside others, also each group's average (``GROUPS_OF_TASKS``)."""
        if self._cells is None:
            self._cells = compare(self.records, resamples=self.resamples)
            self._cells += self._group_cells()
        return self._cells

    def _group_cells(self) -> list[Cell]:
        tasks = list(dict.fromkeys(self.records["task"]))
        required = [t for t in tasks if t in self.copy_required]
        others = [t for t in tasks if t not in self.copy_required]
        if not (required and others):
            return []
        cells = []
        for label, members in zip(GROUPS_OF_TASKS, (required, others)):
            part = compare(self.records[self.records["task"].isin(members)], resamples=self.resamples)
            cells += [replace(cell, task=label) for cell in part if cell.task == AVERAGE]
        return cells

    def ordered_cells(self) -> list[Cell]:
        """Cells task by task (in the order run), each task's shot counts in order, then the group averages,
        the averages last."""
        order = [*dict.fromkeys(self.records["task"]), *GROUPS_OF_TASKS, AVERAGE]
        return sorted(self.cells, key=lambda c: (order.index(c.task), c.shots))

    def copy_required_note(self, shots: int | None = None) -> str:
        """A sentence on the tasks that require copying, when they were run beside others: accuracy there
        should not rise when a mask removes copying (a rise questions what the neurons do)."""
        groups = [c for c in self.cells if c.task == GROUPS_OF_TASKS[0] and (shots is None or c.shots == shots)]
        if not groups:
            return ""
        change = groups[0].vs_baseline.get("accuracy")
        if change is None:
            return ""
        named = ", ".join(t for t in dict.fromkeys(self.records["task"]) if t in self.copy_required)
        text = f"On the tasks that require copying ({named}), {describe_change('accuracy', change)}"
        if excludes_zero(change.ci95) and change.delta > 0:
            return (text + ": a mask that removes copying should not help where the answer is a copy, so these "
                    "neurons do more than copy.")
        return text + "."

    @property
    def controls(self) -> list[str]:
        return sorted({c for c in self.records["condition"] if c.startswith(RANDOM_PREFIX)},
                      key=lambda c: int(c[len(RANDOM_PREFIX):]))

    def cell(self, task: str = AVERAGE, shots: int | None = None) -> Cell:
        """The cell of ``task`` (default: the average) at ``shots`` (default: the first shot count)."""
        matches = [c for c in self.cells if c.task == task and (shots is None or c.shots == shots)]
        if not matches:
            raise KeyError(f"no results for task {task!r} at {shots} shots")
        return matches[0]

    def summary(self) -> pd.DataFrame:
        """One row per (task, shots), the averages last: each group's rates with 95 % intervals
        (``<group>_<metric>``, ``_lo``, ``_hi``), the controls' spread (``random_<metric>_min``/``_max`` over
        seeds), and the paired changes ``d_<metric>_vs_baseline`` / ``_vs_random`` with ``_lo``, ``_hi``, ``_p``,
        ``_p_holm`` (tasks); ``queries``: distinct queries; the averages' ``heterogeneity_<metric>_p``.
        Groups that were not run are left out."""
        rows = []
        for cell in self.ordered_cells():
            row = {"task": cell.task, "shots": cell.shots, "n": cell.n, "queries": cell.queries}
            for group in GROUPS:
                for metric, rate in cell.rates.get(group, {}).items():
                    row.update({f"{group}_{metric}": rate.value, f"{group}_{metric}_lo": rate.ci95[0],
                                f"{group}_{metric}_hi": rate.ci95[1]})
            if cell.control_rates:
                for metric in COMPARED:
                    values = [rates[metric] for rates in cell.control_rates.values()]
                    row.update({f"random_{metric}_min": min(values), f"random_{metric}_max": max(values)})
            for against, estimates in (("baseline", cell.vs_baseline), ("random", cell.vs_random)):
                for metric, est in estimates.items():
                    name = f"d_{metric}_vs_{against}"
                    row.update({name: est.delta, f"{name}_lo": est.ci95[0], f"{name}_hi": est.ci95[1],
                                f"{name}_p": est.p, f"{name}_p_holm": est.p_holm})
            for metric, p in cell.heterogeneity.items():
                row[f"heterogeneity_{metric}_p"] = p
            for metric, p in cell.heterogeneity_random.items():
                row[f"heterogeneity_vs_random_{metric}_p"] = p
            rows.append(row)
        return pd.DataFrame(rows)

    def verdicts(self, task: str = AVERAGE, shots: int | None = None) -> dict[str, str]:
        """The plain sentences for pruned vs the unpruned model and vs the random controls (empty when that
        comparison was not run); the average's name the tasks where they disagree (analysis/evaluation/verdicts.py)
        and, under ``copy-required``, what happened on the tasks that require copying."""
        cell = self.cell(task, shots)
        tasks = [c for c in self.cells if c.shots == cell.shots and c.task != AVERAGE] if task == AVERAGE else []
        sentences = {}
        for against, estimates in (("baseline", cell.vs_baseline), ("random", cell.vs_random)):
            if estimates:
                by_task = {c.task: getattr(c, f"vs_{against}") for c in tasks}
                sentences[against] = verdict(estimates, against, by_task=by_task,
                                             heterogeneity=getattr(cell, "heterogeneity" if against == "baseline"
                                                                   else "heterogeneity_random"))
        note = self.copy_required_note(cell.shots) if task == AVERAGE else ""
        if note:
            sentences["copy-required"] = note
        return sentences

    def to_json(self) -> dict:
        """The CLI's ``prune-eval --json`` object: per task and shots (the averages included) each group's
        rates, the controls' rates per seed, and ``pruned_vs_baseline`` / ``pruned_vs_random`` as
        ``{metric: {"delta", "ci95", "p", "p_holm"}}`` with the verdict sentences; ``queries``: the distinct queries
        (the unit of the intervals and tests); the averages' ``heterogeneity``: metric -> p of Cochran's Q."""
        results = []
        for cell in self.ordered_cells():
            entry = {"task": cell.task, "shots": cell.shots, "n": cell.n, "queries": cell.queries}
            if cell.heterogeneity:
                entry["heterogeneity"] = cell.heterogeneity
            if cell.heterogeneity_random:
                entry["heterogeneity_vs_random"] = cell.heterogeneity_random
            for group in GROUPS:
                if group in cell.rates:
                    entry[group] = {m: {"rate": r.value, "ci95": list(r.ci95)} for m, r in cell.rates[group].items()}
            if cell.control_rates:
                entry["random_per_seed"] = cell.control_rates
            if cell.vs_baseline:
                entry["pruned_vs_baseline"] = {m: e.to_json() for m, e in cell.vs_baseline.items()}
            if cell.vs_random:
                entry["pruned_vs_random"] = {m: e.to_json() for m, e in cell.vs_random.items()}
            entry["verdict"] = self.verdicts(cell.task, cell.shots)
            results.append(entry)
        return {"model": self.model, "mask_size": self.mask_size, "random_controls": len(self.controls),
                "results": results}

    def records_csv(self) -> str:
        """The ``--records`` CSV: one row per prompt and condition (formula-like text cells defused)."""
        return safe_csv(self.records[RECORD_COLUMNS])


def prune_eval(loaded: LoadedModel, mask: NeuronMask | None, tasks: Sequence[Task], shots: Sequence[int] = (1, 2, 4),
               n: int = 50, random_controls: int = 5, seed: int = 0, cache: ResultsCache | None = None,
               progress: Callable[[int, int], None] | None = None, resamples: int = RESAMPLES,
               pool: Runner | None = None, one_batch: bool = True) -> PruneEvalResult:
    """The mask against the unpruned model and random masks, paired by prompt, with 95 % intervals.

    Every task at every shot count runs without the mask, with it, and with ``random_controls`` random masks
    (seeds 0..R-1) of the same size and layer distribution, on the same prompts throughout.

    Args:
        loaded: the model.
        mask: the neurons to prune; None evaluates the unpruned model only (no comparisons).
        tasks: the tasks (built-in, held-out splits, uploaded).
        shots: the shot counts; n: prompts per task and shot count; seed: which prompts.
        random_controls: random masks of the same size (0 to skip the random comparison).
        cache: read repeated evaluations from it and store new ones; progress: ``progress(done, total)`` in
            prompts, after every batch (it may raise to stop the run).
        resamples: bootstrap resamples of every interval.
        pool: a :class:`analysis.runner.Runner` (Ray's :class:`analysis.distributed.ModelPool`): the
            evaluations not in ``cache`` run on its actors, one each.
        one_batch: the conditions of a task and shot count not in ``cache`` run as rows of one batch, each row
            with its own mask (:func:`analysis.evaluation.conditions.evaluate_conditions`: the same results,
            fewer forwards); False: one pass per condition.

    Returns:
        :class:`PruneEvalResult`: per-prompt records of every condition, per-task and average cells with
        rates, paired changes, intervals and p-values (:meth:`PruneEvalResult.summary`), and verdict sentences
        (:meth:`PruneEvalResult.verdicts`).

    Raises:
        PrunescopeError: no tasks or shots, out-of-range settings, a mask outside the model.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> mask = ps.NeuronMask.from_pairs([(0, i) for i in range(50)])
        >>> result = ps.prune_eval(model, mask, [ps.get_task("to-upper")], shots=[2], n=8, random_controls=2)
        >>> list(result.verdicts(shots=2))
        ['baseline', 'random']
    """
    plan = prune_eval_plan(loaded, mask, tasks, shots, random_controls)
    conditions = list(dict.fromkeys((run.condition, run.mask) for run in plan))
    jobs = [(run.task, run.shots, run.condition, run.mask) for run in plan]
    # progress in prompts, over the whole job (total known up front, never going back), reported after every
    # batch: in the app each report is also where a Cancel stops the run, so it stops within one batch
    done, total = 0, len(jobs) * n
    results: list[EvalResult] = []
    if pool is None and one_batch:
        for task in tasks:
            for k in shots:
                step = None if progress is None else (lambda d, _t, start=done: progress(start + d, total))
                results += evaluate_conditions(loaded, task, k, n, [m for _, m in conditions], seed=seed,
                                               cache=cache, progress=step)
                done += len(conditions) * n
    elif pool is None:
        for task, k, _, m in jobs:
            step = None if progress is None else (lambda d, _t, start=done: progress(start + d, total))
            results.append(evaluate_task(loaded, task, k, n, seed=seed, mask=m, cache=cache, progress=step))
            done += n
            if progress:
                progress(done, total)
    else:
        results = evaluate_distributed(loaded, pool, [Evaluation(task, k, n, seed, m) for task, k, _, m in jobs], cache,
                                       None if progress is None else (lambda d: progress(d * n, total)))
    frames = [condition_records(result, task.name, k, condition)
              for (task, k, condition, _), result in zip(jobs, results)]
    by_job = {(task.name, k, condition): result for (task, k, condition, _), result in zip(jobs, results)}
    flips = [flipped_examples(task.name, k, by_job[(task.name, k, BASELINE)].records,
                              by_job[(task.name, k, PRUNED)].records)
             for task in tasks for k in shots] if mask is not None else []
    flipped = pd.concat(flips, ignore_index=True) if flips else pd.DataFrame()
    return PruneEvalResult(loaded.name, len(mask or ()), pd.concat(frames, ignore_index=True), flipped,
                           resamples=resamples, copy_required=tuple(t.name for t in tasks if t.requires_copying))


@dataclass(frozen=True)
class PlannedEvaluation:
    """One evaluation of a pruning run: ``task`` at ``shots`` under the named ``condition`` (``mask``)."""

    task: Task
    shots: int
    condition: str
    mask: NeuronMask | None


def prune_eval_plan(loaded: LoadedModel, mask: NeuronMask | None, tasks: Sequence[Task], shots: Sequence[int],
                    random_controls: int) -> list[PlannedEvaluation]:
    """Every evaluation :func:`prune_eval` runs, in its order (per task and shot count: unpruned, pruned, the
    random controls); pages count what is not cached from it instead of rebuilding the grid."""
    check("controls", random_controls)
    if mask is not None:
        mask.validate(loaded.adapter.neuron_counts())
    controls = [] if mask is None else control_masks(loaded, mask, random_controls)
    conditions = [(BASELINE, None)] + ([] if mask is None else [(PRUNED, mask)] + [
        (f"{RANDOM_PREFIX}{control_seed}", control) for control_seed, control in enumerate(controls)])
    return [PlannedEvaluation(task, k, name, m) for task in tasks for k in shots for name, m in conditions]


@dataclass(frozen=True)
class PruneEval:
    """A pruning comparison (:func:`prune_eval`) as a request: the key a page or job knows it by, its plan of
    evaluations, what of it is not cached, its work in prompts. Not stored as a whole: its evaluations are."""

    mask: NeuronMask | None
    tasks: tuple[Task, ...]
    shots: tuple[int, ...]
    n: int
    random_controls: int
    seed: int = 0

    unit: ClassVar[str] = "prompts"

    def key(self, loaded: LoadedModel) -> tuple:
        return model_key(loaded, "prune-eval", self)

    def plan(self, loaded: LoadedModel) -> list[PlannedEvaluation]:
        return prune_eval_plan(loaded, self.mask, self.tasks, self.shots, self.random_controls)

    def uncached(self, loaded: LoadedModel, cache: ResultsCache) -> dict[str, int]:
        """Prompts not in ``cache``, per condition name (``baseline``, ``pruned``, ``random-<seed>``)."""
        return uncached_prompts(loaded, self.plan(loaded), self.n, self.seed, cache)

    def work(self, loaded: LoadedModel) -> int:
        return len(self.plan(loaded)) * self.n

    def run(self, loaded: LoadedModel, cache: ResultsCache | None = None,
            progress: Callable[[int, int], None] | None = None, pool: Runner | None = None) -> PruneEvalResult:
        return prune_eval(loaded, self.mask, self.tasks, self.shots, self.n, self.random_controls, self.seed,
                          cache=cache, progress=progress, pool=pool)


def uncached_prompts(loaded: LoadedModel, plan: Sequence[PlannedEvaluation], n: int, seed: int,
                     cache: ResultsCache) -> dict[str, int]:
    """Prompts of ``plan`` (``n`` per evaluation) that ``cache`` does not hold, per condition name."""
    missing: dict[str, int] = {}
    for run in plan:
        if not is_evaluated(loaded, run.task, run.shots, n, seed, run.mask, cache):
            missing[run.condition] = missing.get(run.condition, 0) + n
    return missing


def control_masks(loaded: LoadedModel, mask: NeuronMask, count: int) -> list[NeuronMask]:
    """The random controls of a pruning run: ``count`` masks like ``mask`` (seeds 0..count-1)."""
    return [random_mask_like(mask, loaded.adapter.neuron_counts(), seed) for seed in range(count)]


def evaluate_distributed(loaded: LoadedModel, pool: Runner, requests: Sequence[Evaluation],
                         cache: ResultsCache | None, progress: Callable[[int], None] | None = None
                         ) -> list[EvalResult]:
    """EvalResults for ``requests``: cached ones read here, the rest on the pool's actors, then stored under
    the keys a serial run uses (so a later serial run, or the app, reads them)."""
    results: list[EvalResult | None] = [None] * len(requests)
    missing = []
    for i, request in enumerate(requests):
        if cache is not None and request.is_stored(loaded, cache):
            results[i] = request.run(loaded, cache)
        else:
            missing.append(i)
    cached = len(requests) - len(missing)

    def step(finished: int, _total: int) -> None:
        if progress:
            progress(cached + finished)

    for i, result in zip(missing, pool.evaluate([requests[i] for i in missing], step)):
        if cache is not None:
            requests[i].store(loaded, cache, result)
        results[i] = requests[i].received(loaded, result)
    done = [result for result in results if result is not None]
    assert len(done) == len(results), "every request was read from the cache or evaluated on the pool"
    return done


def condition_records(result: EvalResult, task: str, shots: int, condition: str) -> pd.DataFrame:
    """One evaluation's rows of a pruning table (``RECORD_COLUMNS``), labelled ``condition``."""
    rec = result.records
    return pd.DataFrame({"task": task, "shots": shots, "prompt_index": rec["prompt_index"], "query": rec["query"],
                         "condition": condition, "answer": rec["prediction"], "outcome": rec["outcome"],
                         "gold": rec["gold"],
                         "demonstrations": [json.dumps(list(d), ensure_ascii=False) for d in rec["demo_outputs"]]})


def flipped_examples(task: str, shots: int, base: pd.DataFrame, pruned: pd.DataFrame) -> pd.DataFrame:
    """Prompts whose answer changed, with the move between outcome classes (e.g. ``copy -> correct``)."""
    changed = base["prediction"] != pruned["prediction"]
    out = pd.DataFrame({"task": task, "shots": shots, "query": base["query"][changed],
                        "gold": base["gold"][changed], "baseline": base["prediction"][changed],
                        "pruned": pruned["prediction"][changed], "baseline_outcome": base["outcome"][changed],
                        "pruned_outcome": pruned["outcome"][changed]})
    out["change"] = out["baseline_outcome"] + " -> " + out["pruned_outcome"]
    return out.reset_index(drop=True)


def flip_counts(flipped: pd.DataFrame) -> pd.DataFrame:
    """How many prompts moved between each pair of outcome classes (e.g. 31 'copy -> other', 2 'copy ->
    correct'), most frequent first."""
    if flipped.empty:
        return pd.DataFrame(columns=["change", "prompts"])
    counts = flipped.groupby("change").size().sort_values(ascending=False)
    return counts.rename("prompts").reset_index()


__all__ = ["PruneEvalResult", "RECORD_COLUMNS", "condition_records", "control_masks", "flip_counts",
           "flipped_examples", "prune_eval"]
