"""Neuron masks and pruning."""

from analysis.pruning.mask import NeuronMask

__all__ = ["NeuronMask"]
