"""The delta-rule and lightning-attention hybrids: Qwen3-Next (Gated DeltaNet + gated softmax attention),
Kimi Linear (Kimi Delta Attention + MLA) and MiniMax (lightning attention + softmax attention). The matrices
and their reference are in :mod:`analysis.implicit_attention.delta_rule`; this module captures each layer's
tensors and builds the registry entries.

Capture: one batch-1 forward (``use_cache=False``, empty state) with hooks on the recurrent mixer's input
projections, its gated output norm (input and gate) and its out-projection's input. transformers runs the
short conv as ``F.conv1d`` on the conv's weights (no module call to hook), so the conv pre-activation, the
normalised q and k, beta and the decay are recomputed from the captured projections with the layer's own
parameters and functions (its modeling module's ``l2norm``: Qwen3-Next's and Kimi's differ in the last bit),
and every form is checked against tensors the real forward produced (``linear_reconstruct``).

Softmax-attention layers have no implicit matrices: the captures skip them and :func:`hybrid_softmax_maps`
returns their real probabilities (eager attention, the output of the block's ``self_attn``, through
:func:`~analysis.implicit_attention.softmax.attention_module_maps`).

MiniMax's lightning layers have no short conv: their values enter the recurrence straight from the
projection (after the activation), so ``unified`` there is the core matrix with the gated RMS norm as a
data-dependent diagonal.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from analysis.errors import PrunescopeError
from analysis.implicit_attention.common import Reduction, check_layers, prompt_ids
from analysis.implicit_attention.delta_rule import (
    LinearInternals,
    linear_matrices,
    linear_reduced,
    relevance_target_at,
)
from analysis.implicit_attention.ops import FamilyOps
from analysis.implicit_attention.softmax import attention_module_maps
from analysis.models.adapters import GatedDeltaNetAdapter, KimiDeltaAdapter, MiniMaxAdapter
from analysis.models.hooks import hook_scope
from analysis.models.loader import onloaded

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded

Store = dict[str, torch.Tensor]
Hooks = Callable[[Callable[..., None], nn.Module, Store], None]  # (add, block, store): put the capture's hooks
Build = Callable[[nn.Module, int, Store], LinearInternals]  # (block, layer, store) -> the layer's internals


def is_linear(block: nn.Module) -> bool:
    return getattr(block, "block_type", None) == "linear_attention"


def capture_blocks(model: nn.Module, blocks: list[nn.Module], input_ids: torch.Tensor, layers: Iterable[int],
                   hooks: Hooks, build: Build) -> dict[int, LinearInternals]:
    """One forward of ``model`` (batch 1, no cache) under its lock with ``hooks`` on each requested recurrent
    block, then ``build`` of each one's internals; softmax-attention blocks among ``layers`` are skipped."""
    chosen = [i for i in layers if is_linear(blocks[i])]
    stores: dict[int, Store] = {i: {} for i in chosen}
    with hook_scope(model) as add:
        for i in chosen:
            hooks(add, blocks[i], stores[i])
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
        result = {}
        for i in chosen:
            with torch.no_grad(), onloaded(blocks[i]):  # its parameters, also where a device map put it on disk
                result[i] = build(blocks[i], i, stores[i])
        return result


def _output(store: Store, name: str):
    def hook(_module, _args, output):
        store[name] = (output[0] if isinstance(output, tuple) else output).detach()
    return hook


def _inputs(store: Store, *names: str):
    def hook(_module, args):
        for name, value in zip(names, args):
            store[name] = value.detach()
    return hook


def _short_conv(mixer: Any, mixed: torch.Tensor) -> torch.Tensor:
    """[T, channels] causal depthwise conv pre-activation of ``mixed`` [1, T, channels], as transformers'
    ``causal_conv1d_fn`` computes it with the mixer's conv weights."""
    if mixer.activation not in ("silu", "swish"):
        raise PrunescopeError(f"the unified form needs a SiLU after the short conv, not {mixer.activation!r}")
    conv = mixer.conv1d
    out = F.conv1d(mixed.transpose(1, 2).to(conv.weight.dtype), conv.weight, conv.bias,
                   padding=conv.kernel_size[0] - 1, groups=mixed.shape[-1])
    return out[0, :, :mixed.shape[1]].T


def _heads(x: torch.Tensor, heads: int, mixer: nn.Module, repeat: int = 1) -> torch.Tensor:
    """[T, heads * d] -> [heads * repeat, T, d] float32, L2-normalised with the modeling module's own l2norm."""
    per_head = x.reshape(x.shape[0], heads, -1).repeat_interleave(repeat, dim=1).transpose(0, 1).float()
    return inspect.getmodule(mixer).l2norm(per_head, dim=-1, eps=1e-6)  # type: ignore[union-attr]


def _gated_rms(core: torch.Tensor, weight: torch.Tensor, eps: float, gate: torch.Tensor, heads: int
               ) -> torch.Tensor:
    """[T, C] factor ``weight * gate / rms`` with the RMS over each head's channels (``heads`` groups)."""
    grouped = core.float().reshape(core.shape[0], heads, -1)
    scale = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps).expand_as(grouped).reshape(core.shape)
    return weight.float().repeat(heads) * scale * gate.float()


# -- Qwen3-Next: Gated DeltaNet -----------------------------------------------------------------------------
def _qwen3_next_hooks(add, block: nn.Module, store: Store) -> None:
    mixer = block.get_submodule("linear_attn")
    add(mixer.in_proj_qkvz, _output(store, "qkvz"))
    add(mixer.in_proj_ba, _output(store, "ba"))
    add(mixer.norm, _inputs(store, "core", "z"), pre=True)
    add(mixer.out_proj, _inputs(store, "out_proj_in"), pre=True)


def _qwen3_next_build(block: nn.Module, layer: int, s: Store) -> LinearInternals:
    mixer: Any = block.get_submodule("linear_attn")
    q, k, v, z, b, a = mixer.fix_query_key_value_ordering(s["qkvz"], s["ba"])
    mixed = torch.cat([x.reshape(x.shape[0], x.shape[1], -1) for x in (q, k, v)], dim=-1)
    pre = _short_conv(mixer, mixed)
    qa, ka, va = F.silu(pre).split([mixer.key_dim, mixer.key_dim, mixer.value_dim], dim=-1)
    heads, repeat = mixer.num_v_heads, mixer.num_v_heads // mixer.num_k_heads
    length, values = qa.shape[0], slice(2 * mixer.key_dim, None)
    log_decay = -mixer.A_log.float().exp() * F.softplus(a.float() + mixer.dt_bias)
    core, gate = s["core"].reshape(length, -1), s["z"].reshape(length, -1)
    return LinearInternals(
        kind="delta", layer=layer, q=_heads(qa, mixer.num_k_heads, mixer, repeat) * mixer.head_k_dim ** -0.5,
        k=_heads(ka, mixer.num_k_heads, mixer, repeat), beta=b.sigmoid()[0].T.float(), log_decay=log_decay[0].T,
        v=va.float(), core=core.float(), out_gate=_gated_rms(core, mixer.norm.weight, mixer.norm.variance_epsilon,
                                                          F.silu(gate.float()), heads),
        out_proj_in=s["out_proj_in"][0].float(), x_pre=mixed[0, :, values].float(), conv_pre=pre[:, values].float(),
        conv_weight=mixer.conv1d.weight[values, 0].float())


# -- Kimi Linear: Kimi Delta Attention (channel-wise decay) --------------------------------------------------
def _kimi_hooks(add, block: nn.Module, store: Store) -> None:
    mixer = block.get_submodule("self_attn")
    for name in ("q_proj", "k_proj", "v_proj", "b_proj", "forget_gate"):
        add(mixer.get_submodule(name), _output(store, name))
    add(mixer.o_norm, _inputs(store, "core", "gate"), pre=True)
    add(mixer.o_proj, _inputs(store, "out_proj_in"), pre=True)


def _kimi_build(block: nn.Module, layer: int, s: Store) -> LinearInternals:
    mixer: Any = block.get_submodule("self_attn")
    mixed = torch.cat([s["q_proj"], s["k_proj"], s["v_proj"]], dim=-1)
    pre = _short_conv(mixer, mixed)
    qa, ka, va = F.silu(pre).split([mixer.qkv_dim] * 3, dim=-1)
    length, heads, values = qa.shape[0], mixer.num_heads, slice(2 * mixer.qkv_dim, None)
    core, gate = s["core"][0].reshape(length, -1), s["gate"][0].reshape(length, -1)
    return LinearInternals(
        kind="kda", layer=layer, q=_heads(qa, heads, mixer) * mixer.head_dim ** -0.5, k=_heads(ka, heads, mixer),
        beta=s["b_proj"].sigmoid()[0].T.float(), log_decay=s["forget_gate"][0].transpose(0, 1).float(),
        v=va.float(), core=core.float(), out_gate=_gated_rms(core, mixer.o_norm.weight, mixer.o_norm.variance_epsilon,
                                                          torch.sigmoid(gate.float()), heads),
        out_proj_in=s["out_proj_in"][0].float(), x_pre=mixed[0, :, values].float(), conv_pre=pre[:, values].float(),
        conv_weight=mixer.conv1d.weight[values, 0].float())


# -- MiniMax: lightning attention (decayed linear attention) --------------------------------------------------
def _minimax_hooks(add, block: nn.Module, store: Store) -> None:
    mixer = block.get_submodule("self_attn")
    add(mixer.qkv_proj, _output(store, "qkv"))
    add(mixer.output_gate, _output(store, "output_gate"))
    add(mixer.norm, _inputs(store, "core"), pre=True)
    add(mixer.out_proj, _inputs(store, "out_proj_in"), pre=True)


def _minimax_build(block: nn.Module, layer: int, s: Store) -> LinearInternals:
    mixer: Any = block.get_submodule("self_attn")
    heads, length = mixer.num_attention_heads, s["qkv"].shape[1]
    q, k, v = mixer.act_fn(s["qkv"][0]).float().reshape(length, heads, -1).split(mixer.head_dim, dim=-1)
    core = s["core"][0].float()
    return LinearInternals(
        kind="lightning", layer=layer, q=q.transpose(0, 1), k=k.transpose(0, 1), beta=None,
        log_decay=-mixer.slope_rate.float().reshape(heads, 1).expand(heads, length),
        v=v.reshape(length, -1), core=core,
        out_gate=_gated_rms(core, mixer.norm.weight, mixer.norm.variance_epsilon,
                            torch.sigmoid(s["output_gate"][0].float()), 1),
        out_proj_in=s["out_proj_in"][0].float())


def _capture(hooks: Hooks, build: Build):
    def capture(loaded: Loaded, input_ids: torch.Tensor, layers: list[int] | None = None
                ) -> dict[int, LinearInternals]:
        """The internals of each requested recurrent layer (all layers when None) from one forward."""
        blocks = [loaded.adapter.block(i) for i in range(loaded.n_layers)]
        return capture_blocks(loaded.model, blocks, prompt_ids(input_ids, loaded.device),
                              check_layers(loaded, layers), hooks, build)
    return capture


capture_qwen3_next = _capture(_qwen3_next_hooks, _qwen3_next_build)
capture_kimi_linear = _capture(_kimi_hooks, _kimi_build)
capture_minimax = _capture(_minimax_hooks, _minimax_build)


SPECS: dict[str, tuple[Hooks, Build]] = {"qwen3_next": (_qwen3_next_hooks, _qwen3_next_build),
                                         "kimi_linear": (_kimi_hooks, _kimi_build),
                                         "minimax": (_minimax_hooks, _minimax_build)}


def bare_model_internals(model: nn.Module, input_ids: torch.Tensor) -> dict[int, LinearInternals]:
    """Every recurrent layer of a bare transformers model (no adapter: benchmarks), one forward."""
    model_type = str(getattr(model.config, "model_type", ""))
    if model_type not in SPECS:
        raise PrunescopeError(f"{model_type!r} has no delta-rule or lightning layers; use one of {', '.join(SPECS)}")
    hooks, build = SPECS[model_type]
    blocks = list(cast(nn.ModuleList, model.get_submodule("model.layers")))
    return capture_blocks(model, blocks, input_ids, range(len(blocks)), hooks, build)


def hybrid_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                        ) -> dict[int, torch.Tensor]:
    """[T, T] softmax probabilities of each requested softmax-attention layer (the recurrent ones are
    skipped), reduced over heads, from one eager forward (the block's ``self_attn`` output)."""
    attention = {i: "self_attn" for i in check_layers(loaded, layers) if not is_linear(loaded.adapter.block(i))}
    return attention_module_maps(loaded, input_ids, attention, reduction) if attention else {}


GATED_DELTANET_OPS = FamilyOps(
    forms=("delta", "unified"), implicit_layers=GatedDeltaNetAdapter.linear_layers, capture=capture_qwen3_next,
    reduced=linear_reduced, matrices=linear_matrices, relevance_target=relevance_target_at("linear_attn.out_proj"),
    softmax_maps=hybrid_softmax_maps)
KIMI_DELTA_OPS = FamilyOps(
    forms=("kda", "unified"), implicit_layers=KimiDeltaAdapter.linear_layers, capture=capture_kimi_linear,
    reduced=linear_reduced, matrices=linear_matrices, relevance_target=relevance_target_at("self_attn.o_proj"),
    softmax_maps=hybrid_softmax_maps)
MINIMAX_OPS = FamilyOps(
    forms=("lightning", "unified"), implicit_layers=MiniMaxAdapter.linear_layers, capture=capture_minimax,
    reduced=linear_reduced, matrices=linear_matrices, relevance_target=relevance_target_at("self_attn.out_proj"),
    softmax_maps=hybrid_softmax_maps)
