"""Zamba's multi-head Mamba mixer (transformers' ``ZambaMambaMixer``) read as Mamba-1.

Zamba splits Mamba-1's d_inner channels into ``n_mamba_heads`` independent heads: ``in_proj``'s output
interleaves the two branches (channel 2k is x_k, 2k+1 the gate z_k), one depthwise conv covers every
channel, then each head h projects its own channels u_h = SiLU(conv(x))_h with ``x_proj_weight[h]`` to
(dt_low, B_h, C_h) and dt_low with ``dt_proj_weight[h]`` to its channels' time steps. So each channel runs
Mamba-1's selective scan with its head's B and C: the s6 matrices are Mamba-1's (one per d_inner channel),
with B and C grouped by head ([T, H, n], as Mamba-2's groups), and the gate is applied before ``out_proj``.
``x_proj_weight`` and ``dt_proj_weight`` are parameters, not modules, so nothing between the conv and
``out_proj`` can be hooked: these tensors are recomputed from ``in_proj``'s captured output with the layer's
own weights, in the model's dtype as the HF torch path does, and checked against ``out_proj``'s real input
(:func:`analysis.implicit_attention.mamba.mamba_reconstruct`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def is_multi_head(mixer: nn.Module) -> bool:
    """Zamba's mixer: per-head x_proj weights, no ``x_proj`` module."""
    return hasattr(mixer, "x_proj_weight")


def split_branches(projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, 2d] interleaved ``in_proj`` output -> x [T, d] (even channels), z [T, d] (odd channels)."""
    x, z = projected.unflatten(-1, (-1, 2)).unbind(-1)
    return x, z


def head_ssm_inputs(mixer: Any, conv: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """From the conv pre-activation [T, d]: u [T, d], Delta [T, d] (bias, softplus), A [d, n], B and C
    [T, H, n] (one per mamba head), D [d]."""
    heads, rank, n = mixer.n_mamba_heads, mixer.time_step_rank, mixer.ssm_state_size
    u = mixer.act(conv)
    per_head = torch.einsum("thp,hrp->thr", u.unflatten(-1, (heads, -1)), mixer.x_proj_weight)
    dt_low, B, C = per_head.split([rank, n, n], dim=-1)
    dt = torch.einsum("thr,hpr->thp", dt_low, mixer.dt_proj_weight).flatten(1)
    delta = F.softplus(dt.float() + mixer.dt_proj_bias.float().flatten())
    A = -torch.exp(mixer.A_log.float()).flatten(0, 1)
    return u, delta, A, B, C, mixer.D.flatten()
