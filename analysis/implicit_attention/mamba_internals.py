"""One Mamba / Mamba-2 layer's internals (:class:`MambaInternals`), read from one forward pass of the real
transformers modules (batch 1, ``use_cache=False``) through hooks on each layer's mixer (:func:`capture_mamba`):

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
produced (:func:`analysis.implicit_attention.mamba.mamba_reconstruct`). The forms built from these internals
are in analysis/implicit_attention/mamba.py.
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
from analysis.implicit_attention.common import Internals, check_form, check_layers, prompt_ids
from analysis.implicit_attention.mamba_heads import head_ssm_inputs, is_multi_head, split_branches
from analysis.implicit_attention.mamba_tree import MambaForm
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


def mamba_form(form: str) -> MambaForm:
    """The canonical name of a form (s6 or unified), or a one-line error naming the ones there are."""
    return check_form(form, FORMS, use="s6 (ssm), or unified")


def n_channels(internals: MambaInternals, form: str) -> int:
    """How many matrices a form has: s6 -> heads (Mamba: d_inner channels), unified -> d_inner channels."""
    return internals.n_heads if mamba_form(form) == "s6" else internals.n_channels


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
