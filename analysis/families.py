"""The family registry: one entry per architecture family, the single place that says what each family has.

Every per-family dispatch asks this registry: the adapter (layout, continuation), the implicit-attention forms
and functions (capture, reduced maps, per-channel matrices), where token relevance reads dF/dA, which layers
are implicit, and capabilities (softmax layers, LRP). Adding a family = its file of functions + one entry in
:data:`FAMILIES` (README, "Adding an architecture family").

The implicit-attention modules import :mod:`analysis.models`, so their functions are named here by
``"module:attribute"`` strings (:class:`Ref`) and imported on first call: this module imports only
:mod:`analysis.models.adapters`, and anything may import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import PrunescopeError, UnsupportedArchitectureError
from analysis.models.adapters import (
    GriffinAdapter,
    Mamba2Adapter,
    MambaAdapter,
    ModelAdapter,
    RwkvAdapter,
    TransformerAdapter,
    adapter_class_for,
    supported_architectures,
)

if TYPE_CHECKING:
    from analysis.implicit_attention.common import Reduction
    from analysis.implicit_attention.griffin import GriffinInternals
    from analysis.implicit_attention.mamba import MambaInternals
    from analysis.implicit_attention.rwkv import RwkvInternals
    from analysis.models.protocols import Loaded

# every attention-map form of every family (each family's own are its ``forms``)
Form = Literal["softmax", "s6", "unified", "wkv", "rglru"]
FORM_NAMES: tuple[Form, ...] = get_args(Form)
# where gradattn reads dF/dy: the input or output of a module, or y = norm input * SiLU(gate) in a pre-hook
RelevanceHow = Literal["input", "output", "gated"]


@dataclass(frozen=True)
class Ref:
    """A function named ``"module:attribute"``, imported when first called or resolved."""

    path: str

    def resolve(self) -> Callable:
        module, _, attribute = self.path.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)


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


@dataclass(frozen=True)
class Family:
    """One architecture family. Implicit functions are None for families without implicit layers, and
    ``softmax_maps`` is None for families without softmax-attention layers. Signatures:

    * ``implicit_layers(adapter) -> [layer]``: the layers with implicit attention;
    * ``capture(loaded, input_ids, layers) -> {layer: internals}`` (one forward, batch 1);
    * ``reduced(internals, form, reduction, budget_bytes) -> [T, T]``: the map reduced over channels;
    * ``matrices(internals, form, channels) -> [n, T, T]``: per-channel matrices;
    * ``relevance_target(block, internals, form) -> RelevanceTarget``;
    * ``softmax_maps(loaded, input_ids, layers, reduction) -> {layer: [T, T]}`` for the softmax layers."""

    name: str
    adapter: type[ModelAdapter]
    forms: tuple[Form, ...]  # attention-map forms, the default first
    implicit_layers: Callable[[Any], list[int]]  # called with the family's adapter
    capture: Ref | None = None
    reduced: Ref | None = None
    matrices: Ref | None = None
    relevance_target: Ref | None = None
    softmax_maps: Ref | None = None
    supports_lrp: bool = False  # conservative propagation (transformers: softmax and norms detached)

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.adapter.layouts)

    @property
    def has_softmax_layers(self) -> bool:
        return self.softmax_maps is not None

    @property
    def has_implicit_layers(self) -> bool:
        return self.capture is not None

    @property
    def default_form(self) -> Form:
        return self.forms[0]

    def require(self, function: str) -> Ref:
        """The named function (``capture``, ``softmax_maps``, ...), or a one-line error if the family has none."""
        ref = getattr(self, function)
        if ref is None:
            raise PrunescopeError(f"{self.name} models have no {function.replace('_', ' ')}")
        return ref

    def check_form(self, form: str | None) -> Form:
        """``form`` (default: the family's first) if this family has it, else a one-line error."""
        form = form or self.default_form
        for known in self.forms:
            if known == form:
                return known
        raise PrunescopeError(f"{self.name} models have no {form!r} attention form; use {' or '.join(self.forms)}")


def _all_layers(adapter: ModelAdapter) -> list[int]:
    return list(range(adapter.n_layers))


def _no_layers(adapter: ModelAdapter) -> list[int]:
    return []


# -- relevance targets (which tensor dF/dA is read at, per form) -------------------------------------------------
def mamba_relevance_target(block: nn.Module, inn: MambaInternals, form: str) -> RelevanceTarget:
    """s6: u = SSM input, y = alpha u (+ D u) = out_proj input / SiLU(z); unified: u = x branch, y = out_proj
    input."""
    out_proj = block.get_submodule("mixer.out_proj")
    if form == "s6":
        return RelevanceTarget(out_proj, "input", inn.u, gate=F.silu(inn.z), group=inn.head_dim)
    return RelevanceTarget(out_proj, "input", inn.x)


def mamba2_relevance_target(block: nn.Module, inn: MambaInternals, form: str) -> RelevanceTarget:
    """s6: y = the SSD output entering the gated norm (one matrix per head); unified: y = its y * SiLU(gate),
    made a graph tensor by computing it in a pre-hook and calling the norm with gate=None."""
    if form == "s6":
        return RelevanceTarget(block.get_submodule("mixer.norm"), "input", inn.u, group=inn.head_dim)
    return RelevanceTarget(block.get_submodule("mixer.norm"), "gated", inn.x)


def rwkv_relevance_target(block: nn.Module, inn: RwkvInternals, form: str) -> RelevanceTarget:
    """u = value; unified: y = the output projection's input; wkv: y = that / sigmoid(r)."""
    gate = torch.sigmoid(inn.receptance) if form == "wkv" else None
    return RelevanceTarget(block.get_submodule("attention.output"), "input", inn.value, gate=gate)


def griffin_relevance_target(block: nn.Module, inn: GriffinInternals, form: str) -> RelevanceTarget:
    """rglru: u = RG-LRU input, y = its output; unified: u = linear_x output, y = linear_out input."""
    if form == "rglru":
        return RelevanceTarget(block.get_submodule("temporal_block.rg_lru"), "output", inn.x)
    return RelevanceTarget(block.get_submodule("temporal_block.linear_out"), "input", inn.x_pre)


def griffin_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                         ) -> dict[int, torch.Tensor]:
    """Griffin's local-attention layers: softmax probabilities averaged over all heads (``reduction`` is not
    applied to them, as before the registry)."""
    from analysis.implicit_attention.griffin import griffin_attention_maps

    return griffin_attention_maps(loaded, input_ids, layers)


_IA = "analysis.implicit_attention"

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("transformer", TransformerAdapter, ("softmax",), _no_layers,
           softmax_maps=Ref(f"{_IA}:softmax_maps"), supports_lrp=True),
    Family("mamba", MambaAdapter, ("s6", "unified"), _all_layers, capture=Ref(f"{_IA}.mamba:capture_mamba"),
           reduced=Ref(f"{_IA}.mamba:mamba_reduced"), matrices=Ref(f"{_IA}.mamba:mamba_matrices"),
           relevance_target=Ref(f"{__name__}:mamba_relevance_target")),
    Family("mamba2", Mamba2Adapter, ("s6", "unified"), _all_layers, capture=Ref(f"{_IA}.mamba:capture_mamba"),
           reduced=Ref(f"{_IA}.mamba:mamba_reduced"), matrices=Ref(f"{_IA}.mamba:mamba_matrices"),
           relevance_target=Ref(f"{__name__}:mamba2_relevance_target")),
    Family("rwkv", RwkvAdapter, ("unified", "wkv"), _all_layers, capture=Ref(f"{_IA}.rwkv:capture_rwkv"),
           reduced=Ref(f"{_IA}.rwkv:rwkv_reduced"), matrices=Ref(f"{_IA}.rwkv:rwkv_matrices"),
           relevance_target=Ref(f"{__name__}:rwkv_relevance_target")),
    Family("griffin", GriffinAdapter, ("unified", "rglru"), GriffinAdapter.recurrent_layers,
           capture=Ref(f"{_IA}.griffin:capture_griffin"), reduced=Ref(f"{_IA}.griffin:griffin_reduced"),
           matrices=Ref(f"{_IA}.griffin:griffin_matrices"),
           relevance_target=Ref(f"{__name__}:griffin_relevance_target"),
           softmax_maps=Ref(f"{__name__}:griffin_softmax_maps")),
)}


def family(name: str) -> Family:
    """The registry entry of family ``name``; an unknown name is a one-line error."""
    if name not in FAMILIES:
        raise UnsupportedArchitectureError(f"unknown architecture family {name!r}; supported: "
                                           f"{supported_architectures()}")
    return FAMILIES[name]


def family_of(loaded: Loaded) -> Family:
    """The entry of a loaded model's family."""
    return family(loaded.family)


def family_for(model_type: str, what: str = "model") -> Family:
    """The entry whose adapter has a layout for ``model_type`` (an unsupported one: the loader's error)."""
    return family(adapter_class_for(model_type, what).family)


def forms() -> dict[str, tuple[Form, ...]]:
    """family -> its attention-map forms, the default first."""
    return {name: f.forms for name, f in FAMILIES.items()}
