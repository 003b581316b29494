"""Every layer's attention one head (or channel group) at a time: the layers x heads grid of maps that
CircuitsVis and the LLM transparency tool show, for every family.

A softmax layer has one map per head. An implicit layer has one matrix per channel (Mamba-1, RWKV, Griffin)
or per head (Mamba-2's s6 form); up to ``max_heads`` each is its own cell, more are averaged in
``groups`` contiguous groups (Mamba-130m's 1536 channels as 16 groups of 96). Each cell's map is exactly
what the attention view shows with the reduction ``channels:<its channels>`` (``AttentionMaps.reduce``), so a
cell opens as the full map by that reduction.

The attention sink: most heads put their weight on the first token (``<bos>``); :func:`without_sink` drops
its row and column so that a cell's colours show where the rest goes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from analysis.attention import IMPLICIT, POSITION_WISE, AttentionMaps, LayerKind, attention_maps
from analysis.errors import PrunescopeError
from analysis.families import Form, family_of
from analysis.implicit_attention.common import Reduction
from analysis.models.loader import LoadedModel

MAX_HEADS = 32  # a layer with at most this many heads or channels shows each one
GROUPS = 16  # ...else this many contiguous groups


@dataclass
class HeadGrid:
    """``cells[k][h]`` is layer ``layers[k]``'s map [T, T] of head (or channel group) ``h``; ``reductions[k][h]``
    the reduction that gives it (``channels:0-95``), ``labels[k][h]`` its name (``head 3``, ``channels 0-95``)."""

    cells: list[list[torch.Tensor]]
    reductions: list[list[str]]
    labels: list[list[str]]
    layers: list[int]
    kinds: list[LayerKind]
    tokens: list[str]
    form: Form


def head_grid(loaded: LoadedModel, text: str, form: Form | None = None, layers: list[int] | None = None,
              max_heads: int = MAX_HEADS, groups: int = GROUPS) -> HeadGrid:
    """The maps of every head (softmax layers) or channel / channel group (implicit layers) of ``layers``.

    One :func:`~analysis.attention.attention_maps` call per head or group, over every layer with that many
    matrices (a transformer: one forward per head; an implicit family: one capture per group, each computing
    only its channels, so the whole grid costs about one full ``mean`` map per layer plus the captures).

    Raises:
        PrunescopeError: what :func:`attention_maps` raises (empty or too long text, unknown form, layers).
    """
    overview = attention_maps(loaded, text, form=form, layers=layers)
    counts = _matrix_counts(loaded, overview)
    parts = {layer: _split(n, max_heads, groups) for layer, (n, _) in counts.items()}
    by_parts: dict[tuple[tuple[int, ...], ...], list[int]] = defaultdict(list)
    for layer, split in parts.items():
        by_parts[tuple(split)].append(layer)
    cells: dict[int, list[torch.Tensor]] = defaultdict(list)
    for shared, same in by_parts.items():
        for channels in shared:
            reduction = Reduction("channels", channels).text()
            maps = attention_maps(loaded, text, form=overview.form, reduce=reduction, layers=same)
            for k, layer in enumerate(maps.layers):
                cells[layer].append(maps.attn[k])
    return HeadGrid(
        cells=[cells[layer] for layer in overview.layers],
        reductions=[[Reduction("channels", tuple(p)).text() for p in parts[layer]] for layer in overview.layers],
        labels=[_labels(parts[layer], counts[layer][1]) for layer in overview.layers],
        layers=overview.layers, kinds=overview.kinds, tokens=overview.tokens, form=overview.form)


def without_sink(attn: torch.Tensor, first: int = 1) -> torch.Tensor:
    """The map without its first ``first`` rows and columns (the sink token's): [T, T] -> [T-1, T-1]."""
    if attn.shape[-1] <= first:
        raise PrunescopeError("the text has no token after the one left out as the sink")
    return attn[..., first:, first:]


def _matrix_counts(loaded: LoadedModel, overview: AttentionMaps) -> dict[int, tuple[int, str]]:
    """Layer -> how many matrices it has and what one is: heads of a softmax layer (the text config's
    attention heads); an implicit layer's own count, "head" where a matrix spans several channels (Mamba-2's
    s6 form), else "channel"; a block that mixes no tokens (Nemotron-H's MLP and MoE): one identity "map"."""
    kinds = dict(zip(overview.layers, overview.kinds, strict=True))
    counts: dict[int, tuple[int, str]] = {layer: (1, "map") for layer, kind in kinds.items() if kind == POSITION_WISE}
    implicit = [layer for layer, kind in kinds.items() if kind == IMPLICIT]
    if implicit:
        ids = torch.tensor([overview.input_ids], device=loaded.device)
        entry = family_of(loaded)
        internals, form = entry.require("capture")(loaded, ids, implicit), entry.implicit_form(overview.form)
        for layer in implicit:  # a hybrid's implicit layers under "softmax" are shown in its implicit form
            n = internals[layer].n_matrices(form)
            counts[layer] = (n, "head" if n < internals[layer].n_channels else "channel")
    heads = getattr(loaded.model.config.get_text_config(), "num_attention_heads", None)
    for layer in set(overview.layers) - set(counts):
        if not heads:
            raise PrunescopeError(f"{loaded.name}'s config names no attention heads for layer {layer}")
        counts[layer] = (int(heads), "head")
    return counts


def _split(n: int, max_heads: int, groups: int) -> list[tuple[int, ...]]:
    """Each index alone up to ``max_heads``; else ``groups`` contiguous groups of (nearly) equal size."""
    if n <= max_heads:
        return [(i,) for i in range(n)]
    bounds = [round(g * n / groups) for g in range(groups + 1)]
    return [tuple(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _labels(parts: list[tuple[int, ...]], unit: str) -> list[str]:
    return [f"{unit} {p[0]}" if len(p) == 1 else f"{unit}s {p[0]}-{p[-1]}" for p in parts]
