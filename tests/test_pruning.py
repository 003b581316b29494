"""Copying-neuron selection, random controls, the k-sweep, pruning evaluation, confidence neurons."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.errors import PrunescopeError
from analysis.evaluation import evaluate_task
from analysis.pruning import NeuronMask
from analysis.pruning.confidence import confidence_neurons
from analysis.pruning.copying import (copying_splits, k_sweep, normalized_copy_scores, random_mask_like,
                                      select_top_k)
from analysis.pruning.evaluate import prune_eval
from analysis.tasks import builtin_tasks

SCORES = torch.tensor([[0.5, -1.0, 0.2, 0.9],
                       [0.1, 0.8, 0.3, -0.2],
                       [0.0, 0.05, 0.7, 0.6]])


def test_select_top_k_global_and_per_layer():
    assert select_top_k(SCORES, 3).neurons == {(0, 3), (1, 1), (2, 2)}
    assert select_top_k(SCORES, 1, per_layer=True).neurons == {(0, 3), (1, 1), (2, 2)}
    assert select_top_k(SCORES, 2, per_layer=True).neurons == {(0, 3), (0, 0), (1, 1), (1, 2), (2, 2), (2, 3)}
    assert len(select_top_k(SCORES, 0)) == 0
    mask = select_top_k(SCORES, 4)
    assert mask.neurons == {(0, 3), (1, 1), (2, 2), (2, 3)} and mask.meta["k"] == 4
    with pytest.raises(PrunescopeError, match="k=13 is out of range: the model has 12 neurons in all"):
        select_top_k(SCORES, 13)
    with pytest.raises(PrunescopeError, match="k=5 is out of range: the model has 4 neurons per layer"):
        select_top_k(SCORES, 5, per_layer=True)


def test_normalized_copy_scores():
    per_prompt = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.0, 10.0], [0.0, -10.0]]])
    result = NeuronIGResult(per_prompt, [], "copy", 4, "riemann", torch.zeros(2))
    expected = torch.tensor([[0.25 / 2, (-0.25 + 0.5) / 2], [0.5 / 2, -0.5 / 2]])
    torch.testing.assert_close(normalized_copy_scores(result), expected)


def test_random_controls_match_the_layer_distribution():
    mask = NeuronMask.from_pairs([(0, 1), (0, 2), (2, 5)])
    counts = [8, 8, 8]
    a, b = random_mask_like(mask, counts, 0), random_mask_like(mask, counts, 1)
    for control in (a, b):
        assert {layer: len(ids) for layer, ids in control.by_layer().items()} == {0: 2, 2: 1}
        assert not control.neurons & mask.neurons
    assert a == random_mask_like(mask, counts, 0) and a != b


def test_copying_splits_are_disjoint_and_complete():
    fit, heldout = copying_splits()
    full = builtin_tasks()["vowel-count"].pairs
    assert not set(fit.pairs) & set(heldout.pairs)
    assert sorted(fit.pairs + heldout.pairs) == sorted(full)
    assert len(heldout.pairs) == round(0.3 * len(full)) and heldout.kind == "copying"


def test_prune_eval_tables_and_json(tiny_loaded):
    loaded = tiny_loaded("llama")
    tasks = [builtin_tasks()["antonyms"], builtin_tasks()["vowel-count"]]
    mask = NeuronMask.from_pairs([(0, i) for i in range(20)] + [(1, i) for i in range(10)])
    result = prune_eval(loaded, mask, tasks, shots=(1, 2), n=6, random_controls=2)
    table = result.table
    assert len(table) == 2 * 2 * (2 + 2)
    direct = evaluate_task(loaded, tasks[0], 2, 6, seed=0, mask=mask)
    pruned_row = table[(table.task == "antonyms") & (table.shots == 2) & (table.condition == "pruned")].iloc[0]
    assert pruned_row.accuracy == direct.accuracy and pruned_row.copy_error_rate == direct.copy_error_rate
    summary = result.summary()
    assert list(summary.task) == ["antonyms", "antonyms", "vowel-count", "vowel-count", "average", "average"]
    avg = summary[(summary.task == "average") & (summary.shots == 1)].iloc[0]
    per_task = summary[(summary.task != "average") & (summary.shots == 1)]
    assert avg.pruned_accuracy == pytest.approx(per_task.pruned_accuracy.mean())
    controls = table[(table.task == "vowel-count") & (table.shots == 1) & (table.condition == "random")]
    row = summary[(summary.task == "vowel-count") & (summary.shots == 1)].iloc[0]
    assert row.random_accuracy_mean == pytest.approx(controls.accuracy.mean())
    data = json.loads(json.dumps(result.to_json()))
    assert data["mask_size"] == 30 and data["model"] == loaded.name
    first = data["results"][0]
    assert set(first) == {"task", "shots", "n", "baseline", "pruned", "random"}
    assert set(first["random"]) == {"accuracy_mean", "accuracy_std", "copy_error_rate_mean", "copy_error_rate_std"}
    base_row = table[(table.task == "antonyms") & (table.shots == 1) & (table.condition == "baseline")].iloc[0]
    assert first["baseline"]["accuracy"] == base_row.accuracy
    flipped = result.flipped
    assert (flipped.baseline != flipped.pruned).all()
    assert set(flipped.change) <= {"fixed", "broken", "changed"}


def test_k_sweep_picks_a_grid_value(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    scores = torch.randn(loaded.n_layers, 64, generator=torch.Generator().manual_seed(0))
    table, best = k_sweep(loaded, scores, ks=(0, 4, 16), dev_tasks=("antonyms",), n=5)
    assert len(table) == 3 * 2 and best in (4, 16)  # k = 0 is the reference row, never chosen
    objective = table[table.k > 0].groupby("k")["accuracy"].mean()
    assert objective[best] == objective.max()
    assert table[table.k == 16].mask_size.iloc[0] == 16


def test_confidence_neurons(tiny_loaded):
    loaded = tiny_loaded("mamba")
    task = builtin_tasks()["antonyms"]
    found = confidence_neurons(loaded, task, layer=1, percent=10, n=4, shots=2, steps=4, min_prob=0.0)
    assert len(found.mask) == math.ceil(64 * 0.10) and set(found.mask.by_layer()) == {1}
    top = set(found.layer_scores.topk(len(found.mask)).indices.tolist())
    assert {i for _, i in found.mask.neurons} == top and found.n_confident == 4
    with pytest.raises(PrunescopeError, match="no prompt of task 'antonyms' is answered with probability"):
        confidence_neurons(loaded, task, layer=1, percent=10, n=2, shots=2, steps=2, min_prob=1.1)
    with pytest.raises(PrunescopeError, match="layer 7 does not exist"):
        confidence_neurons(loaded, task, layer=7, percent=10)
