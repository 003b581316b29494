"""The adapter interface: layers, neuron sites, hooks, and prefix/continuation runs.

A *neuron site* is the activation tensor whose channels are a layer's "neurons" (ARCHITECTURE.md):
the MLP intermediate activation for transformers and Griffin, the gated inner channels entering
``out_proj`` for Mamba/Mamba-2, the squared-ReLU key activation entering ``value`` for RWKV-4.
Each site is named by a module path and whether it is that module's input or output, so every feature
(masks, capture, attribution) goes through the single hook mechanism in :meth:`ModelAdapter.hook_sites`.

*Continuation* (the IG fast path): run a prompt's prefix once and keep its cache or recurrent state
(:meth:`run_prefix`), then run the last token(s) for many rows at once, starting at any layer with a given
block input (:meth:`continue_from`). Layers below the start layer are not run at all: the base model's
block list is temporarily truncated, so the model's own forward still builds masks, positions and caches.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import torch
from torch import nn

from analysis.models.hooks import hook_scope, model_lock

if TYPE_CHECKING:
    import threading

    from transformers import PreTrainedModel

SiteFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]
SiteIO = Literal["input", "output"]  # which tensor of the site module is the neuron activation
SITE_IOS: tuple[SiteIO, ...] = get_args(SiteIO)


@dataclass(frozen=True)
class Layout:
    """Where a model type keeps its blocks and its neuron site (paths relative to a block)."""

    layers: str
    site: str
    io: SiteIO  # the site module's input or output
    width_from: str  # a module whose input width is the neuron count


@dataclass(frozen=True)
class NeuronSite:
    layer: int
    path: str
    io: SiteIO
    width: int


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

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.model_type = model.config.model_type
        self.layout = self.layouts[self.model_type]
        parent_path, _, self._layers_attr = self.layout.layers.rpartition(".")
        self._layers_parent = model.get_submodule(parent_path)
        self._blocks = list(getattr(self._layers_parent, self._layers_attr))
        self._sites = [self._make_site(i) for i in range(len(self._blocks))]
        self._base_params = set(inspect.signature(self.base_model.forward).parameters)

    def _make_site(self, layer: int) -> NeuronSite:
        width_module = self._blocks[layer].get_submodule(self.layout.width_from)
        width = getattr(width_module, "in_features", None) or width_module.weight.shape[0]  # GPT-2 Conv1D
        return NeuronSite(layer, f"{self.layout.layers}.{layer}.{self.layout.site}", self.layout.io, int(width))

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
        return self._blocks[layer].get_submodule(self.layout.site)

    def neuron_counts(self) -> list[int]:
        return [s.width for s in self._sites]

    def max_context(self) -> int | None:
        """Longest prompt in tokens the model accepts, or None when only memory limits it."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return None

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
                    add(self.site_module(layer), _pre_hook(fn, layer), pre=True)
                else:
                    add(self.site_module(layer), _post_hook(fn, layer))
            yield

    @contextmanager
    def hook_block_inputs(self, fn: SiteFn, layers: Iterable[int] | None = None) -> Iterator[None]:
        """Like :meth:`hook_sites`, for the residual-stream input of each block."""
        with hook_scope(self.model) as add:
            for layer in range(self.n_layers) if layers is None else layers:
                add(self._blocks[layer], _block_hook(fn, layer), pre=True, with_kwargs=True)
            yield

    # -- continuation (IG fast path) -------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """LM-head logits of final hidden states, for all tokens or only ``token_ids`` (cheaper)."""
        head = self.model.get_output_embeddings()
        weight = head.weight if token_ids is None else head.weight[token_ids]
        bias = getattr(head, "bias", None)
        if bias is not None and token_ids is not None:
            bias = bias[token_ids]
        out = nn.functional.linear(hidden.to(weight.dtype), weight, bias)  # Mamba's norm returns float32 in bf16
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return out if not cap else torch.tanh(out / cap) * cap

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

    def _repeat_cache(self, cache, rows: int):
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


def repeat_cache(cache, rows: int):
    """A deep copy of a transformers cache with every cached tensor repeated ``rows`` times on the batch axis
    (key/value layers and linear-attention conv/recurrent states alike)."""
    cache = copy.deepcopy(cache)
    if rows == 1:
        return cache
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                setattr(layer, name, tensor.repeat_interleave(rows, dim=0))
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None)
            if isinstance(states, dict):
                for key, tensor in states.items():
                    if isinstance(tensor, torch.Tensor):
                        states[key] = tensor.repeat_interleave(rows, dim=0)
    return cache


def _pre_hook(fn: SiteFn, layer: int):
    def hook(module, args):
        replaced = fn(layer, args[0])
        return None if replaced is None else (replaced, *args[1:])
    return hook


def _post_hook(fn: SiteFn, layer: int):
    def hook(module, args, output):
        return fn(layer, output)
    return hook


def _block_hook(fn: SiteFn, layer: int):
    def hook(module, args, kwargs):
        if args:
            replaced = fn(layer, args[0])
            return None if replaced is None else ((replaced, *args[1:]), kwargs)
        key = next(k for k in ("hidden_states", "activations", "hidden") if k in kwargs)
        replaced = fn(layer, kwargs[key])
        return None if replaced is None else (args, {**kwargs, key: replaced})
    return hook
