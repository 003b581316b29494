"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"), a training-free baseline for the copying
mask: correct the model's bias towards answers it favours whatever the query, then answer greedily.

For open answers (their fact-retrieval variant, which calibrates the first output token) each prompt's
query is replaced by the content-free inputs ``N/A``, ``[MASK]`` and ``BLANK``, keeping the demonstrations;
``p_cf`` is the least next-token probability over the three (their ensemble's min). The answer's first token
is then the one of the model's 100 most likely tokens that maximises ``p - p_cf``, both renormalised over
those 100 (their W = I, b = -p_cf); the rest of the answer is greedy. A demonstration's output that the
model favours on every query (the copying bias) is exactly what this subtracts.

Whitespace first: SmolLM2 answers " 2" as " " + "2", so calibrating a lone space would change nothing. The
leading whitespace-only tokens of the greedy answer are kept, and the first token after them is calibrated,
with ``p_cf`` measured after the same whitespace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from analysis.attribution.targets import clean_logits
from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from analysis.evaluation.icl import (
    EvalResult,
    Evaluation,
    encode_prompts,
    eval_result,
    generate_answers,
)
from analysis.models.loader import LoadedModel
from analysis.tasks.task import Prompt, Task

if TYPE_CHECKING:
    from analysis.runner import Runner

CONTENT_FREE = ("N/A", "[MASK]", "BLANK")
TOP_TOKENS = 100
LEADING_WHITESPACE = 3  # at most this many whitespace-only tokens before the calibrated one
CALIBRATION_VERSION = "contextual-first-token/1"


def calibrated_choice(p: torch.Tensor, p_cf: torch.Tensor, top: int = TOP_TOKENS) -> int:
    """The token among ``p``'s ``top`` most likely that maximises ``p - p_cf`` after renormalising both over
    those tokens (``p``, ``p_cf``: probabilities over the vocabulary)."""
    candidates = p.double().topk(min(top, p.numel())).indices
    mine = p.double()[candidates]
    free = p_cf.double()[candidates]
    mine = mine / mine.sum().clamp_min(1e-300)
    free = free / free.sum() if float(free.sum()) > 0 else free
    return int(candidates[int((mine - free).argmax())])


def content_free_texts(task: Task, prompt: Prompt) -> list[str]:
    """``prompt`` with its query replaced by each content-free input (same instruction and demonstrations)."""
    return [task.build_prompt((placeholder, ""), list(prompt.demos)).text for placeholder in CONTENT_FREE]


def content_free_probs(loaded: LoadedModel, texts: Sequence[str], after: Sequence[int]) -> torch.Tensor:
    """The least next-token probability over the content-free ``texts``, each followed by the tokens
    ``after``: float64 [vocabulary]."""
    probs = [torch.softmax(clean_logits(loaded, loaded.tokenizer(text).input_ids + list(after)).double(), -1)
             for text in texts]
    return torch.stack(probs).min(dim=0).values.cpu()


def forced_start(loaded: LoadedModel, task: Task, prompt: Prompt, ids: list[int]) -> list[int]:
    """The answer's first tokens under calibration: the greedy answer's leading whitespace-only tokens (not
    the delimiter), then the calibrated token."""
    leading: list[int] = []
    while True:
        logits = clean_logits(loaded, ids + leading)
        best = int(logits.argmax())
        text = str(loaded.tokenizer.decode([best]))
        if len(leading) == LEADING_WHITESPACE or text.strip() or not text or task.delimiter in text:
            break
        leading.append(best)
    p = torch.softmax(logits.double(), -1).cpu()
    return leading + [calibrated_choice(p, content_free_probs(loaded, content_free_texts(task, prompt), leading))]


def calibrated_answers(loaded: LoadedModel, prompts: Sequence[Prompt], task: Task, batch_size: int = 16,
                       progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The answers with contextual calibration of the first answer token (module docstring), in order."""
    encoded, _ = encode_prompts(loaded, prompts, task)
    starts = [forced_start(loaded, task, prompt, ids) for prompt, ids in zip(prompts, encoded)]
    return generate_answers(loaded, prompts, task, batch_size=batch_size, progress=progress, starts=starts)


@dataclass(frozen=True)
class CalibratedEvaluation(Evaluation):
    """:class:`Evaluation`'s prompts answered with contextual calibration, cached under its own key."""

    def parts(self, loaded: LoadedModel) -> dict:
        return {**super().parts(loaded), "calibration": CALIBRATION_VERSION}

    def compute(self, loaded: LoadedModel, progress: Callable[[int, int], None] | None,
                pool: Runner | None) -> EvalResult:
        if self.mask is not None:
            raise PrunescopeError("contextual calibration is a baseline of the unpruned model: no mask")
        prompts = self.task.sample_prompts(self.shots, self.n, self.seed)
        answers = calibrated_answers(loaded, prompts, self.task, self.batch_size, progress)
        return eval_result(loaded, self.task, self.shots, self.seed, prompts, answers, None)


def evaluate_calibrated(loaded: LoadedModel, task: Task, shots: int, n: int, seed: int = 0,
                        cache: ResultsCache | None = None,
                        progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """:func:`analysis.evaluation.icl.evaluate_task`'s prompts (same ``n`` and ``seed``), answered with
    contextual calibration; cached under its own key."""
    return CalibratedEvaluation(task, shots, n, seed).run(loaded, cache, progress)
