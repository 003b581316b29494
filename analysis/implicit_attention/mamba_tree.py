"""Mamba / Mamba-2 on the block tree of :mod:`analysis.implicit_attention.block_tree`: a layer's internals as
:class:`Terms` for channel means (:func:`mamba_mean`), and the per-channel tree that gives Mamba's s6 matrices
(:func:`mamba_s6_matrices`) or, taking each block's absolute values before summing over channels, the
``absmean`` reduction without the matrices (:func:`mamba_s6_abs_sum`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from analysis.implicit_attention.block_tree import (
    CACHE_BYTES,
    Terms,
    _chunk,
    _decays,
    _flush,
    _flushed,
    _Scratch,
    _Tree,
    mean_over_channels,
    padded_length,
    scratch_bytes,
)
from analysis.implicit_attention.common import DEFAULT_BUDGET_BYTES

if TYPE_CHECKING:  # mamba_internals.py imports this module
    from analysis.implicit_attention.mamba_internals import MambaInternals

MambaForm = Literal["s6", "unified"]


def _pick(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``t.index_select(dim, idx)`` (~10x faster than [:, idx] on CPU), or ``t`` itself when ``idx`` is every
    index in order (the mean over all channels: no copy). ``idx`` may live on another device (the reductions'
    channel lists are CPU tensors, the internals stay on the model's device)."""
    idx = idx.to(t.device)
    if len(idx) == t.shape[dim] and bool((idx == torch.arange(len(idx), device=idx.device)).all()):
        return t
    return t.index_select(dim, idx)


def heads_bc(inn: MambaInternals, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C seen by ``heads``, [T, len(heads), n] ([T, 1, n] when every head shares them: Mamba-1). Grouped
    B/C ([T, G, n]: Mamba-2's groups, Zamba's per-mamba-head x_proj) serve G consecutive runs of heads."""
    if inn.B.dim() == 2:
        return inn.B[:, None, :], inn.C[:, None, :]
    groups = heads // (inn.n_heads // inn.B.shape[1])
    return _pick(inn.B, 1, groups), _pick(inn.C, 1, groups)


def _mamba_terms(inn: MambaInternals, idx: torch.Tensor, form: MambaForm) -> Terms:
    """Mamba / Mamba-2 as :class:`Terms`: the ``form`` matrices of channels ``idx``."""
    heads = idx if form == "s6" else idx // inn.head_dim
    count = len(idx)
    b, c = heads_bc(inn, heads)
    a = _pick(inn.A, 0, heads)
    if inn.model_type != "mamba":  # one scalar A per Mamba-2 head
        a = a[:, None].expand(-1, b.shape[-1])
    delta = _pick(inn.delta, 1, heads).float()
    if form == "s6":
        left, c = None, c / count
        rights = None
        extra = delta.new_zeros(1).expand(count)
    else:
        left = F.silu(_pick(inn.z, 1, idx)) / count
        taps = inn.conv_weight.shape[1]
        sig = torch.sigmoid(_pick(inn.c, 1, idx))
        weight = _pick(inn.conv_weight, 0, idx)
        rights = torch.stack([sig * weight[:, taps - 1 - k] for k in range(taps)])
        extra = _pick(inn.D, 0, heads).float()
    return Terms(delta, a.float(), b.float(), c.float(), delta, left, rights, extra)


def _sizes(inn: MambaInternals, form: MambaForm) -> tuple[int, int, int]:
    """The padded length (a power of two), the state size and the number of right diagonals (conv taps)."""
    size = padded_length(inn.length)
    states = inn.A.shape[-1] if inn.model_type == "mamba" else inn.B.shape[-1]
    return size, states, 1 if form == "s6" else inn.conv_weight.shape[1]


def per_channel_scratch_bytes(size: int, states: int) -> int:
    """Scratch bytes per channel of the per-channel s6 tree at padded length ``size``."""
    return scratch_bytes(1, size, states, 1)


def _fill_per_channel(tree: _Tree, inn: MambaInternals, heads: torch.Tensor) -> None:
    """Level 1 of Mamba's per-channel s6 tree (G = channels, width = states): the decays, C_i times them and
    Delta_j B_j."""
    length = inn.length
    a = _pick(inn.A, 0, heads).float()
    delta = _pick(inn.delta, 1, heads).float().T  # [c, T]
    b, c = (t.float().transpose(0, 1) for t in heads_bc(inn, heads))  # [c or 1, T, n]
    tree.totals[:, length:], tree.rows[:, length:], tree.cols[:, length:] = 1.0, 0.0, 0.0
    _decays(delta[..., None], a[:, None, :], tree.totals[:, :length])
    _flush(torch.mul(tree.totals[:, :length], _flushed(c), out=tree.rows[:, :length]))
    _flush(torch.mul(_flushed(delta)[..., None], _flushed(b), out=tree.cols[:, :length, 0]))


@torch.no_grad()
def mamba_s6_matrices(inn: MambaInternals, heads: torch.Tensor) -> torch.Tensor:
    """Mamba's per-channel s6 matrices [c, T, T] (no D) by the same tree, one output per channel contracting
    its n states: no [c, T, T, n] tensor and one exponential per (position, channel, state)."""
    length, (size, states, _) = inn.length, _sizes(inn, "s6")
    out = torch.zeros(len(heads), 1, size, size, device=inn.x.device)
    b, c = heads_bc(inn, heads)
    out.diagonal(dim1=2, dim2=3)[:, 0, :length] = (c * b).sum(-1).T * _pick(inn.delta, 1, heads).T
    tree = _Tree(out, _Scratch(_Scratch.numel(len(heads), size, states, 1), out), states)
    _fill_per_channel(tree, inn, heads)
    tree.run()
    return out[:, 0, :length, :length]


@torch.no_grad()
def mamba_s6_abs_sum(inn: MambaInternals, heads: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES
                     ) -> torch.Tensor:
    """[T, T] sum over Mamba channels ``heads`` of the s6 matrices' absolute values, block by block: only one
    level's blocks of one channel chunk exist at a time, never the [c, T, T] matrices."""
    length, (size, states, _) = inn.length, _sizes(inn, "s6")
    per_channel = per_channel_scratch_bytes(size, states)  # every buffer is per channel (G = channels)
    chunk = max(1, min(budget_bytes, CACHE_BYTES) // per_channel)
    out = torch.zeros(1, 1, size, size, device=inn.x.device)
    b, c = heads_bc(inn, heads)
    out.diagonal(dim1=2, dim2=3)[0, 0, :length] = ((c * b).sum(-1).abs() * _pick(inn.delta, 1, heads)).sum(1)
    tree = None
    for start in range(0, len(heads), chunk):
        part = heads[start:start + chunk]
        if tree is None or tree.rows.shape[0] != len(part):
            scratch = _Scratch(_Scratch.numel(len(part), size, states, 1), out)
            tree = _Tree(out, scratch, states, abs_groups=len(part))
        _fill_per_channel(tree, inn, part)
        tree.run()
    return out[0, 0, :length, :length]


def channel_chunk(inn: MambaInternals, form: MambaForm, count: int, budget_bytes: int = DEFAULT_BUDGET_BYTES
                  ) -> int:
    """Channels per chunk of :func:`mamba_mean` for ``count`` channels of a Mamba layer."""
    return _chunk(*_sizes(inn, form), count, budget_bytes)


def mamba_mean(inn: MambaInternals, form: MambaForm, idx: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES
               ) -> torch.Tensor:
    """[T, T] mean over channels ``idx`` of the ``s6`` (per head) or ``unified`` (per d_inner channel)
    matrices, equal to averaging :func:`analysis.implicit_attention.mamba.mamba_matrices`."""
    return mean_over_channels(_mamba_terms(inn, idx, form), budget_bytes)
