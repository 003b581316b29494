"""``continue_from`` (the IG fast path's engine) on every family, against the model's own full forward pass:
continuing after a cached prefix gives the full pass's last hidden states, for several copies at once, and
starting at a later block with that block's real input (``_truncated`` drops the blocks below, ``_fed``
feeds the input) gives them too; afterwards the model is as it was."""

from __future__ import annotations

import pytest
import torch

from analysis.models.tiny import TINY_FAMILIES

TEXT = "a:1 b:2 c:3 | d:4 e:5 | a:"


def _full_pass(loaded, ids: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Final hidden states [1, T, H] and every block's input [1, T, H] from one plain forward."""
    inputs: dict[int, torch.Tensor] = {}
    with torch.no_grad(), loaded.adapter.hook_block_inputs(lambda layer, h: inputs.__setitem__(layer, h.clone())):
        hidden = loaded.adapter.base_model(input_ids=ids, use_cache=False).last_hidden_state
    return hidden, inputs


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_continue_from_equals_the_full_forward_pass(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    adapter = loaded.adapter
    ids = torch.tensor([loaded.tokenizer(TEXT).input_ids])
    c = adapter.continuation_tokens
    hidden, block_inputs = _full_pass(loaded, ids)
    expected = hidden[:, -c:]
    # a cached recurrent step and the chunked scan round differently: an absolute bound on the hidden states' scale
    # (tiny Nemotron-H: 1.7e-5 on values up to 2.6, the model's own cached forward the same)
    tol = {"rtol": 1e-4, "atol": 1e-5 * max(1.0, float(expected.abs().max()))}
    def block_list():
        return getattr(adapter._layers_parent, adapter._layers_attr), getattr(loaded.model.config, "layer_types", None)

    blocks_before = block_list()
    with torch.no_grad():
        prefix = adapter.run_prefix(ids[:, :-c])
        for rows in (1, 3):
            out = adapter.continue_from(prefix, ids[:, -c:], rows)
            assert out.shape == (rows, c, hidden.shape[-1])
            torch.testing.assert_close(out, expected.expand(rows, -1, -1), **tol)
        starts = [s for s in range(1, adapter.n_layers) if s % adapter.layer_chunk_multiple() == 0]
        if not starts:  # RWKV rescales every `rescale_every` blocks: a start elsewhere would shift that
            with pytest.raises(ValueError, match="must start at a multiple of"):
                adapter.continue_from(prefix, ids[:, -c:], 1, start_layer=1, block_input=block_inputs[1][:, -c:])
            starts = [0]
        for start in starts:
            fed = block_inputs[start][:, -c:].expand(2, -1, -1) if start else None
            out = adapter.continue_from(prefix, ids[:, -c:], 2, start_layer=start, block_input=fed)
            torch.testing.assert_close(out, expected.expand(2, -1, -1), **tol)
        if starts[-1]:  # a different block input changes the result (the input is really used)
            wrong = torch.zeros_like(block_inputs[starts[-1]][:, -c:])
            out = adapter.continue_from(prefix, ids[:, -c:], 1, start_layer=starts[-1], block_input=wrong)
            assert not torch.allclose(out, expected, rtol=1e-3, atol=1e-3)
    assert block_list()[0] is blocks_before[0] and block_list()[1] == blocks_before[1]  # the block list is restored
    again, _ = _full_pass(loaded, ids)
    assert torch.equal(again, hidden)  # no hook or truncation left behind


def test_continue_from_refuses_a_start_without_its_input(tiny_loaded):
    adapter = tiny_loaded("llama").adapter
    ids = torch.tensor([tiny_loaded("llama").tokenizer(TEXT).input_ids])
    with torch.no_grad():
        prefix = adapter.run_prefix(ids[:, :-1])
        with pytest.raises(ValueError, match="block_input is needed"):
            adapter.continue_from(prefix, ids[:, -1:], 1, start_layer=1)
