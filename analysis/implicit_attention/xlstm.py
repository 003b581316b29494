"""Exact implicit attention of xLSTM's mLSTM layers: gated linear attention with a normaliser.

transformers' native mLSTM (no ``xlstm`` package; chunkwise kernel for whole chunks, recurrent kernel for the
rest, one step per cached token) keeps per head C_t = f_t C_{t-1} + i_t v_t k_t^T and n_t = f_t n_{t-1} + i_t k_t
with f_t = sigmoid(f~_t), i_t = exp(i~_t) (pre-activations soft-capped), stabilised by the max state
``m_t = max(log f_t + m_{t-1}, i~_t)`` (m_0 = 0 for an empty state, i.e. ``m_i = max(b_i, max_{j<=i} D[i,j])``),
and outputs ``h_i = q_i C_i / (max(|q_i . n_i|, exp(-m_i)) + eps)`` with q scaled by 1/sqrt(d_qk) and C, n
the stabilised states. Unrolled, per head (j <= i, zero above the diagonal)::

    D[i, j] = b_i - b_j + i~_j,   b = cumsum(log f)
    raw[i, j] = (q_i . k_j / sqrt(d_qk)) exp(D[i, j] - m_i)
    A[i, j] = raw[i, j] / (max(|sum_j raw[i, j]|, exp(-m_i)) + eps),   h_i = sum_j A[i, j] v_j

(the chunkwise kernel's combined max state is the same closed form). Forms:

* ``"mlstm"``: A per head, mapping the head's values v to h, the mLSTM output *before* the multi-head
  layer norm and the output gate (the source v, ``group`` = the head's value channels);
* ``"unified"``: per value channel c of head h, ``M[c, i, j] = o[i, c] w_c rstd[i, h] A_h[i, j]``, mapping the
  head-centred values ``v[j, c] - mean_{d in h} v[j, d]`` to the ``out_proj`` input *after* the layer norm
  (weight w, per-position 1/std rstd of h, a data-dependent constant like the gates) and the output gate o;
  the layer norm's bias, if any, enters as the additive term ``o[i, c] bias_c``.

Captured in one forward (batch 1, no cache) with hooks on the backend's inputs (q, k, v, gate pre-activations),
the output gate, the norm's input, ``out_proj``'s input and the layer output. Reductions never build the
per-channel stack: the unified map is ``sum_h r_h[i] A_h[i, j]`` with r_h the head's (absolute) row scales, one
head at a time; the mlstm map reduces heads in chunks. :data:`XLSTM_OPS` is the family's registry entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import nn

from analysis.implicit_attention.common import (
    DEFAULT_BUDGET_BYTES,
    Internals,
    Reduction,
    check_form,
    check_layers,
    prompt_ids,
    reduce_in_chunks,
)
from analysis.implicit_attention.ops import FamilyOps, RelevanceTarget, all_layers
from analysis.models.hooks import hook_scope
from analysis.models.loader import onloaded

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers.models.xlstm.modeling_xlstm import xLSTMLayer

    from analysis.models.protocols import Loaded

XlstmForm = Literal["mlstm", "unified"]
FORMS: tuple[XlstmForm, ...] = get_args(XlstmForm)


@dataclass
class XlstmInternals(Internals):
    """One mLSTM layer's tensors from the real forward (batch 1, float32; T positions, H heads, v = H * dv
    value channels)."""

    tc_field: ClassVar[str] = "value"
    layer: int
    query: torch.Tensor  # [T, H, dqk]
    key: torch.Tensor  # [T, H, dqk]
    value: torch.Tensor  # [T, v]
    log_f: torch.Tensor  # [T, H] logsigmoid of the (soft-capped) forget pre-activation
    i_pre: torch.Tensor  # [T, H] (soft-capped) input-gate pre-activation, log i
    h: torch.Tensor  # [T, v] captured mLSTM output (the norm's input)
    o_gate: torch.Tensor  # [T, v] sigmoid output gate
    norm_weight: torch.Tensor | None  # [v]
    norm_bias: torch.Tensor | None  # [v]
    norm_eps: float
    eps: float  # the kernel's eps in the normaliser
    out_input: torch.Tensor  # [T, v] captured out_proj input
    output: torch.Tensor  # [T, hidden] captured layer output, out_proj(out_input)

    @property
    def n_heads(self) -> int:
        return self.log_f.shape[1]

    @property
    def head_dim(self) -> int:
        return self.n_channels // self.n_heads

    def n_matrices(self, form: str) -> int:
        return n_channels(self, form)  # heads (mlstm) or value channels (unified)

    def row_scales(self) -> torch.Tensor:
        """[T, v]: o[i, c] w_c rstd[i, head(c)], what the norm and the gate multiply row i of channel c by."""
        T = self.length
        var = self.h.reshape(T, self.n_heads, self.head_dim).var(dim=-1, unbiased=False)
        rstd = torch.rsqrt(var + self.norm_eps).repeat_interleave(self.head_dim, dim=1)
        weight = self.norm_weight if self.norm_weight is not None else torch.ones_like(self.o_gate[0])
        return self.o_gate * weight * rstd

    def centred_value(self) -> torch.Tensor:
        """[T, v]: each head's values minus their mean over the head (the unified form's source)."""
        v = self.value.reshape(self.length, self.n_heads, self.head_dim)
        return (v - v.mean(dim=-1, keepdim=True)).reshape(self.length, -1)


def _layer(loaded: Loaded, layer: int) -> xLSTMLayer:
    """Block ``layer``'s mLSTM layer (transformers types submodules as bare modules)."""
    return cast("xLSTMLayer", loaded.adapter.block(layer).mlstm_layer)


def _form(form: str) -> XlstmForm:
    return check_form(form, FORMS, "xLSTM")


def capture_xlstm(loaded: Loaded, input_ids: torch.Tensor, layers: Iterable[int] | None = None
                  ) -> dict[int, XlstmInternals]:
    """Run the model once (batch 1, empty state) and keep each requested layer's internals."""
    chosen = check_layers(loaded, layers)
    ids = prompt_ids(input_ids, loaded.device)
    store: dict[int, dict[str, torch.Tensor]] = {i: {} for i in chosen}

    def backend(layer):
        def hook(_module, _args, kwargs):
            for name in ("query", "key", "value"):  # [1, H, T, d] -> [T, H, d]
                store[layer][name] = kwargs[name][0].detach().transpose(0, 1).float()
            store[layer]["i_pre"] = kwargs["igate"][0].detach().T.float()
            store[layer]["log_f"] = F.logsigmoid(kwargs["fgate"][0].detach()).T.float()
        return hook

    def keep(layer, name, pre=False):
        def hook(_module, args, output=None):
            out = args[0] if pre else (output[0] if isinstance(output, tuple) else output)
            store[layer][name] = out[0].detach().float().reshape(out.shape[1], -1)
        return hook

    with loaded.lock:
        with hook_scope(loaded.model) as add:
            for i in chosen:
                mlstm = _layer(loaded, i)
                add(mlstm.mlstm_backend, backend(i), pre=True, with_kwargs=True)
                add(mlstm.ogate_act_fn, keep(i, "o_gate"))
                add(mlstm.multihead_norm, keep(i, "h", pre=True), pre=True)
                add(mlstm.out_proj, keep(i, "out_input", pre=True), pre=True)
                add(mlstm, keep(i, "output"))
            with torch.no_grad():
                loaded.model(input_ids=ids, use_cache=False)
        result = {}
        for i in chosen:
            mlstm, s = _layer(loaded, i), store[i]
            norm = mlstm.multihead_norm
            with onloaded(norm):  # its weights, also where a device map put the layer on disk
                weight, bias = (None if p is None else p.detach().float().clone() for p in (norm.weight, norm.bias))
            s["value"] = s["value"].reshape(s["value"].shape[0], -1)
            result[i] = XlstmInternals(layer=i, **s, norm_weight=weight, norm_bias=bias, norm_eps=norm.eps,
                                       eps=float(loaded.model.config.eps))
    return result


def n_channels(internals: XlstmInternals, form: str) -> int:
    """How many matrices a form has: heads (mlstm) or value channels (unified)."""
    return internals.n_heads if _form(form) == "mlstm" else internals.n_channels


def _attention(inn: XlstmInternals, heads: torch.Tensor) -> torch.Tensor:
    """[len(heads), T, T] A_h, the log-space weights and the normaliser in float64."""
    T = inn.length
    b = torch.cumsum(inn.log_f.double(), dim=0)[:, heads].T  # [n, T]
    log_d = b[:, :, None] - b[:, None, :] + inn.i_pre.double()[:, heads].T[:, None, :]
    upper = torch.ones(T, T, dtype=torch.bool, device=b.device).triu(1)
    log_d = log_d.masked_fill_(upper, float("-inf"))
    m = torch.maximum(b, log_d.max(dim=-1).values)  # m_0 = 0
    scores = torch.einsum("ihd,jhd->hij", inn.query[:, heads].double(), inn.key[:, heads].double())
    raw = scores.div_(math.sqrt(inn.query.shape[-1])).mul_(torch.exp(log_d.sub_(m[:, :, None])))
    normaliser = torch.maximum(raw.sum(dim=-1).abs(), torch.exp(-m)) + inn.eps
    return raw.div_(normaliser[:, :, None]).float()


def _indices(internals: XlstmInternals, form: str, channels: torch.Tensor | None) -> torch.Tensor:
    if channels is None:
        return torch.arange(n_channels(internals, form), device=internals.value.device)
    return torch.as_tensor(channels, dtype=torch.long).reshape(-1).to(internals.value.device)


def xlstm_matrices(internals: XlstmInternals, form: str = "mlstm", channels: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """[n, T, T] matrices of the selected heads (mlstm) or value channels (unified)."""
    name, idx = _form(form), _indices(internals, form, channels)
    if name == "mlstm":
        return _attention(internals, idx)
    heads, inverse = torch.unique(idx // internals.head_dim, return_inverse=True)
    return _attention(internals, heads)[inverse] * internals.row_scales()[:, idx].T[:, :, None]


def xlstm_reduced(internals: XlstmInternals, form: str, reduction: Reduction,
                  budget_bytes: int = DEFAULT_BUDGET_BYTES) -> torch.Tensor:
    """[T, T] reduction: mlstm over heads (chunks of heads within ``budget_bytes``); unified as
    ``sum_h r_h[i] A_h[i, j]`` (absolute values for absmean), one head's matrix at a time."""
    name = _form(form)
    if name == "mlstm":
        return reduce_in_chunks(lambda idx: _attention(internals, idx.to(internals.value.device)),
                                internals.n_heads, internals.length, reduction, budget_bytes)
    selected = reduction.selected(internals.n_channels).to(internals.value.device)
    scales = internals.row_scales()[:, selected]
    scales = scales.abs() if reduction.kind == "absmean" else scales
    total = internals.value.new_zeros(internals.length, internals.length)
    owner = selected // internals.head_dim
    for head in torch.unique(owner):
        attention = _attention(internals, head[None])[0]
        attention = attention.abs() if reduction.kind == "absmean" else attention
        total += scales[:, owner == head].sum(dim=1)[:, None] * attention
    return total / len(selected)


def xlstm_source(internals: XlstmInternals, form: str) -> torch.Tensor:
    """[T, v] what a form's matrices multiply: v (mlstm) or the head-centred v (unified)."""
    return internals.value if _form(form) == "mlstm" else internals.centred_value()


def xlstm_loop_matrices(internals: XlstmInternals, form: str = "mlstm", channels: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """Reference: HF's stabilised recurrent step (max state m, scaled f and i, C and n, the normaliser) run
    position by position in float64 on one-hot values (one per source position), per head."""
    name, idx = _form(form), _indices(internals, form, channels).cpu()
    heads, inverse = torch.unique(idx if name == "mlstm" else idx // internals.head_dim, return_inverse=True)
    q, k = internals.query.cpu().double(), internals.key.cpu().double()
    log_f, i_pre = internals.log_f.cpu().double(), internals.i_pre.cpu().double()
    T, dqk = internals.length, q.shape[-1]
    out = torch.zeros(len(heads), T, T, dtype=torch.float64)
    for row, head in enumerate(heads.tolist()):
        memory, norm, m = torch.zeros(dqk, T, dtype=torch.float64), torch.zeros(dqk, dtype=torch.float64), 0.0
        for t in range(T):
            m_new = max(float(log_f[t, head]) + m, float(i_pre[t, head]))
            f_act, i_act = math.exp(float(log_f[t, head]) + m - m_new), math.exp(float(i_pre[t, head]) - m_new)
            memory = f_act * memory
            memory[:, t] += i_act * k[t, head]
            norm = f_act * norm + i_act * k[t, head]
            scaled = q[t, head] / math.sqrt(dqk)
            out[row, t] = scaled @ memory / (max(abs(float(scaled @ norm)), math.exp(-m_new)) + internals.eps)
            m = m_new
    out = out[inverse]
    if name == "unified":
        out = out * internals.row_scales().cpu().double()[:, idx].T[:, :, None]
    return out.float().to(internals.value.device)


def xlstm_reconstruct(internals: XlstmInternals, form: str = "mlstm") -> tuple[torch.Tensor, torch.Tensor]:
    """(matrices applied to their source, the captured tensor), [T, v]: the mLSTM output h (before the norm
    and the output gate) for "mlstm"; the out_proj input (after both, plus the norm-bias term) for "unified"."""
    T, per = internals.length, internals.head_dim
    if _form(form) == "mlstm":
        v = internals.value.reshape(T, internals.n_heads, per)
        rebuilt = torch.einsum("hij,jhp->ihp", xlstm_matrices(internals, form), v).reshape(T, -1)
        return rebuilt, internals.h
    rebuilt = torch.einsum("cij,jc->ic", xlstm_matrices(internals, form), internals.centred_value())
    if internals.norm_bias is not None:
        rebuilt = rebuilt + internals.o_gate * internals.norm_bias
    return rebuilt, internals.out_input


def xlstm_relevance_target(block: nn.Module, inn: XlstmInternals, form: str) -> RelevanceTarget:
    """mlstm: y = the multi-head norm's input (h), per head; unified: y = out_proj's input."""
    if _form(form) == "mlstm":
        return RelevanceTarget(block.get_submodule("mlstm_layer.multihead_norm"), "input", inn.value,
                               group=inn.head_dim)
    return RelevanceTarget(block.get_submodule("mlstm_layer.out_proj"), "input", inn.centred_value())


XLSTM_OPS = FamilyOps(forms=FORMS, implicit_layers=all_layers, capture=capture_xlstm, reduced=xlstm_reduced,
                      matrices=xlstm_matrices, relevance_target=xlstm_relevance_target)
