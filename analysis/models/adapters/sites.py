"""Where a layer's neurons live, and the hooks that reach them.

A model type's :class:`Layout` names its block list and its candidate neuron sites (:class:`SiteChoice`);
the adapter resolves one :class:`NeuronSite` per block (analysis/models/adapters/base.py). The hook factories
turn a site function ``fn(layer, activation)`` into the forward (pre-)hooks that
:meth:`ModelAdapter.hook_sites` and :meth:`ModelAdapter.hook_block_inputs` register; a returned tensor
replaces the activation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

SiteFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]
SiteIO = Literal["input", "output"]  # which tensor of the site module is the neuron activation
SITE_IOS: tuple[SiteIO, ...] = get_args(SiteIO)


@dataclass(frozen=True)
class SiteChoice:
    """One candidate neuron site of a block (paths relative to the block) and the ``kind`` of layer it makes
    (a label for legends: "mlp", "moe", "mixer", "attention-out", ...)."""

    path: str
    io: SiteIO
    width_from: str
    kind: str = "mlp"


@dataclass(frozen=True)
class Layout:
    """Where a model type keeps its blocks and its neuron site (paths relative to a block). ``also``: further
    candidate sites, for hybrids whose blocks differ; a block's site is the first candidate (``site`` first)
    whose modules it has."""

    layers: str
    site: str
    io: SiteIO  # the site module's input or output
    width_from: str  # a module whose input width is the neuron count
    kind: str = "mlp"  # what kind of layer the main site makes
    also: tuple[SiteChoice, ...] = ()

    @property
    def choices(self) -> tuple[SiteChoice, ...]:
        return (SiteChoice(self.site, self.io, self.width_from, self.kind), *self.also)


@dataclass(frozen=True)
class NeuronSite:
    """Where a layer's neurons live: the module at ``path`` whose input or output (``io``) is the [.., width]
    activation that neuron IG attributes and a mask zeroes: the input of the MLP's down projection in
    transformers and Griffin, the gated mixer output before ``out_proj`` in Mamba, the squared-ReLU key of
    RWKV's channel mixing."""

    layer: int
    path: str
    io: SiteIO
    width: int
    kind: str = "mlp"  # the layer's kind for labels (SiteChoice.kind)


@dataclass(frozen=True)
class SiteNorm:
    """A layer whose neurons reach the residual only as ``norm(down(a))``, a bias-free linear map then an RMS
    norm without centring: F then depends on the scaled site ``alpha a`` only through ``alpha / sqrt(alpha^2
    ms(down a) + eps)`` (analysis/attribution/normalised.py)."""

    down: nn.Linear  # without bias
    eps: float


def site_pre_hook(fn: SiteFn, layer: int):
    """A forward pre-hook calling ``fn`` on the module's input (a site with ``io == "input"``)."""
    def hook(module, args):
        replaced = fn(layer, args[0])
        return None if replaced is None else (replaced, *args[1:])
    return hook


def site_post_hook(fn: SiteFn, layer: int):
    """A forward hook calling ``fn`` on the module's output (a site with ``io == "output"``)."""
    def hook(module, args, output):
        return fn(layer, output)
    return hook


def block_input_hook(fn: SiteFn, layer: int):
    """A forward pre-hook (``with_kwargs``) calling ``fn`` on a block's residual input, positional or keyword."""
    def hook(module, args, kwargs):
        if args:
            replaced = fn(layer, args[0])
            return None if replaced is None else ((replaced, *args[1:]), kwargs)
        key = next(k for k in ("hidden_states", "activations", "hidden") if k in kwargs)
        replaced = fn(layer, kwargs[key])
        return None if replaced is None else (args, {**kwargs, key: replaced})
    return hook
