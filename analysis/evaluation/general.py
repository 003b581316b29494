"""General capability after pruning: next-token loss on general text, paired by passage.

A mask that fixes an ICL bias can still damage the model elsewhere (the first criticism of 2410.01288's
reviewers). The check: the mean next-token loss (nats per token) of each passage of a general text sample,
shipped with the project (assets/text/general-passages.json: 300 definition paragraphs of the Jargon File
4.4.7, which is in the public domain; ~67 words each), under the unpruned model, the mask and random masks of
the same size and layers, the same passages for all. Comparisons are paired by passage: the mean of the
per-passage differences with a 95 % percentile-bootstrap interval over passages (with two or more random
masks, each resample also redraws the masks, as for the ICL numbers), a sign-flip test over passages against
the unpruned model and the interval's bootstrap p against the random masks. The perplexity ratio is
``exp(delta)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from analysis.cache import ResultsCache, stable_hash
from analysis.evaluation.paired import (
    RESAMPLES,
    Estimate,
    bootstrap_p,
    draw_resamples,
    format_p,
    percentile_interval,
)
from analysis.evaluation.significance import sign_flip_p
from analysis.evaluation.verdicts import signed
from analysis.models.loader import LoadedModel
from analysis.paths import ASSETS_DIR
from analysis.pruning.mask import NeuronMask

PASSAGES_FILE = ASSETS_DIR / "text" / "general-passages.json"
GENERAL_VERSION = "general-loss/1"
MAX_TOKENS = 128  # a passage is cut to this many tokens (and to the model's context)
PASSAGES = 100  # the default sample: the first 100 of the 300 shipped (5 conditions: ~2 min for SmolLM2 on 2 cores)


@lru_cache(maxsize=1)
def shipped_passages() -> tuple[str, ...]:
    return tuple(json.loads(PASSAGES_FILE.read_text(encoding="utf-8"))["passages"])


def passage_losses(loaded: LoadedModel, passages: Sequence[str], mask: NeuronMask | None = None,
                   progress: Callable[[int, int], None] | None = None, batch_size: int = 8) -> torch.Tensor:
    """Mean next-token loss (nats per predicted token) of each passage under ``mask``: float64 [passages].
    Passages of similar length share a batch, padded on the right: every family here is causal, so a pad after
    a passage changes none of its positions' outputs. Each batch holds the model's lock (and the mask)."""
    limit = min(MAX_TOKENS, loaded.adapter.max_context() or MAX_TOKENS)
    encoded = [loaded.tokenizer(text).input_ids[:limit] for text in passages]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    losses = torch.zeros(len(encoded), dtype=torch.float64)
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        inputs = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            inputs[row, :len(encoded[i])] = torch.tensor(encoded[i])
        inputs = inputs.to(loaded.device)
        context = mask.applied(loaded) if mask is not None and len(mask) else loaded.lock
        with context, torch.no_grad():
            hidden = loaded.adapter.base_model(input_ids=inputs, use_cache=False).last_hidden_state
            for row, i in enumerate(batch):
                length = len(encoded[i])
                logits = loaded.adapter.logits(hidden[row, :length - 1]).double()
                losses[i] = torch.nn.functional.cross_entropy(logits, inputs[row, 1:length])
        done += len(batch)
        if progress is not None:
            progress(done, len(passages))
    return losses


def cached_losses(loaded: LoadedModel, passages: Sequence[str], mask: NeuronMask | None,
                  cache: ResultsCache | None, progress: Callable[[int, int], None] | None = None,
                  compute_missing: bool = True) -> torch.Tensor | None:
    """:func:`passage_losses` through the results cache (None when not cached and not ``compute_missing``)."""
    if cache is None:
        return passage_losses(loaded, passages, mask, progress)
    parts = {"model": loaded.fingerprint(), "passages": stable_hash(list(passages)), "max_tokens": MAX_TOKENS,
             "mask": sorted(mask.neurons) if mask else []}
    if not compute_missing:
        return cache.get("general-loss", cache.key("general-loss", GENERAL_VERSION, parts))
    value, _ = cache.get_or_compute("general-loss", GENERAL_VERSION, parts,
                                    lambda: passage_losses(loaded, passages, mask, progress))
    return value


@dataclass
class GeneralComparison:
    """Per-condition mean losses (nats/token) and the paired changes of the pruned model."""

    passages: int
    loss: dict[str, float]  # baseline | pruned | random (the controls' mean)
    vs_baseline: Estimate
    vs_random: Estimate | None
    random_vs_baseline: Estimate | None

    def to_json(self) -> dict:
        out = {"passages": self.passages, "loss_nats_per_token": self.loss, "pruned_vs_baseline":
               self.vs_baseline.to_json(), "sentence": self.sentence()}
        if self.vs_random is not None and self.random_vs_baseline is not None:
            out.update({"pruned_vs_random": self.vs_random.to_json(),
                        "random_vs_baseline": self.random_vs_baseline.to_json()})
        return out

    def sentence(self) -> str:
        """'On general text (200 passages), pruning raises the loss by 0.052 nats/token (95 % CI +0.031 to
        +0.074; perplexity x1.053, p < 0.001); random masks of the same size change it by +0.004 (…).'"""
        text = f"On general text ({self.passages} passages), pruning {_change(self.vs_baseline)}"
        if self.random_vs_baseline is not None:
            text += f"; random masks of the same size {_change(self.random_vs_baseline, plural=True)}"
        if self.vs_random is not None:
            low, high = self.vs_random.ci95
            text += (f"; pruned minus random: {signed(self.vs_random.delta, 3)} (95 % CI {signed(low, 3)} to "
                     f"{signed(high, 3)})")
        return text + "."


def _change(estimate: Estimate, plural: bool = False) -> str:
    """'raises the loss by 0.052 nats/token (95 % CI +0.031 to +0.074; perplexity x1.053, p < 0.001)', or
    'changes the loss by +0.004 …' when the interval includes 0."""
    low, high = estimate.ci95
    ending = "" if plural else "s"
    if low > 0 or high < 0:
        head = f"{'raise' if estimate.delta > 0 else 'lower'}{ending} the loss by {abs(estimate.delta):.3f}"
    else:
        head = f"change{ending} the loss by {signed(estimate.delta, 3)}"
    test = "" if estimate.p is None else f", {format_p(estimate.p)}"
    return (f"{head} nats/token (95 % CI {signed(low, 3)} to {signed(high, 3)}; "
            f"perplexity x{np.exp(estimate.delta):.3f}"
            f"{test})")


def compare_losses(losses: dict[str, torch.Tensor], resamples: int = RESAMPLES, seed: int = 0) -> GeneralComparison:
    """Paired comparisons of per-passage losses: ``baseline``, ``pruned`` and ``random-<seed>`` entries."""
    base, pruned = losses["baseline"].numpy(), losses["pruned"].numpy()
    controls = [losses[name].numpy() for name in sorted(losses) if name.startswith("random-")]
    count = len(base)
    picks, weights = draw_resamples({"passages": count}, len(controls), resamples, seed)
    rows = picks["passages"]  # [resamples, passages]
    diff = pruned - base
    vs_baseline = Estimate(float(diff.mean()), percentile_interval(diff[rows].mean(axis=1)), sign_flip_p(diff))
    loss = {"baseline": float(base.mean()), "pruned": float(pruned.mean())}
    vs_random = random_vs_baseline = None
    if controls:
        stacked = np.stack(controls)  # [controls, passages]
        mixed = np.einsum("bc,cp->bp", weights, stacked)  # each resample's mix of the random masks
        replicate = (pruned[rows] - np.take_along_axis(mixed, rows, axis=1)).mean(axis=1)
        mean_random = stacked.mean(axis=0)
        vs_random = Estimate(float((pruned - mean_random).mean()), percentile_interval(replicate),
                             bootstrap_p(replicate))
        random_diff = mean_random - base
        random_vs_baseline = Estimate(float(random_diff.mean()),
                                      percentile_interval(random_diff[rows].mean(axis=1)), sign_flip_p(random_diff))
        loss["random"] = float(mean_random.mean())
    return GeneralComparison(count, loss, vs_baseline, vs_random, random_vs_baseline)


def general_capability(loaded: LoadedModel, mask: NeuronMask, controls: Sequence[NeuronMask],
                       passages: Sequence[str] | None = None, cache: ResultsCache | None = None,
                       progress: Callable[[int, int], None] | None = None) -> GeneralComparison:
    """Loss on general text of the unpruned model, ``mask`` and each random control (same passages), compared
    (module docstring)."""
    comparison = _general(loaded, mask, controls, passages, cache, progress, compute_missing=True)
    assert comparison is not None  # everything missing was computed
    return comparison


def stored_general_capability(loaded: LoadedModel, mask: NeuronMask, controls: Sequence[NeuronMask],
                              passages: Sequence[str] | None = None,
                              cache: ResultsCache | None = None) -> GeneralComparison | None:
    """What :func:`general_capability` would return, when ``cache`` (default: the user's cache, then the
    shipped results) holds every condition's losses; None otherwise (nothing is computed)."""
    return _general(loaded, mask, controls, passages, cache if cache is not None else ResultsCache(), None,
                    compute_missing=False)


def _general(loaded: LoadedModel, mask: NeuronMask, controls: Sequence[NeuronMask], passages: Sequence[str] | None,
             cache: ResultsCache | None, progress: Callable[[int, int], None] | None,
             compute_missing: bool) -> GeneralComparison | None:
    passages = list(passages if passages is not None else shipped_passages()[:PASSAGES])
    conditions = {"baseline": None, "pruned": mask, **{f"random-{i}": c for i, c in enumerate(controls)}}
    total, losses = len(conditions) * len(passages), {}
    for offset, (name, condition) in enumerate(conditions.items()):
        step = None if progress is None else (
            lambda done, _total, start=offset * len(passages): progress(start + done, total))
        value = cached_losses(loaded, passages, condition, cache, step, compute_missing)
        if value is None:
            return None
        losses[name] = value
    return compare_losses(losses)
