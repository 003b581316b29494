"""Query-level tests against plain references: the sign-flip test by enumerating every sign vector with exact
fractions (and McNemar where every query is asked once), Holm and chi-square by hand, Cochran's Q, and the
verdicts that say where tasks disagree instead of pooling it away."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from analysis.evaluation import significance
from analysis.evaluation.paired import Estimate, compare, mcnemar_exact
from analysis.evaluation.significance import chi2_sf, cochran_q, holm, sign_flip_p
from analysis.evaluation.verdicts import verdict
from analysis.pruning.evaluate import PruneEvalResult


def plain_sign_flip(differences: list[int], weights: list[Fraction]) -> float:
    """P(|sum s_c w_c d_c| >= |observed|) over all 2^m sign vectors, in exact fractions."""
    terms = [w * d for w, d in zip(weights, differences)]
    observed = abs(sum(terms))
    hits = sum(abs(sum(s * t for s, t in zip(signs, terms))) >= observed
               for signs in itertools.product((1, -1), repeat=len(terms)))
    return hits / 2 ** len(terms)


@pytest.mark.parametrize("b,c", [(5, 1), (10, 3), (0, 0), (7, 7), (20, 9), (1, 0), (0, 12)])
def test_one_prompt_per_query_is_exact_mcnemar(b, c):
    assert sign_flip_p([1] * b + [-1] * c + [0] * 4) == pytest.approx(mcnemar_exact(b, c), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_weighted_sign_flip_equals_plain_enumeration(seed):
    rng = np.random.default_rng(seed)
    sizes = [6, 4, 9]  # three tasks' prompt counts: weights 1/6, 1/4, 1/9
    differences = [int(d) for d in rng.integers(-3, 4, size=12)]
    weights = [Fraction(1, sizes[i % 3]) for i in range(12)]
    expected = plain_sign_flip(differences, weights)
    assert sign_flip_p(differences, [float(w) for w in weights]) == pytest.approx(expected, rel=1e-9)


def test_monte_carlo_fallback_agrees_with_the_exact_distribution(monkeypatch):
    differences = [4, 3, 2, 2, -1, 1, 0, 3, -2, 2, 1, 1]
    exact = sign_flip_p(differences)
    monkeypatch.setattr(significance, "EXACT_WORK", 0)
    sampled = sign_flip_p(differences)
    assert exact == pytest.approx(plain_sign_flip(differences, [Fraction(1)] * 12))
    assert abs(sampled - exact) < 4 * np.sqrt(exact * (1 - exact) / significance.FLIPS) + 1e-4
    assert sampled > 0


def test_repeated_queries_are_one_unit_for_the_test_as_for_the_interval():
    """Ten queries asked four times each; the pruned model answers six of them right on all four prompts where
    the unpruned did not. Counting prompts, McNemar sees 24 to 0 (p ~ 1e-7); the query-level test sees six
    queries (p = 2/64), as the query-level interval does."""
    rows = []
    for condition in ("baseline", "pruned"):
        for prompt in range(40):
            query = prompt % 10
            right = condition == "pruned" and query < 6
            rows.append({"task": "t", "shots": 1, "prompt_index": prompt, "query": f"q{query}",
                         "condition": condition, "answer": "", "outcome": "correct" if right else "other"})
    [cell, average] = compare(pd.DataFrame(rows), resamples=2000)
    estimate = cell.vs_baseline["accuracy"]
    assert estimate.delta == pytest.approx(0.6) and cell.queries == 10 and cell.n == 40
    assert estimate.p == pytest.approx(2 / 64)
    assert mcnemar_exact(24, 0) < 1e-6
    assert average.vs_baseline["accuracy"].p == pytest.approx(2 / 64)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


@pytest.mark.parametrize("x,df,expected", [(3.841459, 1, 0.05), (5.991465, 2, 0.05), (7.814728, 3, 0.05),
                                           (9.487729, 4, 0.05), (0.5, 1, 0.4795001), (20.0, 7, 0.0055697),
                                           (0.0, 3, 1.0), (2.0, 2, np.exp(-1))])
def test_chi2_survival_against_tabled_values(x, df, expected):
    assert chi2_sf(x, df) == pytest.approx(expected, rel=1e-5)


def test_cochran_q_by_hand():
    q, p = cochran_q([0.3, -0.1], [0.01, 0.01], [0.0, 0.0])  # mean 0.1; Q = 100 * (0.2^2 + 0.2^2)
    assert q == pytest.approx(8.0) and p == pytest.approx(chi2_sf(8.0, 1))
    q, _ = cochran_q([0.0, 0.2], [0.0, 0.04], [1 / 80**2, 1 / 80**2])  # the floor: weight 6400, not infinite
    mean = 25 * 0.2 / (6400 + 25)
    assert q == pytest.approx(6400 * mean**2 + 25 * (0.2 - mean) ** 2)


def two_tasks(effect_1: float, effect_2: float, n: int = 80, seed: int = 0) -> pd.DataFrame:
    """Two tasks of n single-prompt queries: baseline right at 50 %, pruned flips a share of the prompts."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, effect in (("gains", effect_1), ("loses", effect_2)):
        base = rng.random(n) < 0.5
        flip = rng.random(n) < abs(effect)
        pruned = np.where(flip, effect > 0, base)
        for condition, right in (("baseline", base), ("pruned", pruned)):
            for i in range(n):
                rows.append({"task": task, "shots": 1, "prompt_index": i, "query": f"{task}{i}",
                             "condition": condition, "answer": "", "outcome": "correct" if right[i] else "copy"})
    return pd.DataFrame(rows)


def result(records: pd.DataFrame) -> PruneEvalResult:
    return PruneEvalResult("m", 20, records, pd.DataFrame(), resamples=2000)


def test_opposite_task_effects_are_not_pooled_away():
    run = result(two_tasks(0.5, -0.5))
    average = run.cell()
    assert abs(average.vs_baseline["accuracy"].delta) < 0.1  # pooled, it looks like nothing happened
    assert average.heterogeneity["accuracy"] < 0.001
    sentence = run.verdicts()["baseline"]
    assert "accuracy changes by" in sentence and "but this depends on the task (heterogeneity p < 0.001)" in sentence
    assert "points on gains (Holm p < 0.001)" in sentence and "points on loses (Holm p < 0.001)" in sentence
    assert "no evidence" not in sentence and sentence.endswith(").")
    raw = sorted(run.cell(task).vs_baseline["accuracy"].p for task in ("gains", "loses"))
    assert sorted(run.cell(task).vs_baseline["accuracy"].p_holm for task in ("gains", "loses")) == pytest.approx(
        [min(1.0, 2 * raw[0]), max(min(1.0, 2 * raw[0]), raw[1])])


def test_agreeing_tasks_keep_the_pooled_verdict():
    run = result(two_tasks(0.4, 0.4))
    assert run.cell().heterogeneity["accuracy"] > 0.05
    assert run.verdicts()["baseline"].endswith("pruning gains accuracy.")
    assert "depends on the task" not in run.verdicts()["baseline"]
    assert "depends on the task" not in run.verdicts("gains")["baseline"]  # a task's own sentence has no tasks


def test_holm_adjusted_task_p_values_in_the_cells():
    run = result(two_tasks(0.3, 0.05))
    tasks = [run.cell("gains"), run.cell("loses")]
    raw = [c.vs_baseline["copy_error_rate"].p for c in tasks]
    assert [c.vs_baseline["copy_error_rate"].p_holm for c in tasks] == pytest.approx(holm(raw))
    row = run.summary().set_index("task").loc["gains"]
    assert row["d_accuracy_vs_baseline_p_holm"] == tasks[0].vs_baseline["accuracy"].p_holm
    assert run.to_json()["results"][-1]["heterogeneity"]["accuracy"] == run.cell().heterogeneity["accuracy"]


def test_echoes_are_named_when_they_move():
    moved = {"copy_error_rate": Estimate(-0.01, (-0.03, 0.01)), "echo_rate": Estimate(-0.088, (-0.13, -0.046)),
             "accuracy": Estimate(-0.009, (-0.031, 0.012))}
    sentence = verdict(moved, "baseline")
    assert "echoes fall 8.8 points (95 % CI -13.0 to -4.6)" in sentence
    still = dict(moved, echo_rate=Estimate(-0.01, (-0.04, 0.02)))
    assert "echoes" not in verdict(still, "baseline")


def test_tasks_that_require_copying_are_their_own_group_and_a_rise_there_is_flagged():
    records = two_tasks(0.5, 0.0)  # 'gains' requires copying here, and pruning raises its accuracy
    run = PruneEvalResult("m", 20, records, pd.DataFrame(), resamples=2000, copy_required=("gains",))
    labels = [c.task for c in run.ordered_cells()]
    assert labels == ["gains", "loses", "copy-required tasks", "other tasks", "average"]
    group = run.cell("copy-required tasks")
    assert group.vs_baseline["accuracy"].delta == pytest.approx(run.cell("gains").vs_baseline["accuracy"].delta)
    note = run.verdicts()["copy-required"]
    assert note.startswith("On the tasks that require copying (gains), accuracy rises")
    assert note.endswith("so these neurons do more than copy.")
    assert "copy-required tasks" in set(run.summary().task)
    plain = PruneEvalResult("m", 20, records, pd.DataFrame(), resamples=200)  # no such task: no group, no note
    assert "copy-required" not in plain.verdicts() and len(plain.cells) == 3
    falls = PruneEvalResult("m", 20, two_tasks(-0.5, 0.0), pd.DataFrame(), resamples=2000, copy_required=("gains",))
    assert falls.verdicts()["copy-required"].endswith(").")  # the expected direction: stated, not flagged


def test_the_random_comparison_also_says_when_tasks_disagree():
    records = two_tasks(0.5, -0.5)
    base = records[records.condition == "baseline"]
    controls = [base.assign(condition=f"random-{seed}") for seed in range(2)]
    run = result(pd.concat([records, *controls]))
    assert run.cell().heterogeneity_random["accuracy"] < 0.001
    assert "but this depends on the task" in run.verdicts()["random"]
    assert "heterogeneity_vs_random" in run.to_json()["results"][-1]
