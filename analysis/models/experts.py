"""The neurons of a mixture-of-experts layer: its routed experts' intermediate channels, made hookable.

transformers 5.23 keeps a MoE layer's experts as one module with 3D weights (``gate_up_proj`` or ``up_proj``
[E, (2)I, H], ``down_proj`` [E, H, I]) whose forward is picked by ``config._experts_implementation``
(``use_experts_implementation``, transformers/integrations/moe.py). No implementation calls a submodule
between the up and down projections, so nothing could hook the activation there. prunescope registers one
more implementation, :func:`neuron_experts_forward`, and selects it for every model with such experts: it
computes what the eager loop computes, expert by expert, with the same ops in the same order (bit for bit), but
first gathers the activated intermediate of every routed (token, expert) pair into one [tokens, E * I] tensor
and passes it through :class:`ExpertNeurons`, an identity submodule added to each experts module, before the
down projections read it back. That tensor is the layer's neuron site: neuron ``e * I + c`` is channel ``c`` of
expert ``e``; a token's entries for experts it was not routed to are zeros (and stay out of the output).

A shared expert beside the routed ones (Nemotron-H's ``shared_experts``, Granite's ``shared_mlp``) is an
ordinary MLP outside the experts module: its channels are not neurons of the MoE site.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

IMPLEMENTATION = "prunescope_neurons"


class ExpertNeurons(nn.Identity):
    """Identity over the [tokens, experts * intermediate] routed-expert activation: the hook point of a MoE
    layer's neurons (``in_features`` is the neuron count, as for a down projection)."""

    def __init__(self, width: int):
        super().__init__()
        self.in_features = width


def is_experts(module: nn.Module) -> bool:
    """A transformers experts module dispatched by ``use_experts_implementation`` (3D expert weights)."""
    up = getattr(module, "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj", None)
    return hasattr(module, "is_concatenated") and isinstance(up, torch.Tensor) and up.dim() == 3


def install_expert_neurons(model: nn.Module) -> int:
    """Give every experts module of ``model`` an :class:`ExpertNeurons` submodule ``neurons`` and switch the model
    to :func:`neuron_experts_forward`; returns how many experts modules it found (0: the model is untouched).
    The identity holds no weights, so the state dict and the fingerprint stay the same."""
    found = [m for m in model.modules() if is_experts(m)]
    if not found:
        return 0
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, neuron_experts_forward)
    for experts in found:
        if not isinstance(getattr(experts, "neurons", None), ExpertNeurons):
            sizes: tuple[int, int] = (experts.num_experts, experts.intermediate_dim)  # type: ignore[assignment]
            experts.neurons = ExpertNeurons(sizes[0] * sizes[1])
    model.set_experts_implementation(IMPLEMENTATION)  # type: ignore[operator]  # a PreTrainedModel
    return len(found)


def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return nn.functional.linear(x, weight.T if self.is_transposed else weight, bias)


def neuron_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    """The eager experts loop (transformers' reference ``forward`` of an experts class) with the routed
    intermediate [tokens, E * I] passing through ``self.neurons`` between the up and down projections."""
    return experts_loop(self, hidden_states, top_k_index, top_k_weights, activate=None)


def experts_loop(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                 activate: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """:func:`neuron_experts_forward` with ``activate`` (an up projection's output -> the intermediate) in place
    of the experts' own activation (``_apply_gate`` or ``act_fn``) when given: conservative propagation's hook."""
    experts, width = self.num_experts, self.intermediate_dim
    final = torch.zeros_like(hidden_states, dtype=torch.promote_types(hidden_states.dtype, top_k_weights.dtype))
    with torch.no_grad():
        expert_mask = nn.functional.one_hot(top_k_index, num_classes=experts + 1).permute(2, 1, 0)
        hit = [int(e) for e in torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()[:, 0] if int(e) < experts]
    routed = {e: torch.where(expert_mask[e]) for e in hit}  # expert -> (top-k slot, token) of its pairs
    inner = hidden_states.new_zeros(hidden_states.shape[0], experts * width)
    for e, (_, token_idx) in routed.items():
        up_weight = self.gate_up_proj[e] if self.has_gate else self.up_proj[e]
        up_bias = None
        if self.has_bias:
            up_bias = self.gate_up_proj_bias[e] if self.has_gate else self.up_proj_bias[e]
        projected = _linear(self, hidden_states[token_idx], up_weight, up_bias)
        if activate is not None:
            inner[token_idx, e * width:(e + 1) * width] = activate(projected)
        else:
            inner[token_idx, e * width:(e + 1) * width] = (self._apply_gate(projected) if self.has_gate
                                                           else self.act_fn(projected))
    inner = self.neurons(inner)
    for e, (top_k_pos, token_idx) in routed.items():
        out = _linear(self, inner[token_idx, e * width:(e + 1) * width], self.down_proj[e],
                      self.down_proj_bias[e] if self.has_bias else None)
        if self.has_post_expert_norm:
            out = self.post_expert_norm(out)
        out = out * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, out.to(final.dtype))
    return final.to(hidden_states.dtype)
