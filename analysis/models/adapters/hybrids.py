"""Adapters of hybrids whose blocks differ: Mamba or attention mixers beside dense MLPs or MoE layers
(Jamba, Granite 4.0 hybrid, Nemotron-H).

Each block's neuron site is the first of its layout's candidates it has (base.py, :class:`Layout`): the
routed experts' channels of a MoE layer (analysis/models/experts.py), else the dense MLP's intermediate, else
(Nemotron-H, whose blocks hold one module each) the Mamba mixer's gated channels entering ``out_proj`` or the
attention heads' output entering ``o_proj``. The site's ``kind`` labels the layer.

Continuation runs the model's own forward with its mixed cache (``DynamicCache`` holding attention keys and
values beside Mamba conv and SSM states): the prefix's cache is forked per row (:func:`repeat_cache`). Blocks
below the start layer are replaced by pass-throughs instead of being cut from the list, because these models
pick each block's mask by its index (Jamba's ``config.layer_types`` is a read-only property).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from analysis.models.adapters.base import Layout, ModelAdapter, SiteChoice

MOE_SITE = "experts.neurons"  # the ExpertNeurons identity under a MoE layer's experts module


def _mlp(down_proj: str) -> SiteChoice:
    """A dense MLP's site: its down projection's input."""
    return SiteChoice(down_proj, "input", down_proj, "mlp")


class _PassThrough(nn.Module):
    """A skipped block: returns its hidden states unchanged; keeps the plain attributes the model's loop reads
    from its blocks (Nemotron-H's ``block_type``)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        for name, value in vars(block).items():
            if not name.startswith("_") and isinstance(value, (str, int, float, bool)) and name != "training":
                setattr(self, name, value)

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


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

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        return {"past_key_values": cache,
                "attention_mask": torch.ones(rows, prefix_len + c, dtype=torch.long, device=device),
                "position_ids": torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)}

    @contextmanager
    def _truncated(self, start_layer: int) -> Iterator[None]:
        """Blocks below ``start_layer`` become pass-throughs (every block keeps its index, so its mask)."""
        if not start_layer:
            yield
            return
        layers = getattr(self._layers_parent, self._layers_attr)
        skipped = nn.ModuleList([_PassThrough(b) for b in self._blocks[:start_layer]] + self._blocks[start_layer:])
        setattr(self._layers_parent, self._layers_attr, skipped)
        try:
            yield
        finally:
            setattr(self._layers_parent, self._layers_attr, layers)


class JambaAdapter(HybridAdapter):
    """Jamba: every block a Mamba-1 mixer (``mamba``) or attention, then a dense MLP or a MoE layer."""

    family = "jamba"
    layouts = {"jamba": Layout("model.layers", f"feed_forward.{MOE_SITE}", "input", f"feed_forward.{MOE_SITE}",
                               "moe", also=(_mlp("feed_forward.down_proj"),))}


class GraniteMoeHybridAdapter(HybridAdapter):
    """Granite 4.0 hybrid: a Mamba-2 mixer (``mamba``) or attention, then a MoE layer plus a shared MLP (or the
    shared MLP alone); the site is the MoE's routed experts where there is one, else the shared MLP."""

    family = "granitemoehybrid"
    layouts = {"granitemoehybrid": Layout("model.layers", f"block_sparse_moe.{MOE_SITE}", "input",
                                          f"block_sparse_moe.{MOE_SITE}", "moe",
                                          also=(_mlp("shared_mlp.output_linear"),))}


class NemotronHAdapter(HybridAdapter):
    """Nemotron-H: each block ONE module (``mixer``): Mamba-2, attention, a dense MLP or a MoE layer."""

    family = "nemotron_h"
    layouts = {"nemotron_h": Layout("model.layers", f"mixer.{MOE_SITE}", "input", f"mixer.{MOE_SITE}", "moe", also=(
        _mlp("mixer.down_proj"), SiteChoice("mixer.out_proj", "input", "mixer.out_proj", "mixer"),
        SiteChoice("mixer.o_proj", "input", "mixer.o_proj", "attention-out")))}
