"""Implicit attention of diagonal linear recurrences by a binary tree of blocks: channel means without any
per-channel [T, T] matrix (Mamba, Mamba-2 and Griffin's RG-LRU, as :class:`Terms`), Mamba's per-channel s6
matrices, and their absolute values summed block by block.

The mean over channels d of ``L[i,d] alpha_d[i,j] R[j,d]`` (L, R: the data-dependent diagonals of the form,
e.g. SiLU(z_i) and sigmoid(c_j) for ``unified``) is, for a block of rows that lies after a block of columns,
one matrix product over the joint (channel, state) axis:

    exp((S_i - S_j) A) = exp((S_i - S_p) A) * exp((S_p - S_j) A)        (S = cumsum of Delta)

through the block's last column p, both factors <= 1 (Delta > 0, A < 0), so nothing overflows. The blocks tile
the strict lower triangle like a binary tree: at level h, rows [s+h, s+2h) against columns [s, s+h) for every
s that is a multiple of 2h (the length padded to a power of two with zero-weight positions); the diagonal
(exp(0) = 1) is direct. All blocks of a level are one batched matmul.

The factors are never exponentiated per level: with the per-step decays ``exp(Delta_t A)`` (one exponential
per position), the row factors are running
products from the pivot and the column factors running products up to it. Going from level h to 2h multiplies
a block's rows by the product over the block before it and its columns by the product over the block after it
(each block's product is the elementwise product of its two halves'). L_i C_i and R_j Delta_j B_j are folded
into the running products once, at the start, since every update is a multiplication.

No arithmetic here ever sees a subnormal float32 (magnitudes below 2^-126). Running products of decays fall
through that range, and Intel cores take a microcode assist of ~100+ cycles for every subnormal result or operand
unless FTZ/DAZ is set (AMD's do not: that made this path 5x slower on one 2-core VM than on another while the fp64
loop was 1.3x slower). FTZ cannot be relied on (torch.set_flush_denormal sets only the calling thread, not the
intra-op threads), so every stored factor is kept either 0 or at least 2^-51 in magnitude (:func:`_flush` after
each multiplication; per-step decays floored at 2^-51): a product of two is then at least 2^-102, and sums and
differences of such products (the matrix products' accumulation) are 0 or at least their unit in the last place,
2^-125, normal numbers. What is dropped or floored moves an entry by ~4e-16 times the largest factors, below
fp32's rounding.

Cost: about T^2 / 2 * d * n multiply-adds in BLAS, T * d * n exponentials and 2 log2(T) elementwise products
over half the [T, d * n] factors, instead of T^2 * d * n exponentials and a [d, T, T] tensor. Channels go in
chunks whose factors fit a CPU's last-level cache. The unified form's causal conv is a sum over its taps k of
the same product with the tap's weight in R, shifted by k columns.

The same tree with one output per channel, contracting only that channel's n states, gives Mamba's
per-channel s6 matrices or, taking each block's absolute values before summing over channels, the
``absmean`` reduction without the matrices (:mod:`analysis.implicit_attention.mamba_tree`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import torch

from analysis.implicit_attention.common import DEFAULT_BUDGET_BYTES

# Every stored factor is 0 or at least 2^-51 in magnitude, so products of two (>= 2^-102) and their sums stay
# normal float32 (>= 2^-126); per-step decays below it are floored at it (exp2 also computes subnormal results
# ~2.5x slower).
FLOOR_LOG2 = -51
FLUSH_BELOW = 2.0 ** FLOOR_LOG2
LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x log2 e); torch's exp2 runs ~4x faster than its exp on CPU


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """The size of CPU 0's largest cache as Linux reports it (``default`` elsewhere)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
            sizes.append(int(text[:-1]) << {"K": 10, "M": 20}[text[-1]] if text[-1] in "KM" else int(text))
        except (OSError, ValueError):
            continue
    return max(sizes, default=default)


# Channels per chunk: the chunk's factors should stay in the CPU's last-level cache (Mamba-130m shape, T = 256,
# 32 MiB L3: 12-16 MiB chunks were fastest, 8 MiB 1.1x, 64 MiB 1.2x and one 75 MB chunk 1.4x slower): half of
# it, between 4 and 32 MiB.
CACHE_BYTES = min(max(last_level_cache_bytes() // 2, 4 << 20), 32 << 20)


@dataclass
class Terms:
    """The factors of a family of diagonal linear recurrences, one per channel (c channels, n states, K right
    diagonals): ``alpha_d[i, j] = sum_n C[i,n] exp(a[d,n] sum_{k=j+1..i} rate[k,d]) weight[j,d] B[j,n]``, seen
    through ``L[i,d] alpha_d[i,j] R_k[j,d]``. rate and weight [T, c] (Mamba: both Delta; Griffin: -log a and
    the RG-LRU's input weight); a [c, n] < 0; b and c [T, c or 1, n] (Mamba shares them across channels:
    broadcast, never expanded); left [T, c] with the mean's 1/total, or None when that constant 1/total is
    folded into c (one pass less over the largest arrays); rights [K, T, c], one per conv tap, or None (one
    right diagonal of ones); extra [c], added on the diagonal (Mamba's D in the unified form)."""

    rate: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    weight: torch.Tensor
    left: torch.Tensor | None
    rights: torch.Tensor | None
    extra: torch.Tensor

    def channels(self, start: int, stop: int) -> Terms:
        """Views of channels [start, stop) (broadcast dimensions stay as they are)."""
        def cut(t, dim):
            return t if t is None or t.shape[dim] == 1 else t.narrow(dim, start, stop - start)
        return Terms(cut(self.rate, 1), cut(self.a, 0), cut(self.b, 1), cut(self.c, 1), cut(self.weight, 1),
                     cut(self.left, 1), cut(self.rights, 2), cut(self.extra, 0))

    def diagonal(self) -> torch.Tensor:
        """[K, T]: the channel sum of each right diagonal's contribution at j = i (exp(0) = 1), extra included."""
        diag = (self.c * self.b).sum(-1) * self.weight + self.extra  # alpha_d[i, i] (+ D for unified)
        weighted = diag if self.left is None else self.left * diag
        return weighted.sum(-1)[None] if self.rights is None else torch.einsum("tc,ktc->kt", weighted, self.rights)


def _flush(t: torch.Tensor) -> torch.Tensor:
    """``t`` in place with entries smaller than FLUSH_BELOW in magnitude set to 0 (one pass, views too)."""
    return torch.hardshrink(t, FLUSH_BELOW, out=t) if FLUSH_BELOW > 0 else t


@overload
def _flushed(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _flushed(t: None) -> None: ...
def _flushed(t: torch.Tensor | None) -> torch.Tensor | None:
    """A flushed copy of a small input factor (the internals themselves are left as they are)."""
    return None if t is None else _flush(t.float().clone())


def padded_length(length: int) -> int:
    """The tree's length: ``length`` rounded up to a power of two (the extra positions weigh zero)."""
    return 1 << max(0, (length - 1).bit_length())


class _Scratch:
    """Per-thread reusable float buffers for the running products. A fresh multi-MB CPU tensor costs ~15x its
    first use in page faults, more than all the arithmetic here; keeping one buffer per thread (about
    CACHE_BYTES) avoids that and stays safe when several app sessions compute at once. Buffers above
    RETAIN_BYTES (very long prompts) are allocated per call and not kept."""

    _local = threading.local()
    RETAIN_BYTES = 64 << 20

    def __init__(self, numel: int, like: torch.Tensor):
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.numel() < numel or buf.device != like.device:
            buf = like.new_empty(numel)
            if numel * buf.element_size() <= self.RETAIN_BYTES:
                self._local.buf = buf
        self.flat, self.used = buf, 0

    def take(self, *shape: int) -> torch.Tensor:
        """The next [*shape] slice of the buffer."""
        numel = math.prod(shape)
        out = self.flat[self.used:self.used + numel].view(shape)
        self.used += numel
        return out

    @staticmethod
    def numel(groups: int, size: int, width: int, taps: int) -> int:
        """Floats a :class:`_Tree` takes."""
        return groups * (size * width * (taps + 2) + size // 2 * width + size * size * taps // 4)


class _Tree:
    """The binary tree of blocks for ``groups`` independent outputs (``out`` [G, K, P, P]), each contracting
    ``width`` columns: one output over the joint (channel, state) axis for channel means (G = 1), or one per
    channel over its states for per-channel matrices (G = channels). Holds the running products in scratch
    buffers ([G, P, width], the caller fills level 1) and, per level, the views that level multiplies, writes
    and extends. Built once per call and reused by every chunk of the same width, so a chunk costs a handful of
    kernel calls per level and no Python view bookkeeping."""

    def __init__(self, out: torch.Tensor, scratch: _Scratch, width: int, abs_groups: int = 0):
        """``abs_groups`` > 0: that many groups, whose blocks' absolute values are summed into ``out``'s single
        output (the per-channel matrices' absolute values, never materialised)."""
        taps, size = out.shape[1], out.shape[-1]
        self.absolute = abs_groups > 0
        groups = abs_groups or out.shape[0]
        self.width = width
        # totals: each current block's product of per-step decays (level 1: the decays themselves; 1 past the prompt)
        self.totals = scratch.take(groups, size, width)
        self.rows = scratch.take(groups, size, width)  # L_i C_i * decays from the pivot (excl.) to i
        self.cols = scratch.take(groups, size, taps, width)  # R_j Delta_j B_j * decays after j to the pivot
        spare = [scratch.take(groups, size // 2, width), self.totals]  # the next level's totals alternate
        products = scratch.take(groups * size * size * taps // 4)
        totals = self.totals
        self.levels = []
        h = 1
        while h < size:
            nb = size // (2 * h)
            later = self.rows.view(groups, nb, 2, h, width)[:, :, 1]  # [G, nb, h, W]: each pair's later rows
            earlier = self.cols.view(groups, nb, 2, h, taps, width)[:, :, 0]  # [G, nb, h, K, W]: earlier columns
            product = products[:groups * nb * h * h * taps].view(groups * nb, h, h * taps)  # taps in one matmul
            tiles = out.view(-1, taps, nb, 2, h, nb, 2, h).diagonal(dim1=2, dim2=5)[:, :, 1, :, 0]
            level = [later.view(groups * nb, h, width),  # views (never copies: the updates below must reach them)
                     earlier.view(groups * nb, h * taps, width).transpose(1, 2),
                     product, tiles, product.view(groups, nb, h, h, taps).permute(0, 4, 2, 3, 1)]
            if 2 * h < size:  # extend the running products over the whole next-level blocks; the first pair's
                blocks = totals.view(groups, nb, 2, 1, width)  # rows, the last pair's columns are never used again
                totals = spare[0][:, :nb]
                level += [later[:, 1:], blocks[:, 1:, 0], earlier[:, :-1], blocks[:, :-1, 1, :, None],
                          blocks[:, :, 0, 0], blocks[:, :, 1, 0], totals]
                spare.reverse()
            self.levels.append(level)
            h *= 2

    def run(self) -> None:
        """Add every level's blocks to the output (the buffers hold level 1)."""
        for later, earlier, product, tiles, product_tiles, *extend in self.levels:
            torch.bmm(later, earlier, out=product)
            tiles += product_tiles.abs_().sum(0, keepdim=True) if self.absolute else product_tiles
            if extend:
                later_rest, before, earlier_rest, after, first, second, totals = extend
                _flush(later_rest.mul_(before))
                _flush(earlier_rest.mul_(after))
                _flush(torch.mul(first, second, out=totals))


def _decays(rate: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """exp(rate * a) (broadcast) into ``out``, floored at FLUSH_BELOW, through exp2."""
    torch.mul(rate, a * LOG2E, out=out)
    return out.clamp_(min=FLOOR_LOG2 if FLUSH_BELOW > 0 else -126).exp2_()


def _accumulate_mean(tree: _Tree, terms: Terms) -> None:
    """Add one channel chunk's strictly-lower-triangular part to the means (G = 1, width = channels * states)."""
    a, b, c, weight, left, rights = terms.a, terms.b, terms.c, terms.weight, terms.left, terms.rights
    length, channels, states = weight.shape[0], weight.shape[1], a.shape[1]
    size = tree.totals.shape[1]
    totals = tree.totals.view(size, channels, states)
    rows = tree.rows.view(size, channels, states)
    cols = tree.cols.view(size, -1, channels, states)
    totals[length:], rows[length:], cols[length:] = 1.0, 0.0, 0.0  # zero-weight padding
    _decays(terms.rate[..., None], a, totals[:length])
    _flush(torch.mul(totals[:length], _flushed(c), out=rows[:length]))
    if left is not None:
        _flush(rows[:length].mul_(_flushed(left)[..., None]))
    weight_right = _flushed(weight[:, None] if rights is None else (rights * weight).transpose(0, 1))  # [T, K, c]
    _flush(torch.mul(weight_right[..., None], _flushed(b)[:, None], out=cols[:length]))
    tree.run()


def scratch_bytes(groups: int, size: int, width: int, taps: int) -> int:
    """Bytes of the float32 scratch a :class:`_Tree` takes (:meth:`_Scratch.numel`), which chunk sizes budget."""
    return 4 * _Scratch.numel(groups, size, width, taps)


def mean_chunk_bytes(size: int, states: int, taps: int, channels: int) -> int:
    """Scratch bytes of a channel mean's chunk of ``channels`` channels (one output over width channels *
    states): the running products grow with the channels, the block products' buffer does not."""
    return scratch_bytes(1, size, channels * states, taps)


def _chunk(size: int, states: int, taps: int, count: int, budget_bytes: int) -> int:
    """Channels per chunk: as many as keep one chunk's scratch (:func:`mean_chunk_bytes`, linear in the
    channels) within the budget and CACHE_BYTES (at least one), spread evenly (ceil(count / chunks)), so only
    the last chunk can be narrower."""
    fixed = mean_chunk_bytes(size, states, taps, 0)
    per_channel = mean_chunk_bytes(size, states, taps, 1) - fixed
    fits = max(1, (min(budget_bytes, CACHE_BYTES) - fixed) // per_channel)
    chunks = -(-count // fits)
    return -(-count // chunks)


@torch.no_grad()
def mean_over_channels(terms: Terms, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T]: the sum over the terms' channels of ``L alpha R`` (the mean when left or c carries 1/total),
    the right diagonals folded as causal conv taps (tap k: M[i, m] += X_k[i, m + k])."""
    length, count, states = terms.weight.shape[0], terms.weight.shape[1], terms.a.shape[1]
    taps = 1 if terms.rights is None else terms.rights.shape[0]
    size = padded_length(length)
    chunk = _chunk(size, states, taps, count, budget_bytes)
    out = torch.zeros(taps, size, size, device=terms.weight.device)
    out.diagonal(dim1=1, dim2=2)[:, :length] = terms.diagonal()
    numel = _Scratch.numel(1, size, chunk * states, taps)
    tree = None
    for start in range(0, count, chunk):
        width = min(chunk, count - start) * states
        if tree is None or tree.width != width:  # the last chunk may be narrower
            tree = _Tree(out[None], _Scratch(numel, out), width)
        _accumulate_mean(tree, terms.channels(start, start + width // states))
    out = out[:, :length, :length]
    if taps == 1:
        return out[0].contiguous()
    folded = torch.zeros(length, length, device=out.device)
    for k in range(min(taps, length)):
        folded[:, :length - k] += out[k][:, k:]
    return folded

