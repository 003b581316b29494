"""Attribution: neuron Integrated Gradients (fast path + reference) and its targets."""

from analysis.attribution.neuron_ig import NeuronIGResult, neuron_ig, site_scaled_target
from analysis.attribution.passes import plan_passes
from analysis.attribution.quadrature import QUADRATURES, quadrature
from analysis.attribution.runs import IG_VERSION, attribute_task
from analysis.attribution.targets import TARGETS, AttributionInput, TargetSpec, prepare_inputs

__all__ = ["IG_VERSION", "QUADRATURES", "TARGETS", "AttributionInput", "NeuronIGResult", "TargetSpec", "attribute_task",
           "neuron_ig", "plan_passes", "prepare_inputs", "quadrature", "site_scaled_target"]
