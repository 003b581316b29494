"""The neuron view: a neuron's activations equal a plain torch hook's, its IG column is the result's, the top
prompts are ordered by peak activation, and a bad neuron is a one-line error."""

from __future__ import annotations

import pytest
import torch

from analysis.attribution import neuron_ig, prepare_inputs
from analysis.attribution.neuron_view import NeuronProfile, neuron_profile, parse_neuron
from analysis.errors import PrunescopeError
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def plain_site_activation(loaded, ids, layer, neuron):
    """The neuron's activation at every token from a bare torch hook on the site module and the full model
    (not the adapter's hook machinery, not the base model)."""
    site = loaded.adapter.site(layer)
    module = loaded.model.get_submodule(site.path)
    seen = []
    if site.io == "input":
        handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0][0, :, neuron].clone()))
    else:
        handle = module.register_forward_hook(lambda _, args, out: seen.append(out[0, :, neuron].clone()))
    try:
        with torch.no_grad(), loaded.lock:
            loaded.model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("model_type", ["llama", "mamba", "gpt2"])
def test_profile_matches_a_plain_hook_and_the_result(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    prompts = builtin_tasks()["antonyms"].sample_prompts(2, 3, seed=1)
    result = neuron_ig(loaded, prepare_inputs(loaded, prompts, "gold"), steps=3, quadrature="gauss-legendre")
    layer, neuron = 1, 7
    profile = neuron_profile(loaded, result, layer, neuron)
    assert len(profile.activations) == len(profile.ig) == len(profile.tokens) == 3
    for p, item in enumerate(result.inputs):
        expected = plain_site_activation(loaded, list(item.input_ids), layer, neuron)
        assert len(profile.activations[p]) == len(item.input_ids) == len(profile.tokens[p])
        torch.testing.assert_close(torch.tensor(profile.activations[p]), expected, rtol=1e-5, atol=1e-6)
        assert "".join(profile.tokens[p]) == loaded.tokenizer.decode(list(item.input_ids))
    assert profile.ig == pytest.approx(result.per_prompt[:, layer, neuron].double().tolist())
    assert profile.at_answer == [row[-1] for row in profile.activations]
    assert max(abs(v) for v in profile.ig) > 0


def test_top_prompts_order_and_peak_token():
    profile = NeuronProfile(0, 3, ig=[0.1, -0.2, 0.3], activations=[[0.0, 2.0, 1.0], [5.0, -1.0], [0.5, 0.5, 3.0]],
                            tokens=[["a", "b", "c"], ["d", "e"], ["f", "g", "h"]], texts=["abc", "de", "fgh"])
    rows = profile.top_prompts(2)
    assert [r["prompt"] for r in rows] == [1, 2]
    assert rows[0] == {"prompt": 1, "peak": 5.0, "peak_token": "0:d", "at_answer": -1.0, "ig": -0.2}
    assert rows[1]["peak_token"] == "2:h" and rows[1]["at_answer"] == 3.0
    assert profile.peak == [2.0, 5.0, 3.0]
    assert profile.top_prompts(0) == []


def test_parse_neuron_and_bad_neurons(tiny_loaded):
    counts = [64, 64, 32]
    assert parse_neuron("", counts) is None
    assert parse_neuron(" 2:31 ", counts) == (2, 31)
    assert parse_neuron("1/5", counts) == (1, 5)
    for bad, said in [("abc", "not 'layer:neuron'"), ("3:0", "layers 0-2"), ("2:32", "neurons 0-31"),
                      ("1:-4", "not 'layer:neuron'"), ("9" * 40, "not 'layer:neuron'")]:
        with pytest.raises(PrunescopeError, match=said):
            parse_neuron(bad, counts)
    loaded = tiny_loaded("llama")
    prompts = builtin_tasks()["antonyms"].sample_prompts(1, 1, seed=0)
    result = neuron_ig(loaded, prepare_inputs(loaded, prompts, "gold"), steps=2, quadrature="riemann")
    with pytest.raises(PrunescopeError, match="not in this model"):
        neuron_profile(loaded, result, 0, 64)
