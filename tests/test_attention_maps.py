"""The attention-map dispatcher: every family, transformer softmax exactness, and bad input."""

from __future__ import annotations

import pytest
import torch

from analysis.attention import attention_maps
from analysis.errors import PrunescopeError
from analysis.implicit_attention.common import Reduction, eager_attention
from analysis.implicit_attention.softmax import softmax_attention
from analysis.models.tiny import TINY_FAMILIES

TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_maps_for_every_family(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    maps = attention_maps(loaded, TEXT)
    length = len(loaded.tokenizer(TEXT).input_ids)
    assert maps.attn.shape == (loaded.n_layers, length, length) and len(maps.tokens) == length
    assert maps.attn.triu(1).abs().max() == 0 and maps.attn.abs().max() > 0
    assert "".join(maps.tokens) == TEXT
    for k, kind in enumerate(maps.kinds):
        if kind == "softmax":
            torch.testing.assert_close(maps.attn[k].sum(-1), torch.ones(length))


def test_dispatcher_matches_the_family_module(tiny_loaded):
    from analysis.implicit_attention.mamba import capture_mamba, mamba_reduced

    loaded = tiny_loaded("mamba")
    maps = attention_maps(loaded, TEXT, form="unified", reduce="absmean", layers=[1])
    internals = capture_mamba(loaded, torch.tensor([loaded.tokenizer(TEXT).input_ids]), [1])[1]
    torch.testing.assert_close(maps.attn[0], mamba_reduced(internals, "unified", Reduction("absmean"), 1 << 30))
    assert maps.layers == [1] and maps.form == "unified"


def _values_and_o_proj_input(loaded, attn, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``ids``: the layer's values per query head [T, heads, dim] (KV heads repeated, GQA) and
    the input of its o_proj [T, heads * dim]."""
    seen = {}
    handles = [attn.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out[0])),
               attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("o", a[0][0]))]
    with loaded.lock, torch.no_grad():
        loaded.model(ids)
    for h in handles:
        h.remove()
    heads, kv_heads, dim = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    return seen["v"].reshape(-1, kv_heads, dim).repeat_interleave(heads // kv_heads, dim=1), seen["o"]


def test_transformer_attention_reproduces_the_attention_output(tiny_loaded):
    """Per-head probabilities times the layer's own values give the input of o_proj (GQA included)."""
    loaded = tiny_loaded("llama")
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    probs = softmax_attention(loaded, ids)
    attn = loaded.model.model.layers[1].self_attn
    heads, dim = attn.config.num_attention_heads, attn.head_dim
    values, o_input = _values_and_o_proj_input(loaded, attn, ids)
    rebuilt = torch.einsum("hij,jhd->ihd", probs[1], values).reshape(len(ids[0]), heads * dim)
    assert float((rebuilt - o_input).norm() / o_input.norm()) < 1e-5
    mean = attention_maps(loaded, TEXT, reduce="channels:1,3").attn[1]
    torch.testing.assert_close(mean, probs[1][[1, 3]].mean(0))


@pytest.mark.parametrize("model_type,kwargs,message", [
    ("llama", {"form": "s6"}, "transformer models have no 's6' attention form"),
    ("rwkv", {"form": "s6"}, "rwkv models have no 's6' attention form; use unified or wkv"),
    ("mamba", {"reduce": "median"}, "unknown reduction 'median'"),
    ("mamba", {"layers": [5]}, "layer 5 does not exist"),
    ("mamba", {"budget_bytes": 1000}, "needs about"),
])
def test_bad_requests(tiny_loaded, model_type, kwargs, message):
    with pytest.raises(PrunescopeError, match=message):
        attention_maps(tiny_loaded(model_type), TEXT, **kwargs)
    with pytest.raises(PrunescopeError, match="the text is empty"):
        attention_maps(tiny_loaded(model_type), "   ")


@pytest.mark.parametrize("model_type,kinds", [
    ("bamba", {"s6": ["implicit", "softmax", "implicit"], "unified": ["implicit", "softmax", "implicit"],
               "softmax": ["implicit", "softmax", "implicit"]}),
    ("falcon_h1", {"s6": ["implicit", "implicit"], "unified": ["implicit", "implicit"],
                   "softmax": ["softmax", "softmax"]}),
    ("zamba2", {"s6": ["implicit", "implicit", "implicit"], "softmax": ["softmax", "implicit", "implicit"]}),
    ("zamba", {"s6": ["implicit", "implicit"], "unified": ["implicit", "implicit"],
               "softmax": ["implicit", "softmax"]}),
])
def test_hybrid_layers_show_the_kind_the_form_asks_for(tiny_loaded, model_type, kinds):
    """A layer shows the form's kind when it has it, else the kind it has: Falcon-H1's layers (both kinds)
    follow the form, Bamba's (one kind each) keep theirs; a Mamba-2 layer under "softmax" shows its s6 map."""
    loaded = tiny_loaded(model_type)
    for form, want in kinds.items():
        maps = attention_maps(loaded, TEXT, form=form)
        assert maps.kinds == want
    s6 = attention_maps(loaded, TEXT, form="s6").attn
    layer0_has_attention = model_type not in ("bamba", "zamba")  # theirs is a Mamba layer: s6 under softmax too
    assert torch.equal(attention_maps(loaded, TEXT, form="softmax").attn[0], s6[0]) != layer0_has_attention


@pytest.fixture(scope="module", params=["zamba2", "zamba"])
def tied_zamba(request, tmp_path_factory):
    """A tiny Zamba2 / Zamba whose layers 0 and 2 both run its one transformer block (a module per layer,
    weights tied; the default tiny ones have one hybrid layer: a random model with two is too rough for the IG
    battery's fixed quadrature, and transformers ties them only with tie_word_embeddings)."""
    from analysis.models import load_model
    from analysis.models.tiny import build_tiny_model

    path = build_tiny_model(request.param, tmp_path_factory.mktemp(request.param) / "m", num_hidden_layers=3,
                            layers_block_type=["hybrid", "mamba", "hybrid"], tie_word_embeddings=True)
    return load_model(str(path), device="cpu")


def test_a_tied_attention_block_gives_each_layer_its_own_call(tied_zamba):
    """Zamba2's (Zamba's) layers 0 and 2 run one transformer block (tied weights): each gets the probabilities
    of its own call (asked together or alone, equal to the block's own output there), and the two differ."""
    loaded = tied_zamba
    shared = "shared_transformer" if loaded.model.config.model_type == "zamba2" else "shared_transf"
    first, second = (loaded.adapter.block(i).get_submodule(f"{shared}.self_attn") for i in (0, 2))
    assert first.q_proj.weight is second.q_proj.weight
    both = attention_maps(loaded, TEXT, form="softmax", layers=[0, 2]).attn
    alone = [attention_maps(loaded, TEXT, form="softmax", layers=[i]).attn[0] for i in (0, 2)]
    torch.testing.assert_close(both, torch.stack(alone))
    assert not torch.allclose(both[0], both[1], atol=1e-3)
    calls = []
    handles = [m.register_forward_hook(lambda m, a, out: calls.append(out[1][0].mean(0))) for m in (first, second)]
    try:
        with loaded.lock, torch.no_grad(), eager_attention(loaded):
            loaded.model(torch.tensor([loaded.tokenizer(TEXT).input_ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(both, torch.stack(calls))


def test_hybrid_softmax_maps_reproduce_the_attention_output(tiny_loaded):
    """Falcon-H1 (key multiplier 0.9, attention input multiplier 1.1): per-head probabilities from the hybrid
    softmax maps times the layer's own values give o_proj's input."""
    loaded = tiny_loaded("falcon_h1")
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    attn = loaded.model.model.layers[1].self_attn
    heads, dim = attn.config.num_attention_heads, attn.head_dim
    values, o_input = _values_and_o_proj_input(loaded, attn, ids)
    probs = torch.stack([attention_maps(loaded, TEXT, form="softmax", reduce=f"channels:{h}").attn[1]
                         for h in range(heads)])
    rebuilt = torch.einsum("hij,jhd->ihd", probs, values).reshape(len(ids[0]), heads * dim)
    assert float((rebuilt - o_input).norm() / o_input.norm()) < 1e-5
