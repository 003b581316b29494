"""Exact implicit attention of LFM2's gated short convolutions and of xLSTM's mLSTM on tiny random models.

LFM2: the banded matrices reproduce the layer's out_proj input and, through out_proj, the real operator output;
they equal a float64 position-by-position loop; reductions never build per-channel matrices; attention layers
get softmax maps, labelled as such in the hybrid view; continuation forks the conv states of the cache.
xLSTM: the per-head gated attention with its normaliser reproduces the mLSTM output (before the norm and the
output gate) and the unified form the out_proj input (after both), from the chunkwise and the recurrent kernel
alike, on both branches of the normaliser; the matrices equal HF's stabilised recurrence run in float64."""

from __future__ import annotations

import math

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
from analysis.implicit_attention.xlstm import (
    capture_xlstm,
    xlstm_loop_matrices,
    xlstm_matrices,
    xlstm_reconstruct,
    xlstm_reduced,
)
from analysis.models import load_model

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


def test_lfm2_conv_bias_term_and_padding(lfm2, tmp_path):
    """With conv (and in_proj) biases the matrices plus the C * bias term still rebuild the layer, and a padded
    position no longer enters the conv as zero, so batches are not left-padded; the default has no bias."""
    from analysis.models.tiny import build_tiny_model

    assert lfm2[0].adapter.supports_left_padding and lfm2[1][0].conv_bias is None
    loaded = load_model(build_tiny_model("lfm2", tmp_path / "biased", conv_bias=True), device="cpu")
    assert not loaded.adapter.supports_left_padding
    with loaded.lock, torch.no_grad():
        for layer in (0, 2):
            loaded.adapter.block(layer).conv.conv.bias.normal_()
    for it in capture_lfm2(loaded, _ids(loaded)).values():
        assert float(it.conv_bias.abs().max()) > 0.1
        for form in LFM2_FORMS:
            rebuilt, observed = lfm2_reconstruct(it, form)
            assert _rel(rebuilt, observed) < 1e-4


# -- xLSTM -------------------------------------------------------------------------------------------------------
XLSTM_FORMS = ("mlstm", "unified")


@pytest.fixture(scope="module")
def xlstm(tiny_loaded, tiny_dirs):
    """The tiny model as built (input-gate bias -10: the normaliser's exp(-m) branch everywhere) and a copy with
    that bias raised by 10, where |q . n| wins in most rows."""
    plain = tiny_loaded("xlstm")
    raised = load_model(tiny_dirs["xlstm"], device="cpu")
    with raised.lock, torch.no_grad():
        for i in range(raised.n_layers):
            raised.adapter.block(i).mlstm_layer.igate_preact.bias.add_(10.0)
    return {name: (loaded, capture_xlstm(loaded, _ids(loaded))) for name, loaded in
            (("plain", plain), ("raised", raised))}


def _dot_branch_share(it) -> float:
    """Share of (head, row) whose normaliser is |q . n| rather than exp(-m), recomputed from the recurrence."""
    wins = total = 0
    for head in range(it.n_heads):
        b = torch.cumsum(it.log_f[:, head].double(), 0)
        for i in range(it.length):
            log_d = b[i] - b[:i + 1] + it.i_pre[:i + 1, head].double()
            m = max(float(b[i]), float(log_d.max()))
            dots = it.query[i, head].double() @ it.key[:i + 1, head].double().T / math.sqrt(it.query.shape[-1])
            wins += abs(float((dots * torch.exp(log_d - m)).sum())) > math.exp(-m)
            total += 1
    return wins / total


@pytest.mark.parametrize("form", XLSTM_FORMS)
@pytest.mark.parametrize("variant", ["plain", "raised"])
def test_xlstm_matrices_rebuild_the_layer_and_equal_the_recurrence(xlstm, variant, form):
    loaded, internals = xlstm[variant]
    assert sorted(internals) == [0, 1] and internals[0].length > 2 * loaded.model.config.chunk_size  # both kernels
    for layer, it in internals.items():
        rebuilt, observed = xlstm_reconstruct(it, form)
        assert _rel(rebuilt, observed) < 1e-4, (layer, _rel(rebuilt, observed))
        tail = slice(it.length - it.length % loaded.model.config.chunk_size, None)  # the recurrent kernel's rows
        assert _rel(rebuilt[tail], observed[tail]) < 1e-4
        if form == "unified":  # through out_proj: the real layer output
            with loaded.lock, torch.no_grad():
                out = loaded.adapter.block(layer).mlstm_layer.out_proj(rebuilt)
            assert _rel(out, it.output) < 1e-4
        full = xlstm_matrices(it, form)
        assert full.shape == ((it.n_heads if form == "mlstm" else it.n_channels), it.length, it.length)
        loop = xlstm_loop_matrices(it, form)
        assert float((full - loop).abs().max() / loop.abs().max()) < 1e-5
        assert torch.all(torch.triu(full, diagonal=1) == 0) and full.abs().sum() > 0
    share = _dot_branch_share(internals[0])
    assert share == 0.0 if variant == "plain" else share > 0.5


@pytest.mark.parametrize("form", XLSTM_FORMS)
def test_xlstm_reductions(xlstm, form):
    it = xlstm["raised"][1][1]
    full = xlstm_matrices(it, form)
    last = full.shape[0] - 1
    expected = {"mean": full.mean(0), "absmean": full.abs().mean(0), f"channels:0,2,{last}": full[[0, 2, last]].mean(0)}
    for text, want in expected.items():
        for budget in (1, 1 << 30):
            got = xlstm_reduced(it, form, Reduction.parse(text), budget)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    torch.testing.assert_close(xlstm_matrices(it, form, torch.tensor([2, last])), full[[2, last]])


def test_xlstm_unified_is_the_mlstm_form_scaled_per_row(xlstm):
    it = xlstm["raised"][1][0]
    per_head = xlstm_matrices(it, "mlstm").repeat_interleave(it.head_dim, dim=0)
    torch.testing.assert_close(xlstm_matrices(it, "unified"), per_head * it.row_scales().T[:, :, None])


def test_xlstm_continuations_fork_the_states(xlstm):
    """From one prefix, continuations from block 0 and from block 1 (its states read as the truncated forward
    counts blocks) agree with the full forward and leave the prefix's states as they were."""
    loaded, _ = xlstm["raised"]
    ids = _ids(loaded)
    adapter = loaded.adapter
    with torch.no_grad(), loaded.lock:
        full = adapter.base_model(input_ids=ids, use_cache=False).last_hidden_state
        inputs = {}
        with adapter.hook_block_inputs(lambda layer, hidden: inputs.setdefault(layer, hidden.clone())):
            adapter.base_model(input_ids=ids, use_cache=False)
        prefix = adapter.run_prefix(ids[:, :-1])
        before = {k: [s.clone() for s in v] for k, v in prefix.cache.rnn_state.items()}
        first = adapter.continue_from(prefix, ids[:, -1:], 2)
        later = adapter.continue_from(prefix, ids[:, -1:], 2, start_layer=1,
                                     block_input=inputs[1][:, -1:].expand(2, -1, -1))
    assert all(torch.equal(a, b) for k in before for a, b in zip(before[k], prefix.cache.rnn_state[k]))
    torch.testing.assert_close(first[1, -1], full[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(later[0, -1], full[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type,form", [("lfm2", "unified"), ("xlstm", "mlstm"), ("xlstm", "unified")])
def test_head_grid_cells_are_the_familys_own_matrices(tiny_loaded, model_type, form):
    """Each grid cell of an implicit layer is its own matrix (xLSTM's mlstm form: one per head, labelled so) or
    the mean of its channel group; LFM2's attention row has one cell per softmax head."""
    from analysis.head_grid import _split, head_grid

    loaded = tiny_loaded(model_type)
    grid = head_grid(loaded, PROMPT, form=form)
    capture = capture_lfm2 if model_type == "lfm2" else capture_xlstm
    matrices = lfm2_matrices if model_type == "lfm2" else xlstm_matrices
    internals = capture(loaded, _ids(loaded))
    for k, layer in enumerate(grid.layers):
        if layer not in internals:  # LFM2's attention layer
            assert grid.kinds[k] == "softmax" and len(grid.cells[k]) == loaded.model.config.num_attention_heads
            continue
        n = internals[layer].n_matrices(form)
        every = matrices(internals[layer], form, torch.arange(n))
        parts = _split(n, 32, 16)
        unit = "head" if form == "mlstm" else "channel"
        assert len(grid.cells[k]) == len(parts) and grid.labels[k][0].startswith(unit)
        for cell, channels in zip(grid.cells[k], parts, strict=True):
            torch.testing.assert_close(cell, every[list(channels)].mean(dim=0), atol=1e-6, rtol=1e-4)
