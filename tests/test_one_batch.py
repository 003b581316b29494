"""All conditions of a pruning run in one batch (analysis/evaluation/conditions.py): the same numbers, bit for
bit, as one pass per condition, on tiny models of every family.

- per-row masks: one forward whose rows carry different masks gives each row exactly the logits of that mask
  run alone (``torch.equal``), and a row that zeros neurons differs from the unpruned row;
- ``prune_eval``'s one-batch path (the default) equals the separate path: records, answers, rates, summary;
- cached conditions are read, the missing ones computed together and stored under ``evaluate_task``'s keys;
- every forward holds the model's lock, hooks are gone afterwards, and another thread's masked sessions and
  evaluations running meanwhile change nothing.
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import torch

from analysis.cache import ResultsCache
from analysis.evaluation import evaluate_task
from analysis.evaluation.conditions import evaluate_conditions
from analysis.evaluation.icl import is_evaluated
from analysis.pruning import NeuronMask
from analysis.pruning.copying import random_mask_like
from analysis.pruning.evaluate import prune_eval
from analysis.pruning.mask import applied_per_row
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = builtin_tasks()["to-upper"]
FAMILIES = ["llama", "gpt2", "gpt_neox", "opt", "mamba", "mamba2", "rwkv", "recurrent_gemma", "gemma3_text"]


def half_mask(loaded, first: int = 0) -> NeuronMask:
    """Every other neuron of every layer (from ``first``): changes the tiny models' logits."""
    return NeuronMask.from_pairs((layer, i) for layer, width in enumerate(loaded.adapter.neuron_counts())
                                 for i in range(first, width, 2))


def conditions(loaded) -> list[NeuronMask | None]:
    """Unpruned, a mask, its random control, and the empty mask (runs unpruned too)."""
    mask = half_mask(loaded)
    return [None, mask, random_mask_like(mask, loaded.adapter.neuron_counts(), 0), NeuronMask.from_pairs([])]


def batch(loaded) -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts, left-padded as evaluation pads them (rows of one length where the family needs it)."""
    tok = loaded.tokenizer
    texts = ["cat -> CAT\ndog ->", "red -> RED\nbig -> BIG\nfish ->", "up -> UP\nhot ->"]
    ids = [tok(t).input_ids for t in texts]
    if not loaded.adapter.supports_left_padding:
        ids = [ids[0]] * len(ids)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tok.pad_token_id)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, width - len(seq):], attention[row, width - len(seq):] = torch.tensor(seq), 1
    return input_ids, attention


def random_batches(loaded, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of random tokens, heights and widths, randomly left-padded where the family pads."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        rows, width = (int(torch.randint(low, high, (1,), generator=generator)) for low, high in ((1, 6), (3, 40)))
        ids, attention = torch.randint(1, 200, (rows, width), generator=generator), torch.ones(rows, width).long()
        if loaded.adapter.supports_left_padding:
            for row in range(rows):
                attention[row, :int(torch.randint(0, width - 1, (1,), generator=generator))] = 0
        out.append((ids, attention))
    return out


def logits(loaded, input_ids, attention) -> torch.Tensor:
    kwargs = {"attention_mask": attention} if loaded.adapter.supports_left_padding else {}
    with torch.no_grad():
        return loaded.model(input_ids=input_ids, **kwargs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_each_row_gets_exactly_the_logits_of_its_mask_run_alone(tiny_loaded, family):
    loaded = tiny_loaded(family)
    masks, differs = conditions(loaded), []
    for number, (ids, attention) in enumerate([batch(loaded), *random_batches(loaded, 4)]):
        alone = []
        for mask in masks:
            with loaded.session(mask):
                alone.append(logits(loaded, ids, attention))
        rows = len(ids)
        with applied_per_row(loaded, masks, rows):
            together = logits(loaded, ids.repeat(len(masks), 1), attention.repeat(len(masks), 1))
        for c, expected in enumerate(alone):
            got = together[c * rows:(c + 1) * rows]
            differs.append(not torch.equal(got, expected))
            if loaded.adapter.batch_invariant:
                assert not differs[-1], f"batch {number}, condition {c} differs"
            else:  # the last bit only; evaluation keeps this family's conditions in batches of their own
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if number == 0:
            assert not torch.equal(together[:rows], together[rows:2 * rows])  # the masked rows really are masked
            assert not torch.equal(together[rows:2 * rows], together[2 * rows:3 * rows])  # each with its own mask
            assert torch.equal(together[:rows], together[3 * rows:])  # the empty mask runs unpruned
    assert any(differs) != loaded.adapter.batch_invariant, "the adapter's batch_invariant flag is stale"


def test_a_batch_of_the_wrong_height_is_refused(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids, attention = batch(loaded)
    with applied_per_row(loaded, conditions(loaded), len(ids)), pytest.raises(ValueError, match="per-row masks"):
        logits(loaded, ids, attention)


def frames(result) -> tuple:
    return result.records, result.flipped, result.summary()


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "mamba", "mamba2", "rwkv", "recurrent_gemma"])
def test_prune_eval_in_one_batch_equals_one_pass_per_condition(tiny_loaded, family):
    loaded = tiny_loaded(family)
    mask, tasks = half_mask(loaded), [TASK, builtin_tasks()["antonyms"]]
    runs = {one: prune_eval(loaded, mask, tasks, shots=(1, 2), n=5, random_controls=2, resamples=200,
                            one_batch=one) for one in (True, False)}
    for together, apart in zip(frames(runs[True]), frames(runs[False])):
        pd.testing.assert_frame_equal(together, apart, check_exact=True)
    assert runs[True].to_json() == runs[False].to_json()
    answers = runs[True].records.pivot_table(index=["task", "shots", "prompt_index"], columns="condition",
                                             values="answer", aggfunc="first")
    assert (answers["baseline"] != answers["pruned"]).any(), "the mask changes no answer: the test shows nothing"


def test_evaluate_conditions_returns_what_evaluate_task_returns_and_shares_its_cache(tiny_loaded, tmp_path):
    loaded = tiny_loaded("gpt2")
    masks = conditions(loaded)
    apart = [evaluate_task(loaded, TASK, 2, 7, seed=3, mask=m, batch_size=4) for m in masks]
    together = evaluate_conditions(loaded, TASK, 2, 7, masks, seed=3, batch_size=4)
    for a, b in zip(apart, together):
        pd.testing.assert_frame_equal(a.records, b.records, check_exact=True)
        assert (a.summary(), a.masked, a.meta) == (b.summary(), b.masked, b.meta)
    cache = ResultsCache(tmp_path)
    evaluate_task(loaded, TASK, 2, 7, seed=3, cache=cache)  # the unpruned run is cached: read, not rerun
    reports: list[tuple[int, int]] = []
    cached = evaluate_conditions(loaded, TASK, 2, 7, masks, seed=3, cache=cache,
                                 progress=lambda done, total: reports.append((done, total)))
    assert reports[0] == (14, 28) and reports[-1] == (28, 28)  # unpruned and the empty mask (one key) read
    assert all(is_evaluated(loaded, TASK, 2, 7, 3, m, cache) for m in masks)  # stored under evaluate_task's keys
    for a, b in zip(apart, cached):
        pd.testing.assert_frame_equal(a.records, b.records, check_exact=True)
    reread = evaluate_task(loaded, TASK, 2, 7, seed=3, mask=masks[1], cache=cache)
    pd.testing.assert_frame_equal(reread.records, apart[1].records, check_exact=True)


def _hooks(model) -> dict[str, list]:
    return {name: [*m._forward_pre_hooks.values(), *m._forward_hooks.values()]
            for name, m in model.named_modules() if m._forward_pre_hooks or m._forward_hooks}


def test_every_forward_holds_the_lock_and_no_hook_stays(tiny_loaded):
    """No hook of ours outlives the evaluation (transformers installs its own output-capturing hooks once a call
    asks for attentions or hidden states, and keeps them: those were there before)."""
    loaded = tiny_loaded("llama")
    before = _hooks(loaded.model)
    owned: list[bool] = []
    check = loaded.model.register_forward_pre_hook(lambda *_: owned.append(loaded.lock._is_owned()))
    try:
        evaluate_conditions(loaded, TASK, 1, 4, conditions(loaded))
    finally:
        check.remove()
    assert owned and all(owned)
    blocked: list[bool] = []
    with applied_per_row(loaded, conditions(loaded), 2):
        other = threading.Thread(target=lambda: blocked.append(not loaded.lock.acquire(blocking=False)))
        other.start()
        other.join(timeout=30)
    assert blocked == [True]  # while rows are masked, no other thread holds the model
    assert _hooks(loaded.model) == before


def test_one_batch_results_do_not_change_while_other_sessions_run(tiny_loaded):
    loaded = tiny_loaded("llama")
    mask = half_mask(loaded)
    alone = prune_eval(loaded, mask, [TASK], shots=(1,), n=6, random_controls=2, resamples=200)
    finished, errors = threading.Event(), []

    def other_sessions() -> None:  # another user's masked forwards and evaluations, back to back
        try:
            while not finished.is_set():
                with loaded.session(half_mask(loaded, first=1)):
                    logits(loaded, *batch(loaded))
                evaluate_task(loaded, TASK, 1, 3, seed=5, mask=half_mask(loaded, first=1))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=other_sessions)
    thread.start()
    try:
        during = [prune_eval(loaded, mask, [TASK], shots=(1,), n=6, random_controls=2, resamples=200)
                  for _ in range(2)]
    finally:
        finished.set()
        thread.join(timeout=120)
    assert not errors
    for result in during:
        pd.testing.assert_frame_equal(result.records, alone.records, check_exact=True)
