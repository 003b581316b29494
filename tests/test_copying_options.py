"""The copying-score options: the paper's target (probability of the copied answer) checked like every IG
target (fast path == reference == captum, completeness), and the 'copied' prompt filter against a plain
recomputation of which prompts the unpruned model copies on."""

from __future__ import annotations

import pytest
import torch

from analysis.attribution import neuron_ig, prepare_inputs, site_scaled_target
from analysis.attribution.targets import clean_logits
from analysis.errors import PrunescopeError
from analysis.evaluation import evaluate_task
from analysis.pruning.copying import copying_scores, copying_splits, normalized_copy_scores
from analysis.tasks import builtin_tasks
from tests.test_neuron_ig import captum_layer_ig, copying_prompts, rel_err


@pytest.mark.parametrize("model_type", ["llama", "mamba"])
def test_copy_prob_fast_path_equals_reference_and_captum(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    [item] = prepare_inputs(loaded, copying_prompts(1), "copy-prob")
    assert item.target.kind == "copy-prob" and len(item.target.token_ids) == 2
    fast = neuron_ig(loaded, [item], steps=6, quadrature="riemann")
    ref = neuron_ig(loaded, [item], steps=6, quadrature="riemann", method="reference")
    assert rel_err(fast.per_prompt, ref.per_prompt) < 1e-4
    copied = item.target.token_ids[0]
    expected_f = torch.softmax(clean_logits(loaded, list(item.input_ids)).float(), -1)[copied]
    assert float(fast.f_clean[0]) == pytest.approx(float(expected_f), rel=1e-5)
    for layer in range(loaded.n_layers):
        assert rel_err(ref.per_prompt[0, layer], captum_layer_ig(loaded, item, layer, 6, "riemann_right")) < 1e-4


def test_copy_prob_is_complete(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    [item] = prepare_inputs(loaded, copying_prompts(1), "copy-prob")
    result = neuron_ig(loaded, [item], steps=64, quadrature="gauss-legendre")
    with torch.no_grad():
        for layer in range(loaded.n_layers):
            delta = float(result.f_clean[0]) - float(site_scaled_target(loaded, item, layer, torch.tensor(0.0)))
            assert abs(float(result.per_prompt[0, layer].sum()) - delta) <= 0.05 * abs(delta) + 1e-7


def test_copied_prompts_filter(tiny_loaded, tmp_path):
    from analysis.cache import ResultsCache

    loaded, cache = tiny_loaded("llama"), ResultsCache(tmp_path, fallbacks=())
    everything = copying_scores(loaded, n=6, shots=3, steps=3, cache=cache)
    copied = copying_scores(loaded, n=6, shots=3, steps=3, prompts="copied", cache=cache)
    assert everything.n_used == 6 and copied.options["prompts"] == "copied"
    torch.testing.assert_close(copied.ig.per_prompt, everything.ig.per_prompt)  # one IG run, filtered after
    fit, _ = copying_splits()
    answers = evaluate_task(loaded, fit, 3, 6).records
    expected = []
    for item, outcome in zip(everything.ig.inputs, answers.outcome):
        logits = clean_logits(loaded, list(item.input_ids))
        copy_token, gold = item.target.token_ids
        expected.append(outcome == "copy" or bool(logits[copy_token] > logits[gold]))
    assert copied.used == expected and any(expected) and not all(expected), expected
    torch.testing.assert_close(copied.scores, normalized_copy_scores(everything.ig, expected))
    with pytest.raises(PrunescopeError, match="unknown copying target 'gold'"):
        copying_scores(loaded, n=2, target="gold")
    with pytest.raises(PrunescopeError, match="unknown scoring prompts 'some'"):
        copying_scores(loaded, n=2, prompts="some")


def test_echo_target_is_the_echo_logit_margin_equal_to_captum_and_complete(tiny_loaded):
    loaded = tiny_loaded("llama")
    prompts = builtin_tasks()["singular-plural"].sample_prompts(2, 2)
    items = prepare_inputs(loaded, prompts, "echo")
    for item, prompt in zip(items, prompts):
        echoed, gold = item.target.token_ids
        ids = list(item.input_ids)  # the prompt and the tokens echo and gold share ("river" of "rivers")
        assert echoed != gold
        assert loaded.tokenizer(prompt.text + " " + prompt.query + "\n").input_ids[:len(ids) + 1] == ids + [echoed]
        assert loaded.tokenizer(prompt.text + " " + prompt.gold + "\n").input_ids[:len(ids) + 1] == ids + [gold]
        logits = clean_logits(loaded, list(item.input_ids))
        fast = neuron_ig(loaded, [item], steps=64, quadrature="gauss-legendre")
        assert float(fast.f_clean[0]) == pytest.approx(float(logits[echoed] - logits[gold]), rel=1e-5, abs=1e-6)
        assert rel_err(fast.per_prompt[0, 1], captum_layer_ig(loaded, item, 1, 64, "gausslegendre")) < 1e-4
        with torch.no_grad():
            for layer in range(loaded.n_layers):
                delta = float(fast.f_clean[0]) - float(site_scaled_target(loaded, item, layer, torch.tensor(0.0)))
                assert abs(float(fast.per_prompt[0, layer].sum()) - delta) <= 0.05 * abs(delta) + 1e-6


def test_echo_scores_on_another_task_and_the_echo_filter(tiny_loaded, tmp_path):
    from analysis.cache import ResultsCache

    loaded, cache = tiny_loaded("llama"), ResultsCache(tmp_path, fallbacks=())
    scored = copying_scores(loaded, n=4, shots=2, steps=2, target="echo", task="singular-plural", cache=cache)
    assert scored.options["task"] == "singular-plural" and scored.ig.target == "echo"
    assert {item.prompt.query for item in scored.ig.inputs} <= {x for x, _ in builtin_tasks()["singular-plural"].pairs}
    with pytest.raises(PrunescopeError, match="unknown scoring task 'bogus'"):
        copying_scores(loaded, n=4, shots=2, steps=2, target="echo", task="bogus", cache=cache)
