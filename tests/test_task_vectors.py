"""Task vectors: the patching against a plain-hook reference, its invariants, and the test against zero-shot."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analysis.errors import PrunescopeError
from analysis.evaluation.icl import answer_token_budget, generate_answers
from analysis.evaluation.paired import mcnemar_exact
from analysis.evaluation.task_vectors import (
    TaskVectorResult,
    generate_patched,
    last_token_states,
    layer_table,
    paired_row,
    patched_last_token,
    task_vector_prompts,
    task_vectors,
)
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "country-capital"  # queries of several token lengths: batches are left-padded


def _blocks(loaded):
    return loaded.adapter._blocks


def _output(out):
    return out[0] if isinstance(out, tuple) else out


def _with_output(out, hidden):
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


def _input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _keep_input(store: dict, key, last_only: bool = False):
    """A forward pre-hook (with kwargs) that stores the block's input and changes nothing."""
    def hook(module, args, kwargs):
        hidden = _input(args, kwargs)
        store[key] = (hidden[0, -1] if last_only else hidden).clone()
    return hook


def reference_states(loaded, text: str) -> torch.Tensor:
    """[layers, H]: block inputs at the last token from plain hooks (block 0's input, then blocks' outputs)."""
    blocks, seen = _blocks(loaded), {}
    handles = [blocks[0].register_forward_pre_hook(_keep_input(seen, 0, last_only=True), with_kwargs=True)]
    handles += [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i + 1, _output(out)[0, -1].clone()))
                for i, b in enumerate(blocks[:-1])]
    try:
        with loaded.lock, torch.no_grad():
            loaded.model(torch.tensor([loaded.tokenizer(text).input_ids]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([seen[layer] for layer in range(loaded.n_layers)])


def reference_answer(loaded, task, text: str, layer: int, vector: torch.Tensor) -> str:
    """One prompt, no cache, greedy by hand: every step re-runs the whole sequence with block ``layer``'s
    input at the prompt's last token set to ``vector`` (what a prefill-only patch leaves in the cache)."""
    tok, ids = loaded.tokenizer, loaded.tokenizer(text).input_ids
    position = len(ids) - 1

    def set_last(hidden):
        hidden = hidden.clone()
        hidden[0, position] = vector
        return hidden

    block = _blocks(loaded)[layer - 1] if layer else _blocks(loaded)[0]
    if layer:
        handle = block.register_forward_hook(lambda m, a, out: _with_output(out, set_last(_output(out))))
    else:
        handle = block.register_forward_pre_hook(lambda m, args, kwargs: (
            (set_last(args[0]), *args[1:]), kwargs) if args else (args, {
                **kwargs, "hidden_states": set_last(kwargs["hidden_states"])}), with_kwargs=True)
    new: list[int] = []
    try:
        with loaded.lock, torch.no_grad():
            for _ in range(answer_token_budget(loaded, task)):
                next_id = int(loaded.model(torch.tensor([ids + new]), use_cache=False).logits[0, -1].argmax())
                if next_id == tok.eos_token_id:
                    break
                new.append(next_id)
                if task.delimiter in tok.decode([next_id]):
                    break
    finally:
        handle.remove()
    return tok.decode(new, skip_special_tokens=True).split(task.delimiter)[0].strip()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_patching_matches_a_plain_hook_reference(tiny_loaded, family):
    loaded, task = tiny_loaded(family), builtin_tasks()[TASK]
    icl, zero_shot, dummies = task_vector_prompts(task, shots=2, n=6, dummy_queries=2, seed=0)
    flat = [d for ds in dummies for d in ds]
    states = last_token_states(loaded, flat)
    reference = torch.stack([reference_states(loaded, d.text) for d in flat])
    torch.testing.assert_close(states, reference, rtol=1e-5, atol=1e-5)
    vectors = reference.view(6, 2, loaded.n_layers, -1).mean(1)
    assert len({len(loaded.tokenizer(p.text).input_ids) for p in zero_shot}) > 1  # padding is exercised
    plain = generate_answers(loaded, zero_shot, task)
    changed = 0
    for layer in range(loaded.n_layers):
        ours = generate_patched(loaded, zero_shot, task, layer, vectors[:, layer], batch_size=4)
        theirs = [reference_answer(loaded, task, p.text, layer, vectors[i, layer]) for i, p in enumerate(zero_shot)]
        assert ours == theirs
        changed += sum(a != b for a, b in zip(ours, plain))
    assert changed > 0  # the patch matters, so agreeing with the reference means something


def test_task_vector_prompts_use_the_queries_demonstrations_and_fresh_dummies():
    task = builtin_tasks()[TASK]
    icl, zero_shot, dummies = task_vector_prompts(task, shots=3, n=10, dummy_queries=2, seed=1)
    assert icl == task.sample_prompts(3, 10, 1)
    for p, z, ds in zip(icl, zero_shot, dummies):
        assert z.text == task.render_query(p.query) and z.gold == p.gold and not z.demos
        assert len(ds) == 2 and len({d.query for d in ds}) == 2
        for d in ds:
            assert d.demos == p.demos and d.query != p.query and d.query not in {x for x, _ in p.demos}


@pytest.mark.parametrize("family", ["llama", "mamba", "rwkv", "jamba", "granitemoehybrid", "nemotron_h", "minimax"])
def test_patching_a_prompts_own_state_into_itself_reproduces_its_answer(tiny_loaded, family):
    loaded, task = tiny_loaded(family), builtin_tasks()[TASK]
    prompts = task.sample_prompts(2, 6, seed=3)
    own = last_token_states(loaded, prompts)
    plain = generate_answers(loaded, prompts, task)
    swapped = 0
    for layer in range(loaded.n_layers):
        assert generate_patched(loaded, prompts, task, layer, own[:, layer], batch_size=4) == plain
        others = own[:, layer].roll(1, dims=0)  # each prompt gets its neighbour's state
        swapped += sum(a != b for a, b in zip(generate_patched(loaded, prompts, task, layer, others), plain))
    assert swapped > 0  # rows are matched to their own vectors, not just to any vector


@pytest.mark.parametrize("family", ["llama", "gpt2", "mamba", "jamba", "granitemoehybrid", "nemotron_h", "minimax"])
def test_patching_at_a_layer_changes_nothing_below_it(tiny_loaded, family):
    loaded, task = tiny_loaded(family), builtin_tasks()[TASK]
    encoded = [loaded.tokenizer(p.text).input_ids for p in task.sample_prompts(0, 40, seed=0)]
    common = max({len(e) for e in encoded}, key=[len(e) for e in encoded].count)
    ids = torch.tensor([e for e in encoded if len(e) == common][:2])  # two rows, one vector each
    vectors = 3 * torch.randn(2, loaded.model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def block_inputs(layer=None):
        """Every block's input, captured by hooks registered after the patch's (so they see its result)."""
        seen = {}
        with loaded.lock, torch.no_grad(), \
                (patched_last_token(loaded, layer, vectors) if layer is not None else torch.no_grad()):
            handles = [b.register_forward_pre_hook(_keep_input(seen, i), with_kwargs=True)
                       for i, b in enumerate(_blocks(loaded))]
            try:
                loaded.model(ids, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
        return seen

    plain = block_inputs()
    for layer in range(loaded.n_layers):
        patched = block_inputs(layer)
        for below in range(layer):
            assert torch.equal(patched[below], plain[below])
        assert torch.equal(patched[layer][:, :-1], plain[layer][:, :-1])
        assert torch.equal(patched[layer][:, -1], vectors)
        for above in range(layer + 1, loaded.n_layers):
            assert torch.equal(patched[above][:, :-1], plain[above][:, :-1])  # causal: earlier tokens untouched
            assert not torch.equal(patched[above][:, -1], plain[above][:, -1])


def test_paired_row_and_bonferroni():
    zero_shot = ["other"] * 40
    twelve = ["correct"] * 12 + ["copy"] * 3 + ["other"] * 25
    row = paired_row(twelve, zero_shot)
    assert row == {"accuracy": 0.3, "copy_rate": 0.075, "only_patched": 12, "only_zero_shot": 0,
                   "p_value": 2 * 0.5**12}
    mixed = paired_row(["correct"] * 5 + ["other"] * 35, ["other"] * 3 + ["correct"] * 3 + ["other"] * 34)
    assert (mixed["only_patched"], mixed["only_zero_shot"]) == (3, 1) and mixed["p_value"] == mcnemar_exact(3, 1)
    ten = paired_row(["correct"] * 10 + ["other"] * 30, zero_shot)
    table = layer_table([{"layer": layer, **ten} for layer in range(29)] + [{"layer": 29, **row}])
    assert table.p_adjusted.iloc[0] == pytest.approx(30 * 2 * 0.5**10)  # 0.059: not significant
    assert table.p_adjusted.iloc[29] == pytest.approx(30 * 2 * 0.5**12)  # 0.015
    assert list(table.beats_zero_shot) == [False] * 29 + [True]


def _result(rows: list[dict]) -> TaskVectorResult:
    return TaskVectorResult("t", 4, 40, 2, layer_table(rows), 0.9, 0.0, False, pd.DataFrame())


def test_no_best_layer_when_no_layer_beats_zero_shot():
    six = paired_row(["correct"] * 6 + ["other"] * 34, ["other"] * 40)  # p = 1/32, times 3 layers
    low = paired_row(["correct"] * 2 + ["other"] * 38, ["other"] * 40)
    result = _result([{"layer": 0, **low}, {"layer": 1, **six}, {"layer": 2, **low}])
    assert result.best_layer is None and result.best_accuracy is None and result.top_layer == 1
    assert result.verdict() == "no layer beats zero-shot (best: layer 1, 15.0% vs 0.0% zero-shot, p = 0.094 " \
                               "after Bonferroni's correction over 3 layers)"
    flat = paired_row(["correct"] * 2 + ["other"] * 38, ["correct"] * 2 + ["other"] * 38)  # p = 1, not 'p = 1 B…'
    assert _result([{"layer": 0, **flat}]).verdict().endswith("p = 1 after Bonferroni's correction over 1 layer)")
    ten = paired_row(["correct"] * 10 + ["other"] * 30, ["other"] * 40)
    twenty = paired_row(["correct"] * 20 + ["other"] * 20, ["other"] * 40)
    result = _result([{"layer": 0, **ten}, {"layer": 1, **twenty}, {"layer": 2, **ten}])
    assert result.best_layer == 1 and result.best_accuracy == 0.5
    assert result.verdict().startswith("layer 1 beats zero-shot (layer 1, 50.0% vs 0.0% zero-shot, p = 5.7e-06")


def test_task_vector_run(tiny_loaded):
    loaded, task = tiny_loaded("gpt2"), builtin_tasks()["to-upper"]
    result = task_vectors(loaded, task, shots=2, n=6, dummy_queries=2)
    assert list(result.table.layer) == list(range(loaded.n_layers))
    assert set(result.records.condition) == {"zero-shot", "icl", *(f"layer {i}" for i in range(loaded.n_layers))}
    for layer, row in result.table.set_index("layer").iterrows():
        outcomes = result.records[result.records.condition == f"layer {layer}"].outcome
        assert row.accuracy == (outcomes == "correct").mean() and row.copy_rate == (outcomes == "copy").mean()
        assert 0 < row.p_value <= 1
    zero_shot = result.records[result.records.condition == "zero-shot"]
    assert result.zero_shot_accuracy == (zero_shot.outcome == "correct").mean()
    assert list(zero_shot["query"]) == [p.query for p in task.sample_prompts(2, 6, 0)]


@pytest.mark.parametrize("kwargs,message", [({"shots": 0}, "shots >= 1"), ({"dummy_queries": 0}, "dummy queries"),
                                            ({"shots": 33}, "shots must be an integer from 0 to 32"),
                                            ({"shots": 4, "task": "five"}, r"need shots \+ 2 = 6")])
def test_bad_settings(tiny_loaded, kwargs, message):
    from analysis.tasks import Task

    task = Task("five", tuple((f"w{i}", f"o{i}") for i in range(5))) if kwargs.pop("task", None) \
        else builtin_tasks()["to-upper"]
    with pytest.raises(PrunescopeError, match=message):
        task_vectors(tiny_loaded("gpt2"), task, **{"n": 2, **kwargs})


def test_chart_stars_only_the_layers_that_beat_zero_shot():
    from components.charts_pruning import task_vector_chart

    curves = {"unpruned": [0.0, 0.5, 0.2], "pruned": [0.0, 0.1, 0.1]}
    figure = task_vector_chart(curves, {"unpruned": 0.0, "pruned": 0.0}, beats={
        "unpruned": [False, True, False], "pruned": [False, False, False]}, icl={"unpruned": 0.9})
    stars = [t for t in figure.data if t.marker.symbol == "star"]
    assert [(t.name, list(t.x), list(t.y)) for t in stars] == [("unpruned: beats zero-shot", [1], [0.5])]
    assert sorted(line.y0 for line in figure.layout.shapes) == [0.0, 0.9]  # equal zero-shot lines drawn once
    assert sorted(a.text.replace("<br>", " ") for a in figure.layout.annotations) == [  # in the margin, wrapped
        "unpruned and pruned, zero-shot without a vector", "unpruned, k-shot ICL"]
