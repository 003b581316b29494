"""One adapter per architecture family: layers, neuron sites, and the hooks that read or edit them.

A *neuron site* is the activation tensor whose channels are a layer's "neurons" (ARCHITECTURE.md):
the MLP intermediate activation for transformers and Griffin, the gated inner channels entering
``out_proj`` for Mamba/Mamba-2, the squared-ReLU key activation entering ``value`` for RWKV-4.
Each site is named by a module path and whether it is that module's input or output, so every feature
(masks, capture, attribution) goes through the single hook mechanism in :meth:`ModelAdapter.hook_sites`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from analysis.errors import UnsupportedArchitectureError

SiteFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Layout:
    """Where a model type keeps its blocks and its neuron site (paths relative to a block)."""

    layers: str
    site: str
    io: str  # "input" or "output" of the site module
    width_from: str  # a module whose input width is the neuron count


@dataclass(frozen=True)
class NeuronSite:
    layer: int
    path: str
    io: str
    width: int


class ModelAdapter:
    """What prunescope needs to know about one architecture family."""

    family: str = ""
    layouts: dict[str, Layout] = {}
    supports_left_padding: bool = True  # does a left-padded batch reproduce unpadded outputs exactly?
    max_decode_batch: int | None = None  # cap on sequences decoded together (None: no cap)

    def __init__(self, model: nn.Module):
        self.model = model
        self.model_type = model.config.model_type
        self.layout = self.layouts[self.model_type]
        self._blocks = model.get_submodule(self.layout.layers)
        self._sites = [self._make_site(i) for i in range(len(self._blocks))]

    def _make_site(self, layer: int) -> NeuronSite:
        prefix = f"{self.layout.layers}.{layer}"
        width_module = self.model.get_submodule(f"{prefix}.{self.layout.width_from}")
        width = getattr(width_module, "in_features", None) or width_module.weight.shape[0]  # GPT-2 Conv1D
        return NeuronSite(layer, f"{prefix}.{self.layout.site}", self.layout.io, int(width))

    @property
    def n_layers(self) -> int:
        return len(self._sites)

    def block(self, layer: int) -> nn.Module:
        return self._blocks[layer]

    def site(self, layer: int) -> NeuronSite:
        return self._sites[layer]

    def neuron_counts(self) -> list[int]:
        return [s.width for s in self._sites]

    def max_context(self) -> int | None:
        """Longest prompt in tokens the model accepts, or None when only memory limits it."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return None

    @contextmanager
    def hook_sites(self, fn: SiteFn, layers: Iterable[int] | None = None) -> Iterator[None]:
        """Call ``fn(layer, activation)`` at each site during forward passes; a returned tensor replaces it.

        Hooks are removed on exit, so the model afterwards computes exactly what it did before.
        """
        handles = []
        try:
            for layer in range(self.n_layers) if layers is None else layers:
                site = self._sites[layer]
                module = self.model.get_submodule(site.path)
                if site.io == "input":
                    handles.append(module.register_forward_pre_hook(_pre_hook(fn, layer)))
                else:
                    handles.append(module.register_forward_hook(_post_hook(fn, layer)))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _pre_hook(fn: SiteFn, layer: int):
    def hook(module, args):
        replaced = fn(layer, args[0])
        return None if replaced is None else (replaced, *args[1:])
    return hook


def _post_hook(fn: SiteFn, layer: int):
    def hook(module, args, output):
        return fn(layer, output)
    return hook


_GATED_MLP = Layout("model.layers", "mlp.down_proj", "input", "mlp.down_proj")


class TransformerAdapter(ModelAdapter):
    family = "transformer"
    layouts = {
        **{t: _GATED_MLP for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3",
                                   "olmo", "olmo2", "granite", "phi3")},
        "gpt2": Layout("transformer.h", "mlp.act", "output", "mlp.c_proj"),
        "gpt_neox": Layout("gpt_neox.layers", "mlp.act", "output", "mlp.dense_4h_to_h"),
        "opt": Layout("model.decoder.layers", "activation_fn", "output", "fc2"),
        "bloom": Layout("transformer.h", "mlp.gelu_impl", "output", "mlp.dense_4h_to_h"),
    }


class MambaAdapter(ModelAdapter):
    family = "mamba"
    layouts = {"mamba": Layout("backbone.layers", "mixer.out_proj", "input", "mixer.out_proj")}


class Mamba2Adapter(ModelAdapter):
    family = "mamba2"
    layouts = {"mamba2": Layout("backbone.layers", "mixer.out_proj", "input", "mixer.out_proj")}


class RwkvAdapter(ModelAdapter):
    family = "rwkv"
    layouts = {"rwkv": Layout("rwkv.blocks", "feed_forward.value", "input", "feed_forward.value")}
    supports_left_padding = False  # transformers' RWKV ignores attention_mask
    # transformers 5.23's one-token RWKV step broadcasts the [B, H] shift state against [B, 1, H], which is
    # only right for B = 1; prefill is correct at any batch size, decoding is done one sequence at a time.
    max_decode_batch = 1

    def max_context(self) -> int | None:
        return None


class GriffinAdapter(ModelAdapter):
    family = "griffin"
    layouts = {"recurrent_gemma": Layout("model.layers", "mlp_block.down_proj", "input", "mlp_block.down_proj")}
    supports_left_padding = False  # the RG-LRU and its conv1d do not skip padding

    def max_context(self) -> int | None:
        return None


ADAPTERS: tuple[type[ModelAdapter], ...] = (TransformerAdapter, MambaAdapter, Mamba2Adapter, RwkvAdapter,
                                            GriffinAdapter)


def supported_architectures() -> str:
    """'family (model types), ...' for error messages and the CLI."""
    return "; ".join(f"{a.family} ({', '.join(a.layouts)})" for a in ADAPTERS)


def adapter_class_for(model_type: str, what: str = "model") -> type[ModelAdapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.layouts:
            return adapter
    raise UnsupportedArchitectureError(
        f"{what} has architecture {model_type!r}, which prunescope does not support; "
        f"supported: {supported_architectures()}")


def make_adapter(model: nn.Module) -> ModelAdapter:
    return adapter_class_for(model.config.model_type)(model)
