"""Parallel training paths for the recurrent families on CPU (toy checkpoints only).

transformers runs RWKV's WKV and Griffin's RG-LRU as Python loops over time on CPU, and Mamba's scan
likewise unless ``mambapy`` is used: training through them is 20-100x too slow for the 20-minute toy budget.
During training only, :func:`parallel_training` swaps in the same mathematics computed for all positions
at once (as the implicit-attention matrices: a masked [B, C, T, T] weight tensor times the inputs). The
saved checkpoints are ordinary transformers models; tests check the parallel paths give the same outputs
and gradients as the loops.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def rwkv_wkv_parallel(time_decay, time_first, key, value, state=None, return_state=False):
    """RWKV-4's WKV for a whole sequence from the empty state: weights over i <= t proportional to
    exp(k_i - (t-1-i) w) (i < t) and exp(u + k_t) (i = t), normalised; w = exp(time_decay)."""
    if state is not None or return_state:
        raise NotImplementedError("the parallel WKV covers training from the empty state only")
    _, length, _ = key.shape
    t = torch.arange(length, device=key.device)
    distance = (t[:, None] - 1 - t[None, :]).to(key.dtype)  # t - 1 - i
    w = torch.exp(time_decay.float())  # [C]
    k = key.float().transpose(1, 2)  # [B, C, T]
    logits = k[:, :, None, :] - distance[None, None] * w[None, :, None, None]  # [B, C, t, i]
    diagonal = (time_first.float()[None, :, None] + k)  # [B, C, T]
    logits = logits.masked_fill(t[None, :] > t[:, None], float("-inf"))
    logits = torch.diagonal_scatter(logits, diagonal, dim1=2, dim2=3)
    weights = torch.softmax(logits, dim=-1)
    out = torch.einsum("bcti,bic->btc", weights, value.float())
    return out.to(key.dtype), None


def rglru_scan_parallel(module, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32):
    """Griffin's linear recurrence h_t = a_t h_{t-1} + x_t for a whole sequence whose only reset is at
    position 0 (how toy training feeds it): h_t = sum_{j<=t} exp(L_t - L_j) x_j with L the cumulative log a."""
    if recurrent_states is not None or hidden_states.shape[1] == 1 or reset[:, 1:].any():
        return module.__class__._rnn_scan(module, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype)
    gate = recurrent_gate.to(acc_dtype)
    log_a = torch.log(gate.clamp_min(1e-30))
    log_a[:, 0] = 0.0  # a_0 multiplies only the (zero) initial state
    cum = log_a.cumsum(dim=1).transpose(1, 2)  # [B, C, T]
    length = hidden_states.shape[1]
    future = torch.ones(length, length, dtype=torch.bool, device=gate.device).triu(1)
    weights = (cum[:, :, :, None] - cum[:, :, None, :]).masked_fill(future, float("-inf")).exp()
    out = torch.einsum("bctj,bjc->btc", weights, hidden_states.to(acc_dtype))
    return out.to(hidden_states.dtype), out[:, -1]


@contextmanager
def parallel_training(model) -> Iterator[None]:
    """Within the context, the model's recurrent layers run their parallel training paths."""
    model_type = model.config.model_type
    undo = []
    if model_type == "rwkv":
        from transformers.models.rwkv import modeling_rwkv

        original = modeling_rwkv.rwkv_linear_attention
        modeling_rwkv.rwkv_linear_attention = rwkv_wkv_parallel
        undo.append(lambda: setattr(modeling_rwkv, "rwkv_linear_attention", original))
    elif model_type == "recurrent_gemma":
        for module in model.modules():
            if hasattr(module, "_rnn_scan"):
                module._rnn_scan = lambda *args, _m=module, **kwargs: rglru_scan_parallel(_m, *args, **kwargs)
                undo.append(lambda _m=module: delattr(_m, "_rnn_scan"))
    elif model_type == "mamba":
        for module in model.modules():
            if hasattr(module, "use_mambapy"):
                module.use_mambapy, previous = True, module.use_mambapy
                undo.append(lambda _m=module, _p=previous: setattr(_m, "use_mambapy", _p))
    try:
        yield
    finally:
        for fn in reversed(undo):
            fn()
