"""MiniMax (lightning attention + softmax attention, a sparse MoE in every layer) as a registered family, on the
tiny model of ``TINY_FAMILIES``: the lightning layer's matrices against the layer's own output, a float64
position loop and their closed form; both kinds of layer in one view; the MoE neuron site; the forked cache
(``MiniMaxCache.linear_cache``) over multi-token continuations and joined rows; gradattn; every token-relevance
method."""

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
from analysis.implicit_attention.delta_rule import linear_loop_matrices, linear_matrices, linear_reconstruct
from analysis.implicit_attention.ops import RelevanceTarget
from tests.test_implicit_delta_rule import _brute_force_gradattn, _relative, check_moe_neurons

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"  # 20+ tokens: several of transformers' 4-token lightning blocks


def _capture(loaded, text=TEXT):
    ids = torch.tensor([loaded.tokenizer(text).input_ids])
    return family_of(loaded).require("capture")(loaded, ids, None)


def test_lightning_layer_reproduces_itself_the_float64_loop_and_its_closed_form(tiny_loaded):
    """A[i, j] = q_i.k_j exp(-s_h (i - j)): applied to the layer's own values it gives the recurrence output
    transformers computed block by block (and, unified, the out-projection's input)."""
    loaded = tiny_loaded("minimax")
    captured = _capture(loaded)
    assert sorted(captured) == [0]  # layer 1 is softmax attention
    inn = captured[0]
    assert inn.kind == "lightning" and inn.length == len(loaded.tokenizer(TEXT).input_ids) > 3 * 4
    for form in ("lightning", "unified"):
        rebuilt, observed = linear_reconstruct(inn, form)
        assert _relative(rebuilt, observed) < 1e-4, form
        matrices = linear_matrices(inn, form)
        assert matrices.shape[0] == (inn.n_heads if form == "lightning" else inn.n_channels)
        assert matrices.triu(1).abs().max() == 0
        assert matrices.tril(-1).abs().sum() / matrices.abs().sum() > 0.3, "the test needs mixing below the diagonal"
        assert _relative(matrices, linear_loop_matrices(inn, form)) < 1e-5, form
    slope = -inn.log_decay[:, :1, None].double()
    gaps = torch.arange(inn.length)[:, None] - torch.arange(inn.length)[None, :]
    closed = (inn.q.double() @ inn.k.double().transpose(1, 2)) * torch.exp(-slope * gaps) * (gaps >= 0)
    assert _relative(linear_matrices(inn, "lightning"), closed.float()) < 1e-6


def test_both_kinds_in_one_view_and_the_head_grid(tiny_loaded):
    loaded = tiny_loaded("minimax")
    maps = attention_maps(loaded, TEXT)
    assert maps.kinds == ["implicit", "softmax"] and maps.form == "lightning"
    ids = torch.tensor([maps.input_ids])
    with loaded.lock, torch.no_grad():
        previous = loaded.model.config._attn_implementation
        loaded.model.set_attn_implementation("eager")
        try:
            own = loaded.model(ids, output_attentions=True, use_cache=False).attentions
        finally:
            loaded.model.set_attn_implementation(previous)
    # transformers records the softmax layer's probabilities and the lightning layer's [1, H, d, d] state
    assert [tuple(a.shape) for a in own] == [(1, 4, 8, 8), (1, 4, ids.shape[1], ids.shape[1])]
    softmax = own[1:]
    assert len(softmax) == 1
    torch.testing.assert_close(maps.attn[1], softmax[0][0].mean(0))
    heads = hybrid_softmax_maps(loaded, ids, [0, 1], Reduction.parse("channels:2"))
    assert list(heads) == [1]  # the lightning layer has no softmax map
    torch.testing.assert_close(heads[1], softmax[0][0, 2])
    grid = head_grid(loaded, TEXT)
    assert grid.kinds == ["implicit", "softmax"] and len(grid.cells[0]) == 4 and len(grid.cells[1]) == 4
    torch.testing.assert_close(grid.cells[0][0], linear_matrices(_capture(loaded)[0], "lightning")[0])
    torch.testing.assert_close(torch.stack(grid.cells[0]).mean(0), maps.attn[0], rtol=1e-5, atol=1e-6)


def test_every_layer_is_moe_and_zeroing_routed_channels_moves_only_them(tiny_loaded):
    loaded = tiny_loaded("minimax")
    adapter = loaded.adapter
    assert adapter.site_kinds() == ["moe", "moe"] and adapter.neuron_counts() == [4 * 16] * 2
    assert adapter.site(1).path == "model.layers.1.mlp.experts.neurons" and not adapter.batch_invariant
    check_moe_neurons(loaded, 1, "b:5", experts=4, width=16)  # a short prompt may route to every expert


def test_the_lightning_states_are_forked_per_row(tiny_loaded):
    """A cached step replaces ``linear_cache[layer]`` (a new tensor): a fork holds per-layer batches of its own
    (rows joining at a layer), the prefix's states stay as they were, and a continuation of several rows equals
    the full forward."""
    loaded = tiny_loaded("minimax")
    adapter = loaded.adapter
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    with loaded.lock, torch.no_grad():
        full = adapter.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -1:]
        prefix = adapter.run_prefix(ids[:, :-1])
        state = prefix.cache.linear_cache[0]
        kept = state.clone()
        assert state.shape == (1, 4, 8, 8)
        forked = adapter._repeat_cache(prefix.cache, [3, 5])
        assert forked.linear_cache is not prefix.cache.linear_cache and forked.linear_cache[0].shape[0] == 3
        assert forked.layers[1].keys.shape[0] == 5
        out = adapter.continue_from(prefix, ids[:, -1:], 2)
        assert prefix.cache.linear_cache[0] is state and torch.equal(state, kept)
        assert len(prefix.cache.linear_cache) == 1 and prefix.cache.layers[1].keys.shape[-2] == ids.shape[1] - 1
    torch.testing.assert_close(out, full.expand(2, -1, -1), rtol=1e-4, atol=1e-5)


def test_gradattn_equals_differentiable_matrices(tiny_loaded):
    loaded, target = tiny_loaded("minimax"), 5
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    inn = _capture(loaded)[0]
    block = loaded.adapter.block(0)
    spot = family_of(loaded).require("relevance_target")(block, inn, "lightning")
    assert isinstance(spot, RelevanceTarget) and spot.module is block.self_attn.out_proj and spot.group == 8
    for form in ("lightning", "unified"):
        expected = _brute_force_gradattn(loaded, 0, inn, form, target, ids)
        got = gradient_weighted_maps(loaded, ids, target, layers=[0], form=form)[0]
        assert expected.max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))


def test_token_relevance_every_method_and_a_wrong_form(tiny_loaded):
    loaded = tiny_loaded("minimax")
    length = len(loaded.tokenizer(TEXT).input_ids)
    for method in METHODS:  # lrp's conservation: tests/test_lrp_delta.py
        result = token_relevance(loaded, TEXT, method, steps=8)
        assert result.scores.shape == (length,) and torch.isfinite(result.scores).all(), method
        assert result.scores.abs().max() > 0, method
    with pytest.raises(PrunescopeError, match="no 'kda' attention form"):
        attention_maps(loaded, TEXT, form="kda")
