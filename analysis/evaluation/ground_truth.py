"""Ground-truth attribution benchmark: does a relevance method point at the token the answer comes from?

On prompts whose answer's source is known by construction (:mod:`analysis.evaluation.ground_truth_prompts`:
key -> value recall, copying, induction), each method of :func:`analysis.token_relevance` explains the
answer's logit and is scored on the prompts the model answers correctly (its top prediction is the answer's
first token), per prompt family:

* ``top1``: whether the most relevant candidate is a source token;
* ``rank``: the rank of the best-ranked source token among the candidates (1 = first);
* ``top1_cue``: the same as top1 with the cue (the queried key, the token before the copied one) also counted;
* ``auc``: the perturbation AUC of :mod:`analysis.evaluation.faithfulness` (most relevant replaced first,
  lower = more faithful) for the answer's probability.

Candidates are every position but the last (the prediction's own position, never a source) and the
tokenizer's special tokens (BOS: a sink of raw attention that no answer is copied from). Ties are scored as a
random tie-break would score them on average: with ``g`` non-source candidates strictly above the best source
score, ``e`` equal to it and ``s`` sources at it, top1 = s / (s + e) when g = 0 (else 0) and rank =
1 + g + e / (s + 1); a constant relevance vector scores exactly like ``random``, whose top1 and rank are
these expectations too (its AUC: one seeded random order per prompt). Intervals: 95 % percentile bootstrap
over prompts (``BOOTSTRAP`` resamples, seeded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from analysis.attribution.tokens import METHODS, token_relevance, top_prediction
from analysis.bounds import check
from analysis.device import dtype_name
from analysis.errors import PrunescopeError
from analysis.evaluation.faithfulness import DEFAULT_FRACTIONS, _curve, _plan, auc, relevance_order, replacement_id
from analysis.evaluation.ground_truth_prompts import PROMPT_FAMILIES, STYLES, Located, build_prompts, locate
from analysis.evaluation.paired import percentile_interval
from analysis.models.loader import LoadedModel
from analysis.models.toy import is_toy
from analysis.requests import Request

GROUND_TRUTH_VERSION = "1"
BOOTSTRAP = 1000
SCORES = ("top1", "rank", "top1_cue", "auc")
COLUMNS = ["family", "method", "n", "attempted", *[c for s in SCORES for c in (s, f"{s}_lo", f"{s}_hi")], "note"]
Progress = Callable[[int, int], None]
Positions = Sequence[int] | np.ndarray


def candidates(length: int, special: Sequence[int] = (), ids: Sequence[int] = ()) -> np.ndarray:
    """Positions 0..length-2 that are not special tokens (``ids[i] in special``)."""
    banned = set(int(s) for s in special)
    return np.array([i for i in range(length - 1) if not (ids and int(ids[i]) in banned)], dtype=int)


def source_scores(scores: Sequence[float] | np.ndarray, sources: Positions, among: Positions
                  ) -> tuple[float, float]:
    """(top1, rank) of the best source among the positions ``among`` (module docstring, ties included)."""
    values = np.asarray(scores, dtype=float)
    among_set = set(int(i) for i in among)
    chosen = [int(s) for s in sources if int(s) in among_set]
    if not chosen:
        raise PrunescopeError("no source position is among the candidates")
    if not np.isfinite(values[np.asarray(among, dtype=int)]).all():
        raise PrunescopeError("the relevance scores are not finite")
    best = values[chosen].max()
    others = values[np.setdiff1d(np.asarray(among, dtype=int), chosen)]
    above, equal = int((others > best).sum()), int((others == best).sum())
    at_best = int((values[chosen] == best).sum())
    return (at_best / (at_best + equal) if above == 0 else 0.0), 1.0 + above + equal / (at_best + 1)


def random_scores(sources: Positions, among: Positions) -> tuple[float, float]:
    """(top1, rank) a uniformly random order scores on average: a constant relevance vector's scores."""
    return source_scores(np.zeros(max(among) + 1 if len(among) else 1), sources, among)


def interval(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95 % percentile bootstrap interval over the values."""
    data = np.asarray(values, dtype=float)
    if not len(data):
        return float("nan"), float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(data), size=(BOOTSTRAP, len(data)))
    low, high = percentile_interval(data[draws].mean(1))
    return float(data.mean()), low, high


def default_style(loaded: LoadedModel) -> str:
    """``toy`` for the toy checkpoints (their corpus' letters and digits), ``words`` for any other model."""
    return "toy" if is_toy(loaded.name) else "words"


def score_prompt(loaded: LoadedModel, located: Located, methods: Sequence[str], steps: int = 32, seed: int = 0,
                 token: int | None = None) -> dict[str, dict[str, float]] | None:
    """Scores per method (and ``random``) for one located prompt, or None when the model's top prediction
    is not the answer's first token."""
    ids = list(located.input_ids)
    with loaded.lock:
        if top_prediction(loaded, torch.tensor([ids], device=loaded.device)) != located.target:
            return None
        among = candidates(len(ids), loaded.tokenizer.all_special_ids, ids)
        grid = np.asarray(DEFAULT_FRACTIONS)
        token = replacement_id(loaded) if token is None else token
        out = {}
        for method in methods:
            if method == "random":
                top1, rank = random_scores(located.sources, among)
                cue = random_scores(located.sources + located.cues, among)[0]
                order = [int(i) for i in np.random.default_rng([seed, len(ids), located.target]).permutation(
                    len(ids) - 1)]
            else:
                scores = token_relevance(loaded, located.prompt.text, method, target_id=located.target,
                                         steps=steps).scores.double().numpy()
                top1, rank = source_scores(scores, located.sources, among)
                cue = source_scores(scores, located.sources + located.cues, among)[0]
                order = relevance_order(torch.from_numpy(scores))
            curve = _curve(loaded, ids, order, located.target, grid, token)
            out[method] = {"top1": top1, "rank": rank, "top1_cue": cue, "auc": auc(curve, grid)}
    return out


def ground_truth(loaded: LoadedModel, methods: Sequence[str] = METHODS, n: int = 20,
                 families: Sequence[str] = PROMPT_FAMILIES, seed: int = 0, style: str | None = None,
                 steps: int = 32, progress: Progress | None = None) -> pd.DataFrame:
    """Score relevance methods against the known source of the answer (module docstring).

    Args:
        loaded: the model.
        methods: methods of :func:`analysis.token_relevance` (``random`` is always added, last).
        n: prompts per family (scored: those the model answers correctly).
        families: prompt families (``recall``, ``copy``, ``induction``).
        seed: the prompts' seed.
        style: ``toy`` or ``words`` (default: :func:`default_style`).
        steps: IG's steps.
        progress: ``progress(done, total)`` in prompts.

    Returns:
        A DataFrame, one row per (family, method), columns ``COLUMNS``: ``n`` prompts scored of ``attempted``
        (built and tokenised), each score's mean with its bootstrap interval (``_lo``, ``_hi``); a method
        the family cannot run (``lrp`` on a family without LRP rules) has n = 0 and a ``note``.

    Raises:
        PrunescopeError: an unknown method, family or style.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> table = ps.ground_truth(model, ["gxi"], n=2, families=["recall"])
        >>> list(table.method)
        ['gxi', 'random']
    """
    methods, notes = _plan(loaded, methods)
    style = default_style(loaded) if style is None else style
    if style not in STYLES:
        raise PrunescopeError(f"unknown prompt style {style!r}: use {' or '.join(STYLES)}")
    prompts = {family: build_prompts(family, n, seed, style) for family in dict.fromkeys(families)}
    runnable = [m for m in methods if m not in notes]
    total, done, rows = sum(len(p) for p in prompts.values()), 0, []
    for family, built in prompts.items():
        scored: list[dict[str, dict[str, float]]] = []
        attempted = 0
        for prompt in built:
            try:
                located = locate(loaded, prompt)
            except PrunescopeError:
                located = None  # the tokenizer merges the answer into the prompt: not a clean test
            if located is not None:
                attempted += 1
                result = score_prompt(loaded, located, runnable, steps, seed)
                if result is not None:
                    scored.append(result)
            done += 1
            if progress:
                progress(done, total)
        for method in methods:
            row = {"family": family, "method": method, "n": 0 if method in notes else len(scored),
                   "attempted": attempted, "note": notes.get(method, "")}
            for name in SCORES:
                values = [] if method in notes else [s[method][name] for s in scored]
                row[name], row[f"{name}_lo"], row[f"{name}_hi"] = interval(values, seed)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass(frozen=True)
class GroundTruth(Request[pd.DataFrame]):
    """One ground-truth benchmark run (:func:`ground_truth`) as a cached request."""

    methods: tuple[str, ...] = METHODS
    n: int = 20
    families: tuple[str, ...] = PROMPT_FAMILIES
    seed: int = 0
    style: str | None = None
    steps: int = 32

    kind: ClassVar[str] = "ground-truth"
    version: ClassVar[str] = GROUND_TRUTH_VERSION

    def __post_init__(self) -> None:
        unknown = [f for f in self.families if f not in PROMPT_FAMILIES] or \
            [m for m in self.methods if m not in (*METHODS, "random")]
        if unknown or not self.families:
            raise PrunescopeError(f"unknown prompt family or method {unknown[0] if unknown else '(none)'!r}: "
                                  f"families {', '.join(PROMPT_FAMILIES)}; methods {', '.join(METHODS)}")
        if self.style is not None and self.style not in STYLES:
            raise PrunescopeError(f"unknown prompt style {self.style!r}: use {' or '.join(STYLES)}")
        for name, bound in (("n", "faith_n"), ("seed", "seed"), ("steps", "steps")):
            object.__setattr__(self, name, check(bound, getattr(self, name)))

    def parts(self, loaded: LoadedModel) -> dict:
        return {"model": loaded.fingerprint(), "dtype": dtype_name(loaded.dtype), "methods": list(self.methods),
                "n": self.n, "families": list(self.families), "seed": self.seed, "steps": self.steps,
                "style": default_style(loaded) if self.style is None else self.style}

    def compute(self, loaded: LoadedModel, progress: Progress | None, pool=None) -> pd.DataFrame:
        return ground_truth(loaded, self.methods, self.n, self.families, self.seed, self.style, self.steps,
                            progress)

    def work(self, loaded: LoadedModel) -> int:
        return self.n * len(self.families)
