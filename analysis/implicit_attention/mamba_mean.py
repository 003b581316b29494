"""Channel-mean Mamba / Mamba-2 implicit attention without any per-channel [T, T] matrix.

The mean over channels d of ``L[i,d] alpha_d[i,j] R[j,d]`` (L, R: the data-dependent diagonals of the form,
e.g. SiLU(z_i) and sigmoid(c_j) for ``unified``) is, for a block of rows that lies after a block of columns,
one matrix product over the joint (channel, state) axis:

    exp((S_i - S_j) A) = exp((S_i - S_p) A) * exp((S_p - S_j) A)        (S = cumsum of Delta)

through the block's last column p, both factors <= 1 (Delta > 0, A < 0), so nothing overflows; exponents are
floored at -60, which changes no entry by more than 1e-25 and keeps fp32 out of its slow denormal range.
The blocks tile the strict lower triangle like a binary tree: at level h, rows [s+h, s+2h) against columns [s, s+h) for every s that is a multiple of 2h (the
length padded to a power of two with zero-weight positions); the diagonal (exp(0) = 1) is direct. All blocks
of a level are one batched matmul, so the cost is about T^2 * d * n multiply-adds in BLAS plus T log T * d * n
exponentials, instead of T^2 * d * n exponentials and a [d, T, T] tensor. The unified form's causal conv is a
sum over its taps k of the same product with the tap's weight in R, shifted by k columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from analysis.implicit_attention.common import DEFAULT_BUDGET_BYTES

# exp(-60) = 8.7e-27: smaller factors are kept at that value instead of becoming fp32 denormals, which the CPU
# handles ~10x slower; the change to any entry is below 1e-25 (the matrices' entries are O(1e-3..1)).
MIN_EXPONENT = -60.0


def _per_channel(inn, idx: torch.Tensor, form: str, total: int):
    """Per selected channel: a [c, n], B and C [T, c or 1, n], delta [T, c] and cum [T, c] (fp64),
    the left diagonal [T, c] (with the mean's 1/total), the right diagonals [K, T, c] (one per conv tap for
    unified) and the extra diagonal term D [c] of the unified form (zero for s6)."""
    heads = idx if form == "s6" else idx // inn.head_dim
    length, count = inn.length, len(idx)
    if inn.model_type == "mamba":  # B and C are shared by the channels: [T, 1, n], broadcast (never expanded)
        a = inn.A[heads]
        b, c = inn.B[:, None, :], inn.C[:, None, :]
    else:
        groups = heads // (inn.n_heads // inn.B.shape[1])
        b, c = inn.B[:, groups], inn.C[:, groups]
        a = inn.A[heads][:, None].expand(-1, b.shape[-1])
    delta = inn.delta[:, heads].float()
    cum = inn.delta[:, heads].double().cumsum(0)
    if form == "s6":
        left = torch.full((length, count), 1.0 / total, device=delta.device)
        rights = torch.ones(1, length, count, device=delta.device)
        extra = torch.zeros(count, device=delta.device)
    else:
        left = F.silu(inn.z[:, idx]) / total
        taps = inn.conv_weight.shape[1]
        sig = torch.sigmoid(inn.c[:, idx])
        rights = torch.stack([sig * inn.conv_weight[idx, taps - 1 - k] for k in range(taps)])
        extra = inn.D[heads].float()
    return a.float(), b.float(), c.float(), delta, cum, left, rights, extra


def _pad_edge(t: torch.Tensor, size: int) -> torch.Tensor:
    """Pad ``t`` along dim 0 to ``size`` rows by repeating its last row (zero-weight positions past the prompt
    keep the last cumulative sum, so their exponents stay <= 0)."""
    missing = size - t.shape[0]
    return t if missing == 0 else torch.cat([t, t[-1:].expand(missing, *t.shape[1:])])


def _accumulate(out: torch.Tensor, a, b, c, delta, cum, left, rights, extra) -> None:
    """Add this channel chunk's contribution to ``out`` [K, P, P] (one map per right diagonal)."""
    taps, length = rights.shape[0], delta.shape[0]
    size = out.shape[-1]
    weight_right = rights * delta  # [K, T, c]: R_k[j, d] * Delta[j, d]
    diag = (c * b).sum(-1) * delta + extra  # alpha_d[i, i] (+ D for unified)
    out.diagonal(dim1=1, dim2=2)[:, :length] += torch.einsum("tc,ktc->kt", left * diag, rights)
    cum = _pad_edge(cum, size)
    channels, states = delta.shape[1], a.shape[1]
    left_c = out.new_empty(size, channels, states)  # [P, c, n], zero past the prompt
    torch.mul(left[..., None], c, out=left_c[:length])
    left_c[length:] = 0
    right_b = out.new_empty(taps, size, channels, states)  # [K, P, c, n]
    torch.mul(weight_right[..., None], b, out=right_b[:, :length])
    right_b[:, length:] = 0
    half = size // 2
    up = torch.empty(half, channels, states, device=out.device)  # reused by every level: [P/2, c, n]
    down = torch.empty_like(up)
    h = 1
    while h < size:
        nb = size // (2 * h)
        blocks = cum.view(nb, 2, h, -1)
        ref = blocks[:, 0, h - 1:h]  # [nb, 1, c]: the last column of each pair
        rows = up.view(nb, h, *up.shape[1:])  # exp((S_i - S_p) A) * L_i C_i, then (S_p - S_j) for the columns
        torch.mul((blocks[:, 1] - ref).float()[..., None], a, out=rows).clamp_(min=MIN_EXPONENT).exp_()
        rows.mul_(left_c.view(nb, 2, h, *left_c.shape[1:])[:, 1])
        cols = down.view(nb, h, *down.shape[1:])
        torch.mul((ref - blocks[:, 0]).float()[..., None], a, out=cols).clamp_(min=MIN_EXPONENT).exp_()
        right_cols = right_b.view(taps, nb, 2, h, *right_b.shape[2:])[:, :, 0]
        cols = (cols.mul_(right_cols[0]) if taps == 1 else cols * right_cols).view(-1, nb, h, up[0].numel())
        product = torch.bmm(rows.view(nb, h, -1), cols.transpose(0, 1).flatten(1, 2).transpose(1, 2))
        pairs = torch.arange(nb, device=out.device)
        tiles = out.view(taps, nb, 2, h, nb, 2, h)
        tiles[:, pairs, 1, :, pairs, 0, :] += product.view(nb, h, taps, h).permute(0, 2, 1, 3)
        h *= 2


@torch.no_grad()
def mamba_mean(inn, form: str, idx: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] mean over channels ``idx`` of the ``s6`` (per head) or ``unified`` (per d_inner channel)
    matrices, equal to averaging :func:`analysis.implicit_attention.mamba.mamba_matrices`."""
    length = inn.length
    size = 1 << max(0, (length - 1).bit_length())
    states = inn.A.shape[-1] if inn.model_type == "mamba" else inn.B.shape[-1]
    taps = 1 if form == "s6" else inn.conv_weight.shape[1]
    per_channel = 4 * size * states * (2 * taps + 4)  # bytes of the largest level's factors per channel
    chunk = max(1, budget_bytes // per_channel)
    out = torch.zeros(taps, size, size, device=inn.x.device)
    for start in range(0, len(idx), chunk):
        _accumulate(out, *_per_channel(inn, idx[start:start + chunk], form, len(idx)))
    out = out[:, :length, :length]
    if taps == 1:
        return out[0].contiguous()
    folded = torch.zeros(length, length, device=out.device)  # tap k: M[i, m] += X_k[i, m + k]
    for k in range(min(taps, length)):
        folded[:, :length - k] += out[k][:, k:]
    return folded
