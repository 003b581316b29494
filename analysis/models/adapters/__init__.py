"""One adapter per architecture family (see base.py for the interface, families.py for the families and the
list the loader picks from). The family registry, analysis/families.py, names them; they never import it."""

from analysis.models.adapters.base import Layout, ModelAdapter, NeuronSite, PrefixState, SiteChoice
from analysis.models.adapters.families import (
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
    NemotronHAdapter,
    RwkvAdapter,
    TransformerAdapter,
    XlstmAdapter,
    Zamba2Adapter,
    adapter_class_for,
    make_adapter,
    registered_adapters,
    supported_architectures,
)
from analysis.models.adapters.hybrids import HybridAdapter

__all__ = ["GatedDeltaNetAdapter", "GraniteMoeHybridAdapter", "GriffinAdapter", "HybridAdapter",
           "HybridMamba2Adapter", "JambaAdapter", "KimiDeltaAdapter", "Layout", "Lfm2Adapter", "Mamba2Adapter",
           "MambaAdapter", "MiniMaxAdapter", "ModelAdapter", "NemotronHAdapter", "NeuronSite", "PrefixState",
           "RwkvAdapter", "SiteChoice", "TransformerAdapter", "XlstmAdapter", "Zamba2Adapter", "adapter_class_for",
           "make_adapter", "registered_adapters", "supported_architectures"]
