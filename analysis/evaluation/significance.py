"""Tests for paired comparisons whose unit is the query: the sign-flip test, Holm's correction across tasks and
Cochran's Q test of a task x condition interaction.

When ``n`` exceeds a task's number of pairs, a query is asked more than once (with other demonstrations), and
those prompts are not independent: a test that counts prompts (McNemar) then claims more evidence than the
query-level bootstrap interval shows (with n = 80 over 40 queries, p = 0.021 where the interval crossed 0).
The tests here treat a query's prompts as one unit, as the intervals do (analysis/evaluation/paired.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EXACT_WORK = 50_000_000  # sign-flip: exact while units x integer range is at most this (a fraction of a second)
FLIPS = 20_000  # else this many random sign vectors (fixed seed)


def sign_flip_p(differences: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None,
                seed: int = 0) -> float:
    """Two-sided p-value of "each unit's paired difference is symmetric around 0" for the statistic
    ``sum_c weights_c * differences_c``, by flipping the sign of whole units (queries).

    ``differences``: per unit, the sum over its prompts of (treated outcome - baseline outcome), integers;
    ``weights``: per unit, the weight of its task in the statistic (1 / the task's prompts, for an average of
    task rates; default 1). Exact (the distribution of the sum of +-w_c d_c over all 2^m sign vectors, by
    convolution on the integers) when the weighted differences are integers after scaling by the least
    common multiple of the weights' denominators and the work (units x range) is at most ``EXACT_WORK``;
    else Monte Carlo with ``FLIPS`` sign vectors and the +1 correction (never 0). With one prompt per unit it
    is the exact McNemar test. p = P(|T*| >= |T|)."""
    d = np.asarray(differences, dtype=float)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=float)
    if d.shape != w.shape:
        raise ValueError("differences and weights must have the same length")
    integers = _integer_weights(d * w, w)
    if integers is not None:
        nonzero = integers[integers != 0]
        observed = int(nonzero.sum())
        span = int(np.abs(nonzero).sum())
        if span == 0:
            return 1.0
        if len(nonzero) * (2 * span + 1) <= EXACT_WORK:
            probability = np.zeros(2 * span + 1)
            probability[span] = 1.0
            for step in np.abs(nonzero):  # each unit adds +step or -step with probability 1/2
                probability = 0.5 * (np.roll(probability, int(step)) + np.roll(probability, -int(step)))
            values = np.arange(-span, span + 1)
            return float(min(1.0, probability[np.abs(values) >= abs(observed)].sum()))
    contributions = d * w
    observed_value = abs(float(contributions.sum()))
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(FLIPS, len(d)))
    flipped = np.abs(signs @ contributions)
    extreme = np.count_nonzero(flipped >= observed_value * (1 - 1e-12) - 1e-12)
    return float((1 + extreme) / (FLIPS + 1))


def _integer_weights(contributions: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """``contributions`` scaled to integers (by the lcm of the weights' denominators, when each weight is 1/k
    or an integer), or None."""
    scale = 1
    for weight in np.unique(weights[weights != 0]):
        inverse = 1 / weight
        if abs(inverse - round(inverse)) < 1e-9:
            scale = math.lcm(scale, int(round(inverse)))
        elif abs(weight - round(weight)) > 1e-9:
            return None
    scaled = contributions * scale
    rounded = np.round(scaled)
    if np.any(np.abs(scaled - rounded) > 1e-6):
        return None
    return rounded.astype(np.int64)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input's order; None stays
    None and is not counted."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running, count = 0.0, len(present)
    for rank, (p, index) in enumerate(sorted(present)):
        running = max(running, min(1.0, (count - rank) * p))
        adjusted[index] = running
    return adjusted


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with ``df`` degrees of freedom (closed forms for integer df)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    for i in range(1, (df + 1) // 2):
        total += math.exp((i - 0.5) * math.log(half) - half - math.lgamma(i + 0.5))
    return min(1.0, total)


def cochran_q(deltas: Sequence[float], variances: Sequence[float], floors: Sequence[float]) -> tuple[float, float]:
    """Cochran's Q test that every task's paired change is the same (a task x condition interaction): Q = sum
    of w_t (delta_t - the inverse-variance mean)^2 with w_t = 1 / max(variance_t, floor_t), against chi-square
    with tasks - 1 degrees of freedom; returns (Q, p). The variances are the query-level bootstrap variances of
    each task's change (the unit of the intervals); a floor (one prompt's worth, 1 / n_t^2) keeps a task where
    nothing changed from weighing infinitely."""
    if len(deltas) < 2:
        raise ValueError("a heterogeneity test needs two or more tasks")
    d = np.asarray(deltas, dtype=float)
    w = 1 / np.maximum(np.asarray(variances, dtype=float), np.asarray(floors, dtype=float))
    mean = float((w * d).sum() / w.sum())
    q = float((w * (d - mean) ** 2).sum())
    return q, chi2_sf(q, len(d) - 1)
