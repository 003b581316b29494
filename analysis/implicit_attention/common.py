"""Shared pieces of the implicit-attention views: reductions over channels/heads and chunking under a
memory budget (only the requested reduction of the [channels, T, T] tensor is ever kept)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar, get_args

import torch

from analysis.errors import PrunescopeError

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded

F = TypeVar("F", bound=str)  # a family's form names (a Literal)
ReductionKind = Literal["mean", "absmean", "channels"]  # how a [channels, T, T] stack becomes one map
REDUCTION_KINDS: tuple[ReductionKind, ...] = get_args(ReductionKind)

DEFAULT_BUDGET_BYTES = 1 << 30  # working memory for one chunk of per-channel matrices
# ...but no chunk above this: larger CPU tensors are mmap'd fresh on every allocation and pay a page fault per
# 4 KiB on first touch (Mamba-130m unified absmean, T = 256: 0.24 s per layer in 64 MiB chunks, 0.54 s in 1 GiB)
CHUNK_BYTES = 64 << 20


class Internals:
    """Base of one layer's captured intermediates (the families' dataclasses): the prompt length and the
    channel count, read from the [T, C] tensor field named by ``tc_field``."""

    tc_field: ClassVar[str] = "x"

    @property
    def length(self) -> int:
        return getattr(self, self.tc_field).shape[0]

    @property
    def n_channels(self) -> int:
        return getattr(self, self.tc_field).shape[1]

    def n_matrices(self, form: str) -> int:
        """How many [T, T] matrices the layer has in ``form`` (what a ``channels:`` reduction indexes)."""
        return self.n_channels


def check_form(form: str, forms: Mapping[str, F] | Sequence[F], family: str = "", use: str = "") -> F:
    """``form``'s own name among a family's ``forms`` (a tuple, or aliases mapped to names), else a one-line
    error naming the ``family`` and the forms to ``use`` (default: all of them)."""
    if form not in forms:
        family = f"{family} " if family else ""
        raise PrunescopeError(f"unknown {family}implicit-attention form {form!r}: "
                              f"use {use or 'one of ' + ', '.join(forms)}")
    if isinstance(forms, Mapping):
        return forms[form]
    return next(name for name in forms if name == form)  # ``form`` itself, typed as one of the family's


@dataclass(frozen=True)
class Reduction:
    """How per-channel (or per-head) matrices become one [T, T] map: ``mean``, ``absmean``, or the mean over
    selected ``channels``."""

    kind: ReductionKind = "mean"
    channels: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Reduction:
        """'mean' | 'absmean' | 'channels:3,17,40' | 'channels:0-95' (a range, both ends included)."""
        if text == "mean":
            return cls("mean")
        if text == "absmean":
            return cls("absmean")
        if text.startswith("channels:"):
            try:
                channels = tuple(c for part in text.split(":", 1)[1].split(",") if part.strip()
                                 for c in _index_range(part))
            except ValueError:
                channels = ()
            if channels:
                return cls("channels", channels)
        raise PrunescopeError(f"unknown reduction {text!r}: use mean, absmean or channels:IDX[,IDX...] "
                              "(ranges as FIRST-LAST)")

    def text(self) -> str:
        """The reduction as :meth:`parse` reads it, contiguous channels as ranges ('channels:0-95')."""
        if self.kind != "channels":
            return self.kind
        runs: list[list[int]] = []
        for c in self.channels:
            if runs and c == runs[-1][1] + 1:
                runs[-1][1] = c
            else:
                runs.append([c, c])
        return "channels:" + ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)

    def selected(self, n_channels: int) -> torch.Tensor:
        """Indices of the channels this reduction averages over."""
        if self.kind != "channels":
            return torch.arange(n_channels)
        bad = [c for c in self.channels if not 0 <= c < n_channels]
        if bad:
            raise PrunescopeError(f"channel {bad[0]} does not exist (the layer has {n_channels})")
        return torch.tensor(self.channels)


MAX_RANGE = 1 << 16  # channels one range may name (a link is a stranger's text)


def _index_range(part: str) -> range:
    """'7' -> 7..7, '0-95' -> 0..95; a reversed or huge range is a ValueError."""
    first, _, last = part.strip().partition("-")
    start, stop = int(first), int(last or first)
    if stop < start or stop - start >= MAX_RANGE:
        raise ValueError(part)
    return range(start, stop + 1)


def reduce_in_chunks(matrices: Callable[[torch.Tensor], torch.Tensor], n_channels: int, length: int,
                     reduction: Reduction, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                     bytes_per_entry: int = 64) -> torch.Tensor:
    """Mean (or mean of absolute values) over the selected channels of ``matrices(idx) -> [len(idx), T, T]``,
    calling it on chunks of channels so that about ``bytes_per_entry`` bytes per (channel, i, j) entry of
    working memory stay within ``budget_bytes``. ``matrices`` must return a fresh tensor: absmean takes the
    absolute values in place (a copy of a chunk costs more in page faults than the sum itself)."""
    selected = reduction.selected(n_channels)
    per_channel = max(1, length * length * bytes_per_entry)
    chunk = max(1, min(budget_bytes, CHUNK_BYTES) // per_channel)
    total = None
    for start in range(0, len(selected), chunk):
        part = matrices(selected[start:start + chunk])
        part = part.abs_() if reduction.kind == "absmean" else part
        summed = part.sum(dim=0)
        total = summed if total is None else total + summed
    assert total is not None, "a reduction selects at least one channel"  # selected() checks the channels
    return total / len(selected)


def fold_causal_conv(alpha: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``alpha @ Toeplitz(conv)`` for a depthwise causal conv ``c_j = sum_k weight[:, k] x_{j-(K-1)+k}``:
    ``out[c, t, s] = sum_d alpha[c, t, s + d] * weight[c, K - 1 - d]`` (a loop over taps, not positions)."""
    taps, length = weight.shape[1], alpha.shape[-1]
    out = torch.zeros_like(alpha)
    for d in range(min(taps, length)):
        out[:, :, :length - d] += alpha[:, :, d:] * weight[:, taps - 1 - d, None, None]
    return out


@contextmanager
def eager_attention(loaded: Loaded) -> Iterator[None]:
    """Run the model with the eager attention implementation (the only one returning probabilities), under
    the model's lock, and switch back afterwards."""
    with loaded.lock:
        previous = loaded.model.config._attn_implementation
        if previous != "eager":
            loaded.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if previous != "eager":
                loaded.model.set_attn_implementation(previous)


def prompt_ids(input_ids, device: torch.device) -> torch.Tensor:
    """One non-empty prompt as a [1, T] tensor on ``device`` (accepts [T] or [1, T])."""
    ids = torch.as_tensor(input_ids)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise PrunescopeError("implicit attention needs one non-empty prompt (batch 1)")
    return ids.to(device)


def check_layers(loaded: Loaded, layers: Iterable[int] | None) -> list[int]:
    """The requested layer indices (all when None), each checked to exist."""
    chosen = list(range(loaded.n_layers)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < loaded.n_layers]
    if bad:
        raise PrunescopeError(f"layer {bad[0]} does not exist (the model has {loaded.n_layers})")
    return chosen
