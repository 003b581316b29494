"""Task vectors (Hendel et al. 2023): is the task compressed into one hidden state?

Method (the paper's single-context variant, as in its code). Each query ``x`` gets ``shots`` demonstrations
``S`` (the k-shot prompt ``S x ->`` is the ICL reference, on the same queries as every other condition). The
task vector at layer L is the residual stream entering block L at the last token (``->``) of ``S x' ->``,
where ``x'`` is a *dummy query* (an input that is neither ``x`` nor in ``S``), averaged over
``dummy_queries`` dummies: it carries what the demonstrations taught, not ``x``'s answer. It replaces block
L's input at the last token of the zero-shot prompt ``x ->``, the position the answer is generated from,
during the prefill only (later tokens see it through the cache); the model then answers greedily. Layer L is
the input of block L, i.e. the paper's output of layer L-1; layer 0 patches the token embedding.

A layer *beats zero-shot* when its patched answers are right significantly more often than the unpatched
zero-shot answers to the same queries: exact McNemar on the discordant queries, Bonferroni-corrected over the
layers (every layer is tested on all queries, so no dev split is spent on choosing one). ``best_layer`` is
the most accurate such layer, or None. ``copy_rate`` counts patched answers that are the answer of a query
in the vector's own prompts (a demonstration or a dummy): the vector carried an answer, not the task.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import pandas as pd
import torch

from analysis.bounds import check
from analysis.cache import ResultsCache, task_fingerprint
from analysis.errors import PrunescopeError
from analysis.evaluation.icl import classify, generate_answers, plan_batches
from analysis.evaluation.paired import mcnemar_exact
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask
from analysis.requests import Request
from analysis.tasks.task import Prompt, Task

if TYPE_CHECKING:
    from analysis.runner import Runner

ALPHA = 0.05  # family-wise level of "beats zero-shot"


@dataclass
class TaskVectorResult:
    """One task-vector run: ``table`` has a row per layer (patched accuracy, copy rate, the discordant pairs,
    McNemar's p and its Bonferroni adjustment, whether it beats zero-shot), ``records`` every answer."""

    task: str
    shots: int
    n: int
    dummy_queries: int
    table: pd.DataFrame  # layer, accuracy, copy_rate, only_patched, only_zero_shot, p_value, p_adjusted, beats
    icl_accuracy: float
    zero_shot_accuracy: float
    masked: bool
    records: pd.DataFrame  # prompt_index, query, gold, condition (zero-shot, icl, layer L), answer, outcome

    @property
    def top_layer(self) -> int:
        """The most accurate layer, significant or not (ties: the smaller p, then the lower layer)."""
        ranked = self.table.sort_values(["accuracy", "p_value", "layer"], ascending=[False, True, True])
        return int(ranked.layer.iloc[0])

    @property
    def best_layer(self) -> int | None:
        """The most accurate layer that beats zero-shot, or None when none does."""
        winners = self.table[self.table.beats_zero_shot]
        if winners.empty:
            return None
        return int(winners.sort_values(["accuracy", "p_value", "layer"], ascending=[False, True, True]).layer.iloc[0])

    @property
    def best_accuracy(self) -> float | None:
        return None if self.best_layer is None else float(self._row(self.best_layer).accuracy)

    def _row(self, layer: int):
        return self.table.set_index("layer").loc[layer]

    def verdict(self) -> str:
        """One sentence: the best layer and its test, or that no layer beats zero-shot."""
        layer = self.best_layer
        head = f"layer {layer} beats zero-shot" if layer is not None else "no layer beats zero-shot"
        row = self._row(self.top_layer if layer is None else layer)
        adjusted = "p = 1" if row.p_adjusted >= 1 else f"p = {row.p_adjusted:.2g}"
        detail = (f"layer {int(row.name)}, {row.accuracy:.1%} vs {self.zero_shot_accuracy:.1%} zero-shot, "
                  f"{adjusted} after Bonferroni's correction over {len(self.table)} "
                  f"layer{'' if len(self.table) == 1 else 's'}")
        return f"{head} ({detail})" if layer is not None else f"{head} (best: {detail})"


TASK_VECTOR_VERSION = "task-vectors/2"


def task_vectors(loaded: LoadedModel, task: Task, shots: int = 4, n: int = 40, dummy_queries: int = 2,
                 seed: int = 0, mask: NeuronMask | None = None, batch_size: int = 16,
                 progress: Callable[[int, int], None] | None = None,
                 cache: ResultsCache | None = None) -> TaskVectorResult:
    """Hendel et al.'s task vectors: patched zero-shot accuracy at every layer, tested against zero-shot.

    Args:
        loaded: the model; task: the task; shots: demonstrations of the prompts the vectors come from.
        n: zero-shot queries; dummy_queries: k-shot prompts per query whose last state is averaged.
        seed: which prompts; mask: neurons zeroed throughout (None: unpruned); batch_size: prompts per batch.
        progress: ``progress(done, total)`` in prompts through the model (the dummy prompts, the zero-shot and
            k-shot prompts, then the zero-shot prompts once per layer), after every batch; it may raise to
            stop the run (the app's Cancel does).
        cache: read a repeated request from it (same weights, task, settings and mask), store a new one
            (:func:`stored_task_vectors` only reads).

    Returns:
        A :class:`TaskVectorResult`: zero-shot, k-shot and per-layer patched accuracy (``table``) with McNemar
        tests, the best layer and a verdict sentence.

    Raises:
        PrunescopeError: out-of-range settings, a task with too few pairs, a prompt too long for the model.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> result = ps.task_vectors(model, ps.get_task("to-upper"), shots=2, n=4)
        >>> len(result.table) == model.n_layers  # a row per layer: patched accuracy, McNemar p vs zero-shot
        True
        >>> result.verdict().startswith(("layer", "no layer"))
        True
    """
    return TaskVectors(task, shots, n, dummy_queries, seed, mask, batch_size).run(loaded, cache, progress)


def stored_task_vectors(loaded: LoadedModel, task: Task, shots: int = 4, n: int = 40, dummy_queries: int = 2,
                        seed: int = 0, mask: NeuronMask | None = None,
                        cache: ResultsCache | None = None) -> TaskVectorResult | None:
    """What :func:`task_vectors` would return, when ``cache`` (default: the user's cache, then the shipped
    results) holds it; None otherwise (nothing is computed)."""
    return TaskVectors(task, shots, n, dummy_queries, seed, mask).stored(loaded, cache)


@dataclass(frozen=True)
class TaskVectors(Request[TaskVectorResult]):
    """One task-vector run (:func:`task_vectors`) as a request."""

    task: Task
    shots: int = 4
    n: int = 40
    dummy_queries: int = 2
    seed: int = 0
    mask: NeuronMask | None = None
    batch_size: int = field(default=16, compare=False)  # how, not what

    kind: ClassVar[str] = "task-vectors"
    version: ClassVar[str] = TASK_VECTOR_VERSION

    def __post_init__(self) -> None:
        if self.shots < 1 or self.dummy_queries < 1:
            raise PrunescopeError(f"task vectors need shots >= 1 and dummy queries >= 1 (got {self.shots}, "
                                  f"{self.dummy_queries})")
        for name, bound in (("n", "tv_n"), ("seed", "seed"), ("shots", "shots"), ("dummy_queries", "dummies")):
            object.__setattr__(self, name, check(bound, getattr(self, name)))
        if len(self.task.pairs) < self.shots + 2:
            raise PrunescopeError(f"task {self.task.name!r} has {len(self.task.pairs)} pairs; task vectors need "
                                  f"shots + 2 = {self.shots + 2} (a query, {self.shots} demonstrations and a dummy "
                                  "query)")

    def parts(self, loaded: LoadedModel) -> dict:
        parts = {"model": loaded.fingerprint(), "task": task_fingerprint(self.task), "shots": self.shots,
                 "n": self.n, "dummy_queries": self.dummy_queries, "seed": self.seed,
                 "mask": sorted(self.mask.neurons) if self.mask else []}
        if self.task.fold_accents:  # its outcomes are stored, not derived on read as an evaluation's are
            parts["fold_accents"] = True
        return parts

    def compute(self, loaded: LoadedModel, progress: Callable[[int, int], None] | None,
                pool: Runner | None) -> TaskVectorResult:
        return _task_vector_run(loaded, self.task, self.shots, self.n, self.dummy_queries, self.seed, self.mask,
                                self.batch_size, progress)

    def work(self, loaded: LoadedModel) -> int:
        return task_vector_work(loaded, self.n, self.dummy_queries)

    def received(self, loaded: LoadedModel, result: TaskVectorResult) -> TaskVectorResult:
        result.task = self.task.name
        return result


def task_vector_prompts(task: Task, shots: int, n: int, dummy_queries: int, seed: int = 0):
    """(k-shot prompts, their zero-shot prompts, each query's dummy-query prompts): the k-shot prompts are
    ``task.sample_prompts(shots, n, seed)``; the dummies reuse each prompt's demonstrations."""
    icl = task.sample_prompts(shots, n, seed)
    zero_shot = [task.build_prompt((p.query, p.gold), []) for p in icl]
    rng = random.Random(f"{task.name}|dummies|{seed}")
    dummies = []
    for p in icl:
        taken = {p.query, *(x for x, _ in p.demos)}
        pool = [pair for pair in task.pairs if pair[0] not in taken]
        if not pool:
            raise PrunescopeError(f"task {task.name!r}: no dummy query left for {p.query!r} besides its demonstrations")
        dummies.append([task.build_prompt(pair, list(p.demos)) for pair in _draw(rng, pool, dummy_queries)])
    return icl, zero_shot, dummies


def _draw(rng: random.Random, pool: list, k: int) -> list:
    """``k`` items of ``pool``, without repeats while the pool lasts."""
    picks: list = []
    while len(picks) < k:
        picks += rng.sample(pool, min(len(pool), k - len(picks)))
    return picks


def task_vector_work(loaded: LoadedModel, n: int, dummy_queries: int) -> int:
    """Prompts a task-vector run puts through the model: the dummies, zero-shot and k-shot once, then the
    zero-shot prompts at every layer (the unit of its progress)."""
    return n * (dummy_queries + 2 + loaded.n_layers)


def _task_vector_run(loaded, task, shots, n, dummy_queries, seed, mask, batch_size, progress) -> TaskVectorResult:
    icl, zero_shot, dummies = task_vector_prompts(task, shots, n, dummy_queries, seed)
    flat = [d for ds in dummies for d in ds]
    total, done = task_vector_work(loaded, n, dummy_queries), 0

    def step(count: int) -> Callable[[int, int], None] | None:
        """Progress of one stage of ``count`` prompts, as part of the whole run (monotone)."""
        nonlocal done
        start, done = done, done + count
        return None if progress is None else (lambda d, _t: progress(start + d, total))

    vectors = last_token_states(loaded, flat, mask, progress=step(len(flat)))
    vectors = vectors.view(n, dummy_queries, loaded.n_layers, -1).mean(1)
    vector_answers = [(*p.demo_outputs, *(d.gold for d in ds)) for p, ds in zip(icl, dummies)]
    records: list[dict[str, object]] = []

    def record(condition: str, prompts, answers, seen=vector_answers) -> list[str]:
        outcomes = [classify(a, p.gold, s, task.case_sensitive, fold_accents=task.fold_accents)
                    for a, p, s in zip(answers, prompts, seen)]
        records.extend({"prompt_index": i, "query": p.query, "gold": p.gold, "condition": condition,
                        "answer": a, "outcome": o} for i, (p, a, o) in enumerate(zip(prompts, answers, outcomes)))
        return outcomes

    unpatched = record("zero-shot", zero_shot, generate_answers(loaded, zero_shot, task, mask=mask,
                                                                batch_size=batch_size, progress=step(n)))
    icl_outcomes = record("icl", icl, generate_answers(loaded, icl, task, mask=mask, batch_size=batch_size,
                                                       progress=step(n)), [p.demo_outputs for p in icl])
    rows = []
    for layer in range(loaded.n_layers):
        answers = generate_patched(loaded, zero_shot, task, layer, vectors[:, layer], mask, batch_size, step(n))
        outcomes = record(f"layer {layer}", zero_shot, answers)
        rows.append({"layer": layer, **paired_row(outcomes, unpatched)})
    return TaskVectorResult(task.name, shots, n, dummy_queries, layer_table(rows), icl_outcomes.count("correct") / n,
                            unpatched.count("correct") / n, bool(mask), pd.DataFrame(records))


def paired_row(patched: list[str], zero_shot: list[str]) -> dict:
    """Accuracy, copy rate and exact McNemar p of one layer's outcomes against the zero-shot outcomes."""
    hits = [o == "correct" for o in patched]
    base = [o == "correct" for o in zero_shot]
    only_patched = sum(a and not b for a, b in zip(hits, base))
    only_zero_shot = sum(b and not a for a, b in zip(hits, base))
    return {"accuracy": sum(hits) / len(hits), "copy_rate": patched.count("copy") / len(hits),
            "only_patched": only_patched, "only_zero_shot": only_zero_shot,
            "p_value": mcnemar_exact(only_patched, only_zero_shot)}


def layer_table(rows: list[dict], alpha: float = ALPHA) -> pd.DataFrame:
    """The per-layer rows with Bonferroni-adjusted p-values and whether each layer beats zero-shot."""
    table = pd.DataFrame(rows)
    table["p_adjusted"] = (table.p_value * len(table)).clip(upper=1.0)
    table["beats_zero_shot"] = (table.p_adjusted < alpha) & (table.only_patched > table.only_zero_shot)
    return table


def last_token_states(loaded: LoadedModel, prompts: list[Prompt], mask: NeuronMask | None = None,
                      progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """[prompts, layers, H]: every block's input at each prompt's last token (fp32). Prompts run in batches of
    equal token length, so no padding is involved; ``progress(done, total)`` after each batch."""
    encoded = [loaded.tokenizer(p.text).input_ids for p in prompts]
    states: list[torch.Tensor | None] = [None] * len(prompts)
    captured: dict[int, torch.Tensor] = {}
    for group in plan_batches([len(ids) for ids in encoded], 16, allow_padding=False):
        ids = torch.tensor([encoded[i] for i in group], device=loaded.device)
        with loaded.session(mask), torch.no_grad(), \
                loaded.adapter.hook_block_inputs(lambda layer, h: captured.__setitem__(layer, h[:, -1].float())):
            loaded.adapter.base_model(input_ids=ids, use_cache=False)  # the lock per batch
        stacked = torch.stack([captured[layer] for layer in range(loaded.n_layers)], dim=1).cpu()
        for row, i in enumerate(group):
            states[i] = stacked[row]
        if progress:
            progress(sum(s is not None for s in states), len(prompts))
    filled = [s for s in states if s is not None]
    assert len(filled) == len(states), "every prompt is in one batch"
    return torch.stack(filled)


def generate_patched(loaded: LoadedModel, prompts: list[Prompt], task: Task, layer: int, vectors: torch.Tensor,
                     mask: NeuronMask | None = None, batch_size: int = 16,
                     progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers with block ``layer``'s input at each prompt's last token replaced by ``vectors[i]``
    ([prompts, H]) during the prefill.

    Each batch of :func:`plan_batches` is generated on its own; its prompts are already in length order, so
    ``generate_answers`` keeps that order and row r of the batch is the batch's r-th prompt.
    """
    lengths = [len(loaded.tokenizer(p.text).input_ids) for p in prompts]
    size = min(batch_size, loaded.adapter.max_decode_batch or batch_size)
    answers = [""] * len(prompts)
    batches = plan_batches(lengths, size, loaded.adapter.supports_left_padding)
    for number, group in enumerate(batches):
        batch = [prompts[i] for i in group]
        texts = generate_answers(loaded, batch, task, mask=mask, batch_size=len(batch),
                                 intervention=partial(patched_last_token, loaded, layer, vectors[group]))
        for i, text in zip(group, texts):
            answers[i] = text
        if progress:
            progress(sum(map(len, batches[:number + 1])), len(prompts))
    return answers


@contextmanager
def patched_last_token(loaded: LoadedModel, layer: int, vectors: torch.Tensor) -> Iterator[None]:
    """Replace block ``layer``'s input at the last position by ``vectors`` ([batch, H] or [H]) in the first
    forward inside the context, i.e. the prefill of the one batch generated in it; decoding steps are left
    alone. With left padding the last position is every row's last real token."""
    done: list[bool] = []

    def patch(_: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if done:
            return None
        done.append(True)
        if vectors.dim() == 2 and vectors.shape[0] != hidden.shape[0]:
            raise PrunescopeError(f"{vectors.shape[0]} task vectors for a batch of {hidden.shape[0]} prompts")
        hidden = hidden.clone()
        hidden[:, -1] = vectors.to(device=hidden.device, dtype=hidden.dtype)
        return hidden

    with loaded.adapter.hook_block_inputs(patch, layers=[layer]):
        yield
