"""Summaries of neuron attributions for display: the top neurons and the prompt tokens where they fire."""

from __future__ import annotations

import pandas as pd
import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.attribution.ragged import selectable
from analysis.models.loader import LoadedModel, decode_text


def top_neurons(loaded: LoadedModel, result: NeuronIGResult, k: int = 20) -> pd.DataFrame:
    """The ``k`` neurons with the largest mean |attribution|, each with the prompt token (over all attributed
    prompts and positions) where its activation is largest."""
    scores = result.scores
    flat = selectable(scores.abs()).flatten().topk(min(k, sum(result.widths))).indices
    picks = [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat]
    best: dict[tuple[int, int], tuple[float, str]] = {}
    wanted: dict[int, list[int]] = {}
    for layer, neuron in picks:
        wanted.setdefault(layer, []).append(neuron)
    with torch.no_grad():
        for item in result.inputs:
            ids = list(item.input_ids)
            seen: dict[int, torch.Tensor] = {}
            def keep(layer: int, a: torch.Tensor, seen: dict = seen, length: int = len(ids)) -> None:
                seen[layer] = a.reshape(length, -1)

            with loaded.adapter.hook_sites(keep, layers=sorted(wanted)):  # holds the lock, one prompt at a time
                loaded.adapter.base_model(input_ids=torch.tensor([ids], device=loaded.device), use_cache=False)
            for layer, neurons in wanted.items():
                values, positions = seen[layer][:, neurons].max(dim=0)
                for neuron, value, position in zip(neurons, values.tolist(), positions.tolist()):
                    if (layer, neuron) not in best or value > best[(layer, neuron)][0]:
                        token = decode_text(loaded.tokenizer, [ids[position]])
                        best[(layer, neuron)] = (value, token)
    return pd.DataFrame([{"layer": layer, "neuron": neuron, "score": float(scores[layer, neuron]),
                          "max_activation": best[(layer, neuron)][0], "fires_most_on": best[(layer, neuron)][1]}
                         for layer, neuron in picks])
