"""Conservative LRP through the delta-rule and linear-attention hybrids (analysis/implicit_attention/
conservative_delta.py): Qwen3-Next (Gated DeltaNet, gated softmax attention, MoE with a gated shared expert),
Kimi Linear (KDA, MLA, MoE) and MiniMax (lightning attention, softmax attention, MoE). Relevance is conserved
(the scores sum to F; with random biases, to F minus the biases' share), LRP differs from gradient x input, the
replaced forwards give the model's logits and leave nothing behind, the relevance reaching the recurrence's
values is the float64 delta-rule operator applied to the gradient, and a broken rule is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from analysis.attribution.conservation import lrp_conservation
from analysis.attribution.propagation import conservative_propagation
from analysis.attribution.tokens import target_logit, token_relevance, top_prediction
from analysis.errors import PrunescopeError
from analysis.families import FAMILIES, family_of
from analysis.implicit_attention import conservative_delta
from analysis.implicit_attention.conservative import Rule
from analysis.implicit_attention.delta_rule import recurrence_loop
from analysis.models import load_model
from analysis.models.hooks import hook_scope
from analysis.models.tiny import build_tiny_model
from tests.test_lrp_recurrent import TEXT, _ids, _logit, assert_conserved_where_gxi_is_not, retaining

pytestmark = pytest.mark.usefixtures("one_thread")

TYPES = ["qwen3_next", "kimi_linear", "minimax"]
# MoE variants (the released models' layout) with biases on the attention projections
MOE = {"qwen3_next": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, attention_bias=True),
       "kimi_linear": dict(mlp_layer_types=["dense", "sparse", "dense"], num_experts=4, num_experts_per_tok=2,
                           moe_intermediate_size=8, attention_bias=True)}


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory):
    """model_type -> the MoE variant with every bias drawn N(0, 1) and the recurrences' decay slowed to ~0.05 a
    step (so the delta rule mixes far below the diagonal); MiniMax: its tiny model is MoE already, no biases."""
    models = {}
    for model_type, overrides in MOE.items():
        loaded = load_model(str(build_tiny_model(model_type, tmp_path_factory.mktemp(model_type), **overrides)),
                            device="cpu")
        generator = torch.Generator().manual_seed(1)
        with loaded.lock, torch.no_grad():
            for name, p in loaded.model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=generator))
                if name.endswith("A_log"):
                    p.fill_(-3.0)
        models[model_type] = loaded
    return models


@pytest.mark.parametrize("model_type", TYPES)
def test_relevance_sums_to_the_logit(tiny_loaded, model_type):
    """Zero biases on the relevance path: the scores sum to F (measured: <= 3.3e-7 relative), plain gradient x
    input does not (sums -0.83, -4.0, -0.0004 against F ~ 8)."""
    assert_conserved_where_gxi_is_not(tiny_loaded(model_type), 0.5, 1e-3)


@pytest.mark.parametrize("model_type", list(MOE))
def test_moe_with_biases_relevance_plus_the_biases_share_is_the_logit(moe_models, tiny_loaded, model_type):
    """F = sum_t R_t + sum_b <dF/db, b> through the routed experts, the shared experts (Qwen3-Next's with its
    sigmoid gate) and biased attention projections; every rule of the family's table applies to the dense or
    the MoE model, the replaced forwards compute the model's logits, and nothing stays patched or hooked."""
    loaded = moe_models[model_type]
    target = top_prediction(loaded, _ids(loaded))
    budget = lrp_conservation(loaded, TEXT, target)
    assert budget.logit == pytest.approx(_logit(loaded, target), rel=1e-5)
    assert abs(budget.bias_share) > 0.01 * abs(budget.logit)  # the identity is not just the zero-bias case
    assert abs(budget.error) < 1e-5, budget
    rules = family_of(loaded).lrp
    assert rules
    present = {type(m).__name__ for model in (loaded.model, tiny_loaded(model_type).model) for m in model.modules()}
    assert set(rules) <= present  # no rule for a class these models lack
    model = loaded.model
    with loaded.lock, torch.no_grad():
        before = model(_ids(loaded), use_cache=False).logits
        with conservative_propagation(loaded):
            inside = model(_ids(loaded), use_cache=False).logits
        assert not any("forward" in m.__dict__ or m._forward_hooks for m in model.modules())
        after = model(_ids(loaded), use_cache=False).logits
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))  # float rounding
    assert torch.equal(after, before)
    assert not any(p.requires_grad for p in model.parameters())


def _value_relevance(loaded, layer: int, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Under LRP, one recurrent layer's [T, C] relevance at the values' pre-activation, the relevance at the
    queries' and keys', the [T, C] gradient at the recurrence's output and the captured internals."""
    ids = _ids(loaded)
    inn = family_of(loaded).require("capture")(loaded, ids, [layer])[layer]
    block = loaded.adapter.block(layer)
    mixer = block.linear_attn if hasattr(block, "linear_attn") else block.self_attn
    conv = hasattr(mixer, "conv1d")
    source = mixer.conv1d if conv else mixer.qkv_proj  # the values before their SiLU
    norm = mixer.o_norm if hasattr(mixer, "o_norm") else mixer.norm  # its input is the recurrence's output
    seen: dict[str, torch.Tensor] = {}

    def keep(name, output):
        return retaining(seen, name, output)

    with loaded.lock, hook_scope(loaded.model) as add, torch.enable_grad():
        add(source, keep("source", output=True))
        add(norm, keep("core", output=False), pre=True)
        with conservative_propagation(loaded):
            embeds = loaded.model.get_input_embeddings()(ids).detach().requires_grad_(True)
            target_logit(loaded, embeds, target, linear_cap=True).sum().backward()
    length, channels = inn.length, inn.n_channels
    relevance = (seen["source"] * seen["source"].grad).detach()
    if conv:  # [1, conv channels, T]: q, k, then the C value channels
        queries_keys, values = relevance[0, :-channels, :length], relevance[0, -channels:, :length].T
    else:  # MiniMax: [1, T, heads * (q | k | v)]
        per_head = relevance[0].reshape(length, inn.n_heads, 3, -1)
        queries_keys, values = per_head[:, :, :2], per_head[:, :, 2].reshape(length, channels)
    return values, queries_keys, seen["core"].grad.reshape(length, channels), inn


@pytest.mark.parametrize("model_type", TYPES)
def test_relevance_reaching_the_values_is_the_recurrences_operator(moe_models, tiny_loaded, model_type):
    """Independent of the rules: given q, k, beta and the decay the recurrence is o = A v per head (A from the
    float64 position loop, recurrence_loop), so with g = dF/do the relevance at the values is v * (A^T g), and
    the linearised SiLU hands it unchanged to the pre-activation (a plain SiLU fails it); the queries and keys
    are detached, so none reaches them."""
    loaded = moe_models.get(model_type) or tiny_loaded(model_type)
    layer, target = 0, top_prediction(loaded, _ids(loaded))
    relevance, queries_keys, grad, inn = _value_relevance(loaded, layer, target)
    assert queries_keys.numel() and not queries_keys.any()
    alpha = recurrence_loop(inn.q, inn.k, inn.beta, inn.log_decay).double()  # [H, T, T]
    assert float(alpha.tril(-1).abs().sum() / alpha.abs().sum()) > 0.3  # real mixing below the diagonal
    heads = grad.double().reshape(inn.length, inn.n_heads, -1)
    expected = inn.v.double() * torch.einsum("hij,ihd->jhd", alpha, heads).reshape(inn.length, -1)
    torch.testing.assert_close(relevance.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert float(expected.abs().max()) > 0


def test_bfloat16_conserves_to_its_precision(tiny_dirs):
    """CUDA's default dtype: each replacement passes its check to a few bfloat16 roundings and relevance is
    conserved to about bfloat16's precision (measured: 0.6 % on this prompt, 0.03-1.2 % on five)."""
    loaded = load_model(tiny_dirs["qwen3_next"], device="cpu", dtype="bfloat16")
    budget = lrp_conservation(loaded, TEXT)
    assert abs(budget.error) < 1e-2, budget


def test_a_rule_that_does_not_reproduce_its_module_is_refused(tiny_loaded, monkeypatch):
    """A hooked own-forward rule whose output gate is left out (sigmoid(gate) replaced by 1) is refused in one line
    and leaves no forward and no hook behind."""
    loaded = tiny_loaded("minimax")
    ungated = {"output_gate": lambda _x, out: torch.full_like(out, 1e4).detach()}
    probe = conservative_delta.MINIMAX["MiniMaxLightningAttention"].probe
    wrong = Rule(conservative_delta.own_forward_with(ungated), probe)
    monkeypatch.setitem(FAMILIES["minimax"].lrp, "MiniMaxLightningAttention", wrong)
    with pytest.raises(PrunescopeError, match="conservative MiniMaxLightningAttention does not reproduce") as raised:
        token_relevance(loaded, TEXT, "lrp")
    assert len(str(raised.value).splitlines()) == 1
    assert not any("forward" in m.__dict__ or m._forward_hooks for m in loaded.model.modules())
