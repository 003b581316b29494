"""Conservative propagation (LRP) rules of the Mamba-2 hybrids: Bamba and Falcon-H1 (family ``mamba2_hybrid``),
Granite 4.0 hybrid (``granitemoehybrid``) and Nemotron-H (``nemotron_h``), built from the shared MambaLRP rules
of :mod:`analysis.implicit_attention.conservative` (activations linearised, products of two signals split half
and half, data-dependent coefficients detached).

* Mamba-2 mixers: Bamba's, Granite's and Nemotron-H's have Mamba-2's attributes and forward, so Mamba-2's rule
  applies as it is (:func:`~analysis.implicit_attention.conservative.mamba2_mixer`: dt, B, C detached, SiLU of
  the convolution linearised), with their gated RMSNorms by Mamba-2's gated-norm rule. Falcon-H1's mixer is
  the same with muP multipliers (constants, like weights) around ``in_proj`` and an optional gated norm (else
  ``y * SiLU(gate)`` by the uniform rule): :func:`falcon_h1_mixer` runs Mamba-2's rule on a view of it.
* MLPs: gated MLPs by the uniform rule (Bamba's by the generic :func:`gated_mlp`; Falcon-H1's with its gate and
  down multipliers; Granite's shared MLP with its fused ``input_linear``); Nemotron-H's relu^2 MLP (dense
  blocks and the MoE's shared experts) with relu^2 linearised.
* MoE: the routed experts by :data:`~analysis.implicit_attention.conservative.EXPERTS_RULE` (routing weights
  detached); the routers then feed only detached factors and need nothing.

Softmax attention (its multipliers included: Falcon-H1's key multiplier and Granite's attention multiplier sit
inside the detached softmax) and the plain RMSNorms are the caller's generic part
(:func:`analysis.attribution.propagation.conservative_propagation`), which checks every replacement on its probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from analysis.implicit_attention.conservative import (
    EXPERTS_RULE,
    Rule,
    _gated_norm_probe,
    _hidden_probe,
    gated_mlp,
    gated_rms_norm,
    half_product,
    linearised,
    mamba2_mixer,
)


class _FalconH1AsMamba2:
    """Falcon-H1's mixer seen as a Mamba-2 mixer: ``in_proj`` with its multipliers (``ssm_in_multiplier``
    before, the muP vector after: constants), ``norm`` its gated RMSNorm or, without one, ``y * SiLU(gate)``
    by the uniform rule (SiLU linearised); everything else is the mixer's own."""

    def __init__(self, mixer: Any) -> None:
        self._mixer = mixer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mixer, name)

    def in_proj(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mixer = self._mixer
        return mixer.in_proj(hidden_states * mixer.ssm_in_multiplier) * mixer.mup_vector

    def norm(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if self._mixer.mamba_rms_norm:
            return self._mixer.norm(y, gate)  # FalconH1RMSNormGated: its own rule (falcon_h1_gated_norm)
        return half_product(y, linearised(F.silu, gate))


def falcon_h1_mixer(mixer: Any) -> Callable[..., torch.Tensor]:
    """Falcon-H1's mixer: Mamba-2's rule with its multipliers and its optional gated norm."""
    return mamba2_mixer(_FalconH1AsMamba2(mixer))


def falcon_h1_gated_norm(norm: Any) -> Callable[..., torch.Tensor]:
    """FalconH1RMSNormGated: each group's 1/rms detached; ``* SiLU(gate)`` (before the normalisation, or after
    it with ``norm_before_gate``) by the uniform rule, SiLU linearised."""
    def forward(hidden_states, gate=None):
        dtype, shape = hidden_states.dtype, hidden_states.shape
        silu = None if gate is None else linearised(F.silu, gate.to(torch.float32))
        h = half_product(hidden_states, silu) if silu is not None and not norm.norm_before_gate else hidden_states
        grouped = h.to(torch.float32).view(*shape[:-1], norm.n_groups, shape[-1] // norm.n_groups)
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True).detach() + norm.variance_epsilon)
        h = (norm.weight.view(norm.n_groups, -1) * grouped).view(shape)
        return (half_product(h, silu) if silu is not None and norm.norm_before_gate else h).to(dtype)
    return forward


def falcon_h1_mlp(mlp: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Falcon-H1's MLP ``down(up(x) * act(gate(x) * m_gate)) * m_down``: the multipliers constants, the
    activation linearised, its product with up by the uniform rule."""
    def forward(x):
        gate = linearised(mlp.act_fn, mlp.gate_proj(x) * mlp.gate_multiplier)
        return mlp.down_proj(half_product(mlp.up_proj(x), gate)) * mlp.down_multiplier
    return forward


def fused_gated_mlp(mlp: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Granite's shared MLP ``output_linear(act(g) * u)``, (g, u) the halves of ``input_linear(x)``: the
    activation linearised, the product by the uniform rule."""
    def forward(hidden_states):
        gate, up = mlp.input_linear(hidden_states).chunk(2, dim=-1)
        return mlp.output_linear(half_product(linearised(mlp.activation, gate), up))
    return forward


def plain_mlp(mlp: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Nemotron-H's MLP ``down(act(up(x)))`` (relu^2): the activation linearised (factor relu(x))."""
    def forward(x):
        return mlp.down_proj(linearised(mlp.act_fn, mlp.up_proj(x)))
    return forward


def _hidden_size(module: Any) -> int:
    return module.hidden_size


def _input_size(module: Any) -> int:
    return module.input_size


_MAMBA2 = Rule(mamba2_mixer, _hidden_probe(_hidden_size))
_GATED_NORM = Rule(gated_rms_norm, _gated_norm_probe)

MAMBA2_HYBRID: Mapping[str, Rule] = {
    "BambaMixer": _MAMBA2, "BambaRMSNormGated": _GATED_NORM, "BambaMLP": Rule(gated_mlp, _hidden_probe(_hidden_size)),
    "FalconH1Mixer": Rule(falcon_h1_mixer, _hidden_probe(_hidden_size)),
    "FalconH1RMSNormGated": Rule(falcon_h1_gated_norm, _gated_norm_probe),
    "FalconH1MLP": Rule(falcon_h1_mlp, _hidden_probe(_hidden_size)),
}
GRANITE_MOE_HYBRID: Mapping[str, Rule] = {
    "GraniteMoeHybridMambaLayer": _MAMBA2, "GraniteMoeHybridRMSNormGated": _GATED_NORM,
    "GraniteMoeHybridMLP": Rule(fused_gated_mlp, _hidden_probe(_input_size)),
    "GraniteMoeHybridExperts": EXPERTS_RULE,
}
NEMOTRON_H: Mapping[str, Rule] = {
    "NemotronHMamba2Mixer": _MAMBA2, "NemotronHRMSNormGated": _GATED_NORM,
    "NemotronHMLP": Rule(plain_mlp, _hidden_probe(_hidden_size)), "NemotronHExperts": EXPERTS_RULE,
}
