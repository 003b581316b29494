"""Task vectors: patching mechanics (identity patch changes nothing) and the per-layer table."""

from __future__ import annotations

import torch

from analysis.evaluation.icl import generate_answers
from analysis.evaluation.task_vectors import _patched, task_vectors
from analysis.tasks import builtin_tasks


def test_identity_patch_changes_nothing_and_a_random_one_does(tiny_loaded):
    loaded = tiny_loaded("llama")
    task = builtin_tasks()["antonyms"]
    [query] = task.sample_prompts(0, 1, seed=0)
    captured = {}
    ids = torch.tensor([loaded.tokenizer(query.text).input_ids])
    with torch.no_grad(), loaded.adapter.hook_block_inputs(lambda l, h: captured.__setitem__(l, h[0, -1].clone())):
        loaded.model(ids)
    plain = generate_answers(loaded, [query], task)
    same = generate_answers(loaded, [query], task, intervention=lambda: _patched(loaded, 1, captured[1]))
    other = generate_answers(loaded, [query], task,
                             intervention=lambda: _patched(loaded, 1, 5 * torch.randn_like(captured[1])))
    assert same == plain and other != plain


def test_task_vector_table(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    result = task_vectors(loaded, builtin_tasks()["to-upper"], shots=2, n=6, vector_prompts=3)
    assert list(result.table.layer) == list(range(loaded.n_layers))
    assert result.table.accuracy.between(0, 1).all()
    assert result.best_accuracy == result.table.accuracy.max() and 0 <= result.best_layer < loaded.n_layers
    assert 0 <= result.zero_shot_accuracy <= 1 and 0 <= result.icl_accuracy <= 1 and not result.masked
