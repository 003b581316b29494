"""Attribution per answer token (Inseq's view): for an answer of several tokens, how much each earlier token
(prompt and the answer's own earlier tokens) matters for each answer token.

Answer token s is explained at the position before it, with the prompt and answer tokens 0..s-1 as input (the
same ids the model saw while answering: no re-tokenisation of partial text), and F = its logit there.
Gradient methods only (``gxi``, ``ig``, ``lrp``, ``gradattn``: :mod:`analysis.attribution.tokens`); the
answer is the model's own greedy one (up to the task's delimiter) or the gold answer forced.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from analysis.attribution import tokens as relevance
from analysis.attribution.propagation import LRP_FAMILIES, conservative_propagation
from analysis.attribution.targets import answer_tokens, clean_logits
from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel, decode_text

ANSWER_METHODS = ("gxi", "ig", "lrp", "gradattn")
AnswerSource = Literal["model", "gold"]
MAX_ANSWER_TOKENS = 12


@dataclass(frozen=True)
class AnswerAttribution:
    """``scores[s, t]``: relevance of token t (of ``tokens``, prompt then answer) for answer token s; only
    t < prompt_length + s is defined (the tokens before it), the rest is NaN. ``deltas``: IG's completeness
    error per answer token (None for other methods)."""

    tokens: list[str]
    prompt_length: int
    answer_ids: list[int]
    scores: torch.Tensor
    method: str
    source: AnswerSource
    logits: list[float]  # F per answer token: its logit at the position before it
    deltas: list[float] | None = None

    @property
    def answer_tokens(self) -> list[str]:
        return self.tokens[self.prompt_length:]


def greedy_answer(loaded: LoadedModel, ids: list[int], delimiter: str, limit: int = MAX_ANSWER_TOKENS) -> list[int]:
    """The model's greedy continuation of ``ids``, token by token, up to and without the token that brings in
    ``delimiter`` (at most ``limit`` tokens; leading whitespace tokens are kept: they are answer tokens too)."""
    answer: list[int] = []
    while len(answer) < limit:
        token = int(clean_logits(loaded, ids + answer).argmax())
        text = decode_text(loaded.tokenizer, answer + [token])
        if delimiter and delimiter in text and text.strip(" "):
            break
        answer.append(token)
        if token == loaded.tokenizer.eos_token_id:
            break
    return answer


def attribute_answer(loaded: LoadedModel, prompt_text: str, method: str = "gxi", source: AnswerSource = "model",
                     gold: str = "", delimiter: str = "\n", steps: int = 32) -> AnswerAttribution:
    """Per-answer-token relevance of every earlier token (module docstring).

    Args:
        loaded: the model.
        prompt_text: the prompt, ending where the answer starts.
        method: ``gxi``, ``ig``, ``lrp`` (families with conservative propagation) or ``gradattn``.
        source: ``model`` (the greedy answer) or ``gold`` (``gold`` forced, as the task tokenises it).
        delimiter: what ends a greedy answer.
        steps: IG's nodes.

    Raises:
        PrunescopeError: an unknown method or source, an empty answer, LRP on a family without it, a text
            longer than the model's gradients pass (xLSTM).
    """
    if method not in ANSWER_METHODS:
        raise PrunescopeError(f"per-token attribution uses {', '.join(ANSWER_METHODS)}, not {method!r}")
    if method == "lrp" and loaded.family not in LRP_FAMILIES:
        raise PrunescopeError(f"lrp (conservative propagation) supports {', '.join(LRP_FAMILIES)} "
                              f"models, not {loaded.family}")
    ids = relevance.prompt_ids(loaded, prompt_text)
    if source == "gold":
        if not gold.strip():
            raise PrunescopeError("the gold answer is empty")
        base, answer, _ = answer_tokens(loaded, prompt_text, gold)
        ids = list(base)
    elif source == "model":
        answer = greedy_answer(loaded, ids, delimiter)
    else:
        raise PrunescopeError(f"unknown answer source {source!r}: use model or gold")
    if not answer:
        raise PrunescopeError("the model's answer is empty (it starts with the delimiter)")
    width = len(ids) + len(answer) - 1
    relevance.check_gradient_length(loaded, width, method)
    scores = torch.full((len(answer), width), float("nan"))
    logits, deltas = [], []
    for s, target in enumerate(answer):
        context = torch.tensor([ids + answer[:s]], device=loaded.device)
        row, delta = _relevance(loaded, context, target, method, steps)
        scores[s, :context.shape[1]] = row.float().cpu()
        logits.append(float(clean_logits(loaded, ids + answer[:s])[target]))
        deltas.append(delta)
    tokens = [decode_text(loaded.tokenizer, [i]) for i in ids + answer]
    return AnswerAttribution(tokens, len(ids), list(answer), scores, method, source, logits,
                             deltas if method == "ig" else None)


def _relevance(loaded: LoadedModel, context: torch.Tensor, target: int, method: str, steps: int
               ) -> tuple[torch.Tensor, float]:
    with loaded.lock:
        if method == "ig":
            return relevance.integrated_gradients(loaded, context, target, steps)
        if method == "gradattn":
            return relevance.rollout(relevance.gradient_weighted_maps(loaded, context, target, None, None))[-1], 0.0
        with conservative_propagation(loaded) if method == "lrp" else nullcontext():
            return relevance.gradient_x_input(loaded, context, target), 0.0
