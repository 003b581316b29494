"""The family registry: one entry per architecture family, the single place that says which families exist
and what each has.

Every per-family dispatch asks this registry: the adapter (layout, continuation), the attention-map forms and
functions (capture, reduced maps, per-channel matrices, softmax maps), where token relevance reads dF/dA,
which layers are implicit, and capabilities (softmax layers; LRP, by the family's conservative rules). An
entry names its family's adapter, the typed :class:`~analysis.implicit_attention.ops.FamilyOps` that the
family's module exports and its LRP rules (:mod:`analysis.implicit_attention.conservative`). Adding a family
= its adapter, its module with an ops object, and one entry in :data:`FAMILIES` (README, "Adding an
architecture family").

The registry sits on top: it imports the family modules and the adapters by name, and none of them imports
it back (tests/test_import_graph.py), so anything above may import it and every reference here is one a type
checker follows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from analysis.errors import PrunescopeError, UnsupportedArchitectureError
from analysis.implicit_attention import (
    conservative,
    conservative_delta,
    conservative_lx,
    conservative_m2h,
    conservative_zj,
    delta_families,
    griffin,
    hybrid,
    lfm2,
    mamba,
    mamba_hybrid,
    rwkv,
    softmax,
    xlstm,
)
from analysis.implicit_attention.conservative import Rule
from analysis.implicit_attention.ops import (
    FORM_NAMES,
    Capture,
    FamilyOps,
    Form,
    Matrices,
    Reduced,
    RelevanceHow,
    RelevanceTarget,
    RelevanceTargetOf,
    SoftmaxMaps,
)
from analysis.models.adapters import (
    GatedDeltaNetAdapter,
    GraniteMoeHybridAdapter,
    GriffinAdapter,
    HybridMamba2Adapter,
    JambaAdapter,
    KimiDeltaAdapter,
    Lfm2Adapter,
    Mamba2Adapter,
    MambaAdapter,
    MiniMaxAdapter,
    ModelAdapter,
    NemotronHAdapter,
    RwkvAdapter,
    TransformerAdapter,
    XlstmAdapter,
    Zamba2Adapter,
    adapter_class_for,
    supported_architectures,
)

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded

__all__ = ["FAMILIES", "FORM_NAMES", "Family", "FamilyOps", "Form", "RelevanceHow", "RelevanceTarget", "family",
           "family_for", "family_of", "forms"]

Function = Literal["capture", "reduced", "matrices", "relevance_target", "softmax_maps"]


@dataclass(frozen=True)
class Family:
    """One architecture family: its name, its adapter class, the ops of its family module (forms, implicit
    layers and the functions of :class:`FamilyOps`, signatures there) and its conservative-propagation (LRP)
    rules: module class -> :class:`~analysis.implicit_attention.conservative.Rule`, the forwards LRP replaces
    besides the softmax attention and norms it detaches in every family (None: no LRP)."""

    name: str
    adapter: type[ModelAdapter]
    ops: FamilyOps[Any]
    lrp: Mapping[str, Rule] | None = None

    @property
    def supports_lrp(self) -> bool:
        return self.lrp is not None

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(self.adapter.layouts)

    @property
    def forms(self) -> tuple[Form, ...]:
        """Attention-map forms, the default first."""
        return self.ops.forms

    @property
    def implicit_layers(self) -> Callable[[Any], list[int]]:
        """``adapter -> [layer]``: the layers with implicit attention."""
        return self.ops.implicit_layers

    def implicit_layers_for(self, adapter: Any, form: Form) -> list[int]:
        """The layers shown with implicit attention under ``form``: the implicit layers, less those that also
        have softmax attention when the form is "softmax" (a hybrid layer with both kinds shows the asked one)."""
        implicit = self.ops.implicit_layers(adapter)
        if form != "softmax" or self.ops.softmax_layers is None:
            return implicit
        both = set(self.ops.softmax_layers(adapter))
        return [i for i in implicit if i not in both]

    def implicit_form(self, form: Form) -> Form:
        """The form implicit layers are shown in: ``form``, or the first implicit one for "softmax"."""
        return form if form != "softmax" else next((f for f in self.forms if f != "softmax"), form)

    @property
    def has_softmax_layers(self) -> bool:
        return self.ops.softmax_maps is not None

    @property
    def has_implicit_layers(self) -> bool:
        return self.ops.capture is not None

    @property
    def default_form(self) -> Form:
        return self.forms[0]

    @overload
    def require(self, function: Literal["capture"]) -> Capture[Any]: ...
    @overload
    def require(self, function: Literal["reduced"]) -> Reduced[Any]: ...
    @overload
    def require(self, function: Literal["matrices"]) -> Matrices[Any]: ...
    @overload
    def require(self, function: Literal["relevance_target"]) -> RelevanceTargetOf[Any]: ...
    @overload
    def require(self, function: Literal["softmax_maps"]) -> SoftmaxMaps: ...

    def require(self, function: Function) -> Callable[..., Any]:
        """The ops' function ``function``, or a one-line error if the family has none."""
        found = getattr(self.ops, function)
        if found is None:
            raise PrunescopeError(f"{self.name} models have no {function.replace('_', ' ')}")
        return found

    def check_form(self, form: str | None) -> Form:
        """``form`` (default: the family's first) if this family has it, else a one-line error."""
        form = form or self.default_form
        for known in self.forms:
            if known == form:
                return known
        raise PrunescopeError(f"{self.name} models have no {form!r} attention form; use {' or '.join(self.forms)}")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("transformer", TransformerAdapter, softmax.TRANSFORMER_OPS, lrp=conservative.TRANSFORMER),
    Family("mamba", MambaAdapter, mamba.MAMBA_OPS, lrp=conservative.MAMBA),
    Family("mamba2", Mamba2Adapter, mamba.MAMBA2_OPS, lrp=conservative.MAMBA2),
    Family("rwkv", RwkvAdapter, rwkv.RWKV_OPS, lrp=conservative.RWKV),
    Family("griffin", GriffinAdapter, griffin.GRIFFIN_OPS, lrp=conservative.GRIFFIN),
    Family("mamba2_hybrid", HybridMamba2Adapter, mamba_hybrid.HYBRID_MAMBA2_OPS, lrp=conservative_m2h.MAMBA2_HYBRID),
    Family("zamba2", Zamba2Adapter, mamba_hybrid.HYBRID_MAMBA2_OPS, lrp=conservative_zj.ZAMBA2),
    Family("lfm2", Lfm2Adapter, lfm2.LFM2_OPS, lrp=conservative_lx.LFM2),
    Family("xlstm", XlstmAdapter, xlstm.XLSTM_OPS, lrp=conservative_lx.XLSTM),
    Family("gated_deltanet", GatedDeltaNetAdapter, delta_families.GATED_DELTANET_OPS,
           lrp=conservative_delta.GATED_DELTANET),
    Family("kimi_delta", KimiDeltaAdapter, delta_families.KIMI_DELTA_OPS, lrp=conservative_delta.KIMI_DELTA),
    Family("minimax", MiniMaxAdapter, delta_families.MINIMAX_OPS, lrp=conservative_delta.MINIMAX),
    Family("jamba", JambaAdapter, hybrid.JAMBA_OPS, lrp=conservative_zj.JAMBA),
    Family("granitemoehybrid", GraniteMoeHybridAdapter, hybrid.GRANITE_OPS, lrp=conservative_m2h.GRANITE_MOE_HYBRID),
    Family("nemotron_h", NemotronHAdapter, hybrid.NEMOTRON_H_OPS, lrp=conservative_m2h.NEMOTRON_H),
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
