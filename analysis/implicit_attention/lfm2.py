"""Exact implicit attention of LFM2's gated short convolutions, and softmax maps of its attention layers.

An LFM2 conv layer (``Lfm2ShortConv``) splits ``in_proj(h)`` into B, C and x (in that order), convolves
u = B * x causally and depthwise with K taps (``conv_L_cache``) and gates the result with C:
``y_i = C_i * (sum_{k<K} w[K-1-k] u_{i-k} + bias)``, which ``out_proj`` maps back to the residual width. Per
channel c that is a banded lower-triangular operator (band width K, zero above the diagonal):

* ``"unified"``: ``M[c, i, j] = C[i, c] * w[c, K-1-(i-j)] * B[j, c]`` for ``0 <= i-j < K``, applied to x: both
  data-dependent gates folded in, the source the x branch of ``in_proj`` (as Mamba's unified form);
* ``"conv"``: ``M[c, i, j] = C[i, c] * w[c, K-1-(i-j)]``, applied to u = B * x (the conv input).

Both reproduce the ``out_proj`` input ``y``, plus the bias term ``C_i * bias`` when the conv has a bias
(LFM2's default has none). Everything is captured in one ordinary forward pass (batch 1, no cache) with hooks
on ``in_proj``'s output, ``out_proj``'s input and the conv operator's output; nothing is recomputed.

Reductions over channels need no per-channel matrix: each of the K diagonals of the mean (or mean of absolute
values, |C| |w| |B|) is a mean over channels of a [T] product, so a map costs O(K T D).

Attention layers (``full_attention``) have no implicit matrices: :func:`capture_lfm2` skips them and
:func:`lfm2_softmax_maps` returns their real softmax probabilities, reduced over heads like the channels of
the conv layers. :data:`LFM2_OPS` is this family's entry for the registry (analysis/families.py names it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast, get_args

import torch
from torch import nn

from analysis.implicit_attention.common import (
    DEFAULT_BUDGET_BYTES,
    Internals,
    Reduction,
    check_form,
    check_layers,
    prompt_ids,
)
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget
from analysis.implicit_attention.softmax import attention_module_maps
from analysis.models.adapters import Lfm2Adapter
from analysis.models.hooks import hook_scope
from analysis.models.loader import onloaded

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    from analysis.models.protocols import Loaded

Lfm2Form = Literal["unified", "conv"]
FORMS: tuple[Lfm2Form, ...] = get_args(Lfm2Form)


@dataclass
class Lfm2Internals(Internals):
    """One conv layer's tensors from the real forward (batch 1, float32, [T, D] unless noted)."""

    layer: int
    x: torch.Tensor  # x branch of in_proj: the unified form's source
    b_gate: torch.Tensor  # B branch: multiplies x before the conv
    c_gate: torch.Tensor  # C branch: multiplies the conv output
    out_input: torch.Tensor  # captured out_proj input, y = C * (conv(B * x) + bias)
    output: torch.Tensor  # [T, H] captured operator output, out_proj(y)
    conv_weight: torch.Tensor  # [D, K]
    conv_bias: torch.Tensor | None  # [D]

    @property
    def u(self) -> torch.Tensor:
        """The conv input B * x: the conv form's source."""
        return self.b_gate * self.x


def lfm2_conv_layers(loaded: Loaded) -> list[int]:
    """Indices of the gated-conv layers: the adapter's own test."""
    return cast(Lfm2Adapter, loaded.adapter).conv_layers()  # called for LFM2 models only


def _operator(loaded: Loaded, layer: int) -> Lfm2ShortConv:
    """The gated-conv operator of conv layer ``layer`` (transformers types submodules as bare modules)."""
    return cast("Lfm2ShortConv", loaded.adapter.block(layer).conv)


def _form(form: str) -> Lfm2Form:
    return check_form(form, FORMS, "LFM2")


def capture_lfm2(loaded: Loaded, input_ids: torch.Tensor, layers: Iterable[int] | None = None
                 ) -> dict[int, Lfm2Internals]:
    """Run the model once (batch 1, no cache) and keep the internals of each requested *conv* layer; attention
    layers among ``layers`` (or all layers when None) are skipped."""
    conv = set(lfm2_conv_layers(loaded))
    chosen = [i for i in check_layers(loaded, layers) if i in conv]
    ids = prompt_ids(input_ids, loaded.device)
    store: dict[int, dict[str, torch.Tensor]] = {i: {} for i in chosen}

    def keep(layer, name, pre=False):
        def hook(_module, args, output=None):
            store[layer][name] = (args[0] if pre else output)[0].detach().float()
        return hook

    with loaded.lock:
        with hook_scope(loaded.model) as add:
            for i in chosen:
                op = _operator(loaded, i)
                add(op.in_proj, keep(i, "bcx"))
                add(op.out_proj, keep(i, "out_input", pre=True), pre=True)
                add(op, keep(i, "output"))
            with torch.no_grad():
                loaded.model(input_ids=ids, use_cache=False)
        result = {}
        for i in chosen:
            op, s = _operator(loaded, i), store[i]
            b_gate, c_gate, x = s["bcx"].chunk(3, dim=-1)  # HF's order: B, C, x
            with onloaded(op.conv):  # its weights, also where a device map put the layer on disk
                weight = op.conv.weight.detach()[:, 0, :].float().clone()
                bias = None if op.conv.bias is None else op.conv.bias.detach().float().clone()
            result[i] = Lfm2Internals(layer=i, x=x, b_gate=b_gate, c_gate=c_gate, out_input=s["out_input"],
                                      output=s["output"], conv_weight=weight, conv_bias=bias)
    return result


def _channels(internals: Lfm2Internals, channels: torch.Tensor | None) -> torch.Tensor:
    if channels is None:
        return torch.arange(internals.n_channels, device=internals.x.device)
    return torch.as_tensor(channels, dtype=torch.long).reshape(-1).to(internals.x.device)


def _bands(internals: Lfm2Internals, form: Lfm2Form, idx: torch.Tensor) -> list[torch.Tensor]:
    """Per lag d < min(K, T), the [n, T-d] values ``M[c, i, i-d]`` of the selected channels."""
    length, taps = internals.length, internals.conv_weight.shape[1]
    c_gate, weight = internals.c_gate[:, idx].T, internals.conv_weight[idx]
    b_gate = internals.b_gate[:, idx].T if form == "unified" else None
    bands = []
    for d in range(min(taps, length)):  # over kernel taps, not positions
        band = c_gate[:, d:] * weight[:, taps - 1 - d, None]
        bands.append(band * b_gate[:, :length - d] if b_gate is not None else band)
    return bands


def lfm2_matrices(internals: Lfm2Internals, form: str = "unified", channels: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """[len(channels), T, T] banded matrices (row = output position, column = source)."""
    name, idx = _form(form), _channels(internals, channels)
    out = internals.x.new_zeros(len(idx), internals.length, internals.length)
    for d, band in enumerate(_bands(internals, name, idx)):
        out.diagonal(offset=-d, dim1=1, dim2=2).copy_(band)
    return out


def lfm2_reduced(internals: Lfm2Internals, form: str, reduction: Reduction,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] mean (or mean of absolute values) over the selected channels, diagonal by diagonal (O(K T D)
    memory and time, so ``budget_bytes`` never binds)."""
    name, idx = _form(form), reduction.selected(internals.n_channels).to(internals.x.device)
    out = internals.x.new_zeros(internals.length, internals.length)
    for d, band in enumerate(_bands(internals, name, idx)):
        out.diagonal(offset=-d).copy_((band.abs() if reduction.kind == "absmean" else band).mean(dim=0))
    return out


def lfm2_bias_term(internals: Lfm2Internals) -> torch.Tensor:
    """[T, D] additive term of both forms, ``C_i * bias`` (zero without a conv bias)."""
    if internals.conv_bias is None:
        return torch.zeros_like(internals.c_gate)
    return internals.c_gate * internals.conv_bias


def lfm2_source(internals: Lfm2Internals, form: str) -> torch.Tensor:
    """[T, D] what a form's matrices multiply: x (unified) or u = B * x (conv)."""
    return internals.x if _form(form) == "unified" else internals.u


def lfm2_loop_matrices(internals: Lfm2Internals, form: str = "unified", channels: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Reference: the layer run position by position in float64 on a one-hot input per source position (all
    sources and channels at once), with a rolling K-entry conv state as in HF's one-token step."""
    name, idx = _form(form), _channels(internals, channels).cpu()
    T, n = internals.length, len(idx)
    weight = internals.conv_weight.cpu().double()[idx]  # [n, K]
    b_gate = internals.b_gate.cpu().double()[:, idx] if name == "unified" else torch.ones(T, n, dtype=torch.float64)
    c_gate = internals.c_gate.cpu().double()[:, idx]
    state = torch.zeros(T, n, weight.shape[1], dtype=torch.float64)  # [source, n, K], oldest entry first
    out = torch.zeros(n, T, T, dtype=torch.float64)
    for t in range(T):
        step = torch.zeros(T, n, dtype=torch.float64)
        step[t] = b_gate[t]  # source t's one-hot input, times B
        state = torch.cat([state[:, :, 1:], step[:, :, None]], dim=-1)
        out[:, t, :] = (c_gate[t] * (state * weight).sum(-1)).T
    return out.float().to(internals.x.device)


def lfm2_reconstruct(internals: Lfm2Internals, form: str = "unified") -> tuple[torch.Tensor, torch.Tensor]:
    """(the form's matrices applied to its source plus :func:`lfm2_bias_term`, the captured out_proj input)."""
    rebuilt = torch.einsum("cij,jc->ic", lfm2_matrices(internals, form), lfm2_source(internals, form))
    return rebuilt + lfm2_bias_term(internals), internals.out_input


def lfm2_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                      ) -> dict[int, torch.Tensor]:
    """[T, T] softmax probabilities of each requested *attention* layer (conv layers skipped), reduced over
    heads; one eager forward."""
    conv = set(lfm2_conv_layers(loaded))
    attention = {i: "self_attn" for i in check_layers(loaded, layers) if i not in conv}
    return attention_module_maps(loaded, input_ids, attention, reduction) if attention else {}


def lfm2_relevance_target(block: nn.Module, inn: Lfm2Internals, form: str) -> RelevanceTarget:
    """y = out_proj's input for both forms; u = x (unified) or B * x (conv)."""
    return RelevanceTarget(block.get_submodule("conv.out_proj"), "input", lfm2_source(inn, form))


LFM2_OPS = FamilyOps(forms=FORMS, implicit_layers=Lfm2Adapter.conv_layers, capture=capture_lfm2,
                     reduced=lfm2_reduced, matrices=lfm2_matrices, relevance_target=lfm2_relevance_target,
                     softmax_maps=lfm2_softmax_maps)
