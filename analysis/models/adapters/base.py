"""The adapter interface: layers, neuron sites, hooks, and prefix/continuation runs.

A *neuron site* is the activation tensor whose channels are a layer's "neurons" (docs/architecture.md):
the MLP intermediate activation for transformers and Griffin, the gated inner channels entering
``out_proj`` for Mamba/Mamba-2, the squared-ReLU key activation entering ``value`` for RWKV-4, the routed
experts' intermediate channels of a MoE layer (analysis/models/experts.py). Each site is named by a module
path and whether it is that module's input or output, so every feature (masks, capture, attribution) goes
through the single hook mechanism in :meth:`ModelAdapter.hook_sites`. Hybrids whose blocks differ (a Mamba,
attention, MLP or MoE block; a dense or sparse feed-forward) list further candidate sites in their
:class:`Layout`: each block takes the first one it has, and its site carries that candidate's ``kind``.

*Continuation* (the IG fast path): run a prompt's prefix once and keep its cache or recurrent state
(:meth:`run_prefix`), then run the last token(s) for many rows at once, starting at any layer with a given
block input (:meth:`continue_from`). Layers below the start layer are not run at all: the base model's
block list is temporarily truncated, so the model's own forward still builds masks, positions and caches.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from analysis.errors import UnsupportedArchitectureError
from analysis.models.adapters.sites import (
    SITE_IOS,
    Layout,
    NeuronSite,
    SiteChoice,
    SiteFn,
    SiteIO,
    SiteNorm,
    block_input_hook,
    site_post_hook,
    site_pre_hook,
)
from analysis.models.experts import install_expert_neurons
from analysis.models.hooks import hook_scope, model_lock

if TYPE_CHECKING:
    import threading

    from transformers import PreTrainedModel

# The site descriptions live in sites.py; adapters and analysis modules import them from here too.
__all__ = ["SITE_IOS", "Layout", "ModelAdapter", "NeuronSite", "PrefixState", "SiteChoice", "SiteFn", "SiteIO",
           "SiteNorm", "repeat_cache"]


@dataclass
class PrefixState:
    """A prompt prefix already run through the model: its length and its (batch-1) cache or state."""

    length: int
    cache: Any


class ModelAdapter:
    """What prunescope needs to know about one architecture family."""

    family: str = ""
    layouts: dict[str, Layout] = {}
    supports_left_padding: bool = True  # does a left-padded batch reproduce unpadded outputs exactly?
    max_decode_batch: int | None = None  # cap on sequences decoded together (None: no cap)
    continuation_tokens: int = 1  # tokens re-run after the prefix (the last one is the answer position)
    state_updated_in_place: bool = False  # does a cached step overwrite state tensors autograd still needs?
    indexes_layer_types: bool = False  # does the forward read config.layer_types[i] for its i-th block?
    supports_joins: bool = True  # can each layer's cache hold its own batch (rows joining at their own layer)?
    batch_invariant: bool = True  # does a row compute the same bits whatever other rows share its batch?

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.model_type = model.config.model_type
        self.layout = self.layouts[self.model_type]
        parent_path, _, self._layers_attr = self.layout.layers.rpartition(".")
        self._layers_parent = model.get_submodule(parent_path)
        self._blocks = list(getattr(self._layers_parent, self._layers_attr))
        install_expert_neurons(model)  # MoE layers: their experts' channels become a hookable site
        self._sites = [self._make_site(i) for i in range(len(self._blocks))]
        self._base_params = set(inspect.signature(self.base_model.forward).parameters)

    def _make_site(self, layer: int) -> NeuronSite:
        block = self._blocks[layer]
        choice = next((c for c in self.layout.choices if _has(block, c.path) and _has(block, c.width_from)), None)
        if choice is None:
            raise UnsupportedArchitectureError(f"{self.model_type} block {layer} ({type(block).__name__}) has none "
                                               f"of the neuron sites {[c.path for c in self.layout.choices]}")
        width_module = block.get_submodule(choice.width_from)
        width = getattr(width_module, "in_features", None) or width_module.weight.shape[0]  # GPT-2 Conv1D
        return NeuronSite(layer, f"{self.layout.layers}.{layer}.{choice.path}", choice.io, int(width), choice.kind)

    @property
    def n_layers(self) -> int:
        return len(self._sites)

    @property
    def base_model(self) -> PreTrainedModel:
        """The model without its LM head (returns the final, normalised hidden states): a transformers model
        itself (``LlamaModel``, ``MambaModel``, ...), typed by transformers as a bare module."""
        return cast("PreTrainedModel", self.model.base_model)

    @property
    def lock(self) -> threading.RLock:
        """The model's re-entrant hook lock (the same object as its ``LoadedModel.lock``)."""
        return model_lock(self.model)

    def block(self, layer: int) -> nn.Module:
        return self._blocks[layer]

    def site(self, layer: int) -> NeuronSite:
        return self._sites[layer]

    def site_module(self, layer: int) -> nn.Module:
        prefix = f"{self.layout.layers}.{layer}."  # the block's own path: the block list may be cut meanwhile
        return self._blocks[layer].get_submodule(self._sites[layer].path.removeprefix(prefix))

    def neuron_counts(self) -> list[int]:
        return [s.width for s in self._sites]

    def position_wise_layers(self) -> list[int]:
        """Layers whose block mixes no tokens (an MLP or MoE block of its own, as in Nemotron-H): their attention
        map is the identity. None in families whose every block has attention or a recurrence."""
        return []

    def site_norm(self, layer: int) -> SiteNorm | None:
        """The norm right after the layer's neurons, where the family has one (transformers: Gemma 2/3)."""
        return None

    def site_kinds(self) -> list[str]:
        """Each layer's kind of neuron site ("mlp", "moe", "mixer", "attention-out", ...), for labels."""
        return [s.kind for s in self._sites]

    def max_context(self) -> int | None:
        """Longest prompt in tokens the model accepts, or None when only memory limits it."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return None

    def gradient_context(self) -> int | None:
        """Longest prompt a gradient can flow through in one forward (None: only memory limits it)."""
        return self.max_context()

    def layer_chunk_multiple(self) -> int:
        """Continuations may only start at layers that are multiples of this."""
        return 1

    @contextmanager
    def hook_sites(self, fn: SiteFn, layers: Iterable[int] | None = None) -> Iterator[None]:
        """Call ``fn(layer, activation)`` at each site during forward passes; a returned tensor replaces it.

        Holds the model's lock while open; hooks are removed on exit, so the model afterwards computes exactly
        what it did before.
        """
        with hook_scope(self.model) as add:
            for layer in range(self.n_layers) if layers is None else layers:
                if self._sites[layer].io == "input":
                    add(self.site_module(layer), site_pre_hook(fn, layer), pre=True)
                else:
                    add(self.site_module(layer), site_post_hook(fn, layer))
            yield

    @contextmanager
    def hook_block_inputs(self, fn: SiteFn, layers: Iterable[int] | None = None) -> Iterator[None]:
        """Like :meth:`hook_sites`, for the residual-stream input of each block."""
        with hook_scope(self.model) as add:
            for layer in range(self.n_layers) if layers is None else layers:
                add(self._blocks[layer], block_input_hook(fn, layer), pre=True, with_kwargs=True)
            yield

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``input_ids`` as the model's forward would feed them to its first block when
        given ``inputs_embeds`` instead (Falcon-H1 scales them in its forward only for ``input_ids``)."""
        return self.model.get_input_embeddings()(input_ids)

    # -- continuation (IG fast path) -------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None,
               linear_cap: bool = False) -> torch.Tensor:
        """LM-head logits of final hidden states, for all tokens or only ``token_ids`` (cheaper). A soft cap
        ``c tanh(x / c)`` is applied; with ``linear_cap`` as ``x`` times its ratio detached (the same values,
        conservative for LRP)."""
        head = self.model.get_output_embeddings()
        weight = head.weight if token_ids is None else head.weight[token_ids]
        bias = getattr(head, "bias", None)
        if bias is not None and token_ids is not None:
            bias = bias[token_ids]
        out = nn.functional.linear(hidden.to(weight.dtype), weight, bias)  # Mamba's norm returns float32 in bf16
        cap = self.logit_soft_cap()
        if not cap:
            return out
        capped = torch.tanh(out / cap) * cap
        if not linear_cap:
            return capped
        return out * torch.where(out == 0, 1.0, capped / torch.where(out == 0, 1.0, out)).detach()

    def logit_soft_cap(self) -> float | None:
        """The final logits' soft cap c (``c tanh(x / c)``), or None."""
        return getattr(self.model.config, "final_logit_softcapping", None)

    def run_prefix(self, prefix_ids: torch.Tensor) -> PrefixState:
        """Run ``prefix_ids`` [1, P] once and keep what continuing after it needs."""
        with self.lock:
            out = self.base_model(input_ids=prefix_ids, use_cache=True, **self._prefix_kwargs(prefix_ids))
        return PrefixState(prefix_ids.shape[1], self._cache_from(out))

    def continue_from(self, prefix: PrefixState, ids: torch.Tensor, rows: int, start_layer: int = 0,
                      block_input: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [rows, c, H] of ``ids`` [1, c] run after ``prefix`` for ``rows`` copies.

        With ``start_layer`` > 0 the blocks below it are skipped and ``block_input`` [rows, c, H] is fed to
        block ``start_layer`` instead (it must be what that block would have received).
        """
        if start_layer % self.layer_chunk_multiple():
            raise ValueError(f"continuations of {self.model_type} must start at a multiple of "
                             f"{self.layer_chunk_multiple()} layers")
        if start_layer and block_input is None:
            raise ValueError("block_input is needed when start_layer > 0")
        with self.lock:  # the block list is cut and (Griffin) block states set: no other thread may run meanwhile
            cache = self._repeat_cache(prefix.cache, rows)
            kwargs = self._continue_kwargs(cache, prefix.length, ids.shape[1], rows, ids.device)
            with self._truncated(start_layer), self._fed(start_layer, block_input), self._saved_tensors_copied():
                out = self.base_model(input_ids=ids.expand(rows, -1), use_cache=True, **kwargs)
        return out.last_hidden_state

    def continue_joined(self, prefix: PrefixState, ids: torch.Tensor, joins: Mapping[int, int], start_layer: int = 0,
                        block_input: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [1 + sum(joins), c, H]: one clean row of ``ids`` [1, c] run after ``prefix`` from
        block ``start_layer`` (fed ``block_input`` [1, c, H] there when > 0), and for each ``layer: r`` of
        ``joins`` r rows that join the batch at block ``layer`` as copies of the clean row's input there. A
        row skips every block below its own layer, where it would only repeat the clean row; a site hook at
        layer l sees the rows joining at l last in its batch. Rows come out clean first, then by layer.

        Families whose state cannot hold a different batch per layer (``supports_joins = False``: RWKV keeps
        one stacked state) run every row from ``start_layer``, with the same result."""
        if not joins or min(joins) < start_layer or any(r < 0 for r in joins.values()):
            raise ValueError(f"rows must join at or above the start layer {start_layer}: {dict(joins)}")
        if start_layer and block_input is None:
            raise ValueError("block_input is needed when start_layer > 0")
        if not self.supports_joins:
            return self._joined_from_start(prefix, ids, joins, start_layer, block_input)
        rows_at, total = [], 1  # rows through each block: the clean row and every row joined at or below it
        for layer in range(self.n_layers):
            total += joins.get(layer, 0)
            rows_at.append(total)

        def join(layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
            count = joins.get(layer, 0)
            return torch.cat([hidden, hidden[:1].expand(count, *hidden.shape[1:])]) if count else None

        with self.lock:  # block list cut, cache and (Griffin) block states per layer: no other thread meanwhile
            kwargs = self._continue_kwargs(self._repeat_cache(prefix.cache, rows_at), prefix.length, ids.shape[1],
                                           1, ids.device)
            with self._truncated(start_layer), self._fed(start_layer, block_input), self._saved_tensors_copied(), \
                    self.hook_block_inputs(join, layers=sorted(joins)):
                out = self.base_model(input_ids=ids, use_cache=True, **kwargs)
        return out.last_hidden_state

    def _joined_from_start(self, prefix: PrefixState, ids: torch.Tensor, joins: Mapping[int, int],
                           start_layer: int, block_input: torch.Tensor | None) -> torch.Tensor:
        """:meth:`continue_joined` for a family without per-layer batches: every row runs from ``start_layer``
        (rounded down to a start the family allows, where the clean block input is not known, from layer 0)
        and the rows of a layer are moved to the end of the batch when its block is reached, so site hooks see
        the same layout."""
        start = start_layer - start_layer % self.layer_chunk_multiple()
        feed = block_input if start == start_layer else None
        start = start if feed is not None else 0
        total = 1 + sum(joins.values())
        order = torch.arange(total, device=ids.device)  # batch position -> output row (clean first, then by layer)
        offsets, first = {}, 1
        for layer in sorted(joins):
            offsets[layer], first = first, first + joins[layer]

        def regroup(layer: int, hidden: torch.Tensor) -> torch.Tensor | None:
            count = joins.get(layer, 0)
            if not count:
                return None
            rows = [i for i in range(total) if not offsets[layer] <= int(order[i]) < offsets[layer] + count]
            rows += [i for i in range(total) if offsets[layer] <= int(order[i]) < offsets[layer] + count]
            order.copy_(order[rows])
            return hidden[rows]

        with self.lock, self.hook_block_inputs(regroup, layers=sorted(joins)):
            out = self.continue_from(prefix, ids, total, start, None if feed is None else feed.expand(total, -1, -1))
        return out[torch.argsort(order)]

    def _saved_tensors_copied(self):
        """Under autograd, let backward see state tensors as they were when used, though a cached step then
        overwrites them in place (Mamba's conv/SSM states, RWKV's state): copy what autograd saves."""
        if self.state_updated_in_place and torch.is_grad_enabled():
            return torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda saved: saved)
        return nullcontext()

    def _prefix_kwargs(self, prefix_ids: torch.Tensor) -> dict:
        return {}

    def _cache_from(self, output) -> Any:
        return output.past_key_values

    def _continue_kwargs(self, cache, prefix_len: int, c: int, rows: int, device) -> dict:
        return {"past_key_values": cache}

    def _repeat_cache(self, cache, rows: int | Sequence[int]):
        return repeat_cache(cache, rows)

    def _accepts(self, name: str) -> bool:
        return name in self._base_params

    @contextmanager
    def _truncated(self, start_layer: int) -> Iterator[None]:
        """Run only the blocks from ``start_layer`` on. With ``indexes_layer_types`` (transformers that pick each
        block's attention mask by its position in the loop, ``config.layer_types[i]``: Gemma 2/3's sliding and
        full layers, Qwen, SmolLM3) the list is sliced the same way, so every block keeps its own mask."""
        if not start_layer:
            yield
            return
        config = self.base_model.config
        full, types = getattr(self._layers_parent, self._layers_attr), getattr(config, "layer_types", None)
        sliced = types if self.indexes_layer_types and isinstance(types, list) and len(types) == len(self._blocks) \
            else None  # the full list when it is sliced
        setattr(self._layers_parent, self._layers_attr, nn.ModuleList(self._blocks[start_layer:]))
        if sliced is not None:
            config.layer_types = sliced[start_layer:]
        try:
            yield
        finally:
            setattr(self._layers_parent, self._layers_attr, full)
            if sliced is not None:
                config.layer_types = sliced

    @contextmanager
    def _fed(self, layer: int, block_input: torch.Tensor | None) -> Iterator[None]:
        if block_input is None:
            yield
            return
        with self.hook_block_inputs(lambda _, hidden: block_input.to(hidden.dtype), layers=[layer]):
            yield


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
    except AttributeError:
        return False
    return True


def repeat_cache(cache, rows: int | Sequence[int]):
    """A transformers cache for a continuation of ``rows`` rows (per layer, when a sequence) that leaves
    ``cache`` as it was. The prefix's keys and values are shared, not copied: each layer gets a view expanded
    to its rows (an attention step concatenates them with the new tokens' into a new tensor). Conv and
    recurrent states, which a step overwrites in place, are repeated copies; every layer object and its dicts
    are shallow copies, so the counters a step updates are the copy's."""
    forked = copy.copy(cache)
    forked.layers = []
    for index, layer in enumerate(cache.layers):
        count = rows if isinstance(rows, int) else rows[index]
        twin = copy.copy(layer)
        for name, value in vars(layer).items():
            if name in ("keys", "values") and isinstance(value, torch.Tensor):
                setattr(twin, name, value.expand(count, *value.shape[1:]))
            elif isinstance(value, dict):
                setattr(twin, name, {key: tensor.repeat_interleave(count, dim=0)
                                     if name in ("conv_states", "recurrent_states") and isinstance(tensor, torch.Tensor)
                                     else tensor for key, tensor in value.items()})
        forked.layers.append(twin)
    return forked
