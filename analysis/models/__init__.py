"""Model loading and one adapter per architecture family."""

from analysis.models.adapters import ModelAdapter, NeuronSite, make_adapter, supported_architectures
from analysis.models.builtin import BUILTIN_MODELS, model_label
from analysis.models.loader import DEFAULT_MODEL, LoadedModel, load_model, model_choices

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "LoadedModel", "ModelAdapter", "NeuronSite", "load_model", "make_adapter",
           "model_choices", "model_label", "supported_architectures"]
