"""Several conditions (unpruned, pruned, random masks) of one evaluation as rows of one batch.

A pruning evaluation answers the same prompts under every condition. Run apart, each condition is a pass of
its own; here each prompt batch is run once with its rows repeated per condition, every condition's rows
carrying their own mask (:func:`analysis.pruning.mask.applied_per_row`), which needs fewer, fuller forwards.

Bit-identical to separate runs by construction where the kernels allow it: the prompt batches are those of
:func:`analysis.evaluation.icl.evaluate_task` (same sort, same left padding, same width), so a row sees the
very tokens and attention mask it sees alone; a masked row's neurons are set to exact zeros as
:meth:`NeuronMask.applied` sets them, an unpruned row's pass through untouched; greedy decoding is per row,
so a row that is done earlier or later in a bigger batch keeps its answer. What remains is the batch's row
count: the kernels must give each row the same floats whether the batch holds it once or next to other
conditions' copies. On CPU that holds exactly for every family but Mamba-2 (tests/test_one_batch.py), whose
few-head step sizes meet PyTorch's scalar tail loop at batch-dependent places (its adapter's
``batch_invariant = False``): there each condition keeps a batch of its own, exact but not faster. A GPU library
that picks a different matmul split for a taller batch may break it too; ``prune_eval(one_batch=False)`` runs
one pass per condition.

Results are stored under the keys :func:`evaluate_task` reads and writes, so cached conditions are read, not
rerun, whichever path computed them; only the missing conditions share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from analysis.bounds import check
from analysis.cache import ResultsCache
from analysis.evaluation.icl import (
    EvalResult,
    Progress,
    answer_text,
    encode_prompts,
    eval_result,
    evaluate_task,
    generate_batch,
    is_evaluated,
    prompt_batches,
    store_evaluation,
)
from analysis.models.loader import LoadedModel
from analysis.pruning.mask import NeuronMask, applied_per_row
from analysis.tasks.task import Task


def evaluate_conditions(loaded: LoadedModel, task: Task, shots: int, n: int, masks: Sequence[NeuronMask | None],
                        seed: int = 0, batch_size: int = 16, progress: Progress | None = None,
                        cache: ResultsCache | None = None) -> list[EvalResult]:
    """One :class:`EvalResult` per mask (None: unpruned), each what ``evaluate_task(..., mask=m)`` returns, the
    missing ones computed together: every prompt batch runs once with one copy of its rows per condition.

    ``progress(done, total)`` counts prompts over all conditions (cached ones at once), after every batch; the
    model's lock is taken per batch, so other sessions run between batches."""
    n, shots, seed = check("n", n), check("shots", shots), check("seed", seed)
    results: list[EvalResult | None] = [None] * len(masks)
    total = n * len(masks)
    if cache is not None:
        for i, mask in enumerate(masks):
            if is_evaluated(loaded, task, shots, n, seed, mask, cache):
                results[i] = evaluate_task(loaded, task, shots, n, seed=seed, mask=mask, cache=cache)
    missing = [i for i, result in enumerate(results) if result is None]
    if progress and len(missing) < len(masks):
        progress((len(masks) - len(missing)) * n, total)
    if missing:
        start = (len(masks) - len(missing)) * n
        step = None if progress is None else (lambda done, _total: progress(start + done, total))
        computed = _run(loaded, task, shots, n, seed, [masks[i] for i in missing], batch_size, step)
        for i, result in zip(missing, computed):
            if cache is not None:
                store_evaluation(loaded, task, shots, n, seed, masks[i], result, cache)
            results[i] = result
    done = [result for result in results if result is not None]
    assert len(done) == len(masks), "every condition was read from the cache or computed"
    return done


def _run(loaded: LoadedModel, task: Task, shots: int, n: int, seed: int, masks: Sequence[NeuronMask | None],
         batch_size: int, progress: Progress | None) -> list[EvalResult]:
    """Evaluate every condition of ``masks``: per prompt batch, rows ``[c * b, (c + 1) * b)`` are condition c's
    copy of the batch's b prompts. A family with a decode cap (RWKV decodes one sequence at a time) puts only
    as many conditions in a batch as the cap allows, one that is not batch-invariant (Mamba-2) one."""
    prompts = task.sample_prompts(shots, n, seed)
    encoded, budget = encode_prompts(loaded, prompts, task)
    answers = [[""] * len(prompts) for _ in masks]
    adapter, done = loaded.adapter, 0
    for batch in prompt_batches(loaded, encoded, batch_size):
        together = len(masks) if adapter.max_decode_batch is None else max(1, adapter.max_decode_batch // len(batch))
        together = together if adapter.batch_invariant else 1
        for first in range(0, len(masks), together):
            group = masks[first:first + together]
            with applied_per_row(loaded, group, len(batch)):
                texts = generate_batch(loaded, [encoded[i] for i in batch] * len(group), budget, task.delimiter)
            for c in range(len(group)):
                for i, text in zip(batch, texts[c * len(batch):(c + 1) * len(batch)]):
                    answers[first + c][i] = answer_text(text, task.delimiter)
            done += len(batch) * len(group)
            if progress:
                progress(done, n * len(masks))
    return [eval_result(loaded, task, shots, seed, prompts, predictions, mask)
            for mask, predictions in zip(masks, answers)]


__all__ = ["evaluate_conditions"]
