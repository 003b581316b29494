"""Batched k-shot ICL evaluation with copy-error classification.

Scoring: the model continues each prompt greedily until the task's delimiter (a newline by default) or a
token budget (the longest answer in the task plus slack); the text before the delimiter, trimmed, is the
prediction and is compared with the gold answer as a string (case-insensitive unless the task is
case-sensitive). Comparing strings rather than one next token survives tokenizers that split an answer,
e.g. SmolLM2 tokenizes " 2" as " " + "2".

Outcomes: ``correct`` (the gold answer); else ``copy`` (a demonstration's output: the copying bias of
arXiv 2410.01288); else ``echo`` (the query's own input repeated, "Pakistan -> Pakistan"); else ``other``.
All three comparisons use the same normalisation. The order decides ties: an answer equal to the gold is
correct even when it also equals the query (a user task mapping a word to itself), and a demonstration
output that happens to equal the query counts as a copy. Outcomes are derived from the cached predictions
on every read (:func:`classify_records`), so changing these rules never needs a model run.

Batching: prompts are sorted by length and left-padded with an attention mask where the family handles
padding exactly (transformers, Mamba, Mamba-2); RWKV and Griffin ignore padding, so their batches hold
prompts of equal token length only (and RWKV decodes one sequence at a time, see its adapter). Either way a
batched run gives the same predictions as one prompt at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, cast

import pandas as pd
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from analysis.bounds import check
from analysis.cache import ResultsCache, task_fingerprint
from analysis.errors import PromptTooLongError, PrunescopeError
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask
from analysis.requests import Request
from analysis.tasks.task import Prompt, Task, normalize_answer

if TYPE_CHECKING:
    from analysis.models.protocols import CausalLM
    from analysis.runner import Runner

Progress = Callable[[int, int], None]
# rate name -> outcome it counts (the order every table and chart uses)
RATE_METRICS = {"accuracy": "correct", "copy_error_rate": "copy", "echo_rate": "echo", "other_error_rate": "other"}
OUTCOMES = ("correct", "copy", "echo", "other")


def classify(prediction: str, gold: str, demo_outputs: Sequence[str], case_sensitive: bool = False,
             query: str | None = None, fold_accents: bool = False) -> str:
    """'correct', 'copy' (a demonstration's output), 'echo' (the query input) or 'other'; see the module
    docstring for the order."""

    def norm(text: str) -> str:
        return normalize_answer(text, case_sensitive, fold_accents)

    pred = norm(prediction)
    if pred == norm(gold):
        return "correct"
    if pred in {norm(y) for y in demo_outputs}:
        return "copy"
    if query is not None and pred == norm(query):
        return "echo"
    return "other"


def classify_records(records: pd.DataFrame, case_sensitive: bool, fold_accents: bool = False) -> pd.DataFrame:
    """``records`` with ``prompt_index`` and the outcome columns (re)derived from each row's prediction."""
    outcome = [classify(row.prediction, row.gold, row.demo_outputs, case_sensitive, row.query, fold_accents)
               for row in records.itertuples()]
    derived = pd.DataFrame({"prompt_index": range(len(records)), **records[["prompt", "query", "gold", "prediction"]],
                            "outcome": outcome}, index=records.index)
    derived["correct"] = derived["outcome"] == "correct"
    derived["is_copy"] = derived["outcome"] == "copy"
    derived["demo_outputs"] = records["demo_outputs"]
    return derived.reset_index(drop=True)


@dataclass
class EvalResult:
    """One (model, task, shots, seed, mask) evaluation: ``records`` holds a row per prompt (prompt, query, gold,
    prediction, ``outcome``, demonstrations' outputs); the rates (:attr:`accuracy`, :attr:`copy_error_rate`,
    :attr:`echo_rate`, :attr:`other_error_rate`) are shares of its prompts. Compare conditions with
    :func:`analysis.prune_eval`, which pairs them by prompt and gives intervals."""

    model: str
    task: str
    shots: int
    seed: int
    records: pd.DataFrame
    masked: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    def rate(self, outcome: str) -> float:
        return float((self.records["outcome"] == outcome).mean()) if self.n else 0.0

    @property
    def accuracy(self) -> float:
        return self.rate("correct")

    @property
    def copy_error_rate(self) -> float:
        return self.rate("copy")

    @property
    def echo_rate(self) -> float:
        return self.rate("echo")

    @property
    def other_error_rate(self) -> float:
        return self.rate("other")

    def summary(self) -> dict:
        return {"model": self.model, "task": self.task, "shots": self.shots, "n": self.n,
                **{metric: getattr(self, metric) for metric in RATE_METRICS}}


EVAL_VERSION = "icl-eval/1"


def evaluate_task(loaded: LoadedModel, task: Task, shots: int, n: int, seed: int = 0,
                  mask: NeuronMask | None = None, batch_size: int = 16, progress: Progress | None = None,
                  cache: ResultsCache | None = None) -> EvalResult:
    """Answer ``n`` ``shots``-shot prompts of ``task`` greedily and score each answer (module docstring).

    Args:
        loaded: the model (:func:`analysis.load_model`).
        task: the task (:func:`analysis.get_task`).
        shots: demonstrations per prompt.
        n: prompts; more than the task's distinct queries ask each query again with other demonstrations.
        seed: which prompts (the same seed gives the same prompts on every model and mask).
        mask: neurons to zero while answering (None: the unpruned model).
        batch_size: prompts per generation batch (the answers do not depend on it).
        progress: ``progress(done, total)`` after every batch; it may raise to stop the run.
        cache: a :class:`ResultsCache` to read a repeated request from (same weights, task data, shots, n,
            seed and mask) and to store a new one in.

    Returns:
        An :class:`EvalResult`: per-prompt records (prompt, query, gold, prediction, outcome ``correct``,
        ``copy``, ``echo`` or ``other``) and the rates.

    Raises:
        PrunescopeError: out-of-range ``n``/``shots``/``seed``, or a prompt longer than the model's context.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> result = ps.evaluate_task(model, ps.get_task("to-upper"), shots=2, n=4)
        >>> list(result.records.columns[:4]), result.n
        (['prompt_index', 'prompt', 'query', 'gold'], 4)
    """
    return Evaluation(task, shots, n, seed, mask, batch_size).run(loaded, cache, progress)


@dataclass(frozen=True)
class Evaluation(Request[EvalResult]):
    """One evaluation (:func:`evaluate_task`) as a request: its cache key, whether it is stored, its work."""

    task: Task
    shots: int
    n: int
    seed: int = 0
    mask: NeuronMask | None = None
    batch_size: int = field(default=16, compare=False)  # how, not what: the answers do not depend on it

    kind: ClassVar[str] = "eval"
    version: ClassVar[str] = EVAL_VERSION

    def __post_init__(self) -> None:
        for name, bound in (("n", "n"), ("shots", "shots"), ("seed", "seed")):
            object.__setattr__(self, name, check(bound, getattr(self, name)))

    def parts(self, loaded: LoadedModel) -> dict:
        return {"model": loaded.fingerprint(), "task": task_fingerprint(self.task), "shots": self.shots,
                "n": self.n, "seed": self.seed, "mask": sorted(self.mask.neurons) if self.mask else []}

    def compute(self, loaded: LoadedModel, progress: Progress | None, pool: Runner | None) -> EvalResult:
        return _evaluate(loaded, self.task, self.shots, self.n, self.seed, self.mask, self.batch_size, progress)

    def work(self, loaded: LoadedModel) -> int:
        return self.n

    def received(self, loaded: LoadedModel, result: EvalResult) -> EvalResult:
        """Outcomes are derived from the stored answers on every read (module docstring)."""
        result.model, result.task = loaded.name, self.task.name
        result.records = classify_records(result.records, self.task.case_sensitive, self.task.fold_accents)
        return result


def store_evaluation(loaded: LoadedModel, task: Task, shots: int, n: int, seed: int, mask: NeuronMask | None,
                     result: EvalResult, cache: ResultsCache) -> None:
    """Put a result computed elsewhere (a Ray actor) under the key :func:`evaluate_task` reads."""
    Evaluation(task, shots, n, seed, mask).store(loaded, cache, result)


def is_evaluated(loaded: LoadedModel, task: Task, shots: int, n: int, seed: int, mask: NeuronMask | None,
                 cache: ResultsCache) -> bool:
    """Whether :func:`evaluate_task` would read this request from ``cache`` (nothing is run)."""
    return Evaluation(task, shots, n, seed, mask).is_stored(loaded, cache)


def _evaluate(loaded, task, shots, n, seed, mask, batch_size, progress) -> EvalResult:
    prompts = task.sample_prompts(shots, n, seed)
    predictions = generate_answers(loaded, prompts, task, mask=mask, batch_size=batch_size, progress=progress)
    return eval_result(loaded, task, shots, seed, prompts, predictions, mask)


def eval_result(loaded: LoadedModel, task: Task, shots: int, seed: int, prompts: Sequence[Prompt],
                predictions: Sequence[str], mask: NeuronMask | None) -> EvalResult:
    """The EvalResult of ``prompts`` answered ``predictions`` under ``mask`` (shared by every evaluation path,
    so a result is the same object whichever path computed it)."""
    records = pd.DataFrame([{"prompt": prompt.text, "query": prompt.query, "gold": prompt.gold,
                             "prediction": prediction, "demo_outputs": list(prompt.demo_outputs)}
                            for prompt, prediction in zip(prompts, predictions)])
    return EvalResult(model=loaded.name, task=task.name, shots=shots, seed=seed,
                      records=classify_records(records, task.case_sensitive, task.fold_accents),
                      masked=mask is not None and len(mask) > 0, meta={"mask_size": len(mask) if mask else 0})


def answer_token_budget(loaded: LoadedModel, task: Task, slack: int = 2) -> int:
    """Tokens to generate: enough for the task's longest ' answer<delimiter>' plus ``slack``."""
    lengths = [len(loaded.tokenizer(" " + y + task.delimiter, add_special_tokens=False).input_ids)
               for _, y in task.pairs]
    return max(lengths) + slack


def generate_answers(loaded: LoadedModel, prompts: Sequence[Prompt], task: Task, mask: NeuronMask | None = None,
                     batch_size: int = 16, progress: Progress | None = None,
                     intervention: Callable[[], AbstractContextManager] | None = None,
                     starts: Sequence[Sequence[int]] | None = None) -> list[str]:
    """Greedy answers (text before the delimiter, trimmed) for ``prompts``, in their order; with ``starts``,
    each answer begins with its prompt's given tokens (chosen before generation, e.g. by calibration).

    ``intervention`` returns a context manager (e.g. hooks) entered around each batch's generation, under the
    model lock. The lock, the mask and the intervention are taken per batch, so other sessions interleave.
    """
    encoded, budget = encode_prompts(loaded, prompts, task)
    forced = [list(start) for start in starts] if starts is not None else [[] for _ in prompts]
    encoded = [ids + start for ids, start in zip(encoded, forced)]
    answers: list[str] = [""] * len(prompts)
    done = 0
    for batch in prompt_batches(loaded, encoded, batch_size):
        with loaded.session(mask), (intervention() if intervention else nullcontext()):
            texts = generate_batch(loaded, [encoded[i] for i in batch], budget - min(len(forced[i]) for i in batch),
                                   task.delimiter, kept=[len(forced[i]) for i in batch] if starts is not None else None)
        for i, text in zip(batch, texts):
            answers[i] = answer_text(text, task.delimiter)
        done += len(batch)
        if progress:
            progress(done, len(prompts))
    return answers


def encode_prompts(loaded: LoadedModel, prompts: Sequence[Prompt], task: Task) -> tuple[list[list[int]], int]:
    """The prompts' token ids and the answer token budget; a prompt that leaves no room for it is refused."""
    encoded = [loaded.tokenizer(p.text).input_ids for p in prompts]
    budget = answer_token_budget(loaded, task)
    limit = loaded.adapter.max_context()
    longest = max(len(ids) for ids in encoded)
    if limit is not None and longest + budget > limit:
        raise PromptTooLongError(f"prompt of {longest} tokens plus {budget} answer tokens exceeds the model's "
                                 f"context of {limit}; use fewer shots")
    return encoded, budget


def prompt_batches(loaded: LoadedModel, encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The prompt batches every evaluation of ``encoded`` uses (the family's decode cap and padding rule)."""
    if batch_size < 1:
        raise PrunescopeError(f"batch size must be at least 1 (got {batch_size})")
    adapter = loaded.adapter
    size = min(batch_size, adapter.max_decode_batch or batch_size)
    return plan_batches([len(ids) for ids in encoded], size, adapter.supports_left_padding)


def answer_text(generated: str, delimiter: str) -> str:
    """The prediction in a generated continuation: the text before the delimiter, trimmed."""
    return generated.split(delimiter)[0].strip()


def plan_batches(lengths: Sequence[int], batch_size: int, allow_padding: bool) -> list[list[int]]:
    """Index batches sorted by length; without padding support, each batch holds one length only."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < batch_size and (allow_padding or lengths[groups[-1][0]] == lengths[i]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def delimiter_tokens(loaded: LoadedModel, delimiter: str) -> torch.Tensor:
    """Boolean table over the vocabulary: does the token's text contain ``delimiter``? (memoised per model)"""
    key = ("delimiter-tokens", delimiter)
    if key not in loaded.memo:
        tok = loaded.tokenizer
        vocab = max(len(tok), loaded.model.get_output_embeddings().weight.shape[0])
        texts = tok.batch_decode([[i] for i in range(len(tok))])
        table = torch.zeros(vocab, dtype=torch.bool)
        table[: len(texts)] = torch.tensor([delimiter in t for t in texts])
        loaded.memo[key] = table.to(loaded.device)
    return loaded.memo[key]


class _DelimiterStop(StoppingCriteria):
    """Per-sequence stop once a generated token contains the delimiter (cheaper than stop_strings, which
    re-scans the vocabulary on every generate call)."""

    def __init__(self, table: torch.Tensor):
        self.table = table
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        hit = self.table[input_ids[:, -1]]
        self.done = hit if self.done is None else self.done | hit
        return self.done


def generate_batch(loaded: LoadedModel, batch: list[list[int]], budget: int, delimiter: str,
                   kept: Sequence[int] | None = None) -> list[str]:
    """Greedy continuations of the left-padded ``batch`` (the caller holds the lock and sets any hooks);
    ``kept``: per row, how many of its last input tokens start the returned text (answer tokens chosen
    before generation, as contextual calibration's first token)."""
    from transformers import GenerationConfig

    tok = loaded.tokenizer
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    config = GenerationConfig(max_new_tokens=budget, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
    stop = _DelimiterStop(delimiter_tokens(loaded, delimiter))
    try:
        with torch.inference_mode():
            model = cast("CausalLM", loaded.model)  # loaded by AutoModelForCausalLM: its classes mix in generate
            out = model.generate(
                input_ids=input_ids.to(loaded.device), attention_mask=attention_mask.to(loaded.device),
                generation_config=config, stopping_criteria=StoppingCriteriaList([stop]))
    except torch.OutOfMemoryError:
        raise PrunescopeError(f"out of memory generating a batch of {len(batch)} prompts of up to {width} tokens "
                              f"on {loaded.device}; use a smaller batch size") from None
    if kept is None:
        return tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return [str(tok.decode(out[row, width - keep:], skip_special_tokens=True)) for row, keep in enumerate(kept)]
