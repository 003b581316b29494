"""One adapter per architecture family (see base.py for the interface, families.py for the families and the
list the loader picks from). The family registry, analysis/families.py, names them; they never import it."""

from analysis.models.adapters.base import Layout, ModelAdapter, NeuronSite, PrefixState
from analysis.models.adapters.families import (
    GatedDeltaNetAdapter,
    GriffinAdapter,
    KimiDeltaAdapter,
    Mamba2Adapter,
    MambaAdapter,
    RwkvAdapter,
    TransformerAdapter,
    adapter_class_for,
    make_adapter,
    registered_adapters,
    supported_architectures,
)

__all__ = ["GatedDeltaNetAdapter", "GriffinAdapter", "KimiDeltaAdapter", "Layout", "Mamba2Adapter", "MambaAdapter",
           "ModelAdapter", "NeuronSite", "PrefixState", "RwkvAdapter", "TransformerAdapter", "adapter_class_for",
           "make_adapter", "registered_adapters", "supported_architectures"]
