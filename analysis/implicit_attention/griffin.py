"""Exact implicit attention of Griffin / RecurrentGemma recurrent blocks (RG-LRU, arXiv 2405.16504).

Per channel, with ``log a_t = -8 r_t softplus(Lambda)``, input gate ``i_t`` and HF's reset at position 0
(``a`` is zeroed there and the ``sqrt(1 - a^2)`` normaliser replaced by 1), the RG-LRU output is
``y_t = sum_{j<=t} alpha[t, j] x_j`` with
``alpha[t, j] = prod_{s=j+1..t} a_s * m_j * i_j``, ``m_j = 1`` at a reset, else ``sqrt(1 - a_j^2)``
(and ``alpha[t, j] = 0`` when a reset lies in ``(j, t]``). Forms:

* ``"rglru"``: ``alpha``; maps the RG-LRU input (conv1d output) to the RG-LRU output.
* ``"unified"``: ``diag(gelu(linear_y(h))) @ alpha @ Conv`` with ``Conv`` the depthwise causal conv1d as a
  per-channel Toeplitz matrix; maps ``linear_x``'s output to ``linear_out``'s input. The conv bias enters as
  the additive term ``gelu(linear_y(h))_t * sum_j alpha[t, j] * bias`` (see :func:`griffin_conv_bias_term`).

Captured in one ordinary forward pass (batch 1, ``use_cache=False``, empty state) with hooks on the recurrent
block's ``linear_x`` output, ``rg_lru`` input (activations, position_ids) and output, ``act_fn`` output (the
y-branch gate) and ``linear_out`` input. The gates live inside ``RecurrentGemmaRglru.forward`` (no submodule
to hook), so they are recomputed from the captured RG-LRU input with the module's own parameters and HF's
exact ops, in the model's dtype, then cast to float32.

Attention layers (Griffin's local MQA blocks) have no implicit matrices: :func:`capture_griffin` skips them,
and :func:`griffin_attention_maps` returns their real softmax probabilities averaged over heads (running the
forward with the eager attention implementation, restored afterwards).

:data:`GRIFFIN_OPS` is this family's entry for the registry (analysis/families.py names it; nothing here
imports the registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast, get_args

import torch
from torch import nn

from analysis.implicit_attention.block_tree import Terms, mean_over_channels
from analysis.implicit_attention.common import (
    DEFAULT_BUDGET_BYTES,
    Internals,
    Reduction,
    check_form,
    check_layers,
    eager_attention,
    fold_causal_conv,
    prompt_ids,
    reduce_in_chunks,
)
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget
from analysis.models.adapters import GriffinAdapter
from analysis.models.hooks import hook_scope

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import (
        RecurrentGemmaRecurrentBlock,
        RecurrentGemmaRglru,
    )

    from analysis.models.protocols import Loaded

GriffinForm = Literal["unified", "rglru"]
FORMS: tuple[GriffinForm, ...] = get_args(GriffinForm)


@dataclass
class GriffinInternals(Internals):
    """One recurrent layer's intermediates (batch 1, float32, shapes [T, C] unless noted)."""

    layer: int
    x_pre: torch.Tensor  # output of linear_x (conv1d input)
    x: torch.Tensor  # RG-LRU input (conv1d output)
    rglru_output: torch.Tensor  # RG-LRU output
    y_gate: torch.Tensor  # act_fn(linear_y(h)), multiplies the RG-LRU output
    out_input: torch.Tensor  # input of linear_out: rglru_output * y_gate
    log_a: torch.Tensor  # -8 * r_t * softplus(recurrent_param)
    input_gate: torch.Tensor  # i_t
    reset: torch.Tensor  # [T] bool, position_ids == 0
    conv_weight: torch.Tensor  # [C, K]
    conv_bias: torch.Tensor  # [C]


def griffin_recurrent_layers(loaded: Loaded) -> list[int]:
    """Indices of the layers whose temporal block is recurrent (has an RG-LRU): the adapter's own test."""
    return cast(GriffinAdapter, loaded.adapter).recurrent_layers()  # called for Griffin models only


def _recurrent_block(loaded: Loaded, layer: int) -> RecurrentGemmaRecurrentBlock:
    """The temporal block of recurrent layer ``layer`` (transformers types submodules as bare modules)."""
    return cast("RecurrentGemmaRecurrentBlock", loaded.adapter.block(layer).temporal_block)


def _gates(lru: RecurrentGemmaRglru, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log a and the input gate exactly as ``RecurrentGemmaRglru.forward`` computes them."""
    T, width = act.shape
    heads, block = lru.num_attention_heads, lru.block_width
    ra = act.reshape(T, heads, block).permute(1, 0, 2)
    input_gate = torch.sigmoid(torch.baddbmm(lru.input_gate_bias[:, None, :], ra, lru.input_gate_weight)
                               .transpose(0, 1).reshape(T, width))
    r = torch.sigmoid(torch.baddbmm(lru.recurrent_gate_bias[:, None, :], ra, lru.recurrent_gate_weight)
                      .transpose(0, 1).reshape(T, width))
    log_a = -8.0 * r * nn.functional.softplus(lru.recurrent_param)
    return log_a, input_gate


def capture_griffin(loaded: Loaded, input_ids: torch.Tensor, layers: Iterable[int] | None = None
                    ) -> dict[int, GriffinInternals]:
    """Run the model once (batch 1, empty state) and keep the internals of each requested *recurrent* layer;
    attention layers among ``layers`` (or all layers when None) are skipped."""
    recurrent = set(griffin_recurrent_layers(loaded))
    chosen = [i for i in check_layers(loaded, layers) if i in recurrent]
    ids = prompt_ids(input_ids, loaded.device)
    store: dict[int, dict] = {i: {} for i in chosen}

    def out_hook(layer, name):
        def hook(_module, _args, output):
            out = output[0] if isinstance(output, tuple) else output
            store[layer][name] = out[0].detach()
        return hook

    def in_hook(layer, name):
        def hook(_module, args):
            store[layer][name] = args[0][0].detach()
            if name == "x":
                store[layer]["position_ids"] = args[1][0].detach()
        return hook

    with loaded.lock:
        with hook_scope(loaded.model) as add:
            for i in chosen:
                blk = _recurrent_block(loaded, i)
                add(blk.linear_x, out_hook(i, "x_pre"))
                add(blk.rg_lru, in_hook(i, "x"), pre=True)
                add(blk.rg_lru, out_hook(i, "rglru_output"))
                add(blk.act_fn, out_hook(i, "y_gate"))
                add(blk.linear_out, in_hook(i, "out_input"), pre=True)
            with torch.no_grad():
                loaded.model(input_ids=ids, use_cache=False)
        result = {}
        for i in chosen:
            blk, s = _recurrent_block(loaded, i), store[i]
            reset = s.pop("position_ids") == 0
            with torch.no_grad():
                log_a, input_gate = _gates(blk.rg_lru, s["x"])
            assert blk.conv_1d.bias is not None, "RecurrentGemma builds its conv1d with a bias"
            result[i] = GriffinInternals(
                layer=i, **{k: v.float() for k, v in s.items()}, log_a=log_a.float(), input_gate=input_gate.float(),
                reset=reset, conv_weight=blk.conv_1d.weight.detach()[:, 0, :].float(),
                conv_bias=blk.conv_1d.bias.detach().float())
    return result


def _channels(internals: GriffinInternals, channels: torch.Tensor | None) -> torch.Tensor:
    if channels is None:
        return torch.arange(internals.n_channels, device=internals.x.device)
    return torch.as_tensor(channels, dtype=torch.long).reshape(-1).to(internals.x.device)


def _source_weight(internals: GriffinInternals, idx: torch.Tensor) -> torch.Tensor:
    """[T, n]: m_j * i_j, with m_j = 1 at a reset, else sqrt(1 - a_j^2) (computed as HF does)."""
    log_a = internals.log_a[:, idx]
    mult = torch.sqrt(1 - torch.exp(2 * log_a))
    mult = torch.where(internals.reset[:, None], torch.ones_like(mult), mult)
    return mult * internals.input_gate[:, idx]


def _rglru_matrices(internals: GriffinInternals, idx: torch.Tensor) -> torch.Tensor:
    T = internals.length
    cs = torch.cumsum(internals.log_a[:, idx].double(), dim=0).T  # [n, T]
    seg_sum = (cs[:, :, None] - cs[:, None, :]).float()  # sum_{s=j+1..t} log a_s  [n, t, j]
    segment = torch.cumsum(internals.reset.long(), dim=0)
    pos = torch.arange(T, device=cs.device)
    invalid = (pos[None, :] > pos[:, None]) | (segment[:, None] != segment[None, :])
    decay = torch.exp(seg_sum.masked_fill(invalid[None], float("-inf")))
    return decay * _source_weight(internals, idx).T[:, None, :]


def griffin_matrices(internals: GriffinInternals, form: str = "unified",
                     channels: torch.Tensor | None = None) -> torch.Tensor:
    """[len(channels), T, T] matrices (row = output position, column = source; zero above the diagonal),
    vectorised with differences of cumulative log-decays."""
    check_form(form, FORMS, "Griffin")
    idx = _channels(internals, channels)
    alpha = _rglru_matrices(internals, idx)
    if form == "unified":
        alpha = fold_causal_conv(alpha, internals.conv_weight[idx]) * internals.y_gate[:, idx].T[:, :, None]
    return alpha


def griffin_conv_bias_term(internals: GriffinInternals) -> torch.Tensor:
    """[T, C] additive term of the unified form: y_gate_t * sum_j alpha[t, j] * conv_bias."""
    idx = _channels(internals, None)
    row_sums = _rglru_matrices(internals, idx).sum(dim=-1).T  # [T, C]
    return internals.y_gate * row_sums * internals.conv_bias


def _mean_terms(internals: GriffinInternals, form: str, idx: torch.Tensor) -> Terms:
    """The RG-LRU as :class:`Terms` of the block tree (one state per channel): decays exp(-rate) with
    rate = -log a (infinite at a reset: nothing carries over it), input weight m_j i_j, and for unified the
    y gate on the left and the conv taps on the right; 1/len(idx) makes the channel sum a mean."""
    length, count, idx = internals.length, len(idx), idx.to(internals.x.device)
    rate = (-internals.log_a.index_select(1, idx)).masked_fill_(internals.reset[:, None], float("inf"))
    ones = rate.new_ones(1, 1, 1).expand(length, 1, 1)
    a = rate.new_full((1, 1), -1.0).expand(count, 1)
    if form == "rglru":
        left, c, rights = None, ones / count, None
    else:
        left, c = internals.y_gate.index_select(1, idx) / count, ones
        weight, taps = internals.conv_weight.index_select(0, idx), internals.conv_weight.shape[1]
        rights = torch.stack([weight[:, taps - 1 - k].expand(length, count) for k in range(taps)])
    extra = rate.new_zeros(1).expand(count)
    return Terms(rate, a, ones, c, _source_weight(internals, idx), left, rights, extra)


def griffin_reduced(internals: GriffinInternals, form: str, reduction: Reduction,
                    budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] reduction over channels: means through the block tree (no per-channel matrix, one matrix
    product over the channels per block), absmean from per-channel matrices in chunks within ``budget_bytes``."""
    check_form(form, FORMS, "Griffin")
    if reduction.kind != "absmean":
        return mean_over_channels(_mean_terms(internals, form, reduction.selected(internals.n_channels)),
                                  budget_bytes)
    return reduce_in_chunks(lambda idx: griffin_matrices(internals, form, idx), internals.n_channels,
                            internals.length, reduction, budget_bytes)


def griffin_loop_matrices(internals: GriffinInternals, form: str = "unified",
                          channels: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: the conv (tap by tap, for "unified") and HF's RG-LRU recurrence run position by position
    on a one-hot input per source position (all sources and channels at once), in float64."""
    check_form(form, FORMS, "Griffin")
    idx = _channels(internals, channels).cpu()
    T, n = internals.length, len(idx)
    a = torch.exp(internals.log_a.cpu().double()[:, idx])  # [T, n]
    a = a * ~internals.reset.cpu()[:, None]
    b = _source_weight(internals, idx.to(internals.x.device)).cpu().double()
    inputs = torch.eye(T, dtype=torch.float64)[:, :, None].expand(T, T, n)  # [source, t, n]
    if form == "unified":
        weight = internals.conv_weight.cpu().double()[idx]  # [n, K]
        K = weight.shape[1]
        conv = torch.zeros(T, T, n, dtype=torch.float64)
        for t in range(T):
            for k in range(K):
                s = t - (K - 1) + k
                if s >= 0:
                    conv[:, t] += inputs[:, s] * weight[:, k]
        inputs = conv
    out = torch.zeros(n, T, T, dtype=torch.float64)
    state = torch.zeros(T, n, dtype=torch.float64)
    for t in range(T):
        state = a[t] * state + b[t] * inputs[:, t]
        out[:, t, :] = state.T
    if form == "unified":
        out = out * internals.y_gate.cpu().double()[:, idx].T[:, :, None]
    return out.float().to(internals.x.device)


def griffin_reconstruct(internals: GriffinInternals, form: str = "unified") -> tuple[torch.Tensor, torch.Tensor]:
    """(matrices applied to their input, the captured tensor), both [T, C]: RG-LRU input -> RG-LRU output for
    "rglru"; linear_x output -> linear_out input (plus :func:`griffin_conv_bias_term`) for "unified"."""
    check_form(form, FORMS, "Griffin")
    alpha = griffin_matrices(internals, form)
    if form == "rglru":
        return torch.einsum("ctj,jc->tc", alpha, internals.x), internals.rglru_output
    rebuilt = torch.einsum("ctj,jc->tc", alpha, internals.x_pre) + griffin_conv_bias_term(internals)
    return rebuilt, internals.out_input


def griffin_attention_maps(loaded: Loaded, input_ids: torch.Tensor, layers: Iterable[int] | None = None
                           ) -> dict[int, torch.Tensor]:
    """[T, T] softmax probabilities averaged over heads for each requested *attention* layer (recurrent ones
    are skipped), from one forward with the eager attention implementation (switched back afterwards)."""
    recurrent = set(griffin_recurrent_layers(loaded))
    chosen = [i for i in check_layers(loaded, layers) if i not in recurrent]
    ids = prompt_ids(input_ids, loaded.device)
    maps: dict[int, torch.Tensor] = {}

    def hook(layer):
        def fn(_module, _args, output):
            maps[layer] = output[1][0].detach().float().mean(dim=0)
        return fn

    with eager_attention(loaded), hook_scope(loaded.model) as add:
        for i in chosen:
            add(loaded.adapter.block(i).temporal_block, hook(i))
        with torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)
    return maps


def griffin_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                         ) -> dict[int, torch.Tensor]:
    """Griffin's local-attention layers: softmax probabilities averaged over all heads (``reduction`` is not
    applied to them, as before the registry)."""
    return griffin_attention_maps(loaded, input_ids, layers)


def griffin_relevance_target(block: nn.Module, inn: GriffinInternals, form: str) -> RelevanceTarget:
    """rglru: u = RG-LRU input, y = its output; unified: u = linear_x output, y = linear_out input."""
    if form == "rglru":
        return RelevanceTarget(block.get_submodule("temporal_block.rg_lru"), "output", inn.x)
    return RelevanceTarget(block.get_submodule("temporal_block.linear_out"), "input", inn.x_pre)


GRIFFIN_OPS = FamilyOps(forms=FORMS, implicit_layers=GriffinAdapter.recurrent_layers,
                        capture=capture_griffin, reduced=griffin_reduced, matrices=griffin_matrices,
                        relevance_target=griffin_relevance_target, softmax_maps=griffin_softmax_maps)
