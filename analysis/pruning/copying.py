"""Copying neurons (arXiv 2410.01288): score, select the top-k, random controls.

**Copying score.** Neuron IG on N prompts of the copying task's *fit* split, of one of two targets:

- ``copy`` (the default): logit of the copied demonstration answer minus logit of the gold answer. A neuron
  scores high when it pushes the model toward the copy *rather than* the right answer.
- ``copy-prob`` (the paper's): the probability of the copied answer, as 2410.01288 attributes the model's
  probability of its copying error.

The copied answer is the demonstration answer whose first token the model prefers at the answer position.
Each prompt's attribution map is divided by its total absolute attribution over all layers and neurons (so
every prompt weighs the same, whatever its logit scale), then the maps are averaged over the prompts used:

- ``all`` prompts (the default), or
- ``copied``: only the prompts on which the unpruned model actually copies, i.e. whose greedy answer is a
  copy error, or whose copied answer's first token outranks the gold one (positive ``copy`` target). The
  paper scores its error cases; a neuron that pushes toward copying where the model does not copy anyway
  is not behind the errors.

A positive score means the neuron pushes toward copying; the top-k scores (overall or per layer, optionally
within a layer range) are the mask. IG is computed once for all N prompts and cached; the prompt filter and
the selection are cheap and run after it. k is chosen in :mod:`analysis.pruning.autok`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.attribution.quadrature import Quadrature
from analysis.attribution.ragged import selectable, zero_missing
from analysis.attribution.runs import attribute_task, stored_attribution
from analysis.attribution.targets import COPY_TARGETS, CopyTarget, clean_logits
from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from analysis.evaluation.icl import evaluate_task
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask
from analysis.runner import Runner
from analysis.tasks.builtin import builtin_tasks
from analysis.tasks.task import Task

COPYING_TASK = "vowel-count"
ScorePrompts = Literal["all", "copied"]
SCORE_PROMPTS: tuple[ScorePrompts, ...] = get_args(ScorePrompts)


def copying_splits(seed: int = 0) -> tuple[Task, Task]:
    """(fit, held-out) splits of the copying task: scores come from fit, k is chosen on held-out."""
    return builtin_tasks()[COPYING_TASK].split(heldout_fraction=0.3, seed=seed)


@dataclass
class CopyingScores:
    """Copying scores [layers, neurons], the IG run behind them, and which of its prompts entered the mean."""

    scores: torch.Tensor
    ig: NeuronIGResult
    used: list[bool]
    options: dict = field(default_factory=dict)

    @property
    def n_used(self) -> int:
        return sum(self.used)


def normalized_copy_scores(result: NeuronIGResult, used: Sequence[bool] | None = None) -> torch.Tensor:
    """Mean over the ``used`` prompts (default: all) of each prompt's attributions divided by its total
    absolute attribution: [L, N]."""
    per_prompt = result.per_prompt
    if used is not None:
        per_prompt = per_prompt[torch.tensor(list(used), dtype=torch.bool)]
    total = zero_missing(per_prompt).abs().sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return (per_prompt / total).mean(dim=0)  # NaN stays where a narrower layer has no such neuron


def copying_scores(loaded: LoadedModel, n: int = 64, shots: int = 4, seed: int = 0, steps: int = 4,
                   quadrature: Quadrature = "adaptive", target: CopyTarget = "copy", prompts: ScorePrompts = "all",
                   cache: ResultsCache | None = None, progress: Callable[[int, int], None] | None = None,
                   pool: Runner | None = None, task: str | None = None) -> CopyingScores:
    """Each neuron's copying score: its IG attribution to ``target`` on the copying task's fit split (or on
    the built-in ``task``), normalised per prompt and averaged (module docstring).

    Args:
        loaded: the model.
        n, shots, seed: the scoring prompts.
        steps, quadrature: the IG rule (:func:`analysis.neuron_ig`).
        target: ``copy`` (logit(copied) - logit(gold)), ``copy-prob`` (the paper's probability of the copied
            answer) or ``echo`` (logit(the query repeated) - logit(gold)).
        prompts: ``all``, or ``copied``: only the prompts where the unpruned model copies (echoes, for the
            echo target) or favours the copy.
        cache: read a stored IG run from it and store a new one (:func:`stored_copying_scores` only reads).
        progress: ``progress(done, total)`` in prompts; pool: a :class:`analysis.runner.Runner` for the IG.
        task: a built-in task to score on instead of the copying task (e.g. an echo-heavy one for ``echo``).

    Returns:
        :class:`CopyingScores`: ``scores`` [layers, neurons], the IG run and which prompts were used.

    Raises:
        PrunescopeError: n < 1, an unknown target, prompts option or task, or ``copied`` with no such prompt.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> scored = ps.copying_scores(model, n=2, shots=2)
        >>> ps.select_top_k(scored.scores, 3).meta["method"], scored.scores.shape
        ('copying-ig', torch.Size([4, 384]))
    """
    fit = _scoring_task(n, target, prompts, task)
    result = attribute_task(loaded, fit, target, n=n, shots=shots, seed=seed, steps=steps, quadrature=quadrature,
                            cache=cache, progress=progress, pool=pool)
    return _scored(loaded, fit, result, n, shots, seed, steps, quadrature, target, prompts, cache, task)


def stored_copying_scores(loaded: LoadedModel, n: int = 64, shots: int = 4, seed: int = 0, steps: int = 4,
                          quadrature: Quadrature = "adaptive", target: CopyTarget = "copy",
                          prompts: ScorePrompts = "all", cache: ResultsCache | None = None,
                          task: str | None = None) -> CopyingScores | None:
    """:func:`copying_scores` when ``cache`` (default: the user's cache, then the shipped results) holds its
    IG run, else None; no IG is computed (with ``copied``, the unpruned model's answers may be)."""
    fit = _scoring_task(n, target, prompts, task)
    cache = cache if cache is not None else ResultsCache()
    result = stored_attribution(loaded, fit, target, n=n, shots=shots, seed=seed, steps=steps, quadrature=quadrature,
                                cache=cache)
    return None if result is None else _scored(loaded, fit, result, n, shots, seed, steps, quadrature, target,
                                               prompts, cache, task)


def _scoring_task(n: int, target: str, prompts: str, task: str | None) -> Task:
    """The scoring prompts' task, after checking the options."""
    if n < 1:
        raise PrunescopeError(f"need at least one prompt to score copying neurons (got N = {n})")
    if target not in COPY_TARGETS:
        raise PrunescopeError(f"unknown copying target {target!r}: use {' or '.join(COPY_TARGETS)}")
    if prompts not in SCORE_PROMPTS:
        raise PrunescopeError(f"unknown scoring prompts {prompts!r}: use {' or '.join(SCORE_PROMPTS)}")
    if task is not None and task not in builtin_tasks():
        raise PrunescopeError(f"unknown scoring task {task!r}: name a built-in task")
    return copying_splits()[0] if task is None else builtin_tasks()[task]


def _scored(loaded: LoadedModel, fit: Task, result: NeuronIGResult, n: int, shots: int, seed: int, steps: int,
            quadrature: str, target: str, prompts: str, cache: ResultsCache | None,
            task: str | None) -> CopyingScores:
    """CopyingScores from an IG run: with ``copied``, only the prompts the model copies (echoes) on."""
    used = [True] * len(result.inputs)
    if prompts == "copied":
        bias = "echo" if target == "echo" else "copy"
        used = copied_prompts(loaded, fit, result, shots, n, seed, cache, bias)
        if not any(used):
            raise PrunescopeError(f"none of the {n} scoring prompts is a{'n' if bias == 'echo' else ''} {bias} "
                                  f"error of the unpruned model or favours the {bias}; score with prompts=all or "
                                  "more prompts")
    options = {"n": n, "shots": shots, "seed": seed, "steps": steps, "quadrature": quadrature, "target": target,
               "prompts": prompts, **({"task": task} if task is not None else {})}
    return CopyingScores(normalized_copy_scores(result, used), result, used, options)


def copied_prompts(loaded: LoadedModel, fit: Task, result: NeuronIGResult, shots: int, n: int, seed: int,
                   cache: ResultsCache | None, bias: str = "copy") -> list[bool]:
    """Per scoring prompt: does the unpruned model copy (greedy answer a copy error, or the copied answer's
    first token above the gold one's)? With ``bias="echo"``: does it echo the query?"""
    answers = evaluate_task(loaded, fit, shots, n, seed=seed, cache=cache).records
    copies = (answers["outcome"] == bias).tolist()
    margins = []
    for item in result.inputs:
        copied, gold = item.target.token_ids
        logits = clean_logits(loaded, list(item.input_ids))  # under the lock, one prompt at a time
        margins.append(float(logits[copied] - logits[gold]))
    return [bool(c or m > 0) for c, m in zip(copies, margins)]


def parse_layer_range(text: str, n_layers: int) -> tuple[int, int] | None:
    """'' -> None (all layers); 'a-b' -> (a, b) inclusive; 'a' -> (a, a). One-line error otherwise."""
    text = (text or "").strip()
    if not text:
        return None
    shown = text if len(text) <= 20 else text[:20] + "…"
    low, _, high = text.partition("-")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:  # also a number of more than 4300 digits
        raise PrunescopeError(f"layer range {shown!r} is not 'first-last' (e.g. 10-20)") from None
    if not 0 <= bounds[0] <= bounds[1] < n_layers:
        raise PrunescopeError(f"layer range {shown!r} is outside the model's layers 0-{n_layers - 1}")
    return bounds


def select_top_k(scores: torch.Tensor, k: int, per_layer: bool = False, layers: tuple[int, int] | None = None,
                 **meta) -> NeuronMask:
    """A mask of the highest-scoring neurons.

    Args:
        scores: [layers, neurons], e.g. :attr:`CopyingScores.scores` or :attr:`NeuronIGResult.scores`
            (highest first: signed, so a neuron that lowers the target is never selected); NaN marks a neuron
            a narrower layer does not have (analysis/attribution/ragged.py), never selected.
        k: neurons overall, or in each layer with ``per_layer``; 0 gives an empty mask.
        per_layer: take the top ``k`` of every layer instead of overall.
        layers: an inclusive (first, last) layer range to select in (default: all).
        meta: recorded in the mask's ``meta`` (how it was made).

    Returns:
        A :class:`NeuronMask`.

    Raises:
        PrunescopeError: ``k`` beyond the neurons available, or a layer range outside the model.

    Example::

        >>> import torch, analysis as ps
        >>> ps.select_top_k(torch.tensor([[0.1, 0.9, 0.3], [0.8, -1.0, 0.2]]), 2).by_layer()
        {0: [1], 1: [0]}
    """
    n_layers, width = scores.shape
    first, last = layers if layers is not None else (0, n_layers - 1)
    if not 0 <= first <= last < n_layers:
        raise PrunescopeError(f"layer range {first}-{last} is outside the model's layers 0-{n_layers - 1}")
    span = last - first + 1
    window = scores[first:last + 1]
    counts = (~window.isnan()).sum(dim=1).tolist()  # the neurons each layer has
    limit = min(counts) if per_layer else sum(counts)
    if not 0 <= k <= limit:
        where = (" per layer" if len(set(counts)) == 1 else " in its narrowest layer") if per_layer else (
            " in all" if span == n_layers else f" in layers {first}-{last}")
        raise PrunescopeError(f"k={k} is out of range: the model has {limit} neurons{where}"
                              + ("" if k >= 0 else "; k must be >= 0"))
    window = selectable(window)
    if per_layer:
        index = window.topk(k, dim=1).indices if k else torch.empty(span, 0, dtype=torch.long)
        pairs = [(first + layer, int(i)) for layer in range(span) for i in index[layer]]
    else:
        flat = window.flatten().topk(k).indices if k else torch.empty(0, dtype=torch.long)
        pairs = [(first + int(i) // width, int(i) % width) for i in flat]
    extra = {"layers": [first, last]} if layers is not None else {}
    return NeuronMask.from_pairs(pairs, method="copying-ig", k=k, per_layer=per_layer, **extra, **meta)


def mask_neurons_table(mask: NeuronMask, scores: torch.Tensor | None) -> list[dict]:
    """The mask's neurons as rows (layer, neuron, copying score when known), highest score first."""
    rows = [{"layer": layer, "neuron": index,
             "score": float(scores[layer, index]) if scores is not None and layer < len(scores) else None}
            for layer, index in sorted(mask.neurons)]
    return sorted(rows, key=lambda r: -(r["score"] if r["score"] is not None else float("-inf")))


def random_mask_like(mask: NeuronMask, neuron_counts: Sequence[int], seed: int) -> NeuronMask:
    """A control mask with the same number of neurons in each layer, drawn uniformly among the neurons
    ``mask`` leaves alone."""
    rng = random.Random(f"random-control|{seed}")
    pairs = []
    for layer, indices in mask.by_layer().items():
        taken = set(indices)
        pool = [i for i in range(neuron_counts[layer]) if i not in taken]
        pairs += [(layer, i) for i in rng.sample(pool, min(len(indices), len(pool)))]
    return NeuronMask.from_pairs(pairs, method="random-control", seed=seed)
