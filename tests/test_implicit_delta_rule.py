"""Exact implicit attention of the delta-rule layers (Qwen3-Next's Gated DeltaNet, Kimi Linear's KDA; MiniMax's
lightning attention: tests/test_minimax.py): each form against a float64 position loop and against the
tensors of the real transformers forward, reductions, the hybrids' softmax maps, gradattn and bad input."""

from __future__ import annotations

import pytest
import torch

from analysis.attention import attention_maps
from analysis.attribution.tokens import METHODS, gradient_weighted_maps, token_relevance
from analysis.errors import PrunescopeError
from analysis.families import family_of
from analysis.head_grid import head_grid
from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.delta_families import hybrid_softmax_maps
from analysis.implicit_attention.delta_rule import (
    KDA_SPAN,
    linear_loop_matrices,
    linear_matrices,
    linear_reconstruct,
    linear_reduced,
    recurrence_loop,
    recurrence_matrices,
)
from analysis.implicit_attention.ops import RelevanceTarget
from analysis.models import load_model
from analysis.models.hooks import hook_scope
from analysis.models.tiny import build_tiny_model
from analysis.pruning import NeuronMask

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"
# 80+ tokens: more than transformers' chunk of 64, so its chunked path carries a state across chunks
LONG = "apple -> APPLE\nbanana -> BANANA\ncherry -> CHERRY\n" * 4 + "grape -> GRAPE\nlemon ->"
KINDS = {"qwen3_next": "delta", "kimi_linear": "kda"}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def slow_decay(tiny_dirs):
    """model_type -> a private copy of the tiny model whose decay is ~0.05 per step (HF's init decays by up to
    e^-20 a step, leaving little below the diagonal to check)."""
    models = {}
    for model_type in KINDS:
        loaded = load_model(tiny_dirs[model_type], device="cpu")
        with loaded.lock, torch.no_grad():
            for i in family_of(loaded).implicit_layers(loaded.adapter):
                block = loaded.adapter.block(i)
                mixer = block.linear_attn if model_type == "qwen3_next" else block.self_attn.forget_gate
                mixer.A_log.fill_(-3.0)
        models[model_type] = loaded
    return models


def _capture(loaded, text):
    ids = torch.tensor([loaded.tokenizer(text).input_ids])
    return family_of(loaded).require("capture")(loaded, ids, None)


@pytest.mark.parametrize("model_type", list(KINDS))
@pytest.mark.parametrize("text", [TEXT, LONG], ids=["short", "two-chunks"])
def test_forms_reproduce_the_layer_and_the_float64_loop(slow_decay, model_type, text):
    loaded = slow_decay[model_type]
    captured = _capture(loaded, text)
    assert sorted(captured) == [0, 2]  # the softmax-attention layer 1 has no implicit matrices
    for inn in captured.values():
        assert inn.kind == KINDS[model_type] and inn.length == len(loaded.tokenizer(text).input_ids)
        for form in (inn.kind, "unified"):
            rebuilt, observed = linear_reconstruct(inn, form)
            assert _relative(rebuilt, observed) < 1e-4, form
            matrices = linear_matrices(inn, form)
            assert matrices.shape[0] == (inn.n_heads if form == inn.kind else inn.n_channels)
            assert matrices.triu(1).abs().max() == 0
            below = matrices.tril(-1).abs().sum() / matrices.abs().sum()
            assert below > 0.3, "the test needs real mixing below the diagonal"
            picked = torch.tensor([0, matrices.shape[0] - 1])
            assert _relative(linear_matrices(inn, form, picked), linear_loop_matrices(inn, form, picked)) < 1e-4


def test_channelwise_decay_beyond_float64_range_goes_by_blocks():
    """KDA's decay spread over the prompt (about 1400 in log space here, exp overflows float64 at 709) is
    split into blocks of rows: still the float64 loop, finite, with a slow channel mixing far back."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(2, 40, 4, generator=gen), dim=-1) for _ in range(2))
    beta = torch.rand(2, 40, generator=gen)
    log_decay = -torch.rand(2, 40, 4, generator=gen) * 40
    log_decay[:, :, 0] = -0.01  # one slow channel: entries far below the diagonal stay large
    log_decay[:, 5:8, 1:] = -200.0  # a sharp drop inside the first block
    assert float(-log_decay.double().cumsum(1).amin()) > 4 * KDA_SPAN
    fast, slow = recurrence_matrices(q, k, beta, log_decay), recurrence_loop(q, k, beta, log_decay)
    assert torch.isfinite(fast).all() and fast[:, -1, :5].abs().amax(1).min() > 1e-4
    assert _relative(fast, slow) < 1e-6


@pytest.mark.parametrize("model_type", list(KINDS))
def test_reductions_in_chunks(slow_decay, model_type):
    inn = _capture(slow_decay[model_type], TEXT)[2]
    for form in (inn.kind, "unified"):
        every = linear_matrices(inn, form)
        tiny_budget = 3 * inn.length ** 2 * 64  # three matrices per chunk
        torch.testing.assert_close(linear_reduced(inn, form, Reduction("mean"), tiny_budget), every.mean(0))
        torch.testing.assert_close(linear_reduced(inn, form, Reduction("absmean"), tiny_budget),
                                   every.abs().mean(0))
        last = every.shape[0] - 1  # one chosen head or channel: not the mean over all of them
        torch.testing.assert_close(linear_reduced(inn, form, Reduction.parse(f"channels:{last}"), 1 << 30),
                                   every[last])


@pytest.mark.parametrize("model_type", list(KINDS))
def test_hybrid_maps_label_both_kinds_and_match_transformers_probabilities(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    maps = attention_maps(loaded, TEXT)
    assert maps.kinds == ["implicit", "softmax", "implicit"] and maps.form == KINDS[model_type]
    ids = torch.tensor([maps.input_ids])
    with loaded.lock, torch.no_grad():
        previous = loaded.model.config._attn_implementation
        loaded.model.set_attn_implementation("eager")
        try:
            own = loaded.model(ids, output_attentions=True, use_cache=False).attentions
        finally:
            loaded.model.set_attn_implementation(previous)
    assert len(own) == 1  # transformers records the one softmax layer only
    torch.testing.assert_close(maps.attn[1], own[0][0].mean(0))
    heads = hybrid_softmax_maps(loaded, ids, [0, 1, 2], Reduction.parse("channels:2"))
    assert list(heads) == [1]
    torch.testing.assert_close(heads[1], own[0][0, 2])


def _brute_force_gradattn(loaded, layer, inn, form, target, ids):
    """mean over heads / channels of dF/dA * A, dF/dA from a leaf A whose contribution to the out-projection's
    input is injected with zero value (the layer's inputs and data-dependent diagonals held fixed)."""
    matrices = linear_matrices(inn, form).clone().requires_grad_(True)
    if form == inn.kind:
        values = inn.v.reshape(inn.length, inn.n_heads, inn.head_dim)
        rebuilt = torch.einsum("hij,jhd->ihd", matrices, values).reshape(inn.length, -1) * inn.out_gate
    else:
        rebuilt = torch.einsum("cij,jc->ic", matrices, inn.source)
    spot = family_of(loaded).require("relevance_target")(loaded.adapter.block(layer), inn, form)
    delta = (rebuilt - rebuilt.detach())[None]
    with loaded.lock, torch.enable_grad():
        handle = spot.module.register_forward_pre_hook(lambda m, args: (args[0] + delta, *args[1:]))
        try:
            logits = loaded.model(input_ids=ids, use_cache=False).logits
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(logits[0, -1, target], matrices)
    return (grad * matrices.detach()).mean(0).clamp(min=0)


@pytest.mark.parametrize("model_type", list(KINDS))
def test_gradattn_equals_differentiable_matrices(tiny_loaded, model_type):
    loaded, layer, target = tiny_loaded(model_type), 2, 5
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    inn = _capture(loaded, TEXT)[layer]
    for form in (inn.kind, "unified"):
        expected = _brute_force_gradattn(loaded, layer, inn, form, target, ids)
        got = gradient_weighted_maps(loaded, ids, target, layers=[layer], form=form)[0]
        assert expected.max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("model_type,module", [("qwen3_next", "linear_attn.out_proj"),
                                               ("kimi_linear", "self_attn.o_proj")])
def test_relevance_targets_and_bad_input(tiny_loaded, model_type, module):
    loaded = tiny_loaded(model_type)
    inn = _capture(loaded, TEXT)[0]
    block = loaded.adapter.block(0)
    core = family_of(loaded).require("relevance_target")(block, inn, inn.kind)
    unified = family_of(loaded).require("relevance_target")(block, inn, "unified")
    assert isinstance(core, RelevanceTarget) and core.module is unified.module is block.get_submodule(module)
    assert core.group == inn.head_dim == 8 and core.source is inn.v and core.gate is inn.out_gate
    assert unified.group == 1 and unified.source is inn.x_pre and unified.gate is None
    with pytest.raises(PrunescopeError, match="unknown .*implicit-attention form 's6'"):
        linear_matrices(inn, "s6")
    with pytest.raises(PrunescopeError, match="channel out of range"):
        linear_matrices(inn, inn.kind, torch.tensor([inn.n_heads]))
    with pytest.raises(PrunescopeError, match="no 'wkv' attention form"):
        attention_maps(loaded, TEXT, form="wkv")
    one = _capture(loaded, "a")[0]  # one token: A = q.k beta
    torch.testing.assert_close(linear_matrices(one, one.kind)[:, 0, 0],
                               (one.q[:, 0] * one.k[:, 0]).sum(-1) * one.beta[:, 0])


@pytest.mark.parametrize("model_type,moe,kinds", [
    ("qwen3_next", dict(num_experts=8, num_experts_per_tok=1, moe_intermediate_size=8), ["moe"] * 3),
    ("kimi_linear", dict(mlp_layer_types=["dense", "sparse", "dense"], num_experts=8, num_experts_per_tok=1,
                         moe_intermediate_size=8), ["mlp", "moe", "mlp"])])
def test_sparse_moe_feed_forwards_are_the_routed_experts_channels(tmp_path, model_type, moe, kinds):
    """The released checkpoints' sparse-MoE layers: the site is the routed experts' channels (E x I neurons,
    the shared expert outside them), outputs are transformers' eager experts bit for bit, and zeroing one
    neuron moves the logits only through its expert (a neuron of an expert no token was routed to, nothing)."""
    loaded = load_model(str(build_tiny_model(model_type, tmp_path, **moe)), device="cpu")
    assert loaded.adapter.site_kinds() == kinds and not loaded.adapter.batch_invariant
    layer = kinds.index("moe")
    assert loaded.adapter.site(layer).path == f"model.layers.{layer}.mlp.experts.neurons"
    assert loaded.adapter.neuron_counts()[layer] == 8 * 8
    unused = check_moe_neurons(loaded, layer, "b:5 | b:", experts=8, width=8)
    assert unused  # one of 8 experts per token on a short prompt: some expert gets none


def check_moe_neurons(loaded, layer: int, text: str, experts: int, width: int) -> list[int]:
    """On ``text``: the model's outputs equal transformers' eager experts bit for bit; zeroing every channel of
    the experts routed to at ``layer`` moves the logits, and zeroing an unrouted expert's channels changes no
    bit. Returns the unrouted experts."""
    ids = torch.tensor([loaded.tokenizer(text).input_ids])
    with loaded.lock, torch.no_grad():
        ours, own = loaded.model(ids).logits, loaded.model.config._experts_implementation
        loaded.model.set_experts_implementation("eager")
        try:
            assert torch.equal(loaded.model(ids).logits, ours)
        finally:
            loaded.model.set_experts_implementation(own)
    seen = {}
    with loaded.lock, hook_scope(loaded.model) as add, torch.no_grad():
        add(loaded.adapter.block(layer).mlp.experts, lambda _m, args, _out: seen.update(index=args[1]))
        loaded.model(ids)
    routed = set(seen["index"].flatten().tolist())

    def zeroed(chosen) -> torch.Tensor:
        mask = NeuronMask.from_pairs([(layer, e * width + c) for e in chosen for c in range(width)])
        with loaded.session(mask), torch.no_grad():
            return loaded.model(ids).logits

    assert not torch.equal(zeroed(routed), ours)
    unused = sorted(set(range(experts)) - routed)
    if unused:
        assert torch.equal(zeroed(unused[:1]), ours)
    return unused


@pytest.mark.parametrize("model_type", list(KINDS))
def test_token_relevance_every_method(tiny_loaded, model_type):
    """raw / rollout / gradattn read both kinds of layer; ig / gxi the embeddings; lrp through the delta rule's
    conservative rules (conservation: tests/test_lrp_delta.py)."""
    loaded = tiny_loaded(model_type)
    length = len(loaded.tokenizer(TEXT).input_ids)
    for method in METHODS:
        result = token_relevance(loaded, TEXT, method, steps=8)
        assert result.scores.shape == (length,) and torch.isfinite(result.scores).all(), method
        assert result.scores.abs().max() > 0, method


@pytest.mark.parametrize("model_type", list(KINDS))
def test_head_grid_cells_are_heads_of_both_kinds(tiny_loaded, model_type):
    """Core form: one cell per value head (the recurrence's own matrix); unified: one per value channel."""
    loaded = tiny_loaded(model_type)
    inn = _capture(loaded, TEXT)[2]
    grid = head_grid(loaded, TEXT)
    assert grid.kinds == ["implicit", "softmax", "implicit"] and grid.form == KINDS[model_type]
    assert grid.labels[2] == [f"head {h}" for h in range(inn.n_heads)]
    assert len(grid.cells[1]) == loaded.model.config.num_attention_heads
    torch.testing.assert_close(torch.stack(grid.cells[2]), linear_matrices(inn, inn.kind))
    unified = head_grid(loaded, TEXT, form="unified", layers=[2])
    assert unified.labels[0] == [f"channel {c}" for c in range(inn.n_channels)]
