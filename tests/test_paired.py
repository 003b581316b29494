"""Paired statistics: McNemar and the cluster bootstrap against plain, independent implementations on small
hand-made outcome tables; the properties the intervals must have (pairing, clusters, control seeds)."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pandas as pd
import pytest

from analysis.evaluation.paired import Estimate, bootstrap_p, compare, draw_resamples, mcnemar_exact
from analysis.evaluation.verdicts import verdict


def plain_mcnemar(b: int, c: int) -> float:
    """Exact two-sided binomial test of b successes in b + c trials with p = 1/2, summed term by term."""
    n = b + c
    if n == 0:
        return 1.0
    pmf = [Fraction(comb(n, i), 2**n) for i in range(n + 1)]
    observed = pmf[b]
    return float(min(Fraction(1), sum(p for p in pmf if p <= observed)))


@pytest.mark.parametrize("b,c,expected", [(0, 5, 0.0625), (5, 0, 0.0625), (1, 9, 0.021484375), (3, 3, 1.0),
                                          (0, 0, 1.0), (2, 8, 0.109375), (0, 1, 1.0), (10, 30, None)])
def test_mcnemar_exact(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(plain_mcnemar(b, c), rel=1e-12)
    if expected is not None:
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def table(cells: dict[tuple[str, str], list[str]], queries: dict[str, list[str]], shots: int = 1) -> pd.DataFrame:
    """Outcome table from {(task, condition): outcomes in prompt order} and {task: query per prompt}."""
    rows = []
    for (task, condition), outcomes in cells.items():
        for i, outcome in enumerate(outcomes):
            rows.append({"task": task, "shots": shots, "prompt_index": i, "query": queries[task][i],
                         "condition": condition, "answer": "", "outcome": outcome})
    return pd.DataFrame(rows)


C, P, E, O = "correct", "copy", "echo", "other"  # noqa: E741 - one letter per outcome keeps the tables readable
HAND = table({
    ("t1", "baseline"): [C, P, P, E, O, C],
    ("t1", "pruned"): [C, C, O, E, C, P],
    ("t1", "random-0"): [C, P, P, O, O, C],
    ("t1", "random-1"): [P, P, C, E, O, C],
    ("t2", "baseline"): [E, E, C, P],
    ("t2", "pruned"): [C, E, C, C],
    ("t2", "random-0"): [E, C, C, P],
    ("t2", "random-1"): [E, E, O, P],
}, {"t1": ["a", "b", "b", "c", "d", "e"], "t2": ["x", "y", "z", "w"]})


def by_cell(cells):
    return {(c.task, c.shots): c for c in cells}


def test_point_estimates_and_query_level_tests_by_hand():
    cells = by_cell(compare(HAND, resamples=200))
    t1, t2, avg = cells["t1", 1], cells["t2", 1], cells["average", 1]
    # t1 accuracy: baseline 2/6, pruned 3/6, random (2/6 + 2/6) / 2
    assert t1.rates["baseline"]["accuracy"].value == pytest.approx(2 / 6)
    assert t1.vs_baseline["accuracy"].delta == pytest.approx(1 / 6)
    assert t1.vs_random["accuracy"].delta == pytest.approx(3 / 6 - 2 / 6)
    # 'correct', pruned minus baseline per query in t1: a 0, b (prompts 1, 2) +1, c 0, d +1, e -1: three
    # units of +-1, |sum| >= 1 always -> p = 1
    assert t1.vs_baseline["accuracy"].p == pytest.approx(1.0)
    # copy errors in t1: baseline 2/6, pruned 1/6 (prompt 5); discordant pruned-only 1, baseline-only 2
    assert t1.vs_baseline["copy_error_rate"].delta == pytest.approx(-1 / 6)
    # t2 echoes: baseline 2/4, pruned 1/4; random (1/4 + 2/4) / 2
    assert t2.vs_baseline["echo_rate"].delta == pytest.approx(-1 / 4)
    assert t2.vs_random["echo_rate"].delta == pytest.approx(1 / 4 - 3 / 8)
    # the average is the mean over tasks (not pooled prompts); its test flips whole queries, weighted by 1/n_t:
    # x12, t1's units are +-2 (x3), t2's +-3 (x2), observed 2 + 6 = 8; |sum| >= 8 for (t1, t2) sums (6, 6),
    # (2, 6), (-2, -6), (-6, -6): (1 + 3 + 3 + 1) / 8 * 1/4 = 1/4 (McNemar on prompts said 0.375)
    assert avg.n == 10 and avg.queries == 9 and t1.queries == 5
    assert avg.vs_baseline["accuracy"].delta == pytest.approx((1 / 6 + 2 / 4) / 2)
    assert avg.vs_baseline["accuracy"].p == pytest.approx(0.25)
    assert avg.control_rates["random-1"]["accuracy"] == pytest.approx((2 / 6 + 0 / 4) / 2)


def plain_bootstrap(records: pd.DataFrame, metric_outcome: str, resamples: int, seed: int):
    """The same resampling scheme written as loops over prompts (from the same draws): per replicate, per
    task, the picked clusters' prompts are gathered one by one; returns the replicates of the average's
    pruned - baseline and pruned - mean(random) differences."""
    tasks = list(dict.fromkeys(records.task))
    controls = sorted(c for c in set(records.condition) if c.startswith("random-"))
    clusters, members = {}, {}
    for task in tasks:
        rows = records[(records.task == task) & (records.condition == "baseline")].sort_values("prompt_index")
        order = list(dict.fromkeys(rows["query"]))
        clusters[task] = order
        members[task] = {q: list(rows.prompt_index[rows["query"] == q]) for q in order}
    picks, weights = draw_resamples({t: len(clusters[t]) for t in tasks}, len(controls), resamples, seed)
    hit = {(r.task, r.condition, r.prompt_index): float(r.outcome == metric_outcome) for r in records.itertuples()}
    vs_base, vs_random = [], []
    for b in range(resamples):
        d_base, d_random = [], []
        for task in tasks:
            prompts = [i for c in picks[task][b] for i in members[task][clusters[task][c]]]
            rate = {cond: sum(hit[task, cond, i] for i in prompts) / len(prompts)
                    for cond in ["baseline", "pruned", *controls]}
            mixed = sum(w * rate[c] for w, c in zip(weights[b], controls))
            d_base.append(rate["pruned"] - rate["baseline"])
            d_random.append(rate["pruned"] - mixed)
        vs_base.append(sum(d_base) / len(tasks))
        vs_random.append(sum(d_random) / len(tasks))
    return vs_base, vs_random


def plain_quantile(values, q):
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def plain_p(values):
    n = len(values)
    below = (1 + sum(v <= 0 for v in values)) / (n + 1)
    above = (1 + sum(v >= 0 for v in values)) / (n + 1)
    return min(1.0, 2 * min(below, above))


@pytest.mark.parametrize("metric,outcome", [("accuracy", C), ("copy_error_rate", P), ("echo_rate", E)])
def test_bootstrap_matches_a_plain_loop(metric, outcome):
    resamples, seed = 400, 7
    avg = by_cell(compare(HAND, resamples=resamples, seed=seed))["average", 1]
    vs_base, vs_random = plain_bootstrap(HAND, outcome, resamples, seed)
    for estimate, replicates in ((avg.vs_baseline[metric], vs_base), (avg.vs_random[metric], vs_random)):
        assert estimate.ci95[0] == pytest.approx(plain_quantile(replicates, 0.025), abs=1e-12)
        assert estimate.ci95[1] == pytest.approx(plain_quantile(replicates, 0.975), abs=1e-12)
    assert avg.vs_random[metric].p == pytest.approx(plain_p(vs_random), abs=1e-12)


def synthetic(n: int, seed: int, duplicate: int = 1, cluster_duplicates: bool = True, controls: int = 3,
              control_spread: float = 0.0) -> pd.DataFrame:
    """Two tasks of ``n`` queries; pruning turns 20 % of copies into correct answers and breaks 5 %; every
    prompt repeated ``duplicate`` times (same query when ``cluster_duplicates``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in ("t1", "t2"):
        base = rng.choice([C, P, E, O], size=n, p=[0.4, 0.3, 0.2, 0.1])
        pruned = np.where((base == P) & (rng.random(n) < 0.2), C, base)
        pruned = np.where((pruned == C) & (rng.random(n) < 0.05), O, pruned)
        randoms = []
        for s in range(controls):
            flip = rng.random(n) < 0.05 + control_spread * s
            randoms.append(np.where(flip, O, base))
        for i in range(n * duplicate):
            q = i // duplicate if cluster_duplicates else i
            src = i // duplicate
            for condition, outcomes in (("baseline", base), ("pruned", pruned),
                                        *((f"random-{s}", r) for s, r in enumerate(randoms))):
                rows.append({"task": task, "shots": 2, "prompt_index": i, "query": f"q{q}", "condition": condition,
                             "outcome": outcomes[src]})
    return pd.DataFrame(rows)


def width(estimate: Estimate) -> float:
    return estimate.ci95[1] - estimate.ci95[0]


def test_prompts_sharing_a_query_are_one_cluster():
    """Asking every query three times adds no information: clustered, the interval keeps its width;
    treating the copies as independent prompts would shrink it by about sqrt(3)."""
    single = by_cell(compare(synthetic(60, 1)))["average", 2].vs_baseline["accuracy"]
    clustered = by_cell(compare(synthetic(60, 1, duplicate=3)))["average", 2].vs_baseline["accuracy"]
    naive = by_cell(compare(synthetic(60, 1, duplicate=3, cluster_duplicates=False)))["average", 2]
    assert clustered.delta == pytest.approx(single.delta)
    assert width(clustered) == pytest.approx(width(single), rel=0.1)
    assert width(naive.vs_baseline["accuracy"]) < 0.75 * width(single)


def test_intervals_are_stable_to_two_decimals_and_cover_the_normal_approximation():
    records = synthetic(80, 2)
    first = by_cell(compare(records, seed=0))["average", 2].vs_baseline["accuracy"]
    second = by_cell(compare(records, seed=1))["average", 2].vs_baseline["accuracy"]
    # the average of two tasks of 80 prompts moves in steps of 1/160: another seed moves an end by at most one
    assert np.allclose(first.ci95, second.ci95, atol=1 / 160 + 1e-9)
    # normal approximation from the per-query differences (clusters of one prompt here), stratified by task
    diffs = []
    for task in ("t1", "t2"):
        rows = records[records.task == task]
        base = (rows[rows.condition == "baseline"].outcome == C).to_numpy(float)
        pruned = (rows[rows.condition == "pruned"].outcome == C).to_numpy(float)
        diffs.append(pruned - base)
    se = np.sqrt(sum(d.var() / len(d) for d in diffs)) / 2
    assert first.ci95[0] == pytest.approx(first.delta - 1.96 * se, abs=0.01)
    assert first.ci95[1] == pytest.approx(first.delta + 1.96 * se, abs=0.01)


def test_random_controls_that_disagree_widen_the_interval():
    same = by_cell(compare(synthetic(80, 3, controls=5)))["average", 2].vs_random["accuracy"]
    spread = by_cell(compare(synthetic(80, 3, controls=5, control_spread=0.15)))["average", 2].vs_random["accuracy"]
    assert width(spread) > 1.3 * width(same)


def test_identical_conditions_give_zero_change_and_p_one():
    records = synthetic(30, 4)
    records = records[records.condition == "baseline"]
    copy = records.assign(condition="pruned")
    controls = [records.assign(condition=f"random-{s}") for s in range(2)]
    avg = by_cell(compare(pd.concat([records, copy, *controls])))["average", 2]
    for metric in ("accuracy", "copy_error_rate", "echo_rate"):
        for estimate in (avg.vs_baseline[metric], avg.vs_random[metric]):
            assert estimate.delta == 0 and estimate.ci95 == (0.0, 0.0) and estimate.p == 1.0


def test_prompts_must_match_across_conditions():
    broken = HAND.copy()
    broken.loc[(broken.task == "t1") & (broken.condition == "pruned") & (broken.prompt_index == 0), "query"] = "zz"
    with pytest.raises(ValueError, match="same prompts"):
        compare(broken, resamples=10)


def test_bootstrap_p_never_zero():
    assert bootstrap_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert bootstrap_p(np.zeros(10)) == 1.0


def test_verdict_sentences():
    est = {"copy_error_rate": Estimate(-0.072, (-0.103, -0.041)), "accuracy": Estimate(-0.004, (-0.030, 0.022))}
    assert verdict(est, "random") == ("Against random masks of the same size: copy errors fall 7.2 points "
                                      "(95 % CI -10.3 to -4.1); accuracy changes by -0.4 points (95 % CI -3.0 to "
                                      "+2.2): no evidence of a gain.")
    gain = {"copy_error_rate": Estimate(0.01, (-0.02, 0.04)), "accuracy": Estimate(0.05, (0.01, 0.09))}
    assert verdict(gain, "baseline") == ("Against the unpruned model: copy errors change by +1.0 points "
                                         "(95 % CI -2.0 to +4.0); accuracy rises 5.0 points (95 % CI +1.0 to "
                                         "+9.0): pruning gains accuracy.")
    barely = {"accuracy": Estimate(0.04, (0.0003, 0.077))}  # prints as "0.0 to +7.7": no claim of a gain
    assert verdict(barely, "baseline") == ("Against the unpruned model: accuracy changes by +4.0 points "
                                           "(95 % CI 0.0 to +7.7): no evidence of a gain.")
    assert verdict({"accuracy": Estimate(0.04, (0.0005, 0.077))}, "baseline").endswith("pruning gains accuracy.")
    loss = {"accuracy": Estimate(-0.147, (-0.22, -0.07))}
    assert verdict(loss, "baseline").endswith("accuracy falls 14.7 points (95 % CI -22.0 to -7.0): pruning costs "
                                              "accuracy.")
    tiny = {"accuracy": Estimate(-0.0004, (-0.03, 0.02))}  # no '-0.0 points'
    assert "accuracy changes by 0.0 points" in verdict(tiny, "baseline")
    nobody = {"copy_error_rate": Estimate(0.0, (0.0, 0.0)), "accuracy": Estimate(0.0, (0.0, 0.0))}
    assert verdict(nobody, "baseline") == ("Against the unpruned model: copy errors: no prompt changed; accuracy: no "
                                           "prompt changed: no evidence of a gain.")
