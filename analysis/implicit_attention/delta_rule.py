"""Exact implicit attention of delta-rule and decayed linear-attention layers (arXiv 2405.16504): Gated
DeltaNet (Qwen3-Next), Kimi Delta Attention (Kimi Linear) and lightning attention (MiniMax).

Per head, with q_i, k_i as transformers feeds them to the recurrence (after the short conv, its SiLU and
the L2 norm; q scaled by d_k^-1/2), the write strength beta_i and the log decay g_i (a scalar per head for
Gated DeltaNet and lightning, one per key channel for KDA), transformers runs (state S: d_k x d_v)

    S_i = diag(exp g_i) S_{i-1};  u_i = beta_i (v_i - S_i^T k_i);  S_i += k_i u_i^T;  o_i = S_i^T q_i

i.e. S_i^T = S_{i-1}^T diag(exp g_i) (I - beta_i k_i k_i^T) + beta_i v_i k_i^T. Unrolled (the WY / UT form),
S_i = sum_{j<=i} diag(exp(G_i - G_j)) k_j u_j^T with G the cumulative log decay, so with

    Lqk[i, j] = sum_c q_i[c] k_j[c] exp(G_i[c] - G_j[c])            (j <= i)
    Lkk[i, j] = beta_i sum_c k_i[c] k_j[c] exp(G_i[c] - G_j[c])     (j < i)

the new values are u = (I + Lkk)^-1 diag(beta) v and the output o = Lqk u: o_i = sum_{j<=i} A[i, j] v_j with

    A = Lqk (I + Lkk)^-1 diag(beta)      (one [T, T] matrix per head, shared by its d_v value channels)

computed by one unit-lower-triangular solve per head in float64 (no [T, T, d_k, d_v] buffer). KDA's
channel-wise decay goes by blocks of rows, one matrix product each: exp(G_i - G_j) = exp(G_i - G_r)
exp(G_r - G_j) with r the block's first row, the block ending before the decay from r spreads past e^300
in any channel, so neither factor leaves float64's range (a product of two factors loses no precision;
the entries above the diagonal, where the second factor may be large, are zeroed). Lightning attention has
no delta correction: ``beta`` is None and A = Lqk with g = -slope per step, so A[i, j] = q_i.k_j exp(-s (i-j)).

Forms: the family's core form (``"delta"``, ``"kda"``, ``"lightning"``: A per head, maps the values entering
the recurrence to its output) and ``"unified"`` (per value channel c: ``diag(gate_c) A diag(sigmoid(pre_c))
Conv_c``, the conv's SiLU and the output norm taken as data-dependent diagonals, as the Mamba unified form
does; maps the value projection before the conv to the out-projection's input). The gate is the gated
output norm, ``weight * act(z) / rms``, with the RMS of the position's head (Qwen3-Next, Kimi) or of all heads
(MiniMax) as computed in the real forward. Layers without a conv (MiniMax) map the values themselves.

The families' captures and registry entries live in :mod:`analysis.implicit_attention.delta_families`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from analysis.errors import PrunescopeError
from analysis.implicit_attention.common import (
    DEFAULT_BUDGET_BYTES,
    Internals,
    Reduction,
    check_form,
    fold_causal_conv,
    reduce_in_chunks,
)
from analysis.implicit_attention.ops import RelevanceTarget

UNIFIED = "unified"
KDA_SPAN = 300.0  # largest log-decay spread within one block of KDA's rows (float64 overflows at e^709)


@dataclass
class LinearInternals(Internals):
    """One recurrent layer's tensors from one forward pass (float32, batch dropped; T positions, H value heads,
    d_k key channels per head, C = H * d_v value channels, K conv taps)."""

    tc_field: ClassVar[str] = "v"

    kind: str  # the core form: "delta", "kda" or "lightning"
    layer: int
    q: torch.Tensor  # [H, T, d_k] as the recurrence reads it (normalised, scaled; key heads repeated per value head)
    k: torch.Tensor  # [H, T, d_k]
    beta: torch.Tensor | None  # [H, T] write strength (None: plain linear attention)
    log_decay: torch.Tensor  # [H, T] or [H, T, d_k]: the state is multiplied by exp(log_decay) at each step
    v: torch.Tensor  # [T, C] values entering the recurrence
    core: torch.Tensor  # [T, C] the recurrence's output (captured)
    out_gate: torch.Tensor  # [T, C] out_proj input = out_gate * core (norm weight, gate, 1 / rms)
    out_proj_in: torch.Tensor  # [T, C] captured
    x_pre: torch.Tensor | None = None  # [T, C] value channels before the conv (None: no conv)
    conv_pre: torch.Tensor | None = None  # [T, C] conv output before its SiLU
    conv_weight: torch.Tensor | None = None  # [C, K]

    @property
    def n_heads(self) -> int:
        return self.q.shape[0]

    @property
    def head_dim(self) -> int:
        return self.n_channels // self.n_heads

    def n_matrices(self, form: str) -> int:
        return n_matrices(self, form)

    @property
    def source(self) -> torch.Tensor:
        """What the unified form's matrices multiply: the values before the conv, or the values."""
        return self.v if self.x_pre is None else self.x_pre


def _forms(inn: LinearInternals) -> tuple[str, str]:
    return inn.kind, UNIFIED


def _check(inn: LinearInternals, form: str) -> str:
    return check_form(form, _forms(inn), inn.kind)


def _decayed_products(a: torch.Tensor, b: torch.Tensor, log_decay: torch.Tensor, strict: bool) -> torch.Tensor:
    """[H, T, T] float64: sum_c a_i[c] b_j[c] exp(G_i[c] - G_j[c]) on and below (``strict``: below) the
    diagonal, 0 above; G = cumsum(log_decay) in float64, differences taken before the exp (no overflow)."""
    a, b, cum = a.double(), b.double(), log_decay.double().cumsum(1)
    length = a.shape[1]
    keep = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1 if strict else 0)

    def decay(g: torch.Tensor) -> torch.Tensor:  # [H, T] -> [H, T, T]
        return torch.exp((g[:, :, None] - g[:, None, :]).masked_fill(~keep, float("-inf")))

    if cum.dim() == 2:
        return (a @ b.transpose(1, 2)) * decay(cum)
    out = a.new_zeros(a.shape[0], length, length)
    start = 0
    while start < length:  # rows in blocks whose decay stays within float64's range: one matrix product each
        spread = (cum[:, start:start + 1] - cum[:, start:]).amax(dim=(0, 2))  # [T - start], non-decreasing
        end = start + int(torch.searchsorted(spread, KDA_SPAN, right=True))
        ref = cum[:, start:start + 1]  # G at the block's first row: exp(G_i - ref) <= 1, exp(ref - G_j) <= e^SPAN
        out[:, start:end, :end] = (a[:, start:end] * torch.exp(cum[:, start:end] - ref)) @ \
            (b[:, :end] * torch.exp(ref - cum[:, :end])).transpose(1, 2)
        start = end
    return out.masked_fill_(~keep, 0)


def recurrence_matrices(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor | None,
                        log_decay: torch.Tensor) -> torch.Tensor:
    """[H, T, T] float32 A with o_i = sum_j A[i, j] v_j: Lqk (I + Lkk)^-1 diag(beta), or Lqk without beta."""
    qk = _decayed_products(q, k, log_decay, strict=False)
    if beta is None:
        return qk.float()
    beta = beta.double()
    system = _decayed_products(k, k, log_decay, strict=True) * beta[:, :, None]
    system = system + torch.eye(system.shape[-1], dtype=system.dtype, device=system.device)
    new_values = torch.linalg.solve_triangular(system, torch.diag_embed(beta), upper=False, unitriangular=True)
    return (qk @ new_values).float()


def recurrence_loop(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor | None,
                    log_decay: torch.Tensor) -> torch.Tensor:
    """Reference: transformers' recurrent loop position by position in float64 with one-hot values (value
    channel j = source position j), so the output rows are the rows of A: [H, T, T]."""
    q, k, decay = q.double(), k.double(), log_decay.double().exp()
    heads, length, dk = k.shape
    state = q.new_zeros(heads, dk, length)
    out = q.new_zeros(heads, length, length)
    for i in range(length):
        state = state * (decay[:, i, :, None] if decay.dim() == 3 else decay[:, i, None, None])
        onehot = torch.zeros(length, dtype=q.dtype, device=q.device)
        onehot[i] = 1
        if beta is None:
            update = onehot.expand(heads, length)
        else:
            update = (onehot - torch.einsum("hc,hct->ht", k[:, i], state)) * beta[:, i, None].double()
        state = state + k[:, i, :, None] * update[:, None, :]
        out[:, i] = torch.einsum("hc,hct->ht", q[:, i], state)
    return out.float()


def _channels(total: int, channels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if channels is None:
        return torch.arange(total, device=device)
    idx = torch.as_tensor(channels, dtype=torch.long).reshape(-1).to(device)
    if len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < total):
        raise PrunescopeError(f"channel out of range (this form of the layer has {total})")
    return idx


def n_matrices(inn: LinearInternals, form: str) -> int:
    """The core form has one matrix per head, the unified form one per value channel."""
    return inn.n_heads if _check(inn, form) == inn.kind else inn.n_channels


def _head_matrices(inn: LinearInternals, heads: torch.Tensor,
                   build: Callable[..., torch.Tensor] = recurrence_matrices) -> torch.Tensor:
    beta = None if inn.beta is None else inn.beta[heads]
    return build(inn.q[heads], inn.k[heads], beta, inn.log_decay[heads])


def _unified(inn: LinearInternals, idx: torch.Tensor, build: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Per value channel: diag(out_gate) A_head diag(sigmoid(conv_pre)) Conv, each head's A built once."""
    heads, inverse = torch.unique(idx // inn.head_dim, return_inverse=True)
    alpha = _head_matrices(inn, heads, build)[inverse]  # [n, T, T]
    if inn.conv_weight is not None and inn.conv_pre is not None:
        alpha = alpha * torch.sigmoid(inn.conv_pre[:, idx]).T[:, None, :]
        alpha = fold_causal_conv(alpha, inn.conv_weight[idx])
    return alpha * inn.out_gate[:, idx].T[:, :, None]


@torch.no_grad()
def linear_matrices(internals: LinearInternals, form: str, channels: torch.Tensor | None = None) -> torch.Tensor:
    """[n, T, T] matrices (rows: output positions, columns: sources; 0 above the diagonal): per head for the
    core form, per value channel for the unified form."""
    idx = _channels(n_matrices(internals, form), channels, internals.v.device)
    if _check(internals, form) == internals.kind:
        return _head_matrices(internals, idx)
    return _unified(internals, idx, recurrence_matrices)


@torch.no_grad()
def linear_loop_matrices(internals: LinearInternals, form: str, channels: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """The float64 reference of :func:`linear_matrices`: the recurrence run position by position, and for the
    unified form an explicit conv (tap by tap) and the gates applied in float64."""
    idx = _channels(n_matrices(internals, form), channels, internals.v.device)
    if _check(internals, form) == internals.kind:
        return _head_matrices(internals, idx, recurrence_loop)
    heads = idx // internals.head_dim
    alpha = _head_matrices(internals, torch.unique(heads), recurrence_loop).double()
    alpha = alpha[torch.searchsorted(torch.unique(heads), heads)]
    if internals.conv_weight is not None and internals.conv_pre is not None:
        weight, length = internals.conv_weight[idx].double(), internals.length
        conv = alpha.new_zeros(len(idx), length, length)  # conv[c, j, m]: weight of x_m in the conv output at j
        for j in range(length):
            for tap in range(weight.shape[1]):
                m = j - (weight.shape[1] - 1) + tap
                if m >= 0:
                    conv[:, j, m] = weight[:, tap]
        alpha = alpha @ (torch.sigmoid(internals.conv_pre[:, idx].double()).T[:, :, None] * conv)
    return (alpha * internals.out_gate[:, idx].double().T[:, :, None]).float()


def linear_reduced(internals: LinearInternals, form: str, reduction: Reduction,
                   budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] mean / absmean / chosen-channels mean, built in chunks of heads or channels within the budget
    (float64 products and solve: about 64 bytes per matrix entry)."""
    return reduce_in_chunks(lambda idx: linear_matrices(internals, form, idx), n_matrices(internals, form),
                            internals.length, reduction, budget_bytes, bytes_per_entry=64)


def linear_reconstruct(internals: LinearInternals, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrices applied to their inputs, the captured tensor), both [T, C]: the values -> the recurrence's
    output for the core form; the pre-conv values -> the out-projection's input for the unified form."""
    inn = internals
    if _check(inn, form) == inn.kind:
        alpha = linear_matrices(inn, form)
        values = inn.v.reshape(inn.length, inn.n_heads, inn.head_dim)
        return torch.einsum("hij,jhd->ihd", alpha, values).reshape(inn.length, -1), inn.core
    return torch.einsum("cij,jc->ic", linear_matrices(inn, form), inn.source), inn.out_proj_in


def relevance_target_at(out_proj: str) -> Callable[[nn.Module, LinearInternals, str], RelevanceTarget]:
    """gradattn reads dF/dy at the input of the block's module ``out_proj``: for the core form y is the
    recurrence's output (the gate turns dF/d(out_proj input) into dF/dy, the RMS held fixed like the unified
    form's diagonals) with a head's d_v channels sharing one matrix; for the unified form y is that input."""
    def target(block: nn.Module, inn: LinearInternals, form: str) -> RelevanceTarget:
        module = block.get_submodule(out_proj)
        if _check(inn, form) == inn.kind:
            return RelevanceTarget(module, "input", inn.v, gate=inn.out_gate, group=inn.head_dim)
        return RelevanceTarget(module, "input", inn.source)
    return target
