"""How much a top-k copying mask depends on the scoring prompts it came from.

A mask is the top k of a mean over N scoring prompts; with N = 32 a few prompts can decide which neurons
make it. Two views, both from the per-prompt attributions already computed (no new IG):

- **Bootstrap**: resample the scoring prompts with replacement ``resamples`` times, select the top k again,
  and report the Jaccard overlap of each resample's mask with the mask (mean and 95 % percentile interval)
  and how often each neuron is selected (its *selection frequency*).
- **More prompts**: the top k from the first n/4, n/2 and all n prompts (prompts are drawn as a stream, so
  the first n of a larger run are the prompts of a run with n), each compared with the mask from all n.

:func:`stable_mask` keeps only the mask's neurons selected in at least ``threshold`` of the resamples
(stability selection, Meinshausen & Buehlmann 2010): fewer neurons, each of which does not hinge on a
handful of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from analysis.attribution.ragged import zero_missing
from analysis.errors import PrunescopeError
from analysis.pruning.copying import CopyingScores, select_top_k
from analysis.pruning.mask import NeuronMask

RESAMPLES = 200
STABLE_SHARE = 0.8  # a neuron selected in at least this share of the resamples is called stable


def jaccard(first: set, second: set) -> float:
    """|A & B| / |A | B|; 1 for two empty sets."""
    union = first | second
    return len(first & second) / len(union) if union else 1.0


@dataclass
class MaskStability:
    """The bootstrap view and the more-prompts view of one mask's dependence on its scoring prompts."""

    k: int
    prompts: int
    resamples: int
    jaccard_mean: float
    jaccard_ci95: tuple[float, float]
    frequency: dict[tuple[int, int], float]  # neuron -> share of resamples selecting it (the mask's and others)
    by_prompts: dict[int, float] = field(default_factory=dict)  # first n prompts -> Jaccard with the mask

    def stable_neurons(self, mask: NeuronMask, threshold: float = STABLE_SHARE) -> list[tuple[int, int]]:
        return [n for n in sorted(mask.neurons) if self.frequency.get(n, 0.0) >= threshold]

    def describe(self, mask: NeuronMask, threshold: float = STABLE_SHARE) -> str:
        """One sentence for the page and the CLI."""
        low, high = self.jaccard_ci95
        stable = len(self.stable_neurons(mask, threshold))
        text = (f"over {self.resamples} bootstrap resamples of the {self.prompts} scoring prompts, the top {self.k} "
                f"overlaps this mask by Jaccard {self.jaccard_mean:.2f} (95 % {low:.2f}-{high:.2f}); {stable} of "
                f"its {len(mask)} neurons are selected in at least {threshold:.0%} of them")
        if len(self.by_prompts) > 1:
            text += "; from the first " + ", ".join(
                f"{n}" for n in self.by_prompts) + " prompts: Jaccard " + " / ".join(
                f"{value:.2f}" for value in self.by_prompts.values()) + " with it"
        return text


def _normalized(scored: CopyingScores) -> torch.Tensor:
    """[used prompts, layers, neurons]: each used prompt's attributions over its total |attribution|."""
    per_prompt = scored.ig.per_prompt[torch.tensor(scored.used, dtype=torch.bool)].double()
    return per_prompt / zero_missing(per_prompt).abs().sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def mask_stability(scored: CopyingScores, mask: NeuronMask, per_layer: bool = False,
                   layers: tuple[int, int] | None = None, resamples: int = RESAMPLES, seed: int = 0,
                   prompt_counts: Sequence[int] | None = None) -> MaskStability:
    """Bootstrap and more-prompts stability of ``mask``, the top ``len(mask)`` (or ``k`` per layer) of
    ``scored`` (see the module docstring). ``prompt_counts``: the first-n prompt counts to compare (default
    n/4, n/2 and n)."""
    normalized = _normalized(scored)
    count = normalized.shape[0]
    if count < 2:
        raise PrunescopeError("mask stability needs at least 2 scoring prompts")
    k = int(mask.meta.get("k", len(mask))) if per_layer else len(mask)
    chosen = set(mask.neurons)

    def top(scores: torch.Tensor) -> set[tuple[int, int]]:
        return set(select_top_k(scores.float(), k, per_layer=per_layer, layers=layers).neurons)

    rng = np.random.default_rng(seed)
    weights = torch.from_numpy(rng.multinomial(count, [1 / count] * count, size=resamples) / count)
    means = torch.einsum("bp,pln->bln", weights, normalized)  # each resample's mean scores
    overlaps: list[float] = []
    selected: dict[tuple[int, int], int] = {}
    for replicate in means:
        picked = top(replicate)
        overlaps.append(jaccard(picked, chosen))
        for neuron in picked:
            selected[neuron] = selected.get(neuron, 0) + 1
    low, high = np.quantile(overlaps, [0.025, 0.975])
    used_positions = [i for i, used in enumerate(scored.used) if used]
    total = len(scored.used)
    counts = prompt_counts or sorted({max(2, total // 4), max(2, total // 2), total})
    by_prompts = {}
    for first_n in counts:
        rows = [j for j, position in enumerate(used_positions) if position < first_n]
        if len(rows) >= 1:
            by_prompts[first_n] = jaccard(top(normalized[rows].mean(dim=0)), chosen)
    return MaskStability(k, count, resamples, float(np.mean(overlaps)), (float(low), float(high)),
                         {neuron: hits / resamples for neuron, hits in selected.items()}, by_prompts)


def stable_mask(mask: NeuronMask, stability: MaskStability, threshold: float = STABLE_SHARE) -> NeuronMask:
    """``mask`` without the neurons selected in fewer than ``threshold`` of the bootstrap resamples."""
    if not 0 < threshold <= 1:
        raise PrunescopeError(f"stability threshold {threshold} is not in (0, 1]")
    kept = stability.stable_neurons(mask, threshold)
    return NeuronMask.from_pairs(kept, **{**mask.meta, "stable_share": threshold,
                                          "stability_resamples": stability.resamples})
