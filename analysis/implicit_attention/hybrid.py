"""Attention maps of the Mamba/attention hybrids (Jamba, Granite 4.0 hybrid, Nemotron-H): both kinds of layer
in one view, like Griffin's.

* Mamba layers: the exact implicit attention of analysis/implicit_attention/mamba.py (forms ``s6`` and
  ``unified``), captured from each hybrid block's own mixer (:func:`~analysis.implicit_attention.mamba.capture_mixers`:
  Jamba's Mamba-1 mixers with their dt/B/C norms, Granite's and Nemotron-H's Mamba-2 mixers).
* Attention layers: the real softmax probabilities, from one eager forward with a hook on each attention
  module (its second output), reduced over heads.

MoE and MLP blocks (Nemotron-H's own blocks) have neither and are skipped by both. :data:`JAMBA_OPS`,
:data:`GRANITE_OPS` and :data:`NEMOTRON_H_OPS` are the three families' registry entries.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from analysis.implicit_attention.common import Reduction, check_layers, eager_attention, prompt_ids
from analysis.implicit_attention.mamba import (
    MAMBA_OPS,
    MambaInternals,
    capture_mixers,
    mamba2_relevance_target,
    mamba_relevance_target,
)
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget
from analysis.implicit_attention.softmax import reduce_heads
from analysis.models.adapters import HybridAdapter
from analysis.models.hooks import hook_scope

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded


def _adapter(loaded: Loaded) -> HybridAdapter:
    return cast(HybridAdapter, loaded.adapter)  # called for hybrid models only


def capture_hybrid(loaded: Loaded, input_ids: torch.Tensor, layers: list[int] | None = None
                   ) -> dict[int, MambaInternals]:
    """Internals of each requested layer that has a Mamba mixer (other layers are skipped), from one forward."""
    adapter = _adapter(loaded)
    mixers = {}
    for layer in check_layers(loaded, layers):
        path = adapter.mamba_path(layer)
        if path is not None:
            mixer = adapter.block(layer).get_submodule(path)
            mixers[layer] = ("mamba2" if hasattr(mixer, "dt_bias") else "mamba", path)
    return capture_mixers(loaded, input_ids, mixers)


def hybrid_relevance_target(block: nn.Module, inn: MambaInternals, form: str) -> RelevanceTarget:
    """Where dF/dy is read: as for Mamba or Mamba-2 (by the layer's mixer), at the mixer's path."""
    return (mamba_relevance_target if inn.model_type == "mamba" else mamba2_relevance_target)(block, inn, form)


def _attention_module(block: nn.Module) -> nn.Module:
    attention = getattr(block, "self_attn", None)
    return attention if attention is not None else block.get_submodule("mixer")


def hybrid_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                        ) -> dict[int, torch.Tensor]:
    """[T, T] softmax maps of the attention layers among ``layers``, reduced over heads (one eager forward)."""
    attention = set(_adapter(loaded).attention_layers())
    chosen = [i for i in check_layers(loaded, layers) if i in attention]
    ids = prompt_ids(input_ids, loaded.device)
    probs: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(_module, _args, output):
            probs[layer] = output[1][0].detach().float()
        return hook

    with eager_attention(loaded), hook_scope(loaded.model) as add:
        for i in chosen:
            add(_attention_module(loaded.adapter.block(i)), keep(i))
        with torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)
    return {i: reduce_heads(probs[i], reduction) for i in chosen}


_HYBRID_OPS: FamilyOps[MambaInternals] = replace(
    MAMBA_OPS, implicit_layers=HybridAdapter.mamba_layers, capture=capture_hybrid,
    relevance_target=hybrid_relevance_target, softmax_maps=hybrid_softmax_maps)
JAMBA_OPS = GRANITE_OPS = NEMOTRON_H_OPS = _HYBRID_OPS
