"""Channel-mean Mamba / Mamba-2 implicit attention without any per-channel [T, T] matrix.

The mean over channels d of ``L[i,d] alpha_d[i,j] R[j,d]`` (L, R: the data-dependent diagonals of the form,
e.g. SiLU(z_i) and sigmoid(c_j) for ``unified``) is, for a block of rows that lies after a block of columns,
one matrix product over the joint (channel, state) axis:

    exp((S_i - S_j) A) = exp((S_i - S_p) A) * exp((S_p - S_j) A)        (S = cumsum of Delta)

through the block's last column p, both factors <= 1 (Delta > 0, A < 0), so nothing overflows. The blocks tile
the strict lower triangle like a binary tree: at level h, rows [s+h, s+2h) against columns [s, s+h) for every
s that is a multiple of 2h (the length padded to a power of two with zero-weight positions); the diagonal
(exp(0) = 1) is direct. All blocks of a level are one batched matmul.

The factors are never exponentiated per level: with the per-step decays ``exp(Delta_t A)`` (one exponential
per position, floored at exp(-60) so fp32 stays out of its slow denormal range), the row factors are running
products from the pivot and the column factors running products up to it. Going from level h to 2h multiplies
a block's rows by the product over the block before it and its columns by the product over the block after it
(each block's product is the elementwise product of its two halves'). L_i C_i and R_j Delta_j B_j are folded
into the running products once, at the start, since every update is a multiplication.

Cost: about T^2 / 2 * d * n multiply-adds in BLAS, T * d * n exponentials and 2 log2(T) elementwise products
over half the [T, d * n] factors, instead of T^2 * d * n exponentials and a [d, T, T] tensor. Channels go in
chunks whose factors fit a CPU's last-level cache. The unified form's causal conv is a sum over its taps k of
the same product with the tap's weight in R, shifted by k columns.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from analysis.implicit_attention.common import DEFAULT_BUDGET_BYTES

# exp(-60) = 8.7e-27: smaller per-step decays are kept at that value instead of becoming fp32 denormals, which
# exp2 computes ~2.5x slower; a product containing one is below it either way, so no entry moves by more than
# 1e-25 (the matrices' entries are O(1e-3..1)).
MIN_EXPONENT = -60.0
LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x log2 e); torch's exp2 runs ~4x faster than its exp on CPU
# Channels per chunk: the chunk's factors should stay in a CPU's last-level cache (Mamba-130m shape, T = 256,
# 32 MiB L3: 12-16 MiB chunks were fastest, 8 MiB 1.1x, 64 MiB 1.2x and one 75 MB chunk 1.4x slower).
CACHE_BYTES = 16 << 20


@dataclass
class _Terms:
    """The selected channels' factors (c channels, n states, K right diagonals): a [c, n]; b and c [T, c or 1, n]
    (Mamba shares them across channels: broadcast, never expanded); delta [T, c]; left [T, c] with the mean's
    1/total, or None for s6, whose constant 1/total is folded into c (one pass less over the largest arrays);
    rights [K, T, c], one per conv tap for unified; extra [c], the unified form's D on the diagonal."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    delta: torch.Tensor
    left: torch.Tensor | None
    rights: torch.Tensor
    extra: torch.Tensor

    def channels(self, start: int, stop: int) -> "_Terms":
        """Views of channels [start, stop) (broadcast dimensions stay as they are)."""
        def cut(t, dim):
            return t if t is None or t.shape[dim] == 1 else t.narrow(dim, start, stop - start)
        return _Terms(cut(self.a, 0), cut(self.b, 1), cut(self.c, 1), cut(self.delta, 1), cut(self.left, 1),
                      cut(self.rights, 2), cut(self.extra, 0))

    def diagonal(self) -> torch.Tensor:
        """[K, T]: the channel sum of each right diagonal's contribution at j = i (exp(0) = 1), D included."""
        diag = (self.c * self.b).sum(-1) * self.delta + self.extra  # alpha_d[i, i] (+ D for unified)
        return torch.einsum("tc,ktc->kt", diag if self.left is None else self.left * diag, self.rights)


def _terms(inn, idx: torch.Tensor, form: str) -> _Terms:
    """The factors of the ``form`` matrices of channels ``idx`` (index_select: ~10x faster than [:, idx])."""
    heads = idx if form == "s6" else idx // inn.head_dim
    length, count = inn.length, len(idx)
    if inn.model_type == "mamba":
        a = inn.A.index_select(0, heads)
        b, c = inn.B[:, None, :], inn.C[:, None, :]
    else:
        groups = heads // (inn.n_heads // inn.B.shape[1])
        b, c = inn.B.index_select(1, groups), inn.C.index_select(1, groups)
        a = inn.A.index_select(0, heads)[:, None].expand(-1, b.shape[-1])
    delta = inn.delta.index_select(1, heads).float()
    if form == "s6":
        left, c = None, c / count
        rights = torch.ones(1, length, count, device=delta.device)
        extra = torch.zeros(count, device=delta.device)
    else:
        left = F.silu(inn.z.index_select(1, idx)) / count
        taps = inn.conv_weight.shape[1]
        sig = torch.sigmoid(inn.c.index_select(1, idx))
        weight = inn.conv_weight.index_select(0, idx)
        rights = torch.stack([sig * weight[:, taps - 1 - k] for k in range(taps)])
        extra = inn.D.index_select(0, heads).float()
    return _Terms(a.float(), b.float(), c.float(), delta, left, rights, extra)


class _Scratch:
    """Per-thread reusable float buffers for the running products. A fresh multi-MB CPU tensor costs ~15x its
    first use in page faults, more than all the arithmetic here; keeping one buffer per thread (about
    CACHE_BYTES) avoids that and stays safe when several app sessions compute at once."""

    _local = threading.local()

    def __init__(self, numel: int, like: torch.Tensor):
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.numel() < numel or buf.device != like.device:
            buf = self._local.buf = like.new_empty(numel)
        self.flat, self.used = buf, 0

    def take(self, *shape: int, pad_from: int = 0, fill: float = 0.0) -> torch.Tensor:
        """The next [*shape] slice of the buffer, its rows from ``pad_from`` on (the padding) set to ``fill``."""
        numel = math.prod(shape)
        out = self.flat[self.used:self.used + numel].view(shape)
        self.used += numel
        if pad_from:
            out[pad_from:] = fill
        return out

    def rewind(self) -> None:
        """Hand out the buffer from its start again (the previous chunk is done with it)."""
        self.used = 0

    @staticmethod
    def numel(size: int, width: int, taps: int) -> int:
        """Floats :func:`_accumulate` takes for ``width`` = channels * states columns."""
        return size * width * (taps + 2) + size // 2 * width


def _accumulate(out: torch.Tensor, scratch: _Scratch, terms: _Terms) -> None:
    """Add one channel chunk's strictly-lower-triangular part to ``out`` [K, P, P] (one map per right diagonal)."""
    a, b, c, delta, left, rights = terms.a, terms.b, terms.c, terms.delta, terms.left, terms.rights
    taps, length = rights.shape[0], delta.shape[0]
    size = out.shape[-1]
    channels, states = delta.shape[1], a.shape[1]
    width = channels * states
    # totals: each current block's product of per-step decays (level 1: the decays themselves; 1 past the prompt)
    totals = scratch.take(size, channels, states, pad_from=length, fill=1.0)
    torch.mul(delta[..., None], a * LOG2E, out=totals[:length]).clamp_(min=MIN_EXPONENT * LOG2E).exp2_()
    rows = scratch.take(size, channels, states, pad_from=length)  # L_i C_i * decays from the pivot (excl.) to i
    torch.mul(totals[:length], c, out=rows[:length])
    if left is not None:
        rows[:length].mul_(left[..., None])
    cols = scratch.take(size, taps, channels, states, pad_from=length)  # R_j Delta_j B_j * decays after j to pivot
    torch.mul((rights * delta).transpose(0, 1)[..., None], b[:, None], out=cols[:length])
    rows, cols, totals = rows.view(size, width), cols.view(size, taps, width), totals.view(size, width)
    spare = [scratch.take(size // 2, width), totals]  # the next level's totals alternate between two buffers
    h = 1
    while h < size:
        nb = size // (2 * h)
        later = rows.view(nb, 2, h, width)[:, 1]  # [nb, h, width]: the rows of each pair's later block
        earlier = cols.view(nb, 2, h, taps, width)[:, 0]  # [nb, h, taps, width]: the earlier block's columns
        tiles = out.view(taps, nb, 2, h, nb, 2, h).diagonal(dim1=1, dim2=4)[:, 1, :, 0]  # [taps, h, h, nb]
        product = torch.bmm(later, earlier.flatten(1, 2).transpose(1, 2))  # [nb, h, h * taps]: all taps at once
        tiles += product.view(nb, h, h, taps).permute(3, 1, 2, 0)
        if 2 * h < size:  # extend the running products over the whole next-level blocks
            blocks = totals.view(nb, 2, 1, width)
            later[1:].mul_(blocks[1:, 0])  # the first pair's rows and the last pair's columns are never used again
            earlier[:-1].mul_(blocks[:-1, 1, :, None])
            totals = torch.mul(blocks[:, 0, 0], blocks[:, 1, 0], out=spare[0][:nb])
            spare.reverse()
        h *= 2


@torch.no_grad()
def mamba_mean(inn, form: str, idx: torch.Tensor, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] mean over channels ``idx`` of the ``s6`` (per head) or ``unified`` (per d_inner channel)
    matrices, equal to averaging :func:`analysis.implicit_attention.mamba.mamba_matrices`."""
    length = inn.length
    size = 1 << max(0, (length - 1).bit_length())
    states = inn.A.shape[-1] if inn.model_type == "mamba" else inn.B.shape[-1]
    taps = 1 if form == "s6" else inn.conv_weight.shape[1]
    per_channel = 4 * size * states * (taps + 2)  # bytes of one channel's running products
    chunks = -(-len(idx) // max(1, min(budget_bytes, CACHE_BYTES) // per_channel))
    chunk = -(-len(idx) // chunks)  # equal chunks: no small remainder
    terms = _terms(inn, idx, form)
    out = torch.zeros(taps, size, size, device=inn.x.device)
    out.diagonal(dim1=1, dim2=2)[:, :length] = terms.diagonal()
    scratch = _Scratch(_Scratch.numel(size, chunk * states, taps), out)
    for start in range(0, len(idx), chunk):
        scratch.rewind()
        _accumulate(out, scratch, terms.channels(start, min(start + chunk, len(idx))))
    out = out[:, :length, :length]
    if taps == 1:
        return out[0].contiguous()
    folded = torch.zeros(length, length, device=out.device)  # tap k: M[i, m] += X_k[i, m + k]
    for k in range(min(taps, length)):
        folded[:, :length - k] += out[k][:, k:]
    return folded
