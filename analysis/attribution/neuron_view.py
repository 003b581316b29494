"""One neuron up close: its IG on every attributed prompt, its activation over each prompt's tokens, and the
prompts where it fires most (the neuron view of the attribution page, after CircuitsVis' and LIT's).

Everything comes from a finished :class:`NeuronIGResult` plus one hooked forward pass per prompt (the prompts
the result attributed, so the view never draws new ones): the activation is the neuron site's value
(:class:`analysis.models.adapters.base.NeuronSite`), the quantity IG scaled and a mask zeroes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel, decode_text

_NEURON = re.compile(r"^\s*(\d{1,6})\s*[:/,. ]\s*(\d{1,7})\s*$")


def parse_neuron(text: str, counts: list[int]) -> tuple[int, int] | None:
    """'layer:neuron' (e.g. '12:345') -> (12, 345); '' -> None. A one-line error for text that is not a
    neuron of this model (counts: neurons per layer)."""
    text = (text or "").strip()
    if not text:
        return None
    shown = text if len(text) <= 20 else text[:20] + "…"
    match = _NEURON.match(text)
    if match is None:
        raise PrunescopeError(f"neuron {shown!r} is not 'layer:neuron' (e.g. 12:345)")
    layer, neuron = int(match.group(1)), int(match.group(2))
    if layer >= len(counts):
        raise PrunescopeError(f"neuron {shown!r}: the model has layers 0-{len(counts) - 1}")
    if neuron >= counts[layer]:
        raise PrunescopeError(f"neuron {shown!r}: layer {layer} has neurons 0-{counts[layer] - 1}")
    return layer, neuron


@dataclass(frozen=True)
class NeuronProfile:
    """One neuron over the N prompts of an attribution result. ``ig[p]``: its IG on prompt p (its share of
    F(a) - F(0)); ``activations[p][t]``: its activation at token t of prompt p; ``tokens[p]``: those tokens'
    text. The answer position is each prompt's last token."""

    layer: int
    neuron: int
    ig: list[float]
    activations: list[list[float]]
    tokens: list[list[str]]
    texts: list[str]

    @property
    def peak(self) -> list[float]:
        """Each prompt's largest activation over its tokens."""
        return [max(row) for row in self.activations]

    @property
    def at_answer(self) -> list[float]:
        """Each prompt's activation at the answer position (its last token), where IG is read."""
        return [row[-1] for row in self.activations]

    def top_prompts(self, k: int = 10) -> list[dict]:
        """The ``k`` prompts where the neuron's peak activation is largest, largest first: prompt index, peak,
        the token where it peaks, activation at the answer position, IG on that prompt."""
        peaks = self.peak
        order = sorted(range(len(peaks)), key=lambda p: (-peaks[p], p))[:max(0, k)]
        rows = []
        for p in order:
            at = max(range(len(self.activations[p])), key=lambda t: (self.activations[p][t], -t))
            rows.append({"prompt": p, "peak": peaks[p], "peak_token": f"{at}:{self.tokens[p][at]}",
                         "at_answer": self.activations[p][-1], "ig": self.ig[p]})
        return rows


def neuron_profile(loaded: LoadedModel, result: NeuronIGResult, layer: int, neuron: int,
                   max_prompts: int | None = None) -> NeuronProfile:
    """The view of neuron ``neuron`` of layer ``layer`` over ``result``'s prompts (the first ``max_prompts``).

    One forward pass per prompt with a hook at the layer's neuron site, each under the model's lock
    (:meth:`ModelAdapter.hook_sites`), so a shared model computes what it would alone.

    Raises:
        PrunescopeError: a layer or neuron the model does not have.
    """
    counts = loaded.adapter.neuron_counts()
    if not 0 <= layer < len(counts) or not 0 <= neuron < counts[layer]:
        raise PrunescopeError(f"neuron {layer}:{neuron} is not in this model (layers 0-{len(counts) - 1})")
    inputs = result.inputs[:max_prompts] if max_prompts else result.inputs
    activations: list[list[float]] = []
    tokens: list[list[str]] = []
    seen: list[torch.Tensor] = []

    def keep(_: int, site: torch.Tensor) -> None:
        seen.append(site[0, :, neuron].detach().float().cpu())

    with torch.no_grad():
        for item in inputs:
            ids = list(item.input_ids)
            seen.clear()
            with loaded.adapter.hook_sites(keep, layers=[layer]):
                loaded.adapter.base_model(input_ids=torch.tensor([ids], device=loaded.device), use_cache=False)
            activations.append(seen[0].reshape(len(ids)).tolist())
            tokens.append([decode_text(loaded.tokenizer, [token]) for token in ids])
    ig = result.per_prompt[:len(inputs), layer, neuron].double().tolist()
    return NeuronProfile(layer, neuron, ig, activations, tokens, [item.text for item in inputs])
