"""One adapter per architecture family (see base.py for the interface, families.py for the families and the
list the loader picks from). The family registry, analysis/families.py, names them; they never import it."""

from analysis.models.adapters.base import Layout, ModelAdapter, NeuronSite, PrefixState
from analysis.models.adapters.families import (
    GatedDeltaNetAdapter,
    GriffinAdapter,
    HybridMamba2Adapter,
    KimiDeltaAdapter,
    Lfm2Adapter,
    Mamba2Adapter,
    MambaAdapter,
    RwkvAdapter,
    TransformerAdapter,
    XlstmAdapter,
    Zamba2Adapter,
    adapter_class_for,
    make_adapter,
    registered_adapters,
    supported_architectures,
)

__all__ = ["GatedDeltaNetAdapter", "GriffinAdapter", "HybridMamba2Adapter", "KimiDeltaAdapter", "Layout",
           "Lfm2Adapter", "Mamba2Adapter", "MambaAdapter", "ModelAdapter", "NeuronSite", "PrefixState", "RwkvAdapter",
           "TransformerAdapter", "XlstmAdapter", "Zamba2Adapter", "adapter_class_for", "make_adapter",
           "registered_adapters", "supported_architectures"]
