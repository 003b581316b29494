"""Faithfulness of token relevance by perturbation: replace tokens in relevance order and track the target.

For one prompt of T tokens the last position is the one whose prediction is tracked, so it is never
replaced; the other T - 1 positions are candidates. At fraction f the first ``round(f * (T - 1))`` positions
of the order are replaced by the replacement token (``"pad"``: the tokenizer's pad token, which the loader
sets to EOS when missing; ``"eos"``; or an explicit id), keeping the length, so positions do not shift.
The curve is the probability of the target token at the last position at each fraction (one batched forward).

``faithfulness`` compares methods over n prompts of a task, with the target fixed at the model's top
prediction on the unperturbed prompt. ``most_first`` (most relevant removed first): a faithful method makes
the probability fall fast, so a *low* AUC is better. ``least_first`` (the reverse order): the probability
should hold, so a *high* AUC is better. ``random`` (one seeded random order per prompt, and its reverse) is
the baseline. AUC is the trapezoid area under probability vs fraction (probability units; fractions 0..1
give AUCs in [0, 1]), averaged over prompts; auc_std is the population std over prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypedDict

import numpy as np
import pandas as pd
import torch

from analysis.attribution.propagation import LRP_FAMILIES
from analysis.attribution.tokens import METHODS, prompt_ids, token_relevance, top_prediction
from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel, input_embedding_weight
from analysis.runner import Runner

DEFAULT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(11))
ORDERS = ("most_first", "least_first")
COLUMNS = ["method", "order", "auc_mean", "auc_std", "n", "note"]
ROW_TOKENS = 16384  # tokens per batched forward of perturbed copies

Progress = Callable[[int, int], None]


class CurveOptions(TypedDict):
    """:func:`prompt_curves`' settings, the same for every shard."""

    fractions: tuple[float, ...]
    replacement: str | int
    steps: int


def replacement_id(loaded: LoadedModel, replacement: str | int = "pad") -> int:
    """The token that stands in for removed tokens: ``pad`` (pad, else EOS), ``eos``, or an id."""
    tok = loaded.tokenizer
    if isinstance(replacement, (int, np.integer)) and not isinstance(replacement, bool):
        token = int(replacement)
    elif replacement in ("pad", "eos"):
        token = tok.pad_token_id if replacement == "pad" and tok.pad_token_id is not None else tok.eos_token_id
    else:
        raise PrunescopeError(f"unknown replacement {replacement!r}: use 'pad', 'eos' or a token id")
    vocab = input_embedding_weight(loaded.model).shape[0]
    if token is None or not 0 <= token < vocab:
        raise PrunescopeError(f"replacement token {token} is not in the vocabulary (the tokenizer has no "
                              "pad/eos token?); pass a token id")
    return token


def _check_order(order: Sequence[int], length: int) -> list[int]:
    """Positions 0..T-2 in order; the last position (T-1) is dropped, anything else out of range is an error."""
    order = [int(i) for i in order]
    bad = [i for i in order if not 0 <= i < length]
    if bad:
        raise PrunescopeError(f"position {bad[0]} is outside the prompt (0..{length - 1})")
    if len(set(order)) != len(order):
        raise PrunescopeError("the order repeats a position")
    return [i for i in order if i != length - 1]


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = np.asarray(list(fractions), dtype=float)
    if values.ndim != 1 or not len(values) or ((values < 0) | (values > 1)).any():
        raise PrunescopeError("fractions must be a non-empty list of numbers in [0, 1]")
    return values


def perturbation_curve(loaded: LoadedModel, text: str, order: Sequence[int], target_id: int,
                       fractions: Sequence[float] = DEFAULT_FRACTIONS, replacement: str | int = "pad"
                       ) -> np.ndarray:
    """Probability of ``target_id`` at the last position after replacing the first ``round(f * (T - 1))``
    positions of ``order`` (never the last one), for each f in ``fractions``."""
    ids = prompt_ids(loaded, text)
    return _curve(loaded, ids, _check_order(order, len(ids)), int(target_id), _check_fractions(fractions),
                  replacement_id(loaded, replacement))


@torch.no_grad()
def _curve(loaded: LoadedModel, ids: list[int], order: Sequence[int], target: int, fractions: np.ndarray,
           token: int) -> np.ndarray:
    candidates = len(ids) - 1
    rows = torch.tensor([ids] * len(fractions))
    for row, fraction in enumerate(fractions):
        k = min(len(order), int(round(fraction * candidates)))
        rows[row, order[:k]] = token
    per_pass = max(1, ROW_TOKENS // len(ids))
    probs = []
    with loaded.lock:
        for start in range(0, len(rows), per_pass):
            batch = rows[start:start + per_pass].to(loaded.device)
            hidden = loaded.adapter.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, -1]
            probs.append(torch.softmax(loaded.adapter.logits(hidden).float(), dim=-1)[:, target].cpu())
    return torch.cat(probs).double().numpy()


def auc(curve: np.ndarray, fractions: Sequence[float] | np.ndarray = DEFAULT_FRACTIONS) -> float:
    """Trapezoid area under ``curve`` over ``fractions``."""
    y, x = np.asarray(curve, dtype=float), np.asarray(list(fractions), dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def relevance_order(scores: torch.Tensor) -> list[int]:
    """Positions 0..T-2 from most to least relevant (stable for ties; the last position is excluded)."""
    values = scores[:-1].double()
    return [int(i) for i in torch.sort(-values, stable=True).indices]


def _plan(loaded: LoadedModel, methods: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The methods to run (each once, ``random`` last) and a note for each the model's family cannot run."""
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS and m != "random"]
    if unknown:
        raise PrunescopeError(f"unknown relevance method {unknown[0]!r}: use {', '.join(METHODS)} or random")
    methods = [m for m in methods if m != "random"] + ["random"]
    notes = {m: f"{m} needs a {' or '.join(LRP_FAMILIES)} model, not {loaded.family}"
             for m in methods if m == "lrp" and loaded.family not in LRP_FAMILIES}
    return methods, notes


def prompt_curves(loaded: LoadedModel, task, methods: Sequence[str], n: int, shots: int, seed: int,
                  indices: Sequence[int], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  replacement: str | int = "pad", steps: int = 32, progress: Progress | None = None
                  ) -> list[tuple[int, dict]]:
    """For prompts ``indices`` of the ``n`` that :func:`faithfulness` samples: (target id, curve per (method,
    order)), ``progress(done, len(indices))`` after each. A shard of the work: each prompt's curves depend on
    nothing but the prompt and its index."""
    methods, notes = _plan(loaded, methods)
    grid, token = _check_fractions(fractions), replacement_id(loaded, replacement)
    prompts = task.sample_prompts(shots, n, seed)
    out = []
    for k in indices:
        ids = prompt_ids(loaded, prompts[k].text)
        curves = {}
        with loaded.lock:
            target = top_prediction(loaded, torch.tensor([ids], device=loaded.device))
            for method in methods:
                if method in notes:
                    continue
                if method == "random":
                    first = [int(i) for i in np.random.default_rng([seed, k]).permutation(len(ids) - 1)]
                else:
                    relevance = token_relevance(loaded, prompts[k].text, method, target_id=target, steps=steps)
                    first = relevance_order(relevance.scores)
                for order, positions in zip(ORDERS, (first, first[::-1])):
                    curves[(method, order)] = _curve(loaded, ids, positions, target, grid, token)
        out.append((target, curves))
        if progress:
            progress(len(out), len(indices))
    return out


def faithfulness(loaded: LoadedModel, task, methods: Sequence[str], n: int, shots: int = 2, seed: int = 0,
                 progress: Progress | None = None, *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 replacement: str | int = "pad", steps: int = 32, pool: Runner | None = None) -> pd.DataFrame:
    """How faithful token-relevance methods are: replace tokens in each method's relevance order and track
    the probability of the model's prediction (module docstring).

    Args:
        loaded: the model; task: the task whose prompts are perturbed.
        methods: relevance methods of :func:`analysis.token_relevance` (``random`` is always added).
        n, shots, seed: the prompts.
        progress: ``progress(done, total)`` in prompts.
        fractions: the replaced fractions of each prompt's tokens (0 to 1).
        replacement: ``pad``, ``eos`` or a token id put in place of a removed token.
        steps: IG's steps (for ``ig``).
        pool: a :class:`analysis.runner.Runner` (e.g. Ray's actors): prompts run there as shards, same result.

    Returns:
        A DataFrame, one row per (method, order) with columns ``COLUMNS`` (methods in the given order,
        ``random`` last); a method the family does not support (``lrp`` on a family without rules) has NaN AUCs,
        n = 0 and a ``note``. ``df.attrs`` holds ``fractions``, the mean curves (``curves[(method, order)]``)
        and the per-prompt ``targets``.

    Raises:
        PrunescopeError: an unknown method, fractions outside 0..1, out-of-range settings.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> table = ps.faithfulness(model, ps.get_task("antonyms"), ["gxi"], n=2)
        >>> list(table.method), list(table.order)
        (['gxi', 'gxi', 'random', 'random'], ['most_first', 'least_first', 'most_first', 'least_first'])
    """
    methods, notes = _plan(loaded, methods)
    grid = _check_fractions(fractions)
    count = len(task.sample_prompts(shots, n, seed))
    options = CurveOptions(fractions=tuple(grid.tolist()), replacement=replacement, steps=steps)
    if pool is not None:
        per_prompt = pool.faithfulness(task, methods, n, shots, seed, count, options, progress)
    else:
        per_prompt = prompt_curves(loaded, task, methods, n, shots, seed, range(count), progress=progress, **options)
    targets = [target for target, _ in per_prompt]
    curves: dict[tuple[str, str], list[np.ndarray]] = {(m, o): [] for m in methods for o in ORDERS}
    for _, prompt in per_prompt:
        for key, curve in prompt.items():
            curves[key].append(curve)
    rows = []
    for (method, order), kept in curves.items():
        values = np.asarray([auc(curve, grid) for curve in kept])
        rows.append({"method": method, "order": order,
                     "auc_mean": float(values.mean()) if len(values) else float("nan"),
                     "auc_std": float(values.std()) if len(values) else float("nan"),
                     "n": len(values), "note": notes.get(method, "")})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.attrs.update(fractions=grid.tolist(), targets=targets,
                       curves={key: np.mean(c, axis=0) for key, c in curves.items() if c})
    return frame
