"""What a family's module gives the family registry: one :class:`FamilyOps`, its functions typed, and the
types they speak (attention-map forms, relevance targets).

Each family's module (``mamba.py``, ``rwkv.py``, ``griffin.py``, ``softmax.py`` for transformers) builds its
ops object from its own functions, and the registry (:mod:`analysis.families`) imports the modules and names
the objects. Nothing here or in a family module imports the registry: the arrows run one way, registry ->
family modules -> adapters and models (tests/test_import_graph.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

import torch
from torch import nn

from analysis.implicit_attention.common import Internals, Reduction

if TYPE_CHECKING:
    from analysis.models.adapters import ModelAdapter
    from analysis.models.protocols import Loaded

# every attention-map form of every family (each family's own are its ops' ``forms``)
Form = Literal["softmax", "s6", "unified", "wkv", "rglru", "conv", "mlstm", "delta", "kda", "lightning"]
FORM_NAMES: tuple[Form, ...] = get_args(Form)
# where gradattn reads dF/dy: the input or output of a module, or y = norm input * SiLU(gate) in a pre-hook
RelevanceHow = Literal["input", "output", "gated"]
InternalsT = TypeVar("InternalsT", bound=Internals)  # a family's captured layer (MambaInternals, ...)


@dataclass(frozen=True)
class RelevanceTarget:
    """Where gradattn reads g = dF/dy for one implicit layer, whose output is ``y[i,c] = sum_j A[c,i,j] u[j,c]``.

    ``how``: "input" or "output" of ``module`` is y; "gated": y is the norm input times SiLU(gate), computed in
    a pre-hook (Mamba-2 unified). ``gate``: factor [T, C] that turns the hooked tensor's gradient into dF/dy
    (None: none). ``group``: channels sharing one matrix (Mamba-2 s6: a head's channels)."""

    module: nn.Module
    how: RelevanceHow
    source: torch.Tensor  # u [T, C], what the form's matrices multiply
    gate: torch.Tensor | None = None
    group: int = 1


# (loaded, input_ids, layers) -> {layer: internals}: one batch-1 forward with hooks
Capture = Callable[["Loaded", torch.Tensor, list[int]], Mapping[int, InternalsT]]
# (internals, form, reduction, budget_bytes) -> [T, T]: the map reduced over channels
Reduced = Callable[[InternalsT, Form, Reduction, int], torch.Tensor]
# (internals, form, channels) -> [n, T, T]: per-channel matrices
Matrices = Callable[[InternalsT, Form, torch.Tensor], torch.Tensor]
# (block, internals, form) -> where dF/dy is read and what the matrices multiply
RelevanceTargetOf = Callable[[nn.Module, InternalsT, Form], RelevanceTarget]
# (loaded, input_ids, layers, reduction) -> {layer: [T, T]} for the softmax-attention layers among ``layers``
SoftmaxMaps = Callable[["Loaded", torch.Tensor, list[int], Reduction], dict[int, torch.Tensor]]


@dataclass(frozen=True)
class FamilyOps(Generic[InternalsT]):
    """One family's attention functions. The implicit ones (capture, reduced, matrices, relevance_target) are
    all set or all None (families without implicit layers); ``softmax_maps`` is None for families without
    softmax-attention layers."""

    forms: tuple[Form, ...]  # attention-map forms, the default first
    implicit_layers: Callable[[Any], list[int]]  # called with the family's adapter
    capture: Capture[InternalsT] | None = None
    reduced: Reduced[InternalsT] | None = None
    matrices: Matrices[InternalsT] | None = None
    relevance_target: RelevanceTargetOf[InternalsT] | None = None
    softmax_maps: SoftmaxMaps | None = None
    # layers with softmax attention, for families where a layer may have both kinds (Falcon-H1): the
    # "softmax" form shows those, the others the implicit ones; None: every layer that is not implicit
    softmax_layers: Callable[[Any], list[int]] | None = None


def all_layers(adapter: ModelAdapter) -> list[int]:
    return list(range(adapter.n_layers))


def no_layers(adapter: ModelAdapter) -> list[int]:
    return []
