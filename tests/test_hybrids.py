"""Hybrids with heterogeneous blocks (Jamba, Granite 4.0 hybrid, Nemotron-H): a neuron site per block kind, MoE
neurons that leave the model's outputs bit for bit as transformers' eager experts compute them, zeroing one
neuron that moves only its expert's channel, captum-equal IG over MoE neurons, and exact implicit attention of
their Mamba layers (against a float64 position loop) beside softmax maps that rebuild the attention output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analysis.attention import attention_maps
from analysis.attribution import neuron_ig, prepare_inputs
from analysis.attribution.propagation import LRP_FAMILIES
from analysis.attribution.tokens import METHODS, gradient_weighted_maps, token_relevance
from analysis.errors import PrunescopeError
from analysis.head_grid import head_grid
from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.hybrid import capture_hybrid, hybrid_softmax_maps
from analysis.implicit_attention.mamba import mamba_loop_matrices, mamba_matrices, mamba_reconstruct, n_channels
from analysis.models import load_model
from analysis.models.experts import IMPLEMENTATION, ExpertNeurons
from analysis.models.hooks import hook_scope
from analysis.models.tiny import build_tiny_model
from analysis.pruning.mask import NeuronMask
from tests.test_neuron_ig import captum_layer_ig, copying_prompts, rel_err
from tests.test_token_relevance import _brute_force

HYBRIDS = ("jamba", "granitemoehybrid", "nemotron_h")
TEXT = "The cat is big. Q: What is the capital of France?\nA: Paris"
KINDS = {"jamba": ["moe"] * 2, "granitemoehybrid": ["moe"] * 2, "nemotron_h": ["mixer", "moe", "attention-out", "mlp"]}
MOE_LAYER = {"jamba": 0, "granitemoehybrid": 1, "nemotron_h": 1}


def _ids(loaded) -> torch.Tensor:
    return loaded.tokenizer(TEXT, return_tensors="pt").input_ids


def _experts(loaded, layer):
    """The experts module whose ExpertNeurons identity is layer ``layer``'s site."""
    site = loaded.adapter.site_module(layer)
    assert isinstance(site, ExpertNeurons)
    return next(m for m in loaded.adapter.block(layer).modules() if getattr(m, "neurons", None) is site)


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_every_block_has_a_site_of_its_kind(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    assert loaded.adapter.site_kinds() == KINDS[model_type]
    assert loaded.adapter.neuron_counts() == [64] * loaded.n_layers
    assert loaded.model.config._experts_implementation == IMPLEMENTATION


def test_jamba_dense_and_moe_layers_get_their_own_sites(tmp_path):
    """expert_layer_period 2: dense MLP (16 channels) in even layers, 4 experts x 16 in odd ones (neuron IG over
    them: tests/test_ragged_ig.py)."""
    loaded = load_model(str(build_tiny_model("jamba", tmp_path / "m", expert_layer_period=2, expert_layer_offset=1)),
                        device="cpu")
    assert loaded.adapter.site_kinds() == ["mlp", "moe"] and loaded.adapter.neuron_counts() == [16, 64]
    assert loaded.adapter.site(0).path == "model.layers.0.feed_forward.down_proj"
    assert loaded.adapter.site(1).path == "model.layers.1.feed_forward.experts.neurons"


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_moe_neurons_keep_the_eager_outputs_bit_for_bit(tiny_loaded, model_type):
    """The neuron-site experts forward against transformers' eager loop (and its default grouped_mm, which on
    CPU in float32 gives the same bits here); the state dict is unchanged (the identity has no weights)."""
    loaded = tiny_loaded(model_type)
    model, ids = loaded.model, _ids(loaded)
    assert not any("neurons" in key for key in model.state_dict())
    with loaded.lock, torch.no_grad():
        ours = model(ids).logits
        try:
            for other in ("eager", "grouped_mm"):
                model.set_experts_implementation(other)
                assert torch.equal(model(ids).logits, ours), other
        finally:
            model.set_experts_implementation(IMPLEMENTATION)


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_zeroing_a_moe_neuron_moves_only_its_expert_channel(tiny_loaded, model_type):
    """Neuron e * I + c: the experts' output changes by exactly -w_te * h[t, e, c] * down_proj[e, :, c] at every
    token t routed to expert e (w_te its routing weight) and nowhere else."""
    loaded, layer = tiny_loaded(model_type), MOE_LAYER[model_type]
    experts = _experts(loaded, layer)
    width, (e, c) = experts.intermediate_dim, (2, 5)

    def run(mask):
        seen = {}
        with loaded.session(mask), hook_scope(loaded.model) as add, torch.no_grad():
            add(experts, lambda _m, args, out: seen.update(out=out, index=args[1], weights=args[2]))
            add(experts.neurons, lambda _m, _args, out: seen.update(inner=out.clone()))
            loaded.model(_ids(loaded))
        return seen

    clean, masked = run(None), run(NeuronMask.from_pairs([(layer, e * width + c)]))
    routed = (clean["index"] == e).any(-1)
    weight = (clean["weights"] * (clean["index"] == e)).sum(-1)
    assert 0 < int(routed.sum()) < len(routed)  # some tokens go to expert e, others not
    inner = clean["inner"]
    active = routed & (inner[:, e * width + c] != 0)  # Nemotron-H's squared ReLU leaves exact zeros
    assert (inner[~routed, e * width:(e + 1) * width] == 0).all() and active.any()
    changed = masked["inner"] != inner
    assert changed[:, e * width + c].equal(active) and int(changed.sum()) == int(active.sum())
    expected = -(weight * inner[:, e * width + c])[:, None] * experts.down_proj[e][:, c][None]
    moved = masked["out"] - clean["out"]
    assert (moved[~active] == 0).all()  # other tokens: the same bits
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-6 * float(clean["out"].abs().max()))


@pytest.mark.parametrize("model_type", ["jamba", "nemotron_h"])
def test_moe_neuron_ig_equals_captum_and_is_complete(tiny_loaded, model_type):
    """IG over every site kind (Nemotron-H: mixer, MoE, attention-out, MLP) equals captum's; it sums to
    F(a) - F(0) within 5 % at 64 Gauss-Legendre nodes at every layer with no MoE router above it. Below a
    router, F jumps along the path where the router's top-k flips, and no path integral sees a jump: Jamba's
    layer 0 on this prompt is such a layer (F moves by 2.75 between two of 201 evenly spaced path points)."""
    loaded = tiny_loaded(model_type)
    item = prepare_inputs(loaded, copying_prompts(1), "copy")[0]
    ref = neuron_ig(loaded, [item], steps=7, quadrature="gauss-legendre", method="reference").per_prompt[0]
    for layer in range(loaded.n_layers):
        assert rel_err(ref[layer], captum_layer_ig(loaded, item, layer, 7, "gausslegendre")) < 1e-4
    moe = MOE_LAYER[model_type]
    assert ref[moe].abs().max() > 0 and (ref[moe] == 0).any()  # experts not routed at the answer: exactly 0
    result = neuron_ig(loaded, [item], steps=64, quadrature="gauss-legendre")
    assert result.delta is not None
    error = (result.delta[0].double() / (result.per_prompt[0].double().sum(-1) - result.delta[0].double())).abs()
    smooth = {"jamba": [1], "nemotron_h": [1, 2, 3]}[model_type]
    assert (error[smooth] <= 0.05).all()
    if model_type == "jamba":
        assert error[0] > 0.5  # the jump


@pytest.mark.parametrize("form", ["s6", "unified"])
@pytest.mark.parametrize("model_type", HYBRIDS)
def test_mamba_layers_reconstruct_and_equal_the_float64_loop(tiny_loaded, model_type, form):
    loaded = tiny_loaded(model_type)
    captured = capture_hybrid(loaded, _ids(loaded))
    assert sorted(captured) == loaded.adapter.mamba_layers() and captured
    for inn in captured.values():
        rebuilt, observed = mamba_reconstruct(inn, form)
        assert float((rebuilt - observed).norm() / observed.norm()) < 1e-4
        full = mamba_matrices(inn, form)
        loop = mamba_loop_matrices(inn, form, torch.arange(n_channels(inn, form)))
        assert float((full - loop).norm() / loop.norm()) < 1e-4 and (full.triu(1) == 0).all()


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_softmax_maps_rebuild_the_attention_output(tiny_loaded, model_type):
    """Per-head probabilities times the layer's own values give o_proj's input; Mamba/MoE layers are skipped."""
    loaded = tiny_loaded(model_type)
    ids = _ids(loaded)
    layer = loaded.adapter.attention_layers()
    assert len(layer) == 1
    layer = layer[0]
    heads = [hybrid_softmax_maps(loaded, ids, [layer], Reduction("channels", (h,)))[layer] for h in range(4)]
    assert hybrid_softmax_maps(loaded, ids, loaded.adapter.mamba_layers(), Reduction()) == {}
    attn = loaded.adapter.block(layer).get_submodule("self_attn" if model_type != "nemotron_h" else "mixer")
    seen = {}
    handles = [attn.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out[0])),
               attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("o", a[0][0]))]
    try:
        with loaded.lock, torch.no_grad():
            loaded.model(ids)
    finally:
        for handle in handles:
            handle.remove()
    kv_heads = loaded.model.config.num_key_value_heads
    dim = seen["v"].shape[-1] // kv_heads
    values = seen["v"].reshape(-1, kv_heads, dim).repeat_interleave(4 // kv_heads, dim=1)
    rebuilt = torch.einsum("hij,jhd->ihd", torch.stack(heads), values).reshape(ids.shape[1], -1)
    assert float((rebuilt - seen["o"]).norm() / seen["o"].norm()) < 1e-5


def test_granite_logits_are_scaled_like_the_model(tmp_path):
    loaded = load_model(str(build_tiny_model("granitemoehybrid", tmp_path / "m", logits_scaling=4.0)), device="cpu")
    ids = _ids(loaded)
    with loaded.lock, torch.no_grad():
        hidden = loaded.adapter.base_model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(loaded.adapter.logits(hidden), loaded.model(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", HYBRIDS)
def test_token_relevance_every_method(tiny_loaded, model_type):
    """Every method runs through the mixed layers (Nemotron-H's MLP and MoE blocks: identity maps); LRP, where the
    family has no rules (tests/test_lrp_*.py check those that have), is refused in one line."""
    loaded = tiny_loaded(model_type)
    length = _ids(loaded).shape[1]
    for method in METHODS:
        if method == "lrp" and loaded.family not in LRP_FAMILIES:
            with pytest.raises(PrunescopeError, match="transformer"):
                token_relevance(loaded, TEXT, method)
            continue
        scores = token_relevance(loaded, TEXT, method, steps=4).scores
        assert scores.shape == (length,) and torch.isfinite(scores).all() and scores.abs().max() > 0, method


@pytest.mark.parametrize("model_type,form", [("jamba", "s6"), ("nemotron_h", "unified")])
def test_gradattn_of_a_hybrid_mamba_layer_equals_differentiable_matrices(tiny_loaded, model_type, form):
    """dF/dA * A of the Mamba layer, from the registry's relevance target, against injecting A into the forward."""
    loaded, layer, target = tiny_loaded(model_type), 0, 5
    ids = _ids(loaded)
    inn = capture_hybrid(loaded, ids, [layer])[layer]
    mixer = loaded.adapter.block(layer).get_submodule(inn.mixer_path)
    mats = mamba_matrices(inn, form)
    if form == "s6":  # Mamba-1: out_proj input = (alpha u + D u) * SiLU(z)
        module = mixer.out_proj
        rebuild = lambda a: (torch.einsum("cij,jc->ci", a, inn.u) * F.silu(inn.z).T).T  # noqa: E731
    else:  # Mamba-2 unified: the gated tensor y * SiLU(z) entering the norm, injected as y + delta / SiLU(z)
        module = mixer.norm
        rebuild = lambda a: torch.einsum("cij,jc->ic", a, inn.x) / F.silu(inn.z)  # noqa: E731
    expected = _brute_force(loaded, module, rebuild, mats, target, ids)
    got = gradient_weighted_maps(loaded, ids, target, layers=[layer], form=form)[0]
    assert expected.max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("model_type,kinds", [
    ("jamba", ["implicit", "softmax"]), ("granitemoehybrid", ["implicit", "softmax"]),
    ("nemotron_h", ["implicit", "position-wise", "softmax", "position-wise"])])
def test_one_view_labels_each_layer_kind(tiny_loaded, model_type, kinds):
    """attention_maps shows every layer, labelled; a block that mixes no tokens gets the identity, the others the
    maps of their own kind (implicit: the captured Mamba matrices reduced; softmax: the hooked probabilities)."""
    loaded = tiny_loaded(model_type)
    maps = attention_maps(loaded, TEXT, form="s6")
    assert maps.kinds == kinds
    ids = _ids(loaded)
    captured = capture_hybrid(loaded, ids)
    for k, kind in enumerate(kinds):
        if kind == "position-wise":
            assert torch.equal(maps.attn[k], torch.eye(ids.shape[1]))
        elif kind == "softmax":
            torch.testing.assert_close(maps.attn[k], hybrid_softmax_maps(loaded, ids, [k], Reduction())[k])
        else:
            torch.testing.assert_close(maps.attn[k], mamba_matrices(captured[k], "s6").mean(0))


def test_head_grid_shows_every_layer_kind(tiny_loaded):
    """Nemotron-H's grid: Mamba-2 heads (s6), attention heads, and one identity cell per position-wise block."""
    loaded = tiny_loaded("nemotron_h")
    grid = head_grid(loaded, TEXT)
    assert grid.kinds == ["implicit", "position-wise", "softmax", "position-wise"]
    assert [len(row) for row in grid.cells] == [4, 1, 4, 1] and grid.labels[1] == ["map 0"]
    length = _ids(loaded).shape[1]
    assert torch.equal(grid.cells[1][0], torch.eye(length)) and torch.equal(grid.cells[3][0], torch.eye(length))
    inn = capture_hybrid(loaded, _ids(loaded), [0])[0]
    torch.testing.assert_close(torch.stack(grid.cells[0]), mamba_matrices(inn, "s6"))
    heads = hybrid_softmax_maps(loaded, _ids(loaded), [2], Reduction("channels", (3,)))[2]
    torch.testing.assert_close(grid.cells[2][3], heads)
