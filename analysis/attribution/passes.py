"""The passes of the all-layer IG fast path: every row joins the batch at its own layer.

Scaling layer l's neurons at the answer position changes nothing below layer l, so a row for layer l starts
at block l from the clean row's input there (:meth:`ModelAdapter.continue_joined`) and a pass runs each block
once for all the rows that have reached it. Two kinds of pass, both after the prompt's prefix ran once:

* :func:`clean_pass` (no gradients): the clean row, which yields each layer's site activation ``a_l`` and
  block input, and for each layer rows at chosen alphas, which yield ``F(alpha a_l)``: F(0) for completeness
  and F at the adaptive rule's interval ends (analysis/attribution/adaptive.py);
* :func:`gradient_pass`: rows at each layer's quadrature nodes, whose scaled activations are the leaves of one
  backward pass: ``dF/d(alpha a_l)`` for every node at once.

A pass whose rows would pass too many blocks in all (memory: each row's keys and values per block) is split
into several passes over consecutive layers (:func:`plan_passes`).

"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from analysis.attribution.targets import AttributionInput
from analysis.errors import PrunescopeError
from analysis.models.adapters.base import PrefixState
from analysis.models.loader import LoadedModel


@dataclass
class Prompt:
    """One prepared prompt's prefix run and its clean continuation, shared by its passes."""

    item: AttributionInput
    prefix: PrefixState
    ids: torch.Tensor  # the continuation tokens [1, c]
    acts: list[torch.Tensor]  # per layer: its clean site activation at the last position [neurons_l]
    block_inputs: list[torch.Tensor]  # per layer: the clean row's block input [1, c, H]
    f_clean: float


def plan_passes(rows: Mapping[int, int], max_rows: int) -> list[dict[int, int]]:
    """Split ``rows`` (layer -> rows joining there) into passes over consecutive layers of at most
    ``max_rows`` rows each (memory: a row keeps its keys and values in every block it passes); a layer's rows
    stay in one pass, however many."""
    passes: list[dict[int, int]] = []
    current: dict[int, int] = {}
    for layer in sorted(rows):
        if current and sum(current.values()) + rows[layer] > max_rows:
            passes.append(current)
            current = {}
        current[layer] = rows[layer]
    return passes + ([current] if current else [])


def _joined_rows(activation: torch.Tensor, c: int) -> torch.Tensor:
    """A site activation as [rows, c, neurons] (OPT flattens batch and time)."""
    return activation.reshape(-1, c, activation.shape[-1])


def prepare(loaded: LoadedModel, item: AttributionInput) -> tuple[PrefixState, torch.Tensor]:
    adapter = loaded.adapter
    ids = torch.tensor([item.input_ids], device=loaded.device)
    c = adapter.continuation_tokens
    if ids.shape[1] <= c:
        raise PrunescopeError(f"prompt {item.text!r} is too short to attribute (needs more than {c} tokens)")
    with torch.no_grad():
        return adapter.run_prefix(ids[:, :-c]), ids[:, -c:]


def clean_pass(loaded: LoadedModel, item: AttributionInput, probes: Mapping[int, torch.Tensor],
               budget: int) -> tuple[Prompt, dict[int, torch.Tensor]]:
    """The prompt's clean run and, for each ``layer: alphas`` of ``probes``, F with that layer's site at the
    last position scaled by each alpha (float64 [len(alphas)] per layer), without gradients."""
    adapter, c = loaded.adapter, loaded.adapter.continuation_tokens
    prefix, ids = prepare(loaded, item)
    acts: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    first = True
    for joins in plan_passes({layer: len(a) for layer, a in probes.items()}, budget) or [{}]:
        def site(layer: int, activation: torch.Tensor, joins: dict[int, int] = joins) -> torch.Tensor | None:
            rows = _joined_rows(activation, c)
            acts.setdefault(layer, rows[0, -1].detach().clone())
            count = joins.get(layer, 0)
            if not count:
                return None
            out = rows.clone()
            out[-count:, -1] = probes[layer].to(out.dtype)[:, None] * acts[layer]
            return out.reshape(activation.shape)

        def keep_input(layer: int, hidden: torch.Tensor) -> None:
            inputs.setdefault(layer, hidden[:1].detach().clone())

        with torch.no_grad(), adapter.hook_sites(site), adapter.hook_block_inputs(keep_input):
            if joins:  # the first pass also runs the clean row through every block, from layer 0
                start = 0 if first else min(joins)
                hidden = adapter.continue_joined(prefix, ids, joins, start, None if first else inputs[start])
            else:
                hidden = adapter.continue_from(prefix, ids, rows=1)
            f = item.target.value(loaded, hidden[:, -1]).double().cpu()
        if first:
            f_clean = float(f[0])
            first = False
        offset = 1
        for layer in sorted(joins):
            values[layer] = f[offset:offset + joins[layer]]
            offset += joins[layer]
    prompt = Prompt(item, prefix, ids, [acts[layer] for layer in range(adapter.n_layers)],
                    [inputs[layer] for layer in range(adapter.n_layers)], f_clean)
    return prompt, values


def gradient_pass(loaded: LoadedModel, prompt: Prompt, nodes: Mapping[int, torch.Tensor],
                  budget: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each ``layer: alphas`` of ``nodes``: (dF/d(alpha a_l) [len(alphas), neurons] in float32, F at each
    alpha in float64), from one backward pass per planned pass."""
    adapter, c = loaded.adapter, loaded.adapter.continuation_tokens
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for joins in plan_passes({layer: len(a) for layer, a in nodes.items() if len(a)}, budget):
        leaves = {layer: (nodes[layer].to(device=loaded.device, dtype=loaded.dtype)[:, None]
                          * prompt.acts[layer][None]).requires_grad_(True) for layer in joins}

        def site(layer: int, activation: torch.Tensor, leaves: dict = leaves) -> torch.Tensor | None:
            if layer not in leaves:
                return None
            rows = _joined_rows(activation, c).clone()
            rows[-leaves[layer].shape[0]:, -1] = leaves[layer]
            return rows.reshape(activation.shape)

        start = min(joins)
        with torch.enable_grad(), adapter.hook_sites(site, layers=sorted(joins)):
            hidden = adapter.continue_joined(prompt.prefix, prompt.ids, joins, start, prompt.block_inputs[start])
            f = prompt.item.target.value(loaded, hidden[1:, -1])
            grads = torch.autograd.grad(f.sum(), [leaves[layer] for layer in sorted(joins)])
        values, offset = f.detach().double().cpu(), 0
        for layer, grad in zip(sorted(joins), grads):
            out[layer] = (grad.float(), values[offset:offset + joins[layer]])
            offset += joins[layer]
    return out
