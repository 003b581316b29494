"""Conservative propagation (LRP) rules of the delta-rule and linear-attention hybrids: Qwen3-Next (Gated
DeltaNet), Kimi Linear (Kimi Delta Attention) and MiniMax (lightning attention), with the shared rules of
:mod:`analysis.implicit_attention.conservative` (activations linearised, products of two signals half and
half, data-dependent gates and coefficients detached).

* **Delta rule** (Gated DeltaNet, KDA): transformers runs S_i = diag(e^{g_i}) S_{i-1} (I - beta_i k_i k_i^T)
  + beta_i v_i k_i^T, o_i = S_i^T q_i. With the keys (hence the transition I - beta k k^T), the queries, the
  write strength beta and the decay g detached, the output is linear in the values: o = A v with
  A = Lqk (I + Lkk)^-1 diag(beta) (:mod:`analysis.implicit_attention.delta_rule`). The short conv's SiLU is
  linearised (sigmoid detached); transformers' own chunked torch path runs the recurrence.
* **Lightning attention** (MiniMax): decayed linear attention with fixed per-head slopes, so with q and k
  detached it is linear in v; the q/k/v SiLU linearised; the RMS norm by the generic rule.
* **Output gates**: Qwen3-Next's ``RMSNormGated`` is ``w * y / rms(y) * SiLU(z)``: 1/rms detached, SiLU
  linearised, the product with the gate branch z half and half (as Mamba-2's gated norm); Kimi's gated norm
  gates with a sigmoid and MiniMax multiplies by ``sigmoid(output_gate(x))``: sigmoid gates are detached.
* **Softmax layers**: the probabilities are detached by the caller; Qwen3-Next's sigmoid output gate of its
  attention is detached (its queries only feed the detached softmax, so the whole q_proj output is).
* **MoE**: each experts class by :data:`~analysis.implicit_attention.conservative.EXPERTS_RULE` (routing
  weights detached); Qwen3-Next's shared expert is a gated MLP whose sigmoid gate is detached; Kimi's shared
  experts and the dense MLPs are gated MLPs.

Modules whose transformers forward needs only some of its children's outputs detached (or replaced by a
linearised value) run that forward itself with temporary hooks (:func:`own_forward_with`), so transformers'
code stays the one computing the values; each replacement is checked against the module on a probe by
:func:`analysis.attribution.propagation.conservative_propagation`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from analysis.implicit_attention.conservative import (
    EXPERTS_RULE,
    PROBE_LENGTH,
    Rule,
    _gated_norm_probe,
    _hidden_probe,
    _masked,
    _no_cache,
    gated_mlp,
    half_product,
    linearised,
)
from analysis.models.hooks import hook_scope

Replace = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (child's input, child's output) -> new output


def detached(_inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return output.detach()


def own_forward_with(replacements: Mapping[str, Replace]) -> Callable[[Any], Callable[..., Any]]:
    """A rule's forward builder: the module's own (transformers) forward, with the output of each named child
    replaced by ``replace(input, output)`` (e.g. :func:`detached`) through hooks held for that call only."""
    def build(module: Any) -> Callable[..., Any]:
        def forward(*args, **kwargs):
            with hook_scope(module) as add:
                for name, replace in replacements.items():
                    add(module.get_submodule(name), lambda _m, inputs, output, r=replace: r(inputs[0], output))
                return type(module).forward(module, *args, **kwargs)
        return forward
    return build


def _conv_silu(mixer: Any, mixed: torch.Tensor) -> torch.Tensor:
    """[B, T, channels] -> the short causal conv with its activation linearised (as transformers'
    ``causal_conv1d_fn``, through the conv module so that an offloaded conv is loaded)."""
    length = mixed.shape[1]
    conv = mixer.conv1d(mixed.transpose(1, 2).to(mixer.conv1d.weight.dtype))[..., :length]
    return linearised(ACT2FN[mixer.activation], conv).to(mixed.dtype).transpose(1, 2)


def _modeling(module: Any) -> Any:
    """The transformers modeling module that defines ``module``'s class (its recurrence functions)."""
    return inspect.getmodule(type(module))


# -- Qwen3-Next: Gated DeltaNet ------------------------------------------------------------------------------
def gated_deltanet_mixer(mixer: Any) -> Callable[..., torch.Tensor]:
    """Qwen3-Next's Gated DeltaNet: conv + SiLU linearised; q, k (so the transition I - beta k k^T), beta and
    the decay g detached: the chunked delta rule is linear in v; the gated norm by its own rule."""
    def forward(hidden_states, cache_params=None, attention_mask=None, **kwargs):
        _no_cache("Qwen3-Next's Gated DeltaNet", cache_params)
        hidden = _masked(hidden_states, attention_mask)
        query, key, value, z, b, a = mixer.fix_query_key_value_ordering(mixer.in_proj_qkvz(hidden),
                                                                        mixer.in_proj_ba(hidden))
        mixed = _conv_silu(mixer, torch.cat([x.reshape(*x.shape[:2], -1) for x in (query, key, value)], dim=-1))
        query, key, value = mixed.split([mixer.key_dim, mixer.key_dim, mixer.value_dim], dim=-1)
        beta = b.sigmoid().detach()
        g = (-mixer.A_log.float().exp() * F.softplus(a.float() + mixer.dt_bias)).detach()
        core, _ = _modeling(mixer).torch_chunk_gated_delta_rule(
            query.reshape(*query.shape[:2], -1, mixer.head_k_dim).detach(),
            key.reshape(*key.shape[:2], -1, mixer.head_k_dim).detach(),
            value.reshape(*value.shape[:2], -1, mixer.head_v_dim), g=g, beta=beta, initial_state=None,
            output_final_state=False, use_qk_l2norm_in_kernel=True)
        core = mixer.norm(core.reshape(-1, core.shape[-1]), z.reshape(-1, z.shape[-1]))
        return mixer.out_proj(core.reshape(*hidden.shape[:2], -1))
    return forward


def _normalised(hidden: torch.Tensor, eps: float) -> torch.Tensor:
    """float32 ``x / rms(x)`` over the last dimension with the rms detached."""
    h = hidden.to(torch.float32)
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).detach() + eps)


def silu_gated_rms_norm(norm: Any) -> Callable[..., torch.Tensor]:
    """Qwen3-Next's RMSNormGated (norm, then gate): 1/rms detached, ``w y/rms * SiLU(z)`` half and half with
    SiLU linearised."""
    def forward(hidden_states, gate):
        normed = norm.weight * _normalised(hidden_states, norm.variance_epsilon).to(hidden_states.dtype)
        return half_product(normed, linearised(ACT2FN[norm.activation], gate.to(torch.float32))
                            ).to(hidden_states.dtype)
    return forward


def _attention_probe(attn: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    """A random hidden state and random rotary (cos, sin) over the whole head, no mask."""
    (x,), _ = _hidden_probe(lambda m: m.config.hidden_size)(attn, generator)
    cos, sin = (torch.randn(1, PROBE_LENGTH, attn.head_dim, generator=generator).to(x) for _ in range(2))
    return (x, (cos, sin), None), {}


# -- Kimi Linear: Kimi Delta Attention -----------------------------------------------------------------------
def kimi_delta_mixer(mixer: Any) -> Callable[..., torch.Tensor]:
    """Kimi Delta Attention: conv + SiLU linearised; q, k, beta and the channel-wise decay detached: the
    chunked KDA is linear in v; the sigmoid-gated norm by its own rule."""
    def forward(hidden_states, cache_params=None, attention_mask=None, **kwargs):
        _no_cache("Kimi Delta Attention", cache_params)
        hidden = _masked(hidden_states, attention_mask)
        shape = (*hidden.shape[:2], -1, mixer.head_dim)
        mixed = _conv_silu(mixer, torch.cat([mixer.q_proj(hidden), mixer.k_proj(hidden), mixer.v_proj(hidden)],
                                            dim=-1))
        query, key, value = (x.reshape(shape) for x in mixed.split([mixer.qkv_dim] * 3, dim=-1))
        core, _ = _modeling(mixer).chunk_kimi_delta_attention(
            query.detach(), key.detach(), value, g=mixer.forget_gate(hidden).detach(),
            beta=torch.sigmoid(mixer.b_proj(hidden)).detach(), initial_state=None, output_final_state=False,
            use_qk_l2norm_in_kernel=True)
        gate = mixer.g_b_proj(mixer.g_a_proj(hidden)).view(shape)
        return mixer.o_proj(mixer.o_norm(core, gate).reshape(*hidden.shape[:2], -1))
    return forward


def sigmoid_gated_rms_norm(norm: Any) -> Callable[..., torch.Tensor]:
    """Kimi's RMSNormGated (norm, then a sigmoid gate): 1/rms and the sigmoid gate detached."""
    def forward(hidden_states, gate=None):
        normed = norm.weight.to(torch.float32) * _normalised(hidden_states, norm.variance_epsilon)
        return (normed * ACT2FN[norm.activation](gate.to(torch.float32)).detach()).to(hidden_states.dtype)
    return forward


# -- MiniMax: lightning attention ----------------------------------------------------------------------------
def _lightning_qkv(attn: Any) -> Replace:
    """The q/k/v activation linearised, with q and k (the first two thirds of each head's channels) detached."""
    def replace(pre: torch.Tensor, _output: torch.Tensor) -> torch.Tensor:
        qkv = linearised(attn.act_fn.forward, pre)  # .forward: not through this hook again
        qkv = qkv.view(*pre.shape[:-1], attn.num_attention_heads, 3 * attn.head_dim)
        keys = 2 * attn.head_dim
        return torch.cat([qkv[..., :keys].detach(), qkv[..., keys:]], dim=-1).view(pre.shape)
    return replace


def lightning_attention(attn: Any) -> Callable[..., Any]:
    """MiniMax's lightning attention, its own forward with the q/k/v SiLU linearised, q and k detached (the
    block-wise decayed linear attention is then linear in v) and the sigmoid output gate detached."""
    replaced = own_forward_with({"act_fn": _lightning_qkv(attn), "output_gate": detached})(attn)

    def forward(hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        _no_cache("MiniMax's lightning attention", past_key_values)
        return replaced(hidden_states, position_embeddings, attention_mask, None, **kwargs)
    return forward


def _lightning_probe(attn: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    (x,), _ = _hidden_probe(lambda m: m.output_gate.in_features)(attn, generator)
    return (x, None, None), {}


def _hidden_size(module: Any) -> int:
    return module.hidden_size


def _experts_width(module: Any) -> int:
    return module.experts.hidden_dim


_MLP = Rule(gated_mlp, _hidden_probe(_hidden_size))
GATED_DELTANET: Mapping[str, Rule] = {
    "Qwen3NextGatedDeltaNet": Rule(gated_deltanet_mixer, _hidden_probe(_hidden_size)),
    "Qwen3NextRMSNormGated": Rule(silu_gated_rms_norm, _gated_norm_probe),
    "Qwen3NextAttention": Rule(own_forward_with({"q_proj": detached}), _attention_probe),
    "Qwen3NextSparseMoeBlock": Rule(own_forward_with({"shared_expert_gate": detached}),
                                    _hidden_probe(_experts_width)),
    "Qwen3NextExperts": EXPERTS_RULE,
    "Qwen3NextMLP": _MLP,
}
KIMI_DELTA: Mapping[str, Rule] = {
    "KimiLinearDeltaAttention": Rule(kimi_delta_mixer, _hidden_probe(_hidden_size)),
    "KimiLinearRMSNormGated": Rule(sigmoid_gated_rms_norm, _gated_norm_probe),
    "KimiLinearExperts": EXPERTS_RULE,
    "KimiLinearMLP": _MLP,
}
MINIMAX: Mapping[str, Rule] = {
    "MiniMaxLightningAttention": Rule(lightning_attention, _lightning_probe),
    "MiniMaxExperts": EXPERTS_RULE,
}
