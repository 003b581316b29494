"""Exact implicit attention of RWKV-4 and Griffin (RG-LRU) on tiny random models: reconstruction of the real
forward's tensors, vectorised == position-by-position loop, causality, reductions and chunking."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.griffin import (
    capture_griffin,
    griffin_attention_maps,
    griffin_loop_matrices,
    griffin_matrices,
    griffin_reconstruct,
    griffin_recurrent_layers,
    griffin_reduced,
)
from analysis.implicit_attention.rwkv import (
    capture_rwkv,
    rwkv_loop_matrices,
    rwkv_matrices,
    rwkv_reconstruct,
    rwkv_reduced,
)
from analysis.models import load_model

PROMPT = "Q: What is the capital of France?\nA: Paris\nThe cat is red. hot -> cold"

FAMILIES = {
    "rwkv": (capture_rwkv, rwkv_matrices, rwkv_loop_matrices, rwkv_reconstruct, rwkv_reduced, ("unified", "wkv")),
    "recurrent_gemma": (capture_griffin, griffin_matrices, griffin_loop_matrices, griffin_reconstruct,
                        griffin_reduced, ("unified", "rglru")),
}
CASES = [(m, f) for m, spec in FAMILIES.items() for f in spec[-1]]


def _ids(loaded) -> torch.Tensor:
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert 20 <= ids.shape[1] <= 30, ids.shape
    return ids


@pytest.fixture(scope="module")
def captured(tiny_loaded):
    cache = {}

    def get(model_type):
        if model_type not in cache:
            loaded = tiny_loaded(model_type)
            cache[model_type] = FAMILIES[model_type][0](loaded, _ids(loaded))
        return cache[model_type]

    return get


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("model_type,form", CASES)
def test_reconstruction_loop_and_causality(captured, model_type, form):
    _, matrices, loop, reconstruct, _, _ = FAMILIES[model_type]
    internals = captured(model_type)
    assert internals
    for layer, it in internals.items():
        rebuilt, observed = reconstruct(it, form)
        assert _rel(rebuilt, observed) < 1e-4, (layer, _rel(rebuilt, observed))
        full = matrices(it, form)
        assert full.shape == (it.n_channels, it.length, it.length)
        torch.testing.assert_close(full, loop(it, form, None), rtol=1e-4, atol=1e-6)
        assert torch.all(torch.triu(full, diagonal=1) == 0)
        assert full.abs().sum() > 0


def test_rwkv_wkv_rows_sum_to_one(captured):
    for it in captured("rwkv").values():
        sums = rwkv_matrices(it, "wkv").sum(dim=-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)
        gated = rwkv_matrices(it, "unified").sum(dim=-1)
        torch.testing.assert_close(gated, torch.sigmoid(it.receptance).T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type,form", CASES)
def test_reductions_and_chunking(captured, model_type, form):
    _, matrices, _, _, reduced, _ = FAMILIES[model_type]
    it = next(iter(captured(model_type).values()))
    full = matrices(it, form)
    idx = (0, 5, it.n_channels - 1)
    expected = {"mean": full.mean(0), "absmean": full.abs().mean(0),
                f"channels:0,5,{idx[2]}": full[list(idx)].mean(0)}
    for text, want in expected.items():
        one_chunk = reduced(it, form, Reduction.parse(text), 1 << 30)
        many_chunks = reduced(it, form, Reduction.parse(text), 1)  # one channel per chunk
        torch.testing.assert_close(one_chunk, want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(many_chunks, one_chunk, rtol=1e-5, atol=1e-7)
    sub = matrices(it, form, torch.tensor(idx))
    torch.testing.assert_close(sub, full[list(idx)])


def test_griffin_skips_attention_layers_and_maps_them(tiny_loaded, captured):
    loaded = tiny_loaded("recurrent_gemma")
    recurrent = griffin_recurrent_layers(loaded)
    assert recurrent == [0, 2]
    assert sorted(captured("recurrent_gemma")) == recurrent
    assert capture_griffin(loaded, _ids(loaded), layers=[1]) == {}
    before = loaded.model.config._attn_implementation
    maps = griffin_attention_maps(loaded, _ids(loaded))
    assert loaded.model.config._attn_implementation == before
    assert sorted(maps) == [1]
    probs = maps[1]
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]))
    assert torch.all(torch.triu(probs, diagonal=1) == 0)


def test_griffin_reset_inside_the_sequence(captured):
    """A reset (position_ids == 0) mid-sequence cuts every path across it, as HF's scan does."""
    it = captured("recurrent_gemma")[0]
    reset = it.reset.clone()
    reset[10] = True
    moved = dataclasses.replace(it, reset=reset)
    for form in ("rglru", "unified"):
        full = griffin_matrices(moved, form)
        torch.testing.assert_close(full, griffin_loop_matrices(moved, form), rtol=1e-4, atol=1e-6)
        rglru = griffin_matrices(moved, "rglru")
        assert torch.all(rglru[:, 10:, :10] == 0)
        mean = griffin_reduced(moved, form, Reduction("mean"))  # the block tree: infinite rate at the reset
        torch.testing.assert_close(mean, full.mean(0), rtol=1e-5, atol=1e-7)
        if form == "rglru":  # (the unified form's conv still reaches back over the reset)
            assert float(mean[10:, :10].abs().max()) < 1e-20


def test_rwkv_rescaled_layers(tiny_dirs):
    """With rescale_every=1 the eval forward halves output weights and the residual stream; the captured
    tensors are the ones really used, so reconstruction stays exact."""
    loaded = load_model(tiny_dirs["rwkv"], device="cpu")
    loaded.model.config.rescale_every = 1
    internals = capture_rwkv(loaded, _ids(loaded))
    assert loaded.model.rwkv.layers_are_rescaled
    for it in internals.values():
        for form in ("unified", "wkv"):
            rebuilt, observed = rwkv_reconstruct(it, form)
            assert _rel(rebuilt, observed) < 1e-4


def test_single_token_and_bad_inputs(tiny_loaded):
    from analysis.errors import PrunescopeError

    loaded = tiny_loaded("rwkv")
    it = capture_rwkv(loaded, torch.tensor([5]), layers=[1])[1]
    assert it.length == 1
    torch.testing.assert_close(rwkv_matrices(it, "wkv"), torch.ones(it.n_channels, 1, 1))
    with pytest.raises(PrunescopeError):
        capture_rwkv(loaded, torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(PrunescopeError):
        capture_rwkv(loaded, torch.tensor([1, 2]), layers=[7])
    with pytest.raises(PrunescopeError):
        rwkv_matrices(it, "bogus")


def test_shared_internals_shape_and_form_errors(captured, tiny_loaded):
    """The shared Internals base reads the prompt length and channel count from each family's [T, C] tensor,
    and the shared form check keeps each family's one-line message (Mamba's names its alias)."""
    from analysis.errors import PrunescopeError
    from analysis.implicit_attention.mamba import capture_mamba, mamba_matrices

    mamba = tiny_loaded("mamba")
    cases = [("rwkv", captured("rwkv")[0], "key", "attention_hidden_size", rwkv_matrices, "RWKV ",
              "one of unified, wkv"),
             ("recurrent_gemma", next(iter(captured("recurrent_gemma").values())), "x", "lru_width",
              griffin_matrices, "Griffin ", "one of unified, rglru"),
             ("mamba", capture_mamba(mamba, _ids(mamba), [0])[0], "x", "intermediate_size", mamba_matrices, "",
              "s6 (ssm), or unified")]
    for model_type, it, field, width, matrices, family, choices in cases:
        loaded = tiny_loaded(model_type)
        shape = (_ids(loaded).shape[1], getattr(loaded.model.config, width))
        assert (it.length, it.n_channels) == shape == getattr(it, field).shape
        with pytest.raises(PrunescopeError) as err:
            matrices(it, "softmax")
        assert str(err.value) == f"unknown {family}implicit-attention form 'softmax': use {choices}"
