"""Paired comparisons of conditions evaluated on the same prompts, with intervals and p-values.

Every comparison in prunescope is paired: the conditions (``baseline`` = unpruned, ``pruned``, the random
controls ``random-<seed>``) answer the very same prompts, so only prompts whose outcome differs carry evidence.
This is the one module that computes the numbers; pages, the CLI and reports only format them.

Input: an outcome table with one row per (task, shots, prompt_index, condition) and the columns ``query``
and ``outcome`` (``correct | copy | echo | other``). For a metric (accuracy = share correct, copy-error rate,
echo rate) and one shot count:

- **Point estimates.** A task's rate is the share of its prompts; the *average* is the mean over tasks.
  Pruned vs baseline: the pruned rate minus the baseline rate. Pruned vs random: the pruned rate minus the
  mean rate of the random controls (equivalently, the pruned change minus the controls' mean change).
- **Intervals** (95 %, percentile bootstrap, ``RESAMPLES`` draws from a fixed seed). The unit resampled is
  a *query*: all prompts sharing a query input form one cluster (when n exceeds a task's pairs, a query is
  asked more than once, and those prompts are not independent). Clusters are resampled within each task
  (stratified, so the average keeps every task) and jointly across conditions (each replicate sees the
  same prompts under every condition: the pairing survives). With two or more random controls, each
  replicate also resamples the control seeds, so the interval of "vs random" includes how much one random
  mask differs from another, not only the prompt noise.
- **p-values, on the intervals' unit.** Pruned vs baseline: a sign-flip test that flips whole queries
  (analysis/evaluation/significance.py; exact; with one prompt per query it is the exact McNemar test, which
  counted repeated queries as independent prompts and disagreed with the query-level interval). Pruned vs
  random: two-sided bootstrap p from the interval's own replicates, ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))``
  with the +1 correction of Davison & Hinkley, so it is never 0. Each task's p is also Holm-adjusted across
  the tasks at its shot count (``p_holm``).
- **Heterogeneity.** The average's cell carries, per metric, Cochran's Q test that every task's change vs
  the unpruned model is the same (task x condition interaction; query-level bootstrap variances), so a
  pooled verdict can say "depends on the task" (analysis/evaluation/verdicts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import comb

import numpy as np
import pandas as pd

from analysis.evaluation.significance import cochran_q, holm, sign_flip_p

# metric -> outcome it counts, for the metrics whose changes are compared
COMPARED = {"accuracy": "correct", "copy_error_rate": "copy", "echo_rate": "echo"}
RESAMPLES = 10_000
LEVEL = 0.95
BASELINE, PRUNED, RANDOM_PREFIX = "baseline", "pruned", "random-"
AVERAGE = "average"


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: prompts where only the first condition
    has the outcome and prompts where only the second does. Under the null each discordant prompt goes either
    way with probability 1/2, so p = min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2); 1 when b + c = 0."""
    if only_first < 0 or only_second < 0:
        raise ValueError("discordant counts must be >= 0")
    total = only_first + only_second
    if total == 0:
        return 1.0
    tail = sum(comb(total, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**total)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0" from its replicates (see the module docstring)."""
    count = len(replicates)
    below = (1 + np.count_nonzero(replicates <= 0)) / (count + 1)
    above = (1 + np.count_nonzero(replicates >= 0)) / (count + 1)
    return float(min(1.0, 2 * min(below, above)))


def format_p(p: float | None) -> str:
    """'p < 0.001', 'p = 0.012' or '' (no test)."""
    if p is None:
        return ""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A difference of rates with its interval and p-value (p is None where no test applies)."""

    delta: float
    ci95: tuple[float, float]
    p: float | None = None
    p_holm: float | None = None  # a task's p, Holm-adjusted across the tasks at its shot count

    def to_json(self) -> dict:
        return {"delta": self.delta, "ci95": list(self.ci95), "p": self.p, "p_holm": self.p_holm}


@dataclass(frozen=True)
class Rate:
    value: float
    ci95: tuple[float, float]


@dataclass
class Cell:
    """One task (or the average) at one shot count: each condition's rates, and the two comparisons."""

    task: str
    shots: int
    n: int
    rates: dict[str, dict[str, Rate]] = field(default_factory=dict)  # baseline | pruned | random -> metric
    control_rates: dict[str, dict[str, float]] = field(default_factory=dict)  # random-<seed> -> metric
    vs_baseline: dict[str, Estimate] = field(default_factory=dict)
    vs_random: dict[str, Estimate] = field(default_factory=dict)
    queries: int = 0  # distinct queries (the unit of intervals and tests); fewer than n when queries repeat
    heterogeneity: dict[str, float] = field(default_factory=dict)  # the average's: metric -> p (Cochran's Q)
    heterogeneity_random: dict[str, float] = field(default_factory=dict)  # the same for pruned minus random


@dataclass
class _Stratum:
    """One task's cluster sums: ``sums[condition]`` is [metrics, clusters]; ``sizes`` [clusters]."""

    sums: dict[str, np.ndarray]
    sizes: np.ndarray
    indicators: dict[str, np.ndarray]  # condition -> [metrics, prompts]: 0/1 outcomes


def _strata(records: pd.DataFrame, metrics: dict[str, str]) -> dict[str, _Stratum]:
    strata = {}
    for task, rows in records.groupby("task", sort=False):
        conditions = {}
        for condition, part in rows.groupby("condition", sort=False):
            part = part.sort_values("prompt_index")
            conditions[condition] = part
        reference = next(iter(conditions.values()))
        order = reference["prompt_index"].to_numpy()
        for condition, part in conditions.items():
            if not np.array_equal(part["prompt_index"].to_numpy(), order) or \
                    not np.array_equal(part["query"].to_numpy(), reference["query"].to_numpy()):
                raise ValueError(f"task {task!r}: condition {condition!r} was not run on the same prompts")
        clusters, _ = pd.factorize(reference["query"], sort=False)
        count = clusters.max() + 1 if len(clusters) else 0
        sizes = np.bincount(clusters, minlength=count).astype(float)
        indicators, sums = {}, {}
        for condition, part in conditions.items():
            outcome = part["outcome"].to_numpy()
            hits = np.stack([(outcome == label).astype(float) for label in metrics.values()])
            indicators[condition] = hits
            sums[condition] = np.stack([np.bincount(clusters, weights=row, minlength=count) for row in hits])
        strata[task] = _Stratum(sums, sizes, indicators)
    return strata


def draw_resamples(cluster_counts: dict[str, int], controls: int, resamples: int = RESAMPLES, seed: int = 0
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Bootstrap draws: per task, cluster indices [resamples, clusters] (with replacement, within the task);
    and control-seed weights [resamples, controls] (multinomial counts / controls; all equal when fewer than
    two controls: one control cannot be resampled)."""
    rng = np.random.default_rng(seed)
    picks = {task: rng.integers(0, count, size=(resamples, count)) for task, count in cluster_counts.items()}
    if controls >= 2:
        weights = rng.multinomial(controls, [1 / controls] * controls, size=resamples) / controls
    else:
        weights = np.full((resamples, controls), 1.0 / max(controls, 1))
    return picks, weights


def _replicate_rates(stratum: _Stratum, condition_names: list[str], picks: np.ndarray,
                     weights: np.ndarray | None) -> np.ndarray:
    """Rates [metrics, resamples] of one condition (or, with several names and ``weights``, the weighted mean
    of the controls) over the resampled clusters ``picks`` [resamples, clusters]."""
    if weights is None:
        sums = stratum.sums[condition_names[0]][:, picks]  # [metrics, B, C]
    else:
        stacked = np.stack([stratum.sums[name] for name in condition_names])  # [R, metrics, C]
        per_replicate = np.einsum("br,rmc->mbc", weights, stacked)  # each replicate's mix of controls
        sums = np.take_along_axis(per_replicate, picks[None], axis=2)
    return sums.sum(axis=2) / stratum.sizes[picks].sum(axis=1)


def compare(records: pd.DataFrame, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
            metrics: dict[str, str] = COMPARED, treatment: str = PRUNED, baseline: str = BASELINE
            ) -> list[Cell]:
    """Rates and paired comparisons per (task, shots) and the task average per shot count (module docstring).
    ``treatment`` and ``baseline`` name the two conditions compared; the controls are the ``random-<seed>``
    conditions. Conditions absent from ``records`` are skipped."""
    cells = []
    for shots, group in records.groupby("shots", sort=False):
        strata = _strata(group, metrics)
        conditions = list(dict.fromkeys(group["condition"]))
        controls = [c for c in conditions if c.startswith(RANDOM_PREFIX)]
        picks, weights = draw_resamples({t: len(s.sizes) for t, s in strata.items()}, len(controls), resamples,
                                        seed)
        replicates: dict[str, dict[str, np.ndarray]] = {}  # task -> group name -> [metrics, B]
        points: dict[str, dict[str, np.ndarray]] = {}  # task -> group name -> [metrics]
        for task, stratum in strata.items():
            identity = np.arange(len(stratum.sizes))[None]
            replicates[task], points[task] = {}, {}
            for name in (baseline, treatment):
                if name in stratum.sums:
                    replicates[task][name] = _replicate_rates(stratum, [name], picks[task], None)
                    points[task][name] = _replicate_rates(stratum, [name], identity, None)[:, 0]
            if controls:
                replicates[task]["random"] = _replicate_rates(stratum, controls, picks[task], weights)
                points[task]["random"] = _replicate_rates(stratum, controls, identity,
                                                          np.full((1, len(controls)), 1 / len(controls)))[:, 0]
        tasks = list(strata)
        for task in [*tasks, AVERAGE]:
            members = tasks if task == AVERAGE else [task]
            n = int(sum(strata[t].sizes.sum() for t in members))
            cell = Cell(task, int(shots), n)
            groups = [g for g in (baseline, treatment, "random") if all(g in points[t] for t in members)]
            rep = {g: np.mean([replicates[t][g] for t in members], axis=0) for g in groups}
            point = {g: np.mean([points[t][g] for t in members], axis=0) for g in groups}
            for g in groups:
                label = {baseline: BASELINE, treatment: PRUNED}.get(g, g)
                cell.rates[label] = {m: Rate(float(point[g][i]), percentile_interval(rep[g][i], level))
                                     for i, m in enumerate(metrics)}
            for control in controls:
                cell.control_rates[control] = {m: float(np.mean([
                    strata[t].indicators[control][i].mean() for t in members])) for i, m in enumerate(metrics)}
            if baseline in point and treatment in point:
                for i, m in enumerate(metrics):
                    diff = rep[treatment][i] - rep[baseline][i]
                    cell.vs_baseline[m] = Estimate(float(point[treatment][i] - point[baseline][i]),
                                                   percentile_interval(diff, level),
                                                   _query_sign_flip(strata, members, treatment, baseline, i))
                if task == AVERAGE and len(tasks) >= 2:
                    cell.heterogeneity = _interaction(tasks, strata, replicates, points, treatment, baseline,
                                                      metrics)
            if treatment in point and "random" in point:
                for i, m in enumerate(metrics):
                    diff = rep[treatment][i] - rep["random"][i]
                    cell.vs_random[m] = Estimate(float(point[treatment][i] - point["random"][i]),
                                                 percentile_interval(diff, level), bootstrap_p(diff))
                if task == AVERAGE and len(tasks) >= 2:  # the tasks share the random masks: Q is conservative
                    cell.heterogeneity_random = _interaction(tasks, strata, replicates, points, treatment, "random",
                                                             metrics)
            cell.queries = int(sum(len(strata[t].sizes) for t in members))
            cells.append(cell)
        _adjust_across_tasks([c for c in cells if c.shots == int(shots) and c.task != AVERAGE])
    return cells


def _interaction(tasks: list[str], strata: dict[str, _Stratum], replicates: dict, points: dict, treatment: str,
                 reference: str, metrics: dict[str, str]) -> dict[str, float]:
    """Per metric, Cochran's Q p of "treatment minus ``reference`` is the same in every task", with each task's
    query-level bootstrap variance (floored at one prompt's worth, 1 / n_t^2)."""
    out = {}
    for i, m in enumerate(metrics):
        variances = [float(np.var(replicates[t][treatment][i] - replicates[t][reference][i])) for t in tasks]
        deltas = [float(points[t][treatment][i] - points[t][reference][i]) for t in tasks]
        floors = [1 / strata[t].sizes.sum() ** 2 for t in tasks]
        out[m] = cochran_q(deltas, variances, floors)[1]
    return out


def _query_sign_flip(strata: dict[str, _Stratum], members: list[str], treatment: str, baseline: str,
                     metric: int) -> float:
    """The sign-flip p of treatment minus baseline on the mean of the members' task rates, a query a unit."""
    differences, weights = [], []
    for task in members:
        stratum = strata[task]
        differences.append(stratum.sums[treatment][metric] - stratum.sums[baseline][metric])
        weights.append(np.full(len(stratum.sizes), 1 / stratum.sizes.sum()))
    return sign_flip_p(np.concatenate(differences), np.concatenate(weights))


def _adjust_across_tasks(task_cells: list[Cell]) -> None:
    """Holm-adjust each metric's p across the tasks of one shot count (both comparisons)."""
    for attribute in ("vs_baseline", "vs_random"):
        metrics = {m for cell in task_cells for m in getattr(cell, attribute)}
        for m in metrics:
            owners = [cell for cell in task_cells if m in getattr(cell, attribute)]
            adjusted = holm([getattr(cell, attribute)[m].p for cell in owners])
            for cell, p_holm in zip(owners, adjusted):
                estimates = getattr(cell, attribute)
                estimates[m] = replace(estimates[m], p_holm=p_holm)
