"""The adaptive quadrature (analysis/attribution/adaptive.py): exact on integrands whose IG is known in closed
form, better than fixed rules where F jumps near alpha = 0, and in agreement with captum and with a dense
one-forward-per-node reference on tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import analysis.attribution.adaptive as adaptive
from analysis.attribution import neuron_ig, prepare_inputs
from analysis.attribution.neuron_ig import _reference_one, completeness_summary
from analysis.attribution.quadrature import quadrature
from tests.test_neuron_ig import captum_layer_ig, copying_prompts, rel_err

SPIKE = 2e-3  # the width of the jump of the "structured" layer: far below Gauss-Legendre's first node
JUMP = (lambda x: torch.tanh(x / SPIKE), lambda x: (1 - torch.tanh(x / SPIKE) ** 2) / SPIKE)  # G, G'
SQUARE = (lambda x: x ** 2, lambda x: 2 * x)
WAVE = (lambda x: torch.sin(60 * x), lambda x: 60 * torch.cos(60 * x))


class TwoLayers:
    """A stand-in adapter: the rule reads its layer count and keys what it remembers between prompts on it."""

    n_layers = 2

    def site_norm(self, layer):  # no normalised sites: every layer goes through the checked rules
        return None


def two_layers():
    return SimpleNamespace(adapter=TwoLayers())  # a fresh one per test: nothing remembered from other tests


def closed_form(monkeypatch, acts, coef, forms):
    """Replace the model's passes by closed-form layers, layer l's F = const + coef[l] . G_l(x) for its scaled
    activation x; separable, so IG_i = coef_i (G(a_i) - G(0)) exactly. Returns the exact IG [2, N] and a list
    recording each gradient pass's rows per layer."""
    def own(layer, x):
        return (coef[layer] * forms[layer][0](x)).sum(dim=-1)

    clean = float(sum(own(layer, acts[layer]) for layer in range(2)))

    def value(layer, alphas):  # F with one layer's activation scaled by each alpha, the other clean
        return clean - float(own(layer, acts[layer])) + own(layer, alphas[:, None] * acts[layer])

    def clean_pass(loaded, item, probes, budget):
        prompt = SimpleNamespace(acts=acts.float(), f_clean=clean)
        return prompt, {layer: value(layer, alphas) for layer, alphas in probes.items()}

    passes = []

    def gradient_pass(loaded, prompt, nodes, budget):
        passes.append({layer: len(alphas) for layer, alphas in nodes.items()})
        return {layer: ((coef[layer] * forms[layer][1](alphas[:, None] * acts[layer])).float(), value(layer, alphas))
                for layer, alphas in nodes.items()}

    monkeypatch.setattr(adaptive, "clean_pass", clean_pass)
    monkeypatch.setattr(adaptive, "gradient_pass", gradient_pass)
    zero = torch.zeros(1, dtype=torch.float64)
    exact = torch.stack([coef[layer] * (forms[layer][0](acts[layer]) - forms[layer][0](zero)) for layer in range(2)])
    return exact, passes


def test_closed_form_layers(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    acts = torch.rand(2, 16, generator=generator, dtype=torch.float64) + 0.5
    coef = torch.randn(2, 16, generator=generator, dtype=torch.float64)
    exact, passes = closed_form(monkeypatch, acts, coef, (JUMP, SQUARE))
    run = adaptive.adaptive_ig(two_layers(), None, 4, 320)
    assert rel_err(run.ig[1].double(), exact[1]) < 1e-6  # smooth: 4-node Gauss-Legendre is exact on x^2
    assert run.evaluations[1] == 4 and passes[0][1] == 4 and all(1 not in rows for rows in passes[1:])
    assert rel_err(run.ig[0].double(), exact[0]) < 2e-3  # the jump: right per neuron, not only in sum
    assert 8 < run.evaluations[0] <= 64 and len(run.rules[0][0]) <= run.evaluations[0]
    nodes, weights = quadrature("gauss-legendre", 8)  # no node in the jump: far off
    gauss = coef[0] * acts[0] * (weights[:, None] * JUMP[1](nodes[:, None] * acts[0])).sum(dim=0)
    assert rel_err(gauss, exact[0]) > 0.3


def test_intervals_that_miss_are_refined(monkeypatch):
    """An oscillation along the whole path (sin(60 x)) fails the first round's interval checks: later rounds add
    nodes only to the intervals that missed, until each interval's IG sums to its measured change."""
    monkeypatch.setattr(adaptive, "_structured", lambda f_cuts: True)
    acts = torch.ones(2, 4, dtype=torch.float64)
    coef = torch.tensor([[1.0, -2.0, 0.5, 1.5], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    exact, passes = closed_form(monkeypatch, acts, coef, (WAVE, SQUARE))
    run = adaptive.adaptive_ig(two_layers(), None, 4, 320)
    assert len(passes) >= 2 and sum(passes[-1].values()) < sum(passes[0].values())
    assert rel_err(run.ig.double(), exact) < 1e-3
    assert run.evaluations[0] == sum(rows.get(0, 0) for rows in passes) > len(run.rules[0][0])


def test_a_prompt_does_not_depend_on_the_prompt_before_it(monkeypatch):
    """The same prompt twice on the same model takes the same passes, rows and bits: nothing carries over (a
    remembered structured layer changed which rows shared a pass, and a Ray shard's IG differed from a serial
    run's in the last bits)."""
    monkeypatch.setattr(adaptive, "_structured", lambda f_cuts: False)
    acts = torch.ones(2, 4, dtype=torch.float64)
    coef = torch.tensor([[1.0, -2.0, 0.5, 1.5], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    exact, passes = closed_form(monkeypatch, acts, coef, (WAVE, SQUARE))
    loaded = two_layers()
    first = adaptive.adaptive_ig(loaded, None, 4, 320)
    before = list(passes)
    passes.clear()
    second = adaptive.adaptive_ig(loaded, None, 4, 320)
    assert passes == before and before[:2] == [{0: 4, 1: 4}, {0: 52}]
    assert torch.equal(second.ig, first.ig) and second.evaluations == first.evaluations == [136, 4]
    assert rel_err(second.ig.double(), exact) < 1e-3


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "mamba"])
def test_adaptive_agrees_with_captum_at_64_nodes(tiny_loaded, model_type):
    """Per neuron within the smooth layers' tolerance (random tiny models are rougher along the path than
    trained ones: 4 nodes leave up to ~4e-3 here, 3e-5 on SmolLM2)."""
    loaded = tiny_loaded(model_type)
    item = prepare_inputs(loaded, copying_prompts(1), "copy")[0]
    result = neuron_ig(loaded, [item])
    for layer in range(loaded.n_layers):
        expected = captum_layer_ig(loaded, item, layer, 64, "gausslegendre")
        assert rel_err(result.per_prompt[0, layer], expected) < adaptive.SMOOTH_TOL


def test_adaptive_where_fixed_rules_fail(tiny_loaded):
    """Gemma 3's normalised MLP output makes F jump at alpha ~ 0: 8-node Gauss-Legendre misses it, the adaptive
    rule is complete and matches a dense reference (16 Gauss-Legendre nodes on each of its 8 intervals, one
    full forward and backward per node)."""
    loaded = tiny_loaded("gemma3_text")
    items = prepare_inputs(loaded, copying_prompts(2), "copy")
    result = neuron_ig(loaded, items)
    gauss = neuron_ig(loaded, items, steps=8, quadrature="gauss-legendre")
    ours, theirs = completeness_summary(result), completeness_summary(gauss)
    assert ours["worst"] < 0.05 and ours["median"] < 1e-3
    assert theirs["worst"] > 10 * ours["worst"]
    assert result.meta["evaluations_per_layer"] < 64
    dense = [adaptive.gauss_legendre(16, adaptive.CUTS[i], adaptive.CUTS[i + 1]) for i in range(len(adaptive.CUTS) - 1)]
    rule = (torch.cat([nodes for nodes, _ in dense]), torch.cat([weights for _, weights in dense]))
    with loaded.lock:
        reference, _, _ = _reference_one(loaded, items[0], [rule] * loaded.n_layers)
    assert rel_err(result.per_prompt[0], reference) < 1e-2
    assert rel_err(gauss.per_prompt[0], reference) > 5 * rel_err(result.per_prompt[0], reference)


def test_cost_units_count_the_adaptive_rule_as_its_measured_cost():
    """Cost estimates are in prompt-steps of a fixed rule; the adaptive rule's ``steps`` (its smooth layers'
    nodes) would understate it about 5x."""
    from analysis.attribution.quadrature import ADAPTIVE_COST_STEPS, cost_units

    assert cost_units(3, 4, "riemann") == 12 and cost_units(3, 4, "gauss-legendre") == 12
    assert cost_units(3, 4, "adaptive") == 3 * ADAPTIVE_COST_STEPS == 60
