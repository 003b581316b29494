"""Exact implicit attention of LFM2's gated short convolutions on a tiny random model: the banded matrices
reproduce the layer's out_proj input and, through out_proj, the real operator output; they equal a float64
position-by-position loop; reductions never build per-channel matrices; attention layers get softmax maps,
labelled as such in the hybrid view; continuation forks the conv states of the cache."""

from __future__ import annotations

import pytest
import torch

from analysis.attention import attention_maps
from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.lfm2 import (
    capture_lfm2,
    lfm2_conv_layers,
    lfm2_loop_matrices,
    lfm2_matrices,
    lfm2_reconstruct,
    lfm2_reduced,
    lfm2_softmax_maps,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "Q: What is the capital of France?\nA: Paris\nThe cat is red. hot -> cold"
LFM2_FORMS = ("unified", "conv")


def _ids(loaded) -> torch.Tensor:
    return loaded.tokenizer(PROMPT, return_tensors="pt").input_ids


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def lfm2(tiny_loaded):
    loaded = tiny_loaded("lfm2")
    return loaded, capture_lfm2(loaded, _ids(loaded))


@pytest.mark.parametrize("form", LFM2_FORMS)
def test_lfm2_matrices_rebuild_the_layer_and_equal_the_loop(lfm2, form):
    loaded, internals = lfm2
    assert sorted(internals) == lfm2_conv_layers(loaded) == [0, 2]
    for layer, it in internals.items():
        rebuilt, observed = lfm2_reconstruct(it, form)
        assert _rel(rebuilt, observed) < 1e-4, (layer, _rel(rebuilt, observed))
        with loaded.lock, torch.no_grad():  # through out_proj: the real operator output
            out = loaded.adapter.block(layer).conv.out_proj(rebuilt)
        assert _rel(out, it.output) < 1e-4
        full = lfm2_matrices(it, form)
        assert full.shape == (it.n_channels, it.length, it.length)
        torch.testing.assert_close(full, lfm2_loop_matrices(it, form), rtol=1e-5, atol=1e-7)
        taps = it.conv_weight.shape[1]
        assert torch.all(torch.triu(full, diagonal=1) == 0) and torch.all(torch.tril(full, diagonal=-taps) == 0)
        assert bool((full.diagonal(offset=1 - taps, dim1=1, dim2=2) != 0).any())  # the band is K wide
    it = internals[0]
    conv = lfm2_matrices(it, "conv")  # the conv form: the unified one with B moved into the source
    torch.testing.assert_close(lfm2_matrices(it, "unified"), conv * it.b_gate.T[:, None, :])


@pytest.mark.parametrize("form", LFM2_FORMS)
def test_lfm2_reductions(lfm2, form):
    it = lfm2[1][2]
    full = lfm2_matrices(it, form)
    last = it.n_channels - 1
    expected = {"mean": full.mean(0), "absmean": full.abs().mean(0), f"channels:0,5,{last}": full[[0, 5, last]].mean(0)}
    for text, want in expected.items():
        torch.testing.assert_close(lfm2_reduced(it, form, Reduction.parse(text), 1), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lfm2_matrices(it, form, torch.tensor([5, last])), full[[5, last]])


def test_lfm2_hybrid_view_labels_each_layer(lfm2):
    loaded, _ = lfm2
    maps = attention_maps(loaded, PROMPT)
    assert maps.form == "unified" and maps.kinds == ["implicit", "softmax", "implicit"]
    probs = lfm2_softmax_maps(loaded, _ids(loaded), [0, 1, 2], Reduction("mean"))
    assert sorted(probs) == [1]
    torch.testing.assert_close(maps.attn[1], probs[1])
    torch.testing.assert_close(probs[1].sum(-1), torch.ones(probs[1].shape[0]))
    assert torch.all(torch.triu(probs[1], diagonal=1) == 0)
    torch.testing.assert_close(maps.attn[0], lfm2_reduced(lfm2[1][0], "unified", Reduction("mean")))


def test_lfm2_continuations_fork_the_conv_states(lfm2):
    """Two continuations from one prefix (three rows each) agree with each other and with the full forward: a
    step's in-place conv-state update lands on the fork, not on the prefix's cache."""
    loaded, _ = lfm2
    ids = _ids(loaded)
    adapter = loaded.adapter
    with torch.no_grad():
        prefix = adapter.run_prefix(ids[:, :-1])
        before = [layer.conv_states[0].clone() for layer in (prefix.cache.layers[i] for i in (0, 2))]
        first = adapter.continue_from(prefix, ids[:, -1:], 3)
        second = adapter.continue_from(prefix, ids[:, -1:], 3)
        with loaded.lock:
            full = adapter.base_model(input_ids=ids, use_cache=False).last_hidden_state
    after = [layer.conv_states[0] for layer in (prefix.cache.layers[i] for i in (0, 2))]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first[1, -1], full[0, -1], rtol=1e-5, atol=1e-5)
