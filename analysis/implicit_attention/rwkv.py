"""Exact implicit attention of RWKV-4 time mixing (arXiv 2405.16504), per channel.

With decay ``w = exp(time_decay[c])`` and bonus ``u = time_first[c]``, the WKV output of the real module is
``wkv_t = sum_{i<=t} alpha[t, i] v_i`` with ``alpha[t, i]`` proportional to ``exp(k_i - (t-1-i) w)`` for
``i < t`` and ``exp(u + k_t)`` for ``i = t``, normalised over ``i`` (a softmax over log-weights, so it is
stabilised by its max). Forms:

* ``"wkv"``: ``alpha`` itself (rows sum to 1); maps the ``value`` Linear's output to the WKV output.
* ``"unified"`` (default): ``sigmoid(r_t) * alpha[t, i]``; maps the ``value`` Linear's output to the input of
  the ``output`` Linear (``receptance * wkv``).

Everything comes from one ordinary forward pass (batch 1, ``use_cache=False``, empty state) with hooks on the
block's ``attention.key`` / ``attention.value`` / ``attention.receptance`` outputs and the
``attention.output`` input. In eval mode HF rescales ``output`` / ``feed_forward.value`` weights and halves the
residual stream every ``rescale_every`` blocks; neither touches ``k``, ``v``, ``r``, ``time_decay`` or
``time_first``, and the hooks see the tensors the forward really used, so the matrices are unaffected.
Matrices are computed in float32 whatever the model's dtype (HF's WKV also accumulates in float32).

:data:`RWKV_OPS` is this family's entry for the registry (analysis/families.py names it; nothing here imports
the registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast, get_args

import torch
from torch import nn

from analysis.implicit_attention import common
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget, all_layers
from analysis.models.hooks import hook_scope
from analysis.models.loader import onloaded

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers.models.rwkv.modeling_rwkv import RwkvSelfAttention

    from analysis.models.protocols import Loaded

RwkvForm = Literal["unified", "wkv"]
FORMS: tuple[RwkvForm, ...] = get_args(RwkvForm)


@dataclass
class RwkvInternals(common.Internals):
    """One layer's time-mixing intermediates (batch 1, float32, shapes [T, C] unless noted)."""

    tc_field = "key"

    layer: int
    key: torch.Tensor  # output of attention.key
    value: torch.Tensor  # output of attention.value
    receptance: torch.Tensor  # output of attention.receptance (before the sigmoid)
    output_input: torch.Tensor  # input of attention.output: sigmoid(receptance) * wkv
    decay: torch.Tensor  # [C], w = exp(time_decay), computed in the parameter's dtype as HF does
    time_first: torch.Tensor  # [C]


def capture_rwkv(loaded: Loaded, input_ids: torch.Tensor, layers: Iterable[int] | None = None
                 ) -> dict[int, RwkvInternals]:
    """Run the model once on ``input_ids`` (batch 1, from the empty state) and keep each layer's internals."""
    chosen = common.check_layers(loaded, layers)
    ids = common.prompt_ids(input_ids, loaded.device)
    store: dict[int, dict[str, torch.Tensor]] = {i: {} for i in chosen}

    def out_hook(layer, name):
        def hook(_module, _args, output):
            store[layer][name] = output[0].detach().float()
        return hook

    def in_hook(layer):
        def hook(_module, args):
            store[layer]["output_input"] = args[0][0].detach().float()
        return hook

    with loaded.lock, hook_scope(loaded.model) as add:
        for i in chosen:
            att = _time_mixing(loaded, i)
            for name in ("key", "value", "receptance"):
                add(getattr(att, name), out_hook(i, name))
            add(att.output, in_hook(i), pre=True)
        with torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)
    result = {}
    for i in chosen:
        att = _time_mixing(loaded, i)
        with onloaded(att):  # its parameters, also when a device map put the block on disk
            result[i] = RwkvInternals(layer=i, decay=torch.exp(att.time_decay.detach()).float(),
                                      time_first=att.time_first.detach().float().clone(), **store[i])
    return result


def _time_mixing(loaded: Loaded, layer: int) -> RwkvSelfAttention:
    """Block ``layer``'s time-mixing module (transformers types submodules as bare modules)."""
    return cast("RwkvSelfAttention", loaded.adapter.block(layer).attention)


def _channels(internals: RwkvInternals, channels: torch.Tensor | None) -> torch.Tensor:
    if channels is None:
        return torch.arange(internals.n_channels, device=internals.key.device)
    return torch.as_tensor(channels, dtype=torch.long).reshape(-1).to(internals.key.device)


def rwkv_matrices(internals: RwkvInternals, form: str = "unified",
                  channels: torch.Tensor | None = None) -> torch.Tensor:
    """[len(channels), T, T] matrices (row = output position t, column = source i; zero above the diagonal),
    vectorised over positions: log-weights for all (t, i) at once, masked, then a softmax over i."""
    common.check_form(form, FORMS, "RWKV")
    idx = _channels(internals, channels)
    T = internals.length
    k = internals.key[:, idx].T  # [n, T]
    w = internals.decay[idx][:, None, None]
    u = internals.time_first[idx][:, None]
    pos = torch.arange(T, device=k.device)
    dist = (pos[:, None] - 1 - pos[None, :]).to(k.dtype)  # t - 1 - i
    logits = k[:, None, :] - dist[None] * w  # [n, t, i]
    diag = torch.arange(T, device=k.device)
    logits[:, diag, diag] = u + k
    logits = logits.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    alpha = torch.softmax(logits, dim=-1)
    if form == "unified":
        alpha = alpha * torch.sigmoid(internals.receptance[:, idx].T)[:, :, None]
    return alpha


def rwkv_reduced(internals: RwkvInternals, form: str, reduction: common.Reduction,
                 budget_bytes: int = common.DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] reduction over channels, computing per-channel matrices in chunks within ``budget_bytes``."""
    common.check_form(form, FORMS, "RWKV")
    return common.reduce_in_chunks(lambda idx: rwkv_matrices(internals, form, idx), internals.n_channels,
                            internals.length, reduction, budget_bytes)


def rwkv_relevance_target(block: nn.Module, inn: RwkvInternals, form: str) -> RelevanceTarget:
    """u = value; unified: y = the output projection's input; wkv: y = that / sigmoid(r)."""
    gate = torch.sigmoid(inn.receptance) if form == "wkv" else None
    return RelevanceTarget(block.get_submodule("attention.output"), "input", inn.value, gate=gate)


RWKV_OPS = FamilyOps(forms=FORMS, implicit_layers=all_layers, capture=capture_rwkv,
                     reduced=rwkv_reduced, matrices=rwkv_matrices, relevance_target=rwkv_relevance_target)


def rwkv_loop_matrices(internals: RwkvInternals, form: str = "unified",
                       channels: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: HF's stabilised WKV recurrence run position by position on a one-hot value sequence per
    source position (all sources and channels at once), in float64."""
    common.check_form(form, FORMS, "RWKV")
    idx = _channels(internals, channels).cpu()
    T = internals.length
    k = internals.key.cpu().double()[:, idx]  # [T, n]
    decay = -internals.decay.cpu().double()[idx]
    u = internals.time_first.cpu().double()[idx]
    n = len(idx)
    num = torch.zeros(T, n, dtype=torch.float64)  # [source, channel]
    den = torch.zeros(n, dtype=torch.float64)
    mx = torch.full((n,), -1e38, dtype=torch.float64)
    out = torch.zeros(n, T, T, dtype=torch.float64)
    for t in range(T):
        onehot = torch.zeros(T, 1, dtype=torch.float64)
        onehot[t] = 1.0
        m = torch.maximum(mx, k[t] + u)
        e1, e2 = torch.exp(mx - m), torch.exp(k[t] + u - m)
        out[:, t, :] = ((e1 * num + e2 * onehot) / (e1 * den + e2)).T
        m = torch.maximum(mx + decay, k[t])
        e1, e2 = torch.exp(mx + decay - m), torch.exp(k[t] - m)
        num, den, mx = e1 * num + e2 * onehot, e1 * den + e2, m
    if form == "unified":
        out = out * torch.sigmoid(internals.receptance.cpu().double()[:, idx].T)[:, :, None]
    return out.float().to(internals.key.device)


def rwkv_reconstruct(internals: RwkvInternals, form: str = "unified") -> tuple[torch.Tensor, torch.Tensor]:
    """(matrices applied to v, the captured tensor), both [T, C]. Observed is the ``output`` Linear's input
    for "unified", and that divided by sigmoid(r) (the WKV output) for "wkv"."""
    common.check_form(form, FORMS, "RWKV")
    alpha = rwkv_matrices(internals, form)
    rebuilt = torch.einsum("cti,ic->tc", alpha, internals.value)
    observed = internals.output_input
    if form == "wkv":
        observed = observed / torch.sigmoid(internals.receptance)
    return rebuilt, observed
