"""Exact implicit ("hidden") attention of Mamba (arXiv 2403.01590) and Mamba-2, and the unified form that
also folds in the conv1d, its SiLU and the output gate (arXiv 2405.16504).

The tensors the forms are built from are read from one forward pass of the real transformers modules
(:class:`MambaInternals`, :func:`capture_mamba`: analysis/implicit_attention/mamba_internals.py, which also
describes the Mamba variants the capture serves); every view is checked against tensors the real forward
produced (:func:`mamba_reconstruct`). Forms (per channel d / head h, j <= i, 0 above the diagonal):

* ``"s6"`` (alias ``"ssm"``/``"ssd"``): Mamba ``alpha[d,i,j] = sum_n C[i,n] exp(A[d,n] sum_{k=j+1..i}
  Delta[k,d]) Delta[j,d] B[j,n]``, one matrix per d_inner channel, ``y_ssm = alpha @ u + D u``.
  Mamba-2: one matrix per head, ``alpha_h[i,j] = (C_i . B_j) exp(A_h sum_{k=j+1..i} dt[k,h]) dt[j,h]``
  (heads share the B/C of their group), ``y_h = alpha_h @ x_h + D_h x_h``.
* ``"unified"``: per d_inner channel, ``M[i,m] = SiLU(z_i) sum_j (alpha + D I)[i,j] sigmoid(c_j) K[j,m]``
  with K the causal depthwise-conv Toeplitz matrix and c the conv pre-activation (SiLU(c) = c sigmoid(c)
  as a data-dependent diagonal); ``M @ x`` plus the conv-bias term gives the gated tensor. For Mamba (and
  Falcon-H1 without its norm) that is the ``out_proj`` input; for Mamba-2 it is ``y * SiLU(z)``, the gated
  tensor inside ``norm`` just before its RMS normalisation, which is not linear in x and is left out.

:data:`MAMBA_OPS` and :data:`MAMBA2_OPS` are the two families' entries for the registry (analysis/families.py
names them; nothing here imports the registry).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import PrunescopeError
from analysis.implicit_attention.block_tree import padded_length
from analysis.implicit_attention.common import DEFAULT_BUDGET_BYTES, Reduction, reduce_in_chunks
from analysis.implicit_attention.mamba_internals import MambaInternals, capture_mamba, mamba_form, n_channels
from analysis.implicit_attention.mamba_tree import (
    mamba_mean,
    mamba_s6_abs_sum,
    mamba_s6_matrices,
    per_channel_scratch_bytes,
)
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget, all_layers

# MambaInternals, capture_mamba and n_channels (mamba_internals.py) are imported from here too
__all__ = ["MAMBA2_OPS", "MAMBA_OPS", "MambaInternals", "capture_mamba", "mamba_loop_matrices", "mamba_matrices",
           "mamba_reconstruct", "mamba_reduced", "mamba_relevance_target", "n_channels"]


# -- vectorised matrices -------------------------------------------------------------------------------------
def _alpha(inn: MambaInternals, heads: torch.Tensor) -> torch.Tensor:
    """[len(heads), T, T] s6/SSD matrices (no D). Mamba: the blocked running products of
    :func:`mamba_s6_matrices` (no [c, T, T, n] tensor); Mamba-2 (one scalar A per head): from differences of
    cumulative sums of Delta, in fp64 so that S_i - S_j keeps its precision on long prompts."""
    if inn.model_type == "mamba":
        return mamba_s6_matrices(inn, heads)
    length = inn.length
    delta = inn.delta[:, heads]  # [T, c]
    cum = delta.double().cumsum(0).T
    seg = (cum[:, :, None] - cum[:, None, :]).float()  # [c, i, j] = sum_{k=j+1..i} Delta[k]
    future = ~torch.ones(length, length, dtype=torch.bool, device=delta.device).tril()
    decay = (seg * inn.A[heads][:, None, None]).masked_fill_(future, float("-inf")).exp_()
    per_group = torch.einsum("ign,jgn->gij", inn.C, inn.B)  # C_i . B_j per group
    return decay.mul_(per_group[heads // (inn.n_heads // inn.B.shape[1])]).mul_(delta.T[:, None, :])


def _unified(inn: MambaInternals, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unified matrices [c, T, T] of d_inner channels ``idx`` and the conv-bias term [T, c] (or None)."""
    heads = idx // inn.head_dim
    if inn.head_dim == 1:  # Mamba: a matrix per channel already
        mixed = _alpha(inn, heads)
    else:  # Mamba-2: one per head, shared by the head's channels
        unique, inverse = heads.unique(return_inverse=True)
        mixed = _alpha(inn, unique)[inverse]
    mixed.diagonal(dim1=1, dim2=2).add_(inn.D[heads][:, None])
    mixed.mul_(torch.sigmoid(inn.c[:, idx]).T[:, None, :])  # SiLU(c_j) = sigmoid(c_j) * c_j
    gate = F.silu(inn.z[:, idx]).T  # [c, T]
    bias = None if inn.conv_bias is None else (gate * mixed.sum(-1) * inn.conv_bias[idx][:, None]).T
    taps = inn.conv_weight.shape[1]  # conv: c_j = sum_k w[K-1-k] x_{j-k} + b, so M[i,m] = sum_k a[i,m+k] w[K-1-k]
    weight = inn.conv_weight[idx][:, :, None, None]  # [c, K, 1, 1]
    folded = mixed * weight[:, taps - 1]  # tap 0 covers every column; in-place adds for the others (no copies)
    for k in range(1, min(taps, inn.length)):
        folded[:, :, :inn.length - k].addcmul_(mixed[:, :, k:], weight[:, taps - 1 - k])
    return folded.mul_(gate[:, :, None]), bias


def _channels(inn: MambaInternals, form: str, channels) -> torch.Tensor:
    total = n_channels(inn, form)
    if channels is None:
        return torch.arange(total)
    idx = torch.as_tensor(channels, dtype=torch.long).reshape(-1)
    if len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < total):
        raise PrunescopeError(f"channel out of range (the {form} form of this layer has {total})")
    return idx


@torch.no_grad()
def mamba_matrices(internals: MambaInternals, form: str = "s6", channels: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """[len(channels) or all, T, T] implicit-attention matrices (s6: per head, Mamba's heads being its
    d_inner channels; unified: per d_inner channel); lower-triangular, no loop over positions."""
    form = mamba_form(form)
    idx = _channels(internals, form, channels)
    return _alpha(internals, idx) if form == "s6" else _unified(internals, idx)[0]


def _bytes_per_entry(inn: MambaInternals, form: str) -> int:
    """Working bytes per (channel, i, j): fp32 matrices and copies, plus Mamba's per-channel tree scratch
    spread over the T x T entries."""
    scratch = 0
    if inn.model_type == "mamba":
        scratch = -(-per_channel_scratch_bytes(padded_length(inn.length), inn.A.shape[1]) // inn.length ** 2)
    return 4 * (3 if mamba_form(form) == "s6" else 5) + scratch


def mamba_reduced(internals: MambaInternals, form: str, reduction: Reduction,
                  budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] mean / absmean / chosen-channels mean of a form's matrices. Means are linear in the channels and
    go through :func:`mamba_mean` (no per-channel matrix); Mamba's s6 absmean sums absolute values block by
    block (:func:`mamba_s6_abs_sum`); other absmeans build the matrices in channel chunks (the unified form's
    conv mixes blocks before the absolute value)."""
    selected = reduction.selected(n_channels(internals, form))
    if reduction.kind != "absmean":
        return mamba_mean(internals, mamba_form(form), selected, budget_bytes)
    if mamba_form(form) == "s6" and internals.model_type == "mamba":
        return mamba_s6_abs_sum(internals, selected, budget_bytes) / len(selected)
    return reduce_in_chunks(lambda idx: mamba_matrices(internals, form, idx), n_channels(internals, form),
                            internals.length, reduction, budget_bytes, _bytes_per_entry(internals, form))


def mamba_relevance_target(block: nn.Module, inn: MambaInternals, form: str) -> RelevanceTarget:
    """Gated at out_proj (Mamba, Falcon-Mamba, Falcon-H1 without its RMS norm): s6 -> u = SSM input,
    y = alpha u (+ D u) = out_proj input / SiLU(z); unified -> u = x branch, y = out_proj input. Gated in the
    norm (Mamba-2, Bamba): s6 -> y = the SSD output entering the gated norm (one matrix per head); unified ->
    its y * SiLU(gate), made a graph tensor by computing it in a pre-hook and calling the norm with gate=None."""
    mixer = block.get_submodule(inn.mixer_path)
    if inn.gated_at == "out_proj":
        out_proj = mixer.get_submodule("out_proj")
        if form == "s6":
            return RelevanceTarget(out_proj, "input", inn.u, gate=F.silu(inn.z), group=inn.head_dim)
        return RelevanceTarget(out_proj, "input", inn.x)
    if form == "s6":
        return RelevanceTarget(mixer.get_submodule("norm"), "input", inn.u, group=inn.head_dim)
    return RelevanceTarget(mixer.get_submodule("norm"), "gated", inn.x)


# the registry's entries (analysis/families.py): one capture and one set of functions for every Mamba kind;
# the hybrids' attention layers come from their softmax maps
MAMBA_OPS = FamilyOps(forms=("s6", "unified"), implicit_layers=all_layers, capture=capture_mamba,
                      reduced=mamba_reduced, matrices=mamba_matrices, relevance_target=mamba_relevance_target)
MAMBA2_OPS = MAMBA_OPS


# -- reference and checks ------------------------------------------------------------------------------------
@torch.no_grad()
def mamba_loop_matrices(internals: MambaInternals, form: str, channels: torch.Tensor) -> torch.Tensor:
    """Slow fp64 reference: unroll h_i = exp(Delta_i A) h_{i-1} + Delta_i B_i u_i position by position,
    keeping each u_j's coefficient in the state (alpha[i,j] = C_i . coef_j); unified then multiplies explicit
    diag(SiLU z) (alpha + D I) diag(sigmoid c) Toeplitz(conv) matrices."""
    inn, form = internals, mamba_form(form)
    idx = _channels(inn, form, channels)
    heads = idx if form == "s6" else idx // inn.head_dim
    length, dd, dev = inn.length, torch.float64, inn.x.device
    if inn.B.dim() == 2:  # Mamba-1: one B, C for every channel
        b, c = (t.double()[:, None, :].expand(-1, len(idx), -1) for t in (inn.B, inn.C))
    else:  # grouped: Mamba-2's heads share their group's, Zamba's channels their mamba head's
        groups = heads // (inn.n_heads // inn.B.shape[1])
        b, c = inn.B.double()[:, groups], inn.C.double()[:, groups]  # [T, c, n]
    a = inn.A[heads].double() if inn.model_type == "mamba" else inn.A[heads].double()[:, None].expand_as(b[0])
    delta = inn.delta[:, heads].double()  # [T, c]
    coef = torch.zeros(len(idx), length, b.shape[-1], dtype=dd, device=dev)  # coefficient of u_j in h_i: [c, j, n]
    alpha = torch.zeros(len(idx), length, length, dtype=dd, device=dev)
    for i in range(length):
        coef = coef * torch.exp(delta[i][:, None] * a)[:, None, :]
        coef[:, i] = delta[i][:, None] * b[i]
        alpha[:, i] = torch.einsum("cjn,cn->cj", coef, c[i])
    if form == "s6":
        return alpha.float()
    taps, eye = inn.conv_weight.shape[1], torch.eye(length, dtype=dd, device=dev)
    out = torch.zeros_like(alpha)
    for row, ch in enumerate(idx.tolist()):
        toeplitz = torch.zeros(length, length, dtype=dd, device=dev)
        for j in range(length):
            for k in range(min(taps, j + 1)):
                toeplitz[j, j - k] = inn.conv_weight[ch, taps - 1 - k].double()
        mixed = alpha[row] + inn.D[heads[row]].double() * eye
        out[row] = (torch.diag(F.silu(inn.z[:, ch].double())) @ mixed @ torch.diag(torch.sigmoid(inn.c[:, ch].double()))
                    @ toeplitz)
    return out.float()


@torch.no_grad()
def mamba_reconstruct(internals: MambaInternals, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrices applied to the layer's inputs, the real forward's tensor), both [T, d]. s6: gated at out_proj
    (Mamba, Falcon-Mamba, Falcon-H1) -> the out_proj input (alpha u + D u) * SiLU(z); gated in the norm
    (Mamba-2, Bamba) -> the SSD output y entering it. unified: M x + conv-bias term -> the gated tensor."""
    inn, form = internals, mamba_form(form)
    length = inn.length
    if form == "s6":
        u = inn.u.reshape(length, inn.n_heads, inn.head_dim)
        y = (torch.einsum("hij,jhp->ihp", _alpha(inn, torch.arange(inn.n_heads)), u)
             + inn.D[:, None] * u).reshape(length, -1)
        if inn.gated_at == "out_proj":
            return y * F.silu(inn.z), inn.observed["out_proj_in"]
        return y, inn.observed["ssm_out"]
    folded, bias = _unified(inn, torch.arange(inn.n_channels))
    rebuilt = torch.einsum("dim,md->id", folded, inn.x) + (0 if bias is None else bias)
    return rebuilt, inn.observed["gated"]
