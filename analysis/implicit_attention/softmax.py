"""The transformer family's attention maps: the real softmax probabilities (eager attention), per layer and
head, reduced over heads like the implicit maps are over channels. Transformers have no implicit layers:
:data:`TRANSFORMER_OPS`, the family's entry for the registry (analysis/families.py), has only softmax maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from analysis.errors import PrunescopeError
from analysis.implicit_attention.common import Reduction, check_layers, eager_attention, prompt_ids
from analysis.implicit_attention.ops import FamilyOps, no_layers
from analysis.models.hooks import hook_scope

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded


def softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                 ) -> dict[int, torch.Tensor]:
    """A transformer's [T, T] softmax maps of ``layers``, reduced over heads."""
    probs = softmax_attention(loaded, input_ids)
    return {i: _reduce_heads(probs[i], reduction) for i in layers}


def softmax_attention(loaded: Loaded, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the [heads, T, T] softmax attention probabilities of a transformer (one eager forward)."""
    with eager_attention(loaded), torch.no_grad():
        out = loaded.model(input_ids=input_ids, output_attentions=True, use_cache=False)
    if not out.attentions or out.attentions[0] is None:
        raise PrunescopeError(f"{loaded.model.config.model_type} does not return attention probabilities")
    return [a[0].float() for a in out.attentions]


def attention_module_maps(loaded: Loaded, input_ids: torch.Tensor, attention: dict[int, str], reduction: Reduction
                          ) -> dict[int, torch.Tensor]:
    """[T, T] softmax maps, reduced over heads, of the layers in ``attention`` (layer -> path of its attention
    module in the block, which returns ``(output, probabilities)``), from one eager forward with hooks. For
    hybrids, whose ``output_attentions`` lists only their attention layers."""
    chosen = {i: attention[i] for i in check_layers(loaded, attention) if i in attention}
    ids = prompt_ids(input_ids, loaded.device)
    maps: dict[int, torch.Tensor] = {}

    def hook(layer):
        def fn(_module, _args, output):
            maps[layer] = _reduce_heads(output[1][0].detach().float(), reduction)
        return fn

    with eager_attention(loaded), hook_scope(loaded.model) as add, torch.no_grad():
        for i, path in chosen.items():
            add(loaded.adapter.block(i).get_submodule(path), hook(i))
        loaded.model(input_ids=ids, use_cache=False)
    return maps


def _reduce_heads(probs: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    selected = probs[reduction.selected(probs.shape[0])]
    return (selected.abs() if reduction.kind == "absmean" else selected).mean(dim=0)


TRANSFORMER_OPS: FamilyOps[Any] = FamilyOps(forms=("softmax",), implicit_layers=no_layers, softmax_maps=softmax_maps)
