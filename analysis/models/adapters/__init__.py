"""One adapter per architecture family (see base.py for the interface, families.py for the families)."""

from analysis.models.adapters.base import Layout, ModelAdapter, NeuronSite, PrefixState
from analysis.models.adapters.families import (
                                               ADAPTERS,
                                               GriffinAdapter,
                                               Mamba2Adapter,
                                               MambaAdapter,
                                               RwkvAdapter,
                                               TransformerAdapter,
                                               adapter_class_for,
                                               make_adapter,
                                               supported_architectures,
)

__all__ = ["ADAPTERS", "GriffinAdapter", "Layout", "Mamba2Adapter", "MambaAdapter", "ModelAdapter", "NeuronSite",
           "PrefixState", "RwkvAdapter", "TransformerAdapter", "adapter_class_for", "make_adapter",
           "supported_architectures"]
