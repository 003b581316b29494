"""Exact implicit ("hidden") attention of Mamba (arXiv 2403.01590) and Mamba-2, and the unified form that
also folds in the conv1d, its SiLU and the output gate (arXiv 2405.16504).

Everything is read from one forward pass of the real transformers modules (batch 1, ``use_cache=False``),
through hooks on each layer's mixer:

* Mamba: ``in_proj`` output (x branch before the conv, gate z), ``x_proj`` input (the SSM input
  u = SiLU(conv(x))) and output (dt_low, B, C), ``out_proj`` input (y_ssm * SiLU(z)) and the mixer output.
* Mamba-2: ``in_proj`` output (gate z, xBC before the conv, raw dt), ``norm`` (gated RMSNorm) inputs
  (y, the SSD output with the D skip, and the gate), ``out_proj`` input and the mixer output.

The same capture serves the variants: Falcon-Mamba (Mamba-1 whose dt, B and C go through weightless RMS
norms: read from the norms' outputs), and the Mamba-2 mixers of the hybrids (``block.mamba``): Bamba, and
Falcon-H1, whose ``in_proj`` output is scaled by its muP vector (applied here) and which, without
``mamba_rms_norm``, gates as Mamba-1 does: ``out_proj(y * SiLU(z))`` (``MambaInternals.gated_at``). Zamba's
Mamba-1 mixers split into heads with their own B and C are read from ``in_proj``/``out_proj`` (mamba_heads.py).

transformers 5.23 never *calls* ``conv1d`` or ``dt_proj`` as modules (it uses their weights in
``F.conv1d`` / a matmul), so no hook can see their outputs: the conv pre-activation, Delta and (Mamba-2)
B and C are recomputed from the captured tensors with the layer's own weights, exactly as the HF torch path
does it (same ops, in the model's dtype), and every view is checked against tensors the real forward
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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import PrunescopeError
from analysis.implicit_attention.block_tree import padded_length
from analysis.implicit_attention.common import (
    DEFAULT_BUDGET_BYTES,
    Internals,
    Reduction,
    check_form,
    check_layers,
    prompt_ids,
    reduce_in_chunks,
)
from analysis.implicit_attention.mamba_heads import head_ssm_inputs, is_multi_head, split_branches
from analysis.implicit_attention.mamba_tree import (
    MambaForm,
    mamba_mean,
    mamba_s6_abs_sum,
    mamba_s6_matrices,
    per_channel_scratch_bytes,
)
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget, all_layers
from analysis.models.adapters.families import MIXER_PATHS, first_submodule_path
from analysis.models.hooks import hook_scope
from analysis.models.loader import onloaded

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded

FORMS: dict[str, MambaForm] = {"s6": "s6", "ssm": "s6", "ssd": "s6", "unified": "unified"}


@dataclass
class MambaInternals(Internals):
    """One layer's tensors from one forward pass (fp32 copies, batch dimension dropped; T positions,
    d = d_inner channels, H heads (Mamba: H = d), G groups, n states, K conv taps)."""

    model_type: str  # the recurrence: "mamba" (Mamba-1, Falcon-Mamba, Zamba) or "mamba2" (Mamba-2, its hybrids)
    layer: int
    x: torch.Tensor  # [T, d] x branch of in_proj, before the conv
    z: torch.Tensor  # [T, d] gate branch of in_proj
    c: torch.Tensor  # [T, d] conv1d output before its SiLU (recomputed)
    u: torch.Tensor  # [T, d] SSM input SiLU(c) (Mamba: captured at x_proj; Mamba-2: recomputed)
    delta: torch.Tensor  # [T, H] time steps after bias, softplus (and Mamba-2's clamp)
    A: torch.Tensor  # Mamba [d, n]; Mamba-2 [H]
    B: torch.Tensor  # Mamba [T, n]; Mamba-2 [T, G, n]; Zamba [T, mamba heads, n]
    C: torch.Tensor  # like B
    D: torch.Tensor  # [H]
    conv_weight: torch.Tensor  # [d, K] (the x channels)
    conv_bias: torch.Tensor | None  # [d]
    head_dim: int = 1  # channels per head (Mamba: 1)
    gated_at: str = "out_proj"  # where y * SiLU(z) is formed: out_proj's input, or inside the gated "norm"
    observed: dict[str, torch.Tensor] = field(default_factory=dict)  # real-forward tensors, [T, .]
    mixer_path: str = "mixer"  # the mixer's path in its block

    @property
    def n_heads(self) -> int:
        return self.delta.shape[1]

    def n_matrices(self, form: str) -> int:
        return n_channels(self, form)


def _form(form: str) -> MambaForm:
    return check_form(form, FORMS, use="s6 (ssm), or unified")


def n_channels(internals: MambaInternals, form: str) -> int:
    """How many matrices a form has: s6 -> heads (Mamba: d_inner channels), unified -> d_inner channels."""
    return internals.n_heads if _form(form) == "s6" else internals.n_channels


# -- capture -------------------------------------------------------------------------------------------------
@torch.no_grad()
@contextmanager
def unfused(model: torch.nn.Module) -> Iterator[None]:
    """The mixers' unfused path for the capture, then the model's own mode back: in training mode (or any
    fused kernel path, e.g. mamba_ssm's mamba_inner_fn on CUDA) the forward never calls the projections whose
    inputs the capture reads, so it runs in eval mode, where transformers calls them as modules."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def mixer_path(block: nn.Module) -> str | None:
    """The path of a block's Mamba / Mamba-2 mixer (None: the block has none, e.g. a Bamba attention layer)."""
    return first_submodule_path(block, MIXER_PATHS)


def _hooked(mixer: nn.Module) -> list[tuple[str, str]]:
    """(submodule, what) pairs the capture hooks: Mamba-1 (``x_proj``) reads the SSM input and dt/B/C at
    ``x_proj``, and Falcon-Mamba's normalised dt/B/C at its weightless RMS norms; Mamba-2 reads the gated
    norm's inputs when the mixer calls it (Falcon-H1 without ``mamba_rms_norm`` gates before ``out_proj``)."""
    if is_multi_head(mixer):  # Zamba: x_proj / dt_proj are per-head parameters, recomputed from in_proj
        return [("in_proj", "out"), ("out_proj", "in")]
    if hasattr(mixer, "x_proj"):
        norms = [(name, "out") for name in ("dt_layernorm", "b_layernorm", "c_layernorm") if hasattr(mixer, name)]
        return [("in_proj", "out"), ("x_proj", "in"), ("x_proj", "out"), ("out_proj", "in"), *norms]
    if getattr(mixer, "mamba_rms_norm", True) and getattr(mixer.norm, "norm_before_gate", False):
        raise PrunescopeError("implicit attention needs the Mamba-2 gate applied before the RMS norm "
                              "(this model sets mamba_norm_before_gate)")
    gated_norm = getattr(mixer, "mamba_rms_norm", True)
    return [("in_proj", "out"), *([("norm", "norm")] if gated_norm else []), ("out_proj", "in")]


def capture_mamba(loaded: Loaded, input_ids: torch.Tensor, layers: list[int] | None = None
                  ) -> dict[int, MambaInternals]:
    """Run ``input_ids`` ([T] or [1, T]) once through the model with hooks on each requested layer's Mamba or
    Mamba-2 mixer and return its internals; layers without a mixer (a hybrid's attention layers) are skipped."""
    ids = prompt_ids(input_ids, loaded.device)
    paths = {layer: mixer_path(loaded.adapter.block(layer)) for layer in check_layers(loaded, layers)}
    if not any(paths.values()):
        raise PrunescopeError(f"implicit attention of Mamba needs Mamba or Mamba-2 layers; "
                              f"{loaded.model.config.model_type} has none among the layers asked for")
    mixers = {layer: loaded.adapter.block(layer).get_submodule(path) for layer, path in paths.items() if path}
    raw: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in mixers}

    def save(store, key, kind):
        def hook(module, args, kwargs, output=None):
            store[key] = (output if kind == "out" else args[0] if args else next(iter(kwargs.values()))).detach()
            if kind == "norm":  # MambaRMSNormGated(hidden_states, gate)
                store["norm_gate"] = (args[1] if len(args) > 1 else kwargs["gate"]).detach()
        return hook

    with loaded.session(), unfused(loaded.model):
        with hook_scope(loaded.model) as add:
            for layer, mixer in mixers.items():
                add(mixer, save(raw[layer], "mixer_out", "out"), with_kwargs=True)
                for name, kind in _hooked(mixer):
                    add(getattr(mixer, name), save(raw[layer], f"{name}_{kind}", kind), pre=kind != "out",
                        with_kwargs=True)
            loaded.model(input_ids=ids, use_cache=False)
        missing = [key for layer in mixers for key in ("in_proj_out", "out_proj_in", "mixer_out")
                   if key not in raw[layer]]
        if missing:  # e.g. a fused kernel path that bypasses the submodules
            raise PrunescopeError(f"the forward pass never reached {missing[0]}: run the model in eval mode")
        internals = {}
        for layer, mixer in mixers.items():  # reads the mixer's parameters: in memory even when on disk
            with onloaded(loaded.adapter.block(layer)):
                build = _internals_mamba if hasattr(mixer, "x_proj") or is_multi_head(mixer) else _internals_mamba2
                internals[layer] = build(mixer, layer, raw[layer])
                internals[layer].mixer_path = paths[layer] or ""
        return internals


def _conv(mixer, xbc: torch.Tensor) -> torch.Tensor:
    """[T, channels] -> causal depthwise conv pre-activation, as HF's torch ``causal_conv1d_fn``."""
    weight, length = mixer.conv1d.weight, xbc.shape[0]
    out = F.conv1d(xbc.T[None].to(weight.dtype), weight, mixer.conv1d.bias, padding=weight.shape[-1] - 1,
                   groups=weight.shape[0])
    return out[0, :, :length].T


@overload
def _f32(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _f32(t: None) -> None: ...
@overload
def _f32(t: torch.Tensor | None) -> torch.Tensor | None: ...
def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float().clone()  # stays on the model's device


def _internals_mamba(mixer, layer: int, raw: dict) -> MambaInternals:
    d, n, rank = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    if is_multi_head(mixer):  # Zamba: B, C per mamba head ([T, H, n]), all recomputed (mamba_heads.py)
        x, z = split_branches(raw["in_proj_out"][0])
        conv = _conv(mixer, x)
        u, delta, A, B, C, D = head_ssm_inputs(mixer, conv)
    else:
        x, z = raw["in_proj_out"][0].split([d, d], dim=-1)
        conv, u, A, D = _conv(mixer, x), raw["x_proj_in"][0], -torch.exp(mixer.A_log.float()), mixer.D
        dt_low, B, C = raw["x_proj_out"][0].split([rank, n, n], dim=-1)
        if "b_layernorm_out" in raw:  # Falcon-Mamba: dt, B and C through weightless RMS norms
            dt_low, B, C = (raw[f"{name}_layernorm_out"][0] for name in ("dt", "b", "c"))
        # HF: dt_proj.weight @ dt_low (no module call), then + bias in fp32 and softplus; no clamping in Mamba-1
        delta = F.softplus((dt_low @ mixer.dt_proj.weight.T).float() + mixer.dt_proj.bias.float())
    return MambaInternals(
        "mamba", layer, _f32(x), _f32(z), _f32(conv), _f32(u), _f32(delta),
        _f32(A), _f32(B), _f32(C), _f32(D), _f32(mixer.conv1d.weight[:, 0]),
        _f32(mixer.conv1d.bias), 1, "out_proj",
        {"gated": _f32(raw["out_proj_in"][0]), "out_proj_in": _f32(raw["out_proj_in"][0]),
         "mixer_out": _f32(raw["mixer_out"][0])})


def _internals_mamba2(mixer, layer: int, raw: dict) -> MambaInternals:
    d, heads, groups, n = mixer.intermediate_size, mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    projected = raw["in_proj_out"][0]
    if hasattr(mixer, "mup_vector"):  # Falcon-H1 scales in_proj's output by its muP multipliers
        projected = projected * mixer.mup_vector[0, 0]
    z, xbc, dt = projected.split([d, mixer.conv_dim, heads], dim=-1)
    conv = _conv(mixer, xbc)
    u, B, C = mixer.act(conv).split([d, groups * n, groups * n], dim=-1)
    lo, hi = mixer.time_step_limit  # HF clamps the softplus'ed dt to time_step_limit (default (0, inf))
    delta = torch.clamp(F.softplus(dt + mixer.dt_bias.to(dt.dtype)), min=lo, max=hi)
    observed = {"out_proj_in": _f32(raw["out_proj_in"][0]), "mixer_out": _f32(raw["mixer_out"][0])}
    if "norm_norm" in raw:  # the gate is applied inside the norm
        y, gate = raw["norm_norm"][0], raw["norm_gate"][0]
        gated = y.float() * F.silu(gate.float())  # first line of MambaRMSNormGated, before the RMS scaling
        observed |= {"ssm_out": _f32(y), "gated": _f32(gated)}
    else:  # Falcon-H1 without mamba_rms_norm: out_proj(y * SiLU(z)), as Mamba-1
        observed["gated"] = observed["out_proj_in"]
    return MambaInternals(
        "mamba2", layer, _f32(xbc[:, :d]), _f32(z), _f32(conv[:, :d]), _f32(u), _f32(delta),
        _f32(-torch.exp(mixer.A_log.float())), _f32(B.reshape(-1, groups, n)), _f32(C.reshape(-1, groups, n)),
        _f32(mixer.D), _f32(mixer.conv1d.weight[:d, 0]),
        _f32(None if mixer.conv1d.bias is None else mixer.conv1d.bias[:d]), mixer.head_dim,
        "norm" if "ssm_out" in observed else "out_proj", observed)


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
    form = _form(form)
    idx = _channels(internals, form, channels)
    return _alpha(internals, idx) if form == "s6" else _unified(internals, idx)[0]


def _bytes_per_entry(inn: MambaInternals, form: str) -> int:
    """Working bytes per (channel, i, j): fp32 matrices and copies, plus Mamba's per-channel tree scratch
    spread over the T x T entries."""
    scratch = 0
    if inn.model_type == "mamba":
        scratch = -(-per_channel_scratch_bytes(padded_length(inn.length), inn.A.shape[1]) // inn.length ** 2)
    return 4 * (3 if _form(form) == "s6" else 5) + scratch


def mamba_reduced(internals: MambaInternals, form: str, reduction: Reduction,
                  budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] mean / absmean / chosen-channels mean of a form's matrices. Means are linear in the channels and
    go through :func:`mamba_mean` (no per-channel matrix); Mamba's s6 absmean sums absolute values block by
    block (:func:`mamba_s6_abs_sum`); other absmeans build the matrices in channel chunks (the unified form's
    conv mixes blocks before the absolute value)."""
    selected = reduction.selected(n_channels(internals, form))
    if reduction.kind != "absmean":
        return mamba_mean(internals, _form(form), selected, budget_bytes)
    if _form(form) == "s6" and internals.model_type == "mamba":
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
    inn, form = internals, _form(form)
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
    inn, form = internals, _form(form)
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
