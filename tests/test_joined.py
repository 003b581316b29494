"""Rows that join a continuation at their own layer (ModelAdapter.continue_joined, the IG fast path's engine):
on every family, each row equals an independent full forward of the prompt with the same change at its own
layer; rows without a change equal the clean row; the prefix's cache is left as it was (it is shared, not
copied); RWKV, whose state cannot hold a batch per layer, gets the same rows from its fallback."""

from __future__ import annotations

import pytest
import torch

from analysis.models.tiny import TINY_FAMILIES

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "the cat is big and the dog is small and the bird is"


def _setup(loaded):
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    c = loaded.adapter.continuation_tokens
    return ids, c, loaded.adapter.run_prefix(ids[:, :-c])


def _factors(width: int, layer: int) -> torch.Tensor:
    """Per-neuron factors (not one scalar: Gemma's normalised MLP output ignores a common scale)."""
    return torch.rand(width, generator=torch.Generator().manual_seed(layer)) * 2


def _scaled_full_forward(loaded, ids, layer: int, factor: torch.Tensor) -> torch.Tensor:
    """Reference: the whole prompt, layer ``layer``'s site at the last position times ``factor``."""
    def scale(_layer, activation):
        out = activation.clone()
        out.reshape(-1, activation.shape[-1])[-1] *= factor
        return out

    with loaded.adapter.hook_sites(scale, layers=[layer]):
        return loaded.adapter.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, -1]


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_joined_rows_equal_full_forwards_with_their_own_change(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    adapter = loaded.adapter
    joins = {layer: 2 for layer in range(adapter.n_layers)}  # per layer: one row scaled, one left alone
    factors = {layer: _factors(width, layer) for layer, width in enumerate(adapter.neuron_counts())}
    seen = {}

    def scale_first_joined(layer, activation):  # the rows joining here are the last 2 of this batch
        rows = activation.reshape(-1, loaded.adapter.continuation_tokens, activation.shape[-1])
        seen[layer] = rows.shape[0]
        out = rows.clone()
        out[-2, -1] *= factors[layer]
        return out.reshape(activation.shape)

    with loaded.lock, torch.no_grad():
        ids, c, prefix = _setup(loaded)
        clean = adapter.continue_from(prefix, ids[:, -c:], rows=1)[0, -1]
        with adapter.hook_sites(scale_first_joined):
            out = adapter.continue_joined(prefix, ids[:, -c:], joins)[:, -1]
        again = adapter.continue_from(prefix, ids[:, -c:], rows=1)[0, -1]
        expected = {layer: _scaled_full_forward(loaded, ids, layer, factors[layer]) for layer in joins}
    assert out.shape[0] == 1 + 2 * adapter.n_layers
    if adapter.supports_joins:  # the batch grows block by block: rows below their layer are never run
        assert seen == {layer: 1 + 2 * (layer + 1) for layer in joins}
    assert torch.equal(again, clean)  # the shared prefix cache was not written
    torch.testing.assert_close(out[0], clean, rtol=1e-5, atol=1e-5)
    for layer in joins:
        scaled, untouched = out[1 + 2 * layer], out[2 + 2 * layer]
        torch.testing.assert_close(untouched, clean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scaled, expected[layer], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(scaled, clean, atol=1e-4)  # the change matters, so a wrong row would show


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "mamba"])
def test_joins_from_a_later_start_layer(tiny_loaded, model_type):
    """Starting above layer 0 with the clean block input fed there, as a refinement pass does."""
    loaded = tiny_loaded(model_type)
    adapter = loaded.adapter
    start = adapter.n_layers - 1
    inputs = {}
    with loaded.lock, torch.no_grad():
        ids, c, prefix = _setup(loaded)
        with adapter.hook_block_inputs(lambda layer, h: inputs.__setitem__(layer, h.clone())):
            clean = adapter.continue_from(prefix, ids[:, -c:], rows=1)[0, -1]
        out = adapter.continue_joined(prefix, ids[:, -c:], {start: 3}, start_layer=start,
                                      block_input=inputs[start])[:, -1]
        with pytest.raises(ValueError, match="at or above the start layer"):
            adapter.continue_joined(prefix, ids[:, -c:], {0: 1}, start_layer=start, block_input=inputs[start])
    assert out.shape[0] == 4
    torch.testing.assert_close(out, clean.expand(4, -1), rtol=1e-5, atol=1e-5)
