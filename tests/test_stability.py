"""Mask stability on hand-made attributions: Jaccard by hand, the bootstrap against a plain loop over the same
draws, strong neurons stable and noise neurons not, the first-n masks equal to scoring on n prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.errors import PrunescopeError
from analysis.pruning.copying import CopyingScores, normalized_copy_scores, select_top_k
from analysis.pruning.mask import NeuronMask
from analysis.pruning.stability import jaccard, mask_stability, stable_mask


def scored(per_prompt: torch.Tensor, used: list[bool] | None = None) -> CopyingScores:
    count = per_prompt.shape[0]
    ig = NeuronIGResult(per_prompt, [None] * count, "copy", 4, "adaptive", torch.zeros(count))
    used = used or [True] * count
    return CopyingScores(normalized_copy_scores(ig, used), ig, used)


def strong_and_noise(prompts: int = 24, seed: int = 0) -> torch.Tensor:
    """[prompts, 3 layers, 40 neurons]: neurons (0, 1..5) always score 5 to 6, everything else noise."""
    rng = torch.Generator().manual_seed(seed)
    data = torch.rand(prompts, 3, 40, generator=rng)
    data[:, 0, 1:6] = 5 + torch.rand(prompts, 5, generator=rng)
    return data


def test_jaccard_by_hand():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)
    assert jaccard(set(), set()) == 1.0 and jaccard({1}, set()) == 0.0


def test_strong_neurons_are_stable_noise_is_not():
    result = scored(strong_and_noise())
    top5 = select_top_k(result.scores, 5)
    assert top5.neurons == frozenset((0, i) for i in range(1, 6))
    five = mask_stability(result, top5, resamples=100)
    assert five.jaccard_mean == 1.0 and five.jaccard_ci95 == (1.0, 1.0)
    assert all(five.frequency[(0, i)] == 1.0 for i in range(1, 6))
    top10 = select_top_k(result.scores, 10)
    ten = mask_stability(result, top10, resamples=100)
    assert ten.jaccard_mean < 0.8  # the five noise neurons change from resample to resample
    assert ten.stable_neurons(top10) == [(0, i) for i in range(1, 6)]
    kept = stable_mask(top10, ten)
    assert kept.neurons == top5.neurons and kept.meta["stable_share"] == 0.8
    assert "5 of its 10 neurons are selected in at least 80%" in ten.describe(top10)


def test_bootstrap_equals_a_plain_loop_over_the_same_draws():
    per_prompt = strong_and_noise(12, seed=3)
    result = scored(per_prompt)
    mask = select_top_k(result.scores, 8)
    stability = mask_stability(result, mask, resamples=30, seed=5)
    draws = np.random.default_rng(5).multinomial(12, [1 / 12] * 12, size=30)  # the function's own draws
    normalized = [p / p.abs().sum() for p in per_prompt.double()]
    overlaps, counts = [], {}
    for draw in draws:
        mean = sum(c * normalized[i] for i, c in enumerate(draw)) / 12
        picked = set(select_top_k(mean.float(), 8).neurons)
        overlaps.append(len(picked & mask.neurons) / len(picked | mask.neurons))
        for neuron in picked:
            counts[neuron] = counts.get(neuron, 0) + 1
    assert stability.jaccard_mean == pytest.approx(np.mean(overlaps))
    assert stability.frequency == pytest.approx({n: c / 30 for n, c in counts.items()})


def test_first_n_prompts_equal_scoring_on_n_prompts_and_the_used_filter():
    per_prompt = strong_and_noise(16, seed=1)
    used = [i % 3 != 0 for i in range(16)]
    result = scored(per_prompt, used)
    mask = select_top_k(result.scores, 10)
    stability = mask_stability(result, mask, resamples=10, prompt_counts=[8, 16])
    first8 = scored(per_prompt[:8], used[:8])
    assert stability.by_prompts[8] == pytest.approx(jaccard(set(select_top_k(first8.scores, 10).neurons),
                                                            set(mask.neurons)))
    assert stability.by_prompts[16] == 1.0 and stability.prompts == sum(used)


def test_per_layer_masks_and_bad_input():
    result = scored(strong_and_noise())
    mask = select_top_k(result.scores, 2, per_layer=True)
    stability = mask_stability(result, mask, per_layer=True, resamples=20)
    assert stability.k == 2 and 0 < stability.jaccard_mean <= 1
    with pytest.raises(PrunescopeError, match="at least 2 scoring prompts"):
        mask_stability(scored(strong_and_noise(1)), NeuronMask.from_pairs([(0, 1)]))
    with pytest.raises(PrunescopeError, match="threshold"):
        stable_mask(mask, stability, threshold=0)
