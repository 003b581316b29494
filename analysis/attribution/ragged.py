"""Layers of different widths (Jamba's dense MLPs of I channels beside MoE layers of E x I; Nemotron-H's mixer,
attention, MLP and MoE blocks): per-layer neuron tensors padded to the widest layer with NaN, which marks a
neuron the layer does not have. Selections skip it (:func:`selectable`), sums read it as 0 (:func:`zero_missing`);
where every layer has the same width each helper returns exactly what it would have without padding in mind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from analysis.models.loader import LoadedModel


def ragged_meta(loaded: LoadedModel) -> dict:
    """``{"widths": neurons per layer}`` for a model whose layers differ in width, else nothing (so an
    equal-width result, and its cache entry, is as it always was)."""
    widths = loaded.adapter.neuron_counts()
    return {"widths": list(widths)} if len(set(widths)) > 1 else {}


def stack_layers(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer rows [neurons_l] as [layers, widest]: ``torch.stack`` when every layer has the same width,
    else padded with NaN (a neuron the layer does not have)."""
    width = max(row.shape[-1] for row in rows)
    if all(row.shape[-1] == width for row in rows):
        return torch.stack(list(rows))
    out = torch.full((len(rows), width), float("nan"), dtype=rows[0].dtype, device=rows[0].device)
    for layer, row in enumerate(rows):
        out[layer, :row.shape[-1]] = row
    return out


def zero_missing(values: torch.Tensor) -> torch.Tensor:
    """``values`` with the padding (NaN) of narrower layers read as 0, for sums; the same tensor's values, and
    so the same sums bit for bit, where nothing is padded."""
    return torch.where(values.isnan(), 0.0, values)


def selectable(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` for a top-k: padding (NaN) becomes -inf, so no neuron a layer lacks is ever picked while a
    real one is left (callers cap k at the real count); unchanged where nothing is padded."""
    return scores.masked_fill(scores.isnan(), float("-inf")) if scores.isnan().any() else scores
