"""The architecture families' adapters: their layouts and how each continues from a prefix, and
:data:`ADAPTERS`, the list the loader picks from by model type.

The family registry (analysis/families.py) names these classes; nothing here imports it (the registry sits
above the adapters), so the list is kept here, in the registry's order (tests/test_registry.py checks both
agree)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from analysis.errors import UnsupportedArchitectureError
from analysis.models.adapters.base import Layout, ModelAdapter, NeuronSite, PrefixState, repeat_cache
from analysis.models.adapters.hybrids import GraniteMoeHybridAdapter, JambaAdapter, NemotronHAdapter
from analysis.models.adapters.linear import (
    GatedDeltaNetAdapter,
    KimiDeltaAdapter,
    Lfm2Adapter,
    MiniMaxAdapter,
    XlstmAdapter,
)
from analysis.models.adapters.transformer import TransformerAdapter

if TYPE_CHECKING:
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaModel

class MambaAdapter(ModelAdapter):
    family = "mamba"
    # Falcon-Mamba is Mamba-1 with RMS-normalised B, C and dt (its capture reads them from the norms)
    layouts = {t: Layout("backbone.layers", "mixer.out_proj", "input", "mixer.out_proj", "mixer")
               for t in ("mamba", "falcon_mamba")}
    state_updated_in_place = True

    def _cache_from(self, output):
        return output.cache_params

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        return {"cache_params": cache}


class Mamba2Adapter(MambaAdapter):
    family = "mamba2"
    layouts = {"mamba2": Layout("backbone.layers", "mixer.out_proj", "input", "mixer.out_proj", "mixer")}
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


class HybridMamba2Adapter(ModelAdapter):
    """Mamba-2 mixers beside softmax attention and an MLP in every block: Bamba (a layer has one or the other,
    ``block.mamba`` or ``block.self_attn``) and Falcon-H1 (both side by side in every layer, with muP
    multipliers). One transformers hybrid cache holds every layer's conv/SSM states and keys/values."""

    family = "mamba2_hybrid"
    layouts: dict[str, Layout] = {t: Layout("model.layers", "feed_forward.down_proj", "input", "feed_forward.down_proj")
                                  for t in ("bamba", "falcon_h1")}
    state_updated_in_place = True  # the cache's conv and SSM states are copied into in place
    batch_invariant = False  # the Mamba-2 step sizes' scalar tail loop, as for Mamba2Adapter

    def mixer_path(self, layer: int) -> str | None:
        """Path of the block's Mamba-2 mixer (None: an attention layer of Bamba)."""
        return first_submodule_path(self._blocks[layer], MIXER_PATHS)

    def attention_path(self, layer: int) -> str | None:
        """Path of the block's softmax attention module (None: a Mamba-2 layer of Bamba or Zamba2)."""
        return first_submodule_path(self._blocks[layer], ATTENTION_PATHS)

    def ssm_layers(self) -> list[int]:
        """Layers with a Mamba-2 mixer."""
        return [i for i in range(len(self._blocks)) if self.mixer_path(i)]

    def attention_layers(self) -> list[int]:
        """Layers with softmax attention; Falcon-H1's and Zamba2's hybrid layers have a mixer too."""
        return [i for i in range(len(self._blocks)) if self.attention_path(i)]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().embed(input_ids) * getattr(self.model.config, "embedding_multiplier", 1.0)

    def logits(self, hidden, token_ids=None, linear_cap=False):
        return super().logits(hidden, token_ids, linear_cap) * getattr(self.model.config, "lm_head_multiplier", 1.0)

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        # Bamba numbers positions from 0 whatever the cache holds: give them
        positions = torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)
        return {"past_key_values": cache, "position_ids": positions}

    @contextmanager
    def _truncated(self, start_layer: int) -> Iterator[None]:
        """Bamba picks each block's mask by ``config.layers_block_type[i]``, a property of
        ``attn_layer_indices``: shift those indices with the cut block list (Falcon-H1's are all "hybrid")."""
        config = self.base_model.config
        indices = getattr(config, "attn_layer_indices", None)
        with super()._truncated(start_layer):
            if not start_layer or not indices:
                yield
                return
            layers = config.num_hidden_layers
            config.attn_layer_indices = [i - start_layer for i in indices if i >= start_layer]
            config.num_hidden_layers = layers - start_layer
            try:
                yield
            finally:
                config.attn_layer_indices, config.num_hidden_layers = indices, layers


class Zamba2Adapter(HybridMamba2Adapter):
    """Zamba2 and Zamba (v1, whose mixers are Mamba-1 split into mamba heads): Mamba-2 / Mamba layers, some
    of them ("hybrid") first running a transformer block (attention and MLP) that is *shared* by several
    layers and reads the input embeddings beside the residual stream. Its neuron site is each layer's mixer
    (the shared MLP's channels belong to no one layer): ``out_proj``'s input (the gated d_inner channels), at
    ``mamba`` or, in a hybrid layer, ``mamba_decoder.mamba``. The forward passes each block its position in
    the loop and concatenates batch-sized embeddings in the shared block, so continuations start at layer 0
    and run every row from there."""

    family = "zamba2"
    layouts = {t: Layout("model.layers", "mamba.out_proj", "input", "mamba.out_proj") for t in ("zamba", "zamba2")}
    supports_joins = False
    # transformers 5.23's one-token Mamba-2 step ignores Zamba2's lower step-size limit (time_step_min) that
    # its multi-token scan applies: continuations re-run two tokens, so they go through the scan as the
    # full forward does
    continuation_tokens = 2

    def __init__(self, model):
        super().__init__(model)
        if self.model_type == "zamba":  # Zamba's multi-token scan starts from a zero state whatever the cache
            self.continuation_tokens = 1  # holds (transformers 5.23); its one-token step reads the state

    def layer_chunk_multiple(self) -> int:
        return self.n_layers

    def _site_path(self, layer: int) -> str:
        return f"{self.mixer_path(layer)}.out_proj"

    def _make_site(self, layer: int) -> NeuronSite:
        width = self._blocks[layer].get_submodule(self._site_path(layer)).in_features
        return NeuronSite(layer, f"{self.layout.layers}.{layer}.{self._site_path(layer)}", self.layout.io, int(width),
                          "mixer")

    def site_module(self, layer: int) -> nn.Module:
        return self._blocks[layer].get_submodule(self._site_path(layer))


MIXER_PATHS = ("mixer", "mamba", "mamba_decoder.mamba")  # a block's Mamba mixer, by family (mamba.py's capture)
# a hybrid block's softmax attention (Zamba2's and Zamba's in their shared transformer blocks)
ATTENTION_PATHS = ("self_attn", "shared_transformer.self_attn", "shared_transf.self_attn")


def first_submodule_path(block: nn.Module, paths: tuple[str, ...]) -> str | None:
    """The first of ``paths`` that names a submodule of ``block``."""
    for path in paths:
        try:
            block.get_submodule(path)
        except AttributeError:
            continue
        return path
    return None


ADAPTERS: tuple[type[ModelAdapter], ...] = (TransformerAdapter, MambaAdapter, Mamba2Adapter, RwkvAdapter,
                                             GriffinAdapter, HybridMamba2Adapter, Zamba2Adapter, Lfm2Adapter,
                                             XlstmAdapter, GatedDeltaNetAdapter, KimiDeltaAdapter, MiniMaxAdapter,
                                             JambaAdapter,
                                             GraniteMoeHybridAdapter, NemotronHAdapter)


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
