"""Adapters of hybrids whose blocks differ: Mamba or attention mixers beside dense MLPs or MoE layers
(Jamba, Granite 4.0 hybrid, Nemotron-H).

Each block's neuron site is the first of its layout's candidates it has (base.py, :class:`Layout`): the
routed experts' channels of a MoE layer (analysis/models/experts.py), else the dense MLP's intermediate, else
(Nemotron-H, whose blocks hold one module each) the Mamba mixer's gated channels entering ``out_proj`` or the
attention heads' output entering ``o_proj``. The site's ``kind`` labels the layer.

Continuation runs the model's own forward with its mixed cache (``DynamicCache`` holding attention keys and
values beside Mamba conv and SSM states): the prefix's cache is forked per row (:func:`repeat_cache`). Blocks
below the start layer are cut from the list as for every family; each block keeps its mask (Granite reads
``config.layer_types[i]``, sliced with the list; Nemotron-H reads its block's ``block_type``; Jamba derives its
types from ``attn_layer_offset``, shifted with the cut).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from analysis.models.adapters.base import Layout, ModelAdapter, SiteChoice

MOE_SITE = "experts.neurons"  # the ExpertNeurons identity under a MoE layer's experts module


def _mlp(down_proj: str) -> SiteChoice:
    """A dense MLP's site: its down projection's input."""
    return SiteChoice(down_proj, "input", down_proj, "mlp")


class HybridAdapter(ModelAdapter):
    """Shared continuation of the hybrids: attention mask and positions as transformers' decoders take them,
    Mamba states overwritten in place by a cached step."""

    state_updated_in_place = True
    # MoE experts multiply as many rows as were routed to them, and Mamba-2's step sizes fall in PyTorch's scalar
    # tail loop by batch height (Mamba2Adapter): a row's bits may depend on its batch
    batch_invariant = False

    def mamba_path(self, layer: int) -> str | None:
        """The path of block ``layer``'s Mamba mixer within the block, or None for other blocks."""
        block = self._blocks[layer]
        for name in ("mamba", "mixer"):
            mixer = getattr(block, name, None)
            if mixer is not None and hasattr(mixer, "A_log"):
                return name
        return None

    def mamba_layers(self) -> list[int]:
        """Layers with a Mamba mixer: the family's implicit-attention layers."""
        return [i for i in range(self.n_layers) if self.mamba_path(i) is not None]

    def attention_layers(self) -> list[int]:
        """Layers with a softmax-attention mixer (``self_attn``, or Nemotron-H's attention ``mixer``)."""
        return [i for i, b in enumerate(self._blocks)
                if getattr(b, "self_attn", None) is not None or hasattr(getattr(b, "mixer", None), "o_proj")]

    def position_wise_layers(self) -> list[int]:
        mixing = set(self.mamba_layers()) | set(self.attention_layers())
        return [i for i in range(self.n_layers) if i not in mixing]

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        return {"past_key_values": cache,
                "attention_mask": torch.ones(rows, prefix_len + c, dtype=torch.long, device=device),
                "position_ids": torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)}


class JambaAdapter(HybridAdapter):
    """Jamba: every block a Mamba-1 mixer (``mamba``) or attention, then a dense MLP or a MoE layer."""

    family = "jamba"
    layouts = {"jamba": Layout("model.layers", f"feed_forward.{MOE_SITE}", "input", f"feed_forward.{MOE_SITE}",
                               "moe", also=(_mlp("feed_forward.down_proj"),))}

    @contextmanager
    def _truncated(self, start_layer: int) -> Iterator[None]:
        """Jamba's ``config.layer_types`` is a read-only property: block i is attention where
        ``i % attn_layer_period == attn_layer_offset``, so after cutting ``start_layer`` blocks the offset moves
        back by as many."""
        config = self.base_model.config
        offset = config.attn_layer_offset
        config.attn_layer_offset = (offset - start_layer) % config.attn_layer_period
        try:
            with super()._truncated(start_layer):
                yield
        finally:
            config.attn_layer_offset = offset


class GraniteMoeHybridAdapter(HybridAdapter):
    """Granite 4.0 hybrid: a Mamba-2 mixer (``mamba``) or attention, then a MoE layer plus a shared MLP (or the
    shared MLP alone); the site is the MoE's routed experts where there is one, else the shared MLP."""

    family = "granitemoehybrid"
    indexes_layer_types = True  # its forward reads config.layer_types[i]
    layouts = {"granitemoehybrid": Layout("model.layers", f"block_sparse_moe.{MOE_SITE}", "input",
                                          f"block_sparse_moe.{MOE_SITE}", "moe",
                                          also=(_mlp("shared_mlp.output_linear"),))}

    def logits(self, hidden, token_ids=None, linear_cap=False):
        """Granite divides its LM head's output by ``logits_scaling``."""
        return super().logits(hidden, token_ids, linear_cap) / self.model.config.logits_scaling


class NemotronHAdapter(HybridAdapter):
    """Nemotron-H: each block ONE module (``mixer``): Mamba-2, attention, a dense MLP or a MoE layer."""

    family = "nemotron_h"
    layouts = {"nemotron_h": Layout("model.layers", f"mixer.{MOE_SITE}", "input", f"mixer.{MOE_SITE}", "moe", also=(
        _mlp("mixer.down_proj"), SiteChoice("mixer.out_proj", "input", "mixer.out_proj", "mixer"),
        SiteChoice("mixer.o_proj", "input", "mixer.o_proj", "attention-out")))}
