"""Gemma 3 text models (the gemma3-270m built-in) on a tiny random gemma3_text: a 4-token sliding window on
layers 0 and 1, full attention on layer 2 (the real model: five sliding layers, then one full), embeddings
scaled by sqrt(hidden) inside the model, and a normalised MLP output (post_feedforward_layernorm)."""

from __future__ import annotations

import pytest
import torch

from analysis.attribution import neuron_ig, prepare_inputs, site_scaled_target
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["apple -> APPLE\nFrance -> Paris\ncat ->", "hot -> cold\nbig -> small\nfast -> slow\nup -> down\ngood ->",
         "red ->"]


@pytest.fixture(autouse=True)
def _holding_the_lock(gemma):
    """These tests drive the model directly, as its only user: they hold its lock, as every forward must."""
    with gemma.lock:
        yield


@pytest.fixture(scope="module")
def gemma(tiny_loaded):
    return tiny_loaded("gemma3_text")


def _ids(loaded, text):
    return loaded.tokenizer(text, return_tensors="pt").input_ids


def test_tiny_model_has_mixed_layers_and_an_active_sliding_window(gemma):
    config = gemma.model.config
    assert config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert config.sliding_window == 4 and config.final_logit_softcapping is None
    assert gemma.adapter.max_context() == 256 and gemma.adapter.neuron_counts() == [64] * 3
    ids = _ids(gemma, TEXTS[1])
    assert ids.shape[1] > 3 * config.sliding_window
    windowed = gemma.model(ids).logits
    config.sliding_window = 512  # the window decides the mask at each call: widen it, the output changes
    try:
        assert not torch.allclose(gemma.model(ids).logits, windowed, atol=1e-3)
    finally:
        config.sliding_window = 4
    assert torch.equal(gemma.model(ids).logits, windowed)


@torch.no_grad()
def test_left_padded_batch_equals_one_prompt_at_a_time(gemma):
    """Prompts of 3 to 20 tokens (window 4) in one left-padded batch: each row's logits at its real positions
    equal the prompt run alone."""
    encoded = [_ids(gemma, t)[0] for t in TEXTS]
    width = max(len(ids) for ids in encoded)
    pad = gemma.tokenizer.pad_token_id
    batch = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(encoded):
        batch[row, width - len(ids):], mask[row, width - len(ids):] = ids, 1
    logits = gemma.model(input_ids=batch, attention_mask=mask).logits
    for row, ids in enumerate(encoded):
        alone = gemma.model(ids[None]).logits[0]
        torch.testing.assert_close(logits[row, width - len(ids):], alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_continuation_from_every_layer_equals_the_full_forward(gemma):
    """The IG fast path's building block: the prefix's cache, then the last token from block l with that
    block's real input. Starting at layer 2 (full attention) must not give it layer 0's sliding mask."""
    ids = _ids(gemma, TEXTS[1])
    inputs = {}
    with gemma.adapter.hook_block_inputs(lambda layer, h: inputs.__setitem__(layer, h[:, -1:].clone())):
        full = gemma.adapter.base_model(input_ids=ids).last_hidden_state[:, -1:]
    prefix = gemma.adapter.run_prefix(ids[:, :-1])
    for layer in range(gemma.n_layers):
        out = gemma.adapter.continue_from(prefix, ids[:, -1:], rows=3, start_layer=layer,
                                          block_input=inputs[layer].expand(3, -1, -1) if layer else None)
        torch.testing.assert_close(out, full.expand(3, -1, -1), rtol=1e-5, atol=1e-5)
    assert gemma.model.config.layer_types[2] == "full_attention" and len(gemma.model.config.layer_types) == 3


@torch.no_grad()
@pytest.mark.parametrize("cap", [None, 3.0])
def test_adapter_logits_equal_the_models(gemma, cap):
    """The tied head reads the unscaled embedding matrix (the sqrt(hidden) factor lives in the embedding's
    forward), and a final soft cap, when set, is applied the same way."""
    ids = _ids(gemma, TEXTS[0])
    config = gemma.model.config
    config.final_logit_softcapping = cap
    try:
        hidden = gemma.adapter.base_model(input_ids=ids).last_hidden_state
        expected = gemma.model(ids).logits
        torch.testing.assert_close(gemma.adapter.logits(hidden), expected, rtol=1e-5, atol=1e-5)
        some = torch.tensor([5, 17, 300])
        torch.testing.assert_close(gemma.adapter.logits(hidden, some), expected[..., some], rtol=1e-5, atol=1e-5)
        if cap:
            assert float(expected.abs().max()) < cap
    finally:
        config.final_logit_softcapping = None


def test_normalised_mlp_output_hides_the_jump_from_fixed_rules_not_from_the_adaptive_one(gemma):
    """Gemma 2/3 normalise each MLP's output (post_feedforward_layernorm), so scaling all of one layer's neurons
    by alpha changes nothing until alpha**2 * ms(out) ~ eps: F(alpha a) is flat on [1/16, 1] and F jumps at 0.
    16 Riemann steps (the first at 1/16) see only the flat part: per-neuron IG redistributes (large
    entries of both signs) but sums to ~0 per layer, far from F(a) - F(0). The adaptive rule finds the jump
    and is complete there."""
    item = prepare_inputs(gemma, builtin_tasks()["vowel-count"].sample_prompts(3, 1, seed=0), "gold")[0]
    fixed = neuron_ig(gemma, [item], steps=16, quadrature="riemann")
    adaptive = neuron_ig(gemma, [item])
    with torch.no_grad():
        for layer in range(gemma.n_layers):
            flat = [float(site_scaled_target(gemma, item, layer, torch.tensor(a))) for a in (1 / 16, 0.5, 1.0)]
            assert max(flat) - min(flat) < 1e-4
            gap = flat[-1] - float(site_scaled_target(gemma, item, layer, torch.tensor(0.0)))
            assert abs(gap) > 1e-2
            scores = fixed.per_prompt[0, layer]
            assert abs(float(scores.sum())) < 1e-3 * float(scores.abs().sum())
            assert float(scores.abs().max()) > 1e-2
            assert abs(float(adaptive.per_prompt[0, layer].sum()) - gap) < 1e-2 * abs(gap)


def test_lrp_detaches_gemmas_rms_norm(gemma):
    """Gemma's norms compute (1 + weight) * x / rms in float32 (q/k norms too); inside conservative propagation
    the forward is unchanged and the Jacobian is diagonal, (1 + weight) * v / rms."""
    from analysis.attribution.propagation import conservative_propagation
    from analysis.attribution.tokens import token_relevance

    ids = _ids(gemma, TEXTS[0])
    with torch.no_grad():
        before = gemma.model(ids).logits
    norm = gemma.model.model.layers[0].post_feedforward_layernorm
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-0.5, 0.5, norm.weight.shape[0]))  # Gemma inits it to 0: make 1 + w vary
    x = torch.randn(2, norm.weight.shape[0], generator=torch.Generator().manual_seed(0), requires_grad=True)
    v = torch.randn_like(x)
    try:
        with torch.no_grad():
            moved = gemma.model(ids).logits
        with conservative_propagation(gemma):
            with torch.no_grad():
                torch.testing.assert_close(gemma.model(ids).logits, moved, rtol=1e-5, atol=1e-5)
            (grad,) = torch.autograd.grad((norm(x) * v).sum(), x)
        expected = (1 + norm.weight) * v * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
        torch.testing.assert_close(grad, expected)
    finally:
        with torch.no_grad():
            norm.weight.zero_()
    assert torch.equal(gemma.model(ids).logits, before)
    scores = token_relevance(gemma, TEXTS[0], "lrp").scores
    assert scores.shape == (ids.shape[1],) and torch.isfinite(scores).all() and scores.abs().max() > 0
