"""Training-free baselines: the instruction task keeps every prompt's demonstrations and query, magnitudes
equal the IG fast path's own clean activations, the magnitude mask is their top k, and the method table
compares each method with the unpruned model on the same prompts."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from analysis.attribution.passes import clean_pass
from analysis.attribution.targets import prepare_inputs
from analysis.cache import task_fingerprint
from analysis.errors import PrunescopeError
from analysis.evaluation.paired import compare
from analysis.pruning.baselines import (
    activation_magnitudes,
    check_baselines,
    instruction_task,
    magnitude_mask,
    method_table,
)
from analysis.pruning.copying import copying_splits, select_top_k
from analysis.tasks import builtin_tasks
from tests.test_significance import two_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def test_instruction_prompts_keep_queries_and_demonstrations():
    task = builtin_tasks()["antonyms"]
    instructed = instruction_task(task)
    for plain, prompt in zip(task.sample_prompts(2, 5), instructed.sample_prompts(2, 5)):
        assert prompt.text == "Task: word -> its antonym. Answer the last line the same way.\n" + plain.text
        assert (prompt.query, prompt.demos) == (plain.query, plain.demos)
    assert task_fingerprint(instructed) != task_fingerprint(task)
    assert task_fingerprint(task) == task_fingerprint(builtin_tasks()["antonyms"])


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "mamba"])
def test_magnitudes_equal_the_clean_activations_of_the_ig_fast_path(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    items = prepare_inputs(loaded, builtin_tasks()["antonyms"].sample_prompts(2, 3), "gold")
    prompts = [dataclasses.replace(item.prompt, text=item.text) for item in items]  # the exact text IG runs
    magnitudes = activation_magnitudes(loaded, prompts)
    expected = torch.zeros_like(magnitudes)
    for item, prompt in zip(items, prompts):
        assert list(item.input_ids) == loaded.tokenizer(prompt.text).input_ids
        with loaded.lock:
            acts = clean_pass(loaded, item, {}, 320)[0].acts
        expected += torch.stack(acts).abs().double() / len(prompts)  # acts: one row per layer
    torch.testing.assert_close(magnitudes, expected, rtol=1e-5, atol=1e-6)


def test_magnitude_mask_is_the_top_k_on_the_scoring_prompts(tiny_loaded):
    loaded = tiny_loaded("llama")
    mask = magnitude_mask(loaded, 7, n=4, shots=2)
    magnitudes = activation_magnitudes(loaded, copying_splits()[0].sample_prompts(2, 4))
    assert mask.neurons == select_top_k(magnitudes.float(), 7).neurons and mask.meta["method"] == "magnitude"


def test_method_table_compares_each_method_with_the_unpruned_model():
    records = two_tasks(0.4, 0.4)
    magnitude = records[records.condition == "pruned"].assign(condition="magnitude")
    table = method_table(pd.concat([records, magnitude]), resamples=500)
    assert list(table.method) == ["copying mask", "magnitude pruning (same k)"]
    [average] = [c for c in compare(records, resamples=500) if c.task == "average"]
    row = table.iloc[0]
    assert row.d_accuracy == pytest.approx(average.vs_baseline["accuracy"].delta)
    assert (row.d_accuracy_lo, row.d_accuracy_hi) == pytest.approx(average.vs_baseline["accuracy"].ci95)
    assert table.iloc[1].d_accuracy == pytest.approx(row.d_accuracy)
    with pytest.raises(PrunescopeError, match="unknown baseline 'prompting'"):
        check_baselines(["magnitude", "prompting"])
