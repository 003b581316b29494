"""Conservative propagation (LRP) rules of the zamba2 family (Zamba, Zamba2) and of Jamba, built from the shared
MambaLRP rules of :mod:`analysis.implicit_attention.conservative` (activations linearised, products of two signals
split half and half, data-dependent coefficients detached).

* Zamba's ``ZambaMambaMixer`` is Mamba-1 split into mamba heads, each with its own x_proj / dt_proj weights
  (parameters, not modules, :mod:`analysis.implicit_attention.mamba_heads`): :func:`zamba_mixer` detaches each
  head's Delta, B, C, so every head's selective scan is linear in u, as :func:`~conservative.mamba_mixer` does
  for Mamba-1. Its shared block's ``ZambaMLP`` is a plain gated MLP (:func:`~conservative.gated_mlp`).
* Zamba2's mixer and gated norm are Mamba-2's (:func:`~conservative.mamba2_mixer`,
  :func:`~conservative.gated_rms_norm` fit the classes); its shared block's ``Zamba2MLP`` fuses gate and up in one
  projection plus the calling layer's LoRA adapter (:func:`zamba2_mlp`). The attention's LoRA adapters are linear.
* Jamba's mixer is Mamba-1 with RMS norms on dt, B, C (detached factors: :func:`~conservative.mamba_mixer`
  applies them after the detach, and the generic norm rule reproduces them); its MoE experts take
  :data:`~conservative.EXPERTS_RULE` (the router's weights detached), its dense layers' ``JambaMLP`` the gated MLP.

Softmax attention and the plain RMS norms are detached by the caller
(:func:`analysis.attribution.propagation.conservative_propagation`), which checks every replacement on its probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.mamba.modeling_mamba import mamba_selective_scan

from analysis.implicit_attention.conservative import (
    EXPERTS_RULE,
    MAMBA,
    MAMBA2,
    Rule,
    _hidden_probe,
    _masked,
    _no_cache,
    gated_mlp,
    half_product,
    linearised,
)
from analysis.implicit_attention.mamba_heads import split_branches


def zamba_mixer(mixer: Any) -> Callable[..., torch.Tensor]:
    """Zamba's multi-head Mamba mixer: SiLU(conv(x)) linearised; each mamba head's Delta, B, C (from its
    ``x_proj_weight`` and ``dt_proj_weight``) detached, so the head's selective scan is linear in its channels u;
    ``y * SiLU(z)`` by the uniform rule. Same ops and order as transformers' torch path, without a cache."""
    def forward(hidden_states, cache_params=None, attention_mask=None, **kwargs):
        _no_cache("Zamba's mixer", cache_params)
        batch, length, _ = hidden_states.shape
        dtype, heads = hidden_states.dtype, mixer.n_mamba_heads
        x, gate = split_branches(mixer.in_proj(_masked(hidden_states, attention_mask)))  # [B, T, d] each
        conv = mixer.conv1d(x.transpose(1, 2).to(mixer.conv1d.weight.dtype))[..., :length]
        u = _masked(linearised(ACT2FN[mixer.activation], conv).to(x.dtype).transpose(1, 2), attention_mask)
        u = u.transpose(1, 2).reshape(batch, heads, mixer.mamba_head_dim, length).transpose(0, 1)  # [H, B, p, T]
        parameters = (mixer.x_proj_weight.detach()[:, None] @ u.detach()).transpose(-1, -2)
        time_step, B, C = torch.split(parameters, [mixer.time_step_rank, mixer.ssm_state_size,
                                                   mixer.ssm_state_size], dim=-1)
        time_step = mixer.dt_proj_weight.detach()[:, None] @ time_step.transpose(-1, -2)  # [H, B, p, T]
        A, bias = -torch.exp(mixer.A_log.detach().float()), mixer.dt_proj_bias.detach().float()
        y = torch.cat([mamba_selective_scan(u[h], time_step[h], A[h], B[h].transpose(1, 2), C[h].transpose(1, 2),
                                            D=mixer.D[h].float(), z=None, delta_bias=bias[h], delta_softplus=True)
                       for h in range(heads)], dim=1)  # [B, d, T]
        gated = half_product(y, linearised(F.silu, gate).transpose(1, 2))
        return mixer.out_proj(gated.transpose(1, 2).to(dtype))
    return forward


def zamba2_mlp(mlp: Any) -> Callable[..., torch.Tensor]:
    """Zamba2's shared MLP ``down(act(g) * u)``, (g, u) = ``gate_up_proj(x)`` + the calling layer's LoRA adapter
    (linear): the activation linearised, its product with u by the uniform rule."""
    def forward(hidden_state, layer_idx=None):
        adapter = mlp.gate_up_proj_adapter_list[mlp.layer_dic[layer_idx]]
        gate, up = (mlp.gate_up_proj(hidden_state) + adapter(hidden_state)).chunk(2, dim=-1)
        return mlp.down_proj(half_product(linearised(mlp.act_fn, gate), up))
    return forward


def _zamba2_mlp_probe(mlp: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    """A random hidden state, called for the first layer whose LoRA adapter this block owns (the others are
    Identity entries of another block)."""
    (x,), _ = _hidden_probe(lambda m: m.hidden_size)(mlp, generator)
    owned = [i for i, j in mlp.layer_dic.items() if not isinstance(mlp.gate_up_proj_adapter_list[j], nn.Identity)]
    return (x,), {"layer_idx": (owned or list(mlp.layer_dic))[0]}


_HIDDEN = _hidden_probe(lambda m: m.hidden_size)

ZAMBA2: Mapping[str, Rule] = {"ZambaMambaMixer": Rule(zamba_mixer, _HIDDEN),
                              "ZambaMLP": Rule(gated_mlp, _HIDDEN),
                              "Zamba2MambaMixer": MAMBA2["Mamba2Mixer"],
                              "Zamba2RMSNormGated": MAMBA2["MambaRMSNormGated"],
                              "Zamba2MLP": Rule(zamba2_mlp, _zamba2_mlp_probe)}
JAMBA: Mapping[str, Rule] = {"JambaMambaMixer": MAMBA["MambaMixer"],
                             "JambaExperts": EXPERTS_RULE,
                             "JambaMLP": Rule(gated_mlp, _HIDDEN)}
