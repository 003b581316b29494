"""Attention maps of the Mamba/attention hybrids with MoE (Jamba, Granite 4.0 hybrid, Nemotron-H): both kinds
of layer in one view, each labelled.

* Mamba layers: the exact implicit attention of analysis/implicit_attention/mamba.py (forms ``s6`` and
  ``unified``) from its one capture, which finds each block's mixer by path: Jamba's Mamba-1 mixers (``mamba``,
  with their dt/B/C norms), Granite's (``mamba``) and Nemotron-H's (``mixer``) Mamba-2 mixers.
* Attention layers: the real softmax probabilities of each attention module (``self_attn``, or Nemotron-H's
  attention ``mixer``), reduced over heads (:func:`~analysis.implicit_attention.softmax.attention_module_maps`).

Nemotron-H's MLP and MoE blocks have neither: they mix no tokens, and analysis/attention.py shows them as the
identity (``ModelAdapter.position_wise_layers``). No layer here has both kinds, so the forms are those of Mamba.
:data:`JAMBA_OPS`, :data:`GRANITE_OPS` and :data:`NEMOTRON_H_OPS` are the three families' registry entries.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch

from analysis.implicit_attention.common import Reduction, check_layers
from analysis.implicit_attention.mamba import MAMBA_OPS
from analysis.implicit_attention.mamba_internals import MambaInternals, capture_mamba
from analysis.implicit_attention.ops import FamilyOps
from analysis.implicit_attention.softmax import attention_module_maps
from analysis.models.adapters import HybridAdapter

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded


def _adapter(loaded: Loaded) -> HybridAdapter:
    return cast(HybridAdapter, loaded.adapter)  # called for these hybrids only


def capture_hybrid(loaded: Loaded, input_ids: torch.Tensor, layers: list[int] | None = None
                   ) -> dict[int, MambaInternals]:
    """Internals of each requested layer that has a Mamba mixer (other layers are skipped), from one forward.
    Only those layers reach the capture: every Nemotron-H block's module is called ``mixer``."""
    mamba = set(_adapter(loaded).mamba_layers())
    chosen = [i for i in check_layers(loaded, layers) if i in mamba]
    return capture_mamba(loaded, input_ids, chosen) if chosen else {}


def hybrid_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                        ) -> dict[int, torch.Tensor]:
    """[T, T] softmax maps of the attention layers among ``layers``, reduced over heads (one eager forward)."""
    adapter = _adapter(loaded)
    attention = set(adapter.attention_layers())
    paths = {i: "self_attn" if getattr(adapter.block(i), "self_attn", None) is not None else "mixer"
             for i in check_layers(loaded, layers) if i in attention}
    return attention_module_maps(loaded, input_ids, paths, reduction) if paths else {}


_HYBRID_OPS: FamilyOps[MambaInternals] = replace(
    MAMBA_OPS, implicit_layers=HybridAdapter.mamba_layers, capture=capture_hybrid, softmax_maps=hybrid_softmax_maps)
JAMBA_OPS = GRANITE_OPS = NEMOTRON_H_OPS = _HYBRID_OPS
