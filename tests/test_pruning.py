"""Copying-neuron selection, random controls, the k-sweep, pruning evaluation, confidence neurons."""

from __future__ import annotations

import csv
import io
import json
import math

import pandas as pd
import pytest
import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.errors import PrunescopeError
from analysis.evaluation import evaluate_task
from analysis.export import defuse
from analysis.pruning import NeuronMask
from analysis.pruning.autok import choose_k, k_sweep
from analysis.pruning.confidence import confidence_neurons
from analysis.pruning.copying import (
    copying_splits,
    mask_neurons_table,
    normalized_copy_scores,
    parse_layer_range,
    random_mask_like,
    select_top_k,
)
from analysis.pruning.evaluate import RECORD_COLUMNS, flip_counts, prune_eval, prune_eval_plan, uncached_prompts
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


def test_select_top_k_in_a_layer_range():
    assert select_top_k(SCORES, 2, layers=(1, 2)).neurons == {(1, 1), (2, 2)}
    assert select_top_k(SCORES, 1, per_layer=True, layers=(2, 2)).neurons == {(2, 2)}
    assert select_top_k(SCORES, 2, layers=(1, 2)).meta["layers"] == [1, 2]
    with pytest.raises(PrunescopeError, match="k=9 is out of range: the model has 8 neurons in layers 1-2"):
        select_top_k(SCORES, 9, layers=(1, 2))
    assert parse_layer_range("", 3) is None and parse_layer_range("1-2", 3) == (1, 2)
    assert parse_layer_range("2", 3) == (2, 2)
    for bad, message in (("2-1", "outside"), ("0-3", "outside"), ("a-b", "is not 'first-last'")):
        with pytest.raises(PrunescopeError, match=message):
            parse_layer_range(bad, 3)


def test_mask_neurons_table_lists_neurons_by_score():
    rows = mask_neurons_table(select_top_k(SCORES, 3), SCORES)
    assert rows == [{"layer": 0, "neuron": 3, "score": pytest.approx(0.9)},
                    {"layer": 1, "neuron": 1, "score": pytest.approx(0.8)},
                    {"layer": 2, "neuron": 2, "score": pytest.approx(0.7)}]


def test_normalized_copy_scores():
    per_prompt = torch.tensor([[[1.0, -1.0], [2.0, 0.0]], [[0.0, 10.0], [0.0, -10.0]]])
    result = NeuronIGResult(per_prompt, [], "copy", 4, "riemann", torch.zeros(2))
    expected = torch.tensor([[0.25 / 2, (-0.25 + 0.5) / 2], [0.5 / 2, -0.5 / 2]])
    torch.testing.assert_close(normalized_copy_scores(result), expected)
    # only the second prompt: its map over its total |attribution| of 20
    torch.testing.assert_close(normalized_copy_scores(result, [False, True]),
                               torch.tensor([[0.0, 0.5], [0.0, -0.5]]))


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


def test_prune_eval_records_summary_and_json(tiny_loaded):
    loaded = tiny_loaded("llama")
    tasks = [builtin_tasks()["antonyms"], builtin_tasks()["vowel-count"]]
    mask = NeuronMask.from_pairs([(0, i) for i in range(20)] + [(1, i) for i in range(10)])
    result = prune_eval(loaded, mask, tasks, shots=(1, 2), n=6, random_controls=2, resamples=500)
    records = result.records
    assert list(records.columns) == RECORD_COLUMNS and len(records) == 2 * 2 * (2 + 2) * 6
    assert set(records.condition) == {"baseline", "pruned", "random-0", "random-1"}
    direct = evaluate_task(loaded, tasks[0], 2, 6, seed=0, mask=mask)
    pruned_rows = records[(records.task == "antonyms") & (records.shots == 2) & (records.condition == "pruned")]
    assert list(pruned_rows.answer) == list(direct.records.prediction)
    assert list(pruned_rows.outcome) == list(direct.records.outcome)
    control = evaluate_task(loaded, tasks[1], 1, 6, seed=0,
                            mask=random_mask_like(mask, loaded.adapter.neuron_counts(), 1))
    summary = result.summary()
    assert list(summary.task) == ["antonyms", "antonyms", "vowel-count", "vowel-count", "average", "average"]
    avg = summary[(summary.task == "average") & (summary.shots == 1)].iloc[0]
    per_task = summary[(summary.task != "average") & (summary.shots == 1)]
    assert avg.pruned_accuracy == pytest.approx(per_task.pruned_accuracy.mean())
    row = summary[(summary.task == "vowel-count") & (summary.shots == 1)].iloc[0]
    assert result.cell("vowel-count", 1).control_rates["random-1"]["accuracy"] == control.accuracy
    assert row.random_accuracy_min <= control.accuracy <= row.random_accuracy_max
    assert row.d_copy_error_rate_vs_baseline == pytest.approx(row.pruned_copy_error_rate - row.baseline_copy_error_rate)
    assert row.d_accuracy_vs_random == pytest.approx(row.pruned_accuracy - row.random_accuracy)
    for metric in ("accuracy", "copy_error_rate", "echo_rate"):
        assert (summary[f"pruned_{metric}_lo"] <= summary[f"pruned_{metric}"]).all()
        assert (summary[f"d_{metric}_vs_baseline_hi"] >= summary[f"d_{metric}_vs_baseline"]).all()
    data = json.loads(json.dumps(result.to_json()))
    assert data["mask_size"] == 30 and data["model"] == loaded.name and data["random_controls"] == 2
    first = data["results"][0]
    assert {"baseline", "pruned", "random", "pruned_vs_baseline", "pruned_vs_random", "verdict"} <= set(first)
    for key in ("pruned_vs_baseline", "pruned_vs_random"):
        assert set(first[key]) == {"accuracy", "copy_error_rate", "echo_rate"}
        assert set(first[key]["accuracy"]) == {"delta", "ci95", "p", "p_holm"}
    assert first["pruned_vs_baseline"]["accuracy"]["delta"] == pytest.approx(summary.d_accuracy_vs_baseline[0])
    assert data["results"][-1]["task"] == "average"
    assert first["verdict"]["random"].startswith("Against random masks of the same size: ")
    csv_rows = list(csv.reader(io.StringIO(result.records_csv())))  # random-model answers hold odd characters
    assert csv_rows[0] == RECORD_COLUMNS and len(csv_rows) == len(records) + 1
    assert csv_rows[1][4] == "baseline" and csv_rows[1][5] == defuse(records.answer[0])  # as a spreadsheet sees it
    flipped = result.flipped
    assert (flipped.baseline != flipped.pruned).all()
    assert all(change == f"{b} -> {p}" for change, b, p in
               zip(flipped.change, flipped.baseline_outcome, flipped.pruned_outcome))
    assert flip_counts(flipped).prompts.sum() == len(flipped)


def test_auto_k_selects_nothing_when_no_k_helps(tiny_loaded):
    """A random-weight model answers nothing right with or without pruning: no k beats k = 0, so the sweep
    chooses k = 0 and says so."""
    loaded = tiny_loaded("gpt2")
    scores = torch.randn(loaded.n_layers, 64, generator=torch.Generator().manual_seed(0))
    reports = []
    sweep = k_sweep(loaded, scores, ks=(4, 16), dev_tasks=("antonyms",), n=6, resamples=300,
                    progress=lambda done, total: reports.append((done, total)))
    assert {t for _, t in reports} == {3 * 2 * 6} and reports[-1][0] == 36  # prompts, total known up front
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)  # never back
    assert sorted(sweep.table.k.unique()) == [0, 4, 16]
    assert set(sweep.table.task) == {"vowel-count[heldout]", "antonyms", "average"}
    assert sweep.chosen == 0 and sweep.message.startswith("No k beats the unpruned model beyond noise")
    assert len(select_top_k(scores, sweep.chosen)) == 0
    row = sweep.table[(sweep.table.k == 16) & (sweep.table.task == "average")].iloc[0]
    assert row.mask_size == 16 and row.d_accuracy_lo <= row.d_accuracy <= row.d_accuracy_hi
    assert row.d_accuracy_adj_lo <= row.d_accuracy_lo  # the simultaneous interval is wider


def sweep_row(k, d_acc, lo, hi, adj_lo, d_copy):
    return {"k": k, "task": "average", "d_accuracy": d_acc, "d_accuracy_lo": lo, "d_accuracy_hi": hi,
            "d_accuracy_adj_lo": adj_lo, "d_copy_error_rate": d_copy}


def test_choose_k_needs_a_gain_beyond_noise_and_copies_not_rising():
    table = pd.DataFrame([
        sweep_row(5, 0.02, -0.01, 0.05, -0.02, -0.01),  # interval crosses zero
        sweep_row(20, 0.06, 0.03, 0.09, 0.01, -0.02),  # qualifies
        sweep_row(50, 0.08, 0.05, 0.11, 0.02, 0.01),  # bigger gain, but copy errors rise
        sweep_row(100, 0.05, 0.01, 0.09, -0.005, -0.03),  # above zero at 95 %, not at the Bonferroni level
    ])
    k, message = choose_k(table, n=80)
    assert k == 20 and message.startswith("k=20 gains +6.0 accuracy points")
    assert "not separable from the runner-up k=50" in message
    none, why = choose_k(table.assign(d_accuracy_adj_lo=-0.01), n=80)
    assert none == 0 and "best, k=50, changes accuracy by +8.0 points" in why


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


@pytest.mark.parametrize("one_batch", [True, False])
def test_prune_eval_progress_is_one_rising_bar_and_a_stop_ends_the_work_within_a_batch(tiny_loaded, one_batch):
    loaded = tiny_loaded("llama")
    tasks = [builtin_tasks()["antonyms"], builtin_tasks()["to-upper"]]
    mask = NeuronMask.from_pairs([(0, i) for i in range(8)])
    reports = []
    prune_eval(loaded, mask, tasks, shots=(1,), n=6, random_controls=2, resamples=200, one_batch=one_batch,
               progress=lambda done, total: reports.append((done, total)))
    totals = {total for _, total in reports}
    assert totals == {2 * (1 + 1 + 2) * 6}  # known up front, in prompts
    assert [d for d, _ in reports] == sorted(d for d, _ in reports) and reports[-1][0] == 48  # never back
    if one_batch:  # a task's 6 prompts under all 4 conditions are one batch: reported after each
        assert reports == [(24, 48), (48, 48)]
    else:
        assert len(reports) > 2 * (1 + 1 + 2)  # reported within evaluations (per batch), not only after each

    class Stop(Exception):
        pass

    forwards = []
    hook = loaded.model.register_forward_hook(lambda *_: forwards.append(1))

    def stop_after_first_batch(done, total):
        raise Stop  # what a Cancel does in the app: the first report after the click ends the run

    try:
        with pytest.raises(Stop):
            prune_eval(loaded, mask, [builtin_tasks()["country-capital"]], shots=(1,), n=40, random_controls=2,
                       progress=stop_after_first_batch, one_batch=one_batch)
        until_stop = len(forwards)
        forwards.clear()
        evaluate_task(loaded, builtin_tasks()["country-capital"], 1, 40, seed=0)  # one whole evaluation
    finally:
        hook.remove()
    assert 0 < until_stop < len(forwards) / 2  # stopped after its first batch (of 3), not after the evaluation


def test_the_pruning_plan_is_prune_evals_grid_and_counts_what_is_not_cached(tiny_loaded, tmp_path):
    """The pruning page counts uncached prompts from the same plan prune_eval runs (no grid of its own)."""
    from analysis.cache import ResultsCache

    loaded = tiny_loaded("llama")
    mask, tasks = NeuronMask.from_pairs([(0, 1), (1, 2)]), [builtin_tasks()["antonyms"]]
    plan = prune_eval_plan(loaded, mask, tasks, [1, 2], 2)
    names = ["baseline", "pruned", "random-0", "random-1"]
    assert [(run.shots, run.condition) for run in plan] == [(k, name) for k in (1, 2) for name in names]
    cache = ResultsCache(tmp_path, fallbacks=())
    assert uncached_prompts(loaded, plan, 3, 0, cache) == dict.fromkeys(names, 6)
    result = prune_eval(loaded, mask, tasks, shots=[1], n=3, random_controls=2, cache=cache)
    assert uncached_prompts(loaded, plan, 3, 0, cache) == dict.fromkeys(names, 3)  # the 2-shot runs remain
    assert list(dict.fromkeys(result.records.condition)) == names
