"""The architecture families' adapters: their layouts and how each continues from a prefix, and
:data:`ADAPTERS`, the list the loader picks from by model type.

The family registry (analysis/families.py) names these classes; nothing here imports it (the registry sits
above the adapters), so the list is kept here, in the registry's order (tests/test_registry.py checks both
agree)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from analysis.errors import UnsupportedArchitectureError
from analysis.models.adapters.base import Layout, ModelAdapter, PrefixState, repeat_cache

if TYPE_CHECKING:
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaModel

_GATED_MLP = Layout("model.layers", "mlp.down_proj", "input", "mlp.down_proj")


class TransformerAdapter(ModelAdapter):
    family = "transformer"
    layouts = {
        **{t: _GATED_MLP for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                   "smollm3", "olmo", "olmo2", "granite", "phi3")},
        "gpt2": Layout("transformer.h", "mlp.act", "output", "mlp.c_proj"),
        "gpt_neox": Layout("gpt_neox.layers", "mlp.act", "output", "mlp.dense_4h_to_h"),
        "opt": Layout("model.decoder.layers", "activation_fn", "output", "fc2"),
        "bloom": Layout("transformer.h", "mlp.gelu_impl", "output", "mlp.dense_4h_to_h"),
    }
    indexes_layer_types = True

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        kwargs = {"past_key_values": cache,
                  "attention_mask": torch.ones(rows, prefix_len + c, dtype=torch.long, device=device)}
        if self._accepts("position_ids"):
            kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)
        return kwargs


class MambaAdapter(ModelAdapter):
    family = "mamba"
    layouts = {"mamba": Layout("backbone.layers", "mixer.out_proj", "input", "mixer.out_proj")}
    state_updated_in_place = True

    def _cache_from(self, output):
        return output.cache_params

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        return {"cache_params": cache}


class Mamba2Adapter(MambaAdapter):
    family = "mamba2"
    layouts = {"mamba2": Layout("backbone.layers", "mixer.out_proj", "input", "mixer.out_proj")}
    # the step sizes are a [batch, tokens, heads] tensor with few heads: its last elements go through PyTorch's
    # scalar tail loop (softplus, exp), whose last bit can differ from the vectorised body's, and which elements
    # fall there depends on the batch's height; so conditions are not stacked in one batch (conditions.py)
    batch_invariant = False


class RwkvAdapter(ModelAdapter):
    family = "rwkv"
    layouts = {"rwkv": Layout("rwkv.blocks", "feed_forward.value", "input", "feed_forward.value")}
    supports_left_padding = False  # transformers' RWKV ignores attention_mask
    supports_joins = False  # one state tensor stacks every layer's: one batch size for all
    # transformers 5.23's one-token RWKV step broadcasts the [B, H] shift state against [B, 1, H], which is
    # only right for B = 1: decoding runs one sequence at a time, and continuations re-run two tokens
    # (the multi-token path handles the shift state correctly).
    max_decode_batch = 1
    continuation_tokens = 2
    state_updated_in_place = True

    def max_context(self) -> int | None:
        return None

    def layer_chunk_multiple(self) -> int:
        """In eval mode RWKV halves the hidden state after every ``rescale_every`` blocks, counted from the
        first block run; starting elsewhere would shift those points."""
        return max(int(getattr(self.model.config, "rescale_every", 0) or 0), 1)

    def _cache_from(self, output):
        return [s.clone() for s in output.state]

    def _repeat_cache(self, cache, rows):
        return [s.repeat_interleave(rows, dim=0) for s in cache]

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        return {"state": cache}


class GriffinAdapter(ModelAdapter):
    """RecurrentGemma keeps its recurrent and conv states on the modules themselves, not in the cache
    object; continuations snapshot and restore them (under the model's lock, like every hooked run)."""

    family = "griffin"
    layouts = {"recurrent_gemma": Layout("model.layers", "mlp_block.down_proj", "input", "mlp_block.down_proj")}
    supports_left_padding = False  # the RG-LRU and its conv1d do not skip padding

    def max_context(self) -> int | None:
        return None

    def recurrent_layers(self) -> list[int]:
        """Layers whose temporal block is recurrent (has an RG-LRU); the others are local attention. The one
        test of it: the family registry's implicit layers and ``griffin_recurrent_layers`` use this too."""
        return [i for i, b in enumerate(self._blocks) if hasattr(b.temporal_block, "rg_lru")]

    def _recurrent_blocks(self):
        return [self._blocks[i].temporal_block for i in self.recurrent_layers()]

    def run_prefix(self, prefix_ids):
        from transformers import DynamicCache

        base = cast("RecurrentGemmaModel", self.base_model)
        with self.lock:  # the blocks' recurrent states are the model's own: set and read them under its lock
            base._setup_cache(self.model.config, 1, prefix_ids.device, self.model.dtype)
            cache = DynamicCache(config=self.model.config)
            positions = torch.arange(prefix_ids.shape[1], device=prefix_ids.device)[None]
            self.base_model(input_ids=prefix_ids, use_cache=True, past_key_values=cache, position_ids=positions)
            states = [(b.conv1d_state.clone(), b.rg_lru.recurrent_states.clone()) for b in self._recurrent_blocks()]
        return PrefixState(prefix_ids.shape[1], (cache, states))

    def _repeat_cache(self, cache, rows):
        kv, states = cache
        per_block = [rows if isinstance(rows, int) else rows[layer] for layer in self.recurrent_layers()]
        return repeat_cache(kv, rows), [(conv.repeat_interleave(count, 0), rec.repeat_interleave(count, 0))
                                        for (conv, rec), count in zip(states, per_block)]

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        kv, states = cache
        for block, (conv, rec) in zip(self._recurrent_blocks(), states):
            block.conv1d_state, block.rg_lru.recurrent_states = conv, rec
        positions = torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)
        return {"past_key_values": kv, "position_ids": positions}

    def logit_soft_cap(self) -> float | None:
        return self.model.config.logits_soft_cap


ADAPTERS: tuple[type[ModelAdapter], ...] = (TransformerAdapter, MambaAdapter, Mamba2Adapter, RwkvAdapter,
                                             GriffinAdapter)


def registered_adapters() -> tuple[type[ModelAdapter], ...]:
    """Every family's adapter, in the family registry's order (analysis/families.py)."""
    return ADAPTERS


def supported_architectures() -> str:
    """'family (model types), ...' for error messages and the CLI."""
    return "; ".join(f"{a.family} ({', '.join(a.layouts)})" for a in registered_adapters())


def adapter_class_for(model_type: str, what: str = "model") -> type[ModelAdapter]:
    for adapter in registered_adapters():
        if model_type in adapter.layouts:
            return adapter
    raise UnsupportedArchitectureError(
        f"{what} has architecture {model_type!r}, which prunescope does not support; "
        f"supported: {supported_architectures()}")


def make_adapter(model) -> ModelAdapter:
    return adapter_class_for(model.config.model_type)(model)
