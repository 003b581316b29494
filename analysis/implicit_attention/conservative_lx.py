"""Conservative propagation (LRP) rules of LFM2 and xLSTM, built from the shared rules of
:mod:`analysis.implicit_attention.conservative` (activations linearised, products of two signals split half and
half, data-dependent gates and coefficients detached), so that given the detached factors every layer is linear
in the path that carries relevance and gradient x input at the embeddings conserves it.

* LFM2's gated short convolution ``y = C * conv(B * x)``: both gates B and C (slices of ``in_proj``'s output,
  like Mamba's B and C from ``x_proj``) detached, so the layer is the banded linear map of the family's
  ``unified`` implicit attention applied to x; its SwiGLU MLP ``w2(SiLU(w1 x) * w3 x)`` by the gated-MLP rule.
  Attention layers (softmax detached) and ``Lfm2RMSNorm`` (Llama-style) are the caller's generic part.
* xLSTM's mLSTM: query, key, the exponential input gate, the forget gate (hence the max state m and the
  normaliser ``max(|q.n|, exp(-m))``) detached, so the kernel's output is linear in the values (transformers'
  own chunkwise and recurrent kernels, re-run on detached inputs); the sigmoid output gate detached; the
  per-head layer norm and the RMS norms with their 1/sigma detached (centring kept); the SwiGLU FFN
  ``proj_down(SiLU(proj_up_gate x) * proj_up x)`` by the gated-MLP rule. The gates' soft caps
  feed detached factors only; the final logit soft cap is the caller's (``linear_cap``).

:data:`LFM2` and :data:`XLSTM` are what the family registry names (analysis/families.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from analysis.errors import PrunescopeError
from analysis.implicit_attention.conservative import (
    PROBE_LENGTH,
    Rule,
    _hidden_probe,
    _masked,
    _no_cache,
    half_product,
    linearised,
)


# -- LFM2 ----------------------------------------------------------------------------------------------------
def lfm2_short_conv(op: Any) -> Callable[..., torch.Tensor]:
    """LFM2's gated short convolution: the gates B and C detached, so ``C * conv(B * x)`` is linear in x (and
    in the conv bias, a bias term)."""
    def forward(hidden_states, past_key_values=None, attention_mask=None, **kwargs):
        _no_cache("LFM2's short convolution", past_key_values)
        length = hidden_states.shape[1]
        b_gate, c_gate, x = op.in_proj(_masked(hidden_states, attention_mask)).transpose(-1, -2).chunk(3, dim=-2)
        u = (b_gate.detach() * x).to(op.conv.weight.dtype)
        conv = op.conv(u)[..., :length].to(x.dtype)  # causal: padding K - 1 on both sides, the tail cut
        return op.out_proj((c_gate.detach() * conv).transpose(-1, -2).contiguous())
    return forward


def lfm2_mlp(mlp: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """LFM2's SwiGLU MLP ``w2(SiLU(w1 x) * w3 x)``: SiLU linearised, the product by the uniform rule."""
    def forward(x):
        return mlp.w2(half_product(linearised(F.silu, mlp.w1(x)), mlp.w3(x)))
    return forward


# -- xLSTM ---------------------------------------------------------------------------------------------------
def _xlstm_projections(layer: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(query, key, value, output-gate pre-activation, input- and forget-gate pre-activations), [B, T, .] each,
    the gates soft-capped, as transformers' xLSTMLayer computes them. Only the "single" weight mode: transformers
    5.23 cannot build or load a "fused" xLSTM (its weight init slices the fused gate bias wrongly)."""
    if layer.config.weight_mode != "single":
        raise PrunescopeError(f"lrp supports xLSTM's 'single' weight mode, not {layer.config.weight_mode!r}")
    cap = layer.config.gate_soft_cap
    capped = (lambda t: t) if cap is None else (lambda t: cap * torch.tanh(t / cap))
    return (layer.q(x), layer.k(x), layer.v(x), layer.ogate_preact(x), capped(layer.igate_preact(x)),
            capped(layer.fgate_preact(x)))


def xlstm_layer(layer: Any) -> Callable[..., tuple[torch.Tensor, Any]]:
    """xLSTM's mLSTM layer: query, key and both gates detached (so the max state and the normaliser are
    constants and the kernel is linear in the values), the multi-head norm (its own rule), the output gate
    sigmoid(o) detached."""
    def forward(x, state=None):
        _no_cache("xLSTM's mLSTM layer", state)
        batch, length, _ = x.shape
        query, key, value, o_pre, i_pre, f_pre = _xlstm_projections(layer, x)
        heads = layer.config.num_heads

        def split(t):
            return t.reshape(batch, length, heads, -1).transpose(1, 2)
        out = layer.mlstm_backend(query=split(query).detach(), key=split(key).detach(), value=split(value),
                                  igate=i_pre.detach().transpose(1, 2), fgate=f_pre.detach().transpose(1, 2))
        h = (out[0] if isinstance(out, tuple) else out).transpose(1, 2)
        h_norm = layer.multihead_norm(h).reshape(batch, length, -1)
        return layer.out_proj(torch.sigmoid(o_pre).detach() * h_norm), None
    return forward


def xlstm_ffn(ffn: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """xLSTM's SwiGLU FFN: SiLU(gate) linearised, its product with the up projection by the uniform rule."""
    def forward(x):
        gate = linearised(ffn.act_fn, ffn.proj_up_gate(x))  # "single" weight mode (see _xlstm_projections)
        return ffn.proj_down(half_product(gate, ffn.proj_up(x)))
    return forward


def _weight_and_bias(norm: Any, x: torch.Tensor) -> torch.Tensor:
    x = x * norm.weight if norm.weight is not None else x
    return x + norm.bias if norm.bias is not None else x


def xlstm_rms_norm(norm: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """xLSTMRMSNorm ``weight * x / rms + bias`` with rms detached (not the Gemma-style norm that the generic
    rule takes a norm with ``eps`` for)."""
    def forward(x):
        wide = x.float() if norm.force_float32_reductions else x
        normed = wide * torch.rsqrt(wide.pow(2).mean(dim=-1, keepdim=True).detach() + norm.eps)
        return _weight_and_bias(norm, normed.to(x.dtype))
    return forward


def xlstm_multihead_norm(norm: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """xLSTMMultiHeadLayerNorm: each head's layer norm with 1/sigma detached, the centring kept (linear)."""
    def forward(x):
        batch, length = x.shape[:2]
        wide = x.float() if norm.force_float32_reductions else x
        centred = wide - wide.mean(dim=-1, keepdim=True)
        normed = centred * torch.rsqrt(wide.var(dim=-1, keepdim=True, unbiased=False).detach() + norm.eps)
        return _weight_and_bias(norm, normed.to(x.dtype).reshape(batch, length, -1))
    return forward


def _multihead_probe(norm: Any, generator: torch.Generator) -> tuple[tuple, dict]:
    """A random [1, PROBE_LENGTH, heads, head_dim] input."""
    weight = norm.weight
    x = torch.randn(1, PROBE_LENGTH, norm.num_heads, norm.head_dim, generator=generator)
    return (x.to(weight.device, weight.dtype),), {}


def _hidden_size(module: Any) -> int:
    return module.config.hidden_size


def _num_features(module: Any) -> int:
    return module.num_features


LFM2: Mapping[str, Rule] = {"Lfm2ShortConv": Rule(lfm2_short_conv, _hidden_probe(_hidden_size)),
                            "Lfm2MLP": Rule(lfm2_mlp, _hidden_probe(lambda mlp: mlp.w1.in_features))}
XLSTM: Mapping[str, Rule] = {"xLSTMLayer": Rule(xlstm_layer, _hidden_probe(_hidden_size)),
                             "xLSTMFeedForward": Rule(xlstm_ffn, _hidden_probe(_hidden_size)),
                             "xLSTMRMSNorm": Rule(xlstm_rms_norm, _hidden_probe(_num_features)),
                             "xLSTMMultiHeadLayerNorm": Rule(xlstm_multihead_norm, _multihead_probe)}
