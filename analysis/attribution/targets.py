"""IG targets: which scalar F of the model's output at the answer position is attributed.

- ``gold``: log-probability of the gold answer's first token.
- ``copy``: logit(copied answer) - logit(gold answer), where the copied answer is the demonstration answer
  (other than the gold one) whose first token the model prefers at the answer position.
- ``copy-prob``: the probability of the copied answer's first token (same choice of copied answer): the
  target of arXiv 2410.01288, which attributes the model's probability of its copying error. Unlike ``copy``
  it does not subtract the gold answer, so it also credits neurons that raise every answer's logit.
- ``echo``: logit(the query's own input as the answer) - logit(gold answer): the *echo* bias ("Pakistan ->
  Pakistan"), which on Gemma 3 270M is what the top copying neurons turned out to suppress. Echo and gold
  often share their first tokens ("river" / "rivers": " river" + "s"), so the answer position is where the
  two answers, each followed by the task's delimiter, first differ: the shared tokens are appended to the
  prompt and F compares the two next tokens there ("s" against the delimiter).
- ``confidence``: the logit of the model's top prediction at the answer position (2507.09185). The token is
  fixed at the clean prediction, so F stays smooth along the IG path (a running max would not).

*First token* means the first answer token that is not pure whitespace: SmolLM2 tokenizes " 2" as
" " + "2", so the " " is appended to the prompt and "2" is the target. The answer position is then the
last token of that extended prompt; :attr:`AttributionInput.text` is the exact string that was run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from analysis.errors import PromptTooLongError, PrunescopeError, check_choice
from analysis.models.loader import LoadedModel, decode_text
from analysis.tasks.task import Prompt, normalize_answer

TargetKind = Literal["gold", "copy", "copy-prob", "echo", "confidence"]
CopyTarget = Literal["copy", "copy-prob", "echo"]  # the bias targets: (wrong answer, gold) token pairs
TARGETS: tuple[TargetKind, ...] = get_args(TargetKind)
COPY_TARGETS: tuple[CopyTarget, ...] = get_args(CopyTarget)


def check_target(name: str) -> TargetKind:
    """``name`` as a target kind, else a one-line error."""
    return check_choice(name, TARGETS, "target")


@dataclass(frozen=True)
class TargetSpec:
    kind: TargetKind
    token_ids: tuple[int, ...]  # gold: (gold,); copy, copy-prob: (copied, gold); echo: (echoed, gold);
    # confidence: (top prediction,)

    def value(self, loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
        """F for final hidden states [R, H] at the answer position -> [R]; only the needed logits are built."""
        adapter = loaded.adapter
        if self.kind == "gold":
            logits = adapter.logits(hidden)
            return torch.log_softmax(logits.float(), dim=-1)[:, self.token_ids[0]]
        if self.kind == "copy-prob":
            logits = adapter.logits(hidden)
            return torch.softmax(logits.float(), dim=-1)[:, self.token_ids[0]]
        ids = torch.tensor(self.token_ids, device=hidden.device)
        logits = adapter.logits(hidden, ids).float()
        return logits[:, 0] - logits[:, 1] if self.kind in ("copy", "echo") else logits[:, 0]


@dataclass(frozen=True)
class AttributionInput:
    """One prompt prepared for attribution: the exact text and token ids run, and the target."""

    text: str
    input_ids: tuple[int, ...]
    target: TargetSpec
    prompt: Prompt


def answer_tokens(loaded: LoadedModel, prompt_text: str, answer: str) -> tuple[list[int], list[int], int]:
    """(prompt ids, answer continuation ids, index of the first non-whitespace answer token)."""
    tok = loaded.tokenizer
    base = tok(prompt_text).input_ids
    full = tok(prompt_text + " " + answer).input_ids
    cont = full[len(base):] if full[: len(base)] == base else tok(" " + answer, add_special_tokens=False).input_ids
    for j, token in enumerate(cont):
        if decode_text(tok, [token]).strip():
            return base, cont, j
    raise PrunescopeError(f"answer {answer!r} has no non-whitespace token")


def prepare_inputs(loaded: LoadedModel, prompts: Sequence[Prompt], target: str,
                   delimiter: str = "\n") -> list[AttributionInput]:
    """Attribution inputs for ``prompts``; ``copy``, ``copy-prob`` and ``confidence`` run the model once per
    prompt. ``delimiter``: what ends an answer in the task's template (for ``echo``)."""
    kind = check_target(target)
    items = []
    limit = loaded.adapter.max_context()
    for prompt in prompts:
        echoed = -1
        if kind == "echo":
            base, cont, j, echoed = _echo_split(loaded, prompt, delimiter)
        else:
            base, cont, j = answer_tokens(loaded, prompt.text, prompt.gold)
        ids = base + cont[:j]
        if limit is not None and len(ids) > limit:
            raise PromptTooLongError(f"prompt of {len(ids)} tokens exceeds the model's context of {limit}; "
                                     "use fewer shots")
        text = prompt.text + decode_text(loaded.tokenizer, cont[:j])
        gold = cont[j]
        if kind == "gold":
            spec = TargetSpec("gold", (gold,))
        elif kind == "echo":
            spec = TargetSpec("echo", (echoed, gold))
        else:
            logits = clean_logits(loaded, ids)
            if kind == "confidence":
                spec = TargetSpec("confidence", (int(logits.argmax()),))
            else:
                spec = TargetSpec(kind, (_copied_token(loaded, prompt, ids, j, gold, logits), gold))
        items.append(AttributionInput(text, tuple(ids), spec, prompt))
    return items


def clean_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Next-token logits at the last position of ``ids`` (one full forward, no cache, under the model's lock)."""
    with loaded.lock, torch.no_grad():
        hidden = loaded.adapter.base_model(input_ids=torch.tensor([ids], device=loaded.device),
                                           use_cache=False).last_hidden_state
        return loaded.adapter.logits(hidden[0, -1])


def _echo_split(loaded: LoadedModel, prompt: Prompt, delimiter: str) -> tuple[list[int], list[int], int, int]:
    """(prompt ids, gold answer + delimiter ids, index where the echo first differs, the echo's token there)."""
    tok = loaded.tokenizer
    base = tok(prompt.text).input_ids

    def continuation(answer: str) -> list[int]:
        full = tok(prompt.text + " " + answer + delimiter).input_ids
        return full[len(base):] if full[:len(base)] == base else \
            tok(" " + answer + delimiter, add_special_tokens=False).input_ids

    gold, echo = continuation(prompt.gold), continuation(prompt.query)
    j = next((i for i, (g, e) in enumerate(zip(gold, echo)) if g != e), None)
    if j is None or normalize_answer(prompt.query) == normalize_answer(prompt.gold):
        raise PrunescopeError(f"echo target: the query {prompt.query!r} is the gold answer; an echo cannot be told "
                              "from the right answer")
    return base, gold, j, echo[j]


def _copy_candidates(loaded: LoadedModel, prompt: Prompt, ids: list[int], gold: int) -> set[int]:
    """First tokens of the demonstration answers that can be told from the gold one at the answer position."""
    candidates = set()
    for answer in prompt.demo_outputs:
        if normalize_answer(answer) == normalize_answer(prompt.gold):
            continue
        base, cont, k = answer_tokens(loaded, prompt.text, answer)
        if base + cont[:k] == ids and cont[k] != gold:
            candidates.add(cont[k])
    return candidates


def _no_copy_message(prompt: Prompt) -> str:
    return (f"copy target: no demonstration answer of the prompt for {prompt.query!r} starts with a token "
            "different from the gold answer's (use the copying task)")


def copy_target_problem(loaded: LoadedModel, prompts: Sequence[Prompt]) -> str | None:
    """Why a copy target cannot be attributed on ``prompts`` (the first prompt without a copied answer to name),
    or None; tokenizer only, so a page can say so before anything runs."""
    for prompt in prompts:
        base, cont, j = answer_tokens(loaded, prompt.text, prompt.gold)
        if not _copy_candidates(loaded, prompt, base + cont[:j], cont[j]):
            return _no_copy_message(prompt)
    return None


def _copied_token(loaded: LoadedModel, prompt: Prompt, ids: list[int], j: int, gold: int,
                  logits: torch.Tensor) -> int:
    """The first token of the demonstration answer the model prefers, among those distinguishable from gold."""
    candidates = _copy_candidates(loaded, prompt, ids, gold)
    if not candidates:
        raise PrunescopeError(_no_copy_message(prompt))
    return max(sorted(candidates), key=lambda token: float(logits[token]))
