"""Parallel training paths for the recurrent families on CPU (toy checkpoints only).

transformers runs RWKV's WKV and Griffin's RG-LRU as Python loops over time on CPU, and Mamba's scan
likewise unless ``mambapy`` is used: training through them is 20-100x too slow for the 20-minute toy budget.
During training only, :func:`parallel_training` swaps in the same mathematics computed in chunks: a masked
[chunk, chunk] weight block inside each chunk (the implicit-attention matrices, restricted to the chunk) and
a carried state between chunks, so the only loop is over T / chunk. The saved checkpoints are ordinary
transformers models; tests check the chunked paths give the same outputs and gradients as the loops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import torch


def rwkv_wkv_parallel(time_decay, time_first, key, value, state=None, return_state=False, chunk: int = 8):
    """RWKV-4's WKV for a whole sequence from the empty state: weights over i <= t proportional to
    exp(k_i - (t-1-i) w) (i < t) and exp(u + k_t) (i = t), normalised; w = exp(time_decay).

    Chunked in fp64: inside a chunk of ``chunk`` positions a masked [chunk, chunk] weight block; across chunks a
    carried numerator/denominator state, decayed by exp(-chunk w) per chunk. Keys are shifted by their maximum
    over the sequence (it cancels in the ratio), so every exponent is <= u and nothing overflows; the work is
    O(T * chunk) per channel instead of the O(T^2) of a full [B, C, T, T] weight tensor."""
    if state is not None or return_state:
        raise NotImplementedError("the parallel WKV covers training from the empty state only")
    batch, length, channels = key.shape
    pad = (-length) % chunk
    w, u = torch.exp(time_decay.double()), time_first.double()  # [C]
    k = key.double() - key.double().amax(dim=1, keepdim=True).detach()
    k = torch.cat([k, k.new_full((batch, pad, channels), -1e4)], 1).view(batch, -1, chunk, channels)
    v = torch.cat([value.double(), value.new_zeros(batch, pad, channels, dtype=torch.float64)], 1)
    v = v.view(batch, -1, chunk, channels)
    pos = torch.arange(chunk, device=key.device, dtype=torch.float64)
    gap = (pos[:, None] - 1 - pos[None, :])[None, None, :, :, None]  # t - 1 - i within the chunk
    before = (pos[:, None] > pos[None, :])[None, None, :, :, None]
    local = torch.exp((k[:, :, None] - gap * w).masked_fill(~before, float("-inf")))  # [B, n, t, i, C]
    first = torch.exp(u + k)  # the i = t term
    num = torch.einsum("bntic,bnic->bntc", local, v) + first * v
    den = local.sum(3) + first
    tail = torch.exp(k - (chunk - 1 - pos)[:, None] * w)  # weight of each position at the chunk's end
    carry_num, carry_den = (tail * v).sum(2), tail.sum(2)  # [B, n, C]
    decay = torch.exp(-chunk * w)
    state_num = state_den = torch.zeros(batch, channels, dtype=torch.float64, device=key.device)
    nums, dens = [], []
    for c in range(k.shape[1]):  # T / chunk steps over [B, C] states: the only loop
        nums.append(state_num)
        dens.append(state_den)
        state_num = decay * state_num + carry_num[:, c]
        state_den = decay * state_den + carry_den[:, c]
    into = torch.exp(-pos[:, None] * w)  # [chunk, C]: decay from the chunk's start to t
    num = num + into * torch.stack(nums, 1)[:, :, None]
    den = den + into * torch.stack(dens, 1)[:, :, None]
    out = (num / den).reshape(batch, -1, channels)[:, :length]
    return out.to(key.dtype), None


def rglru_scan_parallel(module, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32,
                        chunk: int = 16):
    """Griffin's linear recurrence h_t = a_t h_{t-1} + x_t for a whole sequence whose only reset is at
    position 0 (how toy training feeds it), in chunks: inside a chunk, h_t = sum_j exp(G_t - G_j) x_j with G the
    chunk's cumulative log a (a masked [chunk, chunk] block, every weight <= 1), plus exp(G_t) times the state
    carried from the previous chunk. O(T * chunk) per channel instead of a full [B, C, T, T] weight tensor."""
    if recurrent_states is not None or hidden_states.shape[1] == 1 or reset[:, 1:].any():
        return module.__class__._rnn_scan(module, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype)
    batch, length, channels = hidden_states.shape
    pad = (-length) % chunk
    log_a = torch.log(recurrent_gate.to(acc_dtype).clamp_min(1e-30))
    log_a = torch.cat([torch.zeros_like(log_a[:, :1]), log_a[:, 1:]], 1)  # a_0 multiplies the zero initial state
    x = hidden_states.to(acc_dtype)
    zeros = x.new_zeros(batch, pad, channels)
    cum = torch.cat([log_a, zeros], 1).view(batch, -1, chunk, channels).cumsum(2)  # [B, n, chunk, C]
    x = torch.cat([x, zeros], 1).view(batch, -1, chunk, channels)
    future = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).triu(1)[None, None, :, :, None]
    weights = (cum[:, :, :, None] - cum[:, :, None, :]).masked_fill(future, float("-inf")).exp()  # [B, n, t, j, C]
    local = torch.einsum("bntjc,bnjc->bntc", weights, x)
    decay = cum.exp()  # product of a from the chunk's start to t
    state, outs = x.new_zeros(batch, channels), []
    for c in range(x.shape[1]):  # T / chunk steps over [B, C] states: the only loop
        outs.append(local[:, c] + decay[:, c] * state[:, None])
        state = outs[-1][:, -1]
    out = torch.stack(outs, 1).reshape(batch, -1, channels)[:, :length]
    return out.to(hidden_states.dtype), out[:, -1]


@contextmanager
def parallel_training(model) -> Iterator[None]:
    """Within the context, the model's recurrent layers run their parallel training paths."""
    model_type = model.config.model_type
    undo: list[Callable[[], object]] = []
    if model_type == "rwkv":
        from transformers.models.rwkv import modeling_rwkv

        original = modeling_rwkv.rwkv_linear_attention
        modeling_rwkv.rwkv_linear_attention = rwkv_wkv_parallel
        undo.append(lambda: setattr(modeling_rwkv, "rwkv_linear_attention", original))
    elif model_type == "recurrent_gemma":
        for module in model.modules():
            if hasattr(module, "_rnn_scan"):
                # an instance attribute shadowing the method: torch's stubs allow only tensors and modules there
                cast(Any, module)._rnn_scan = lambda *args, _m=module, **kwargs: rglru_scan_parallel(_m, *args,
                                                                                                     **kwargs)
                undo.append(partial(delattr, module, "_rnn_scan"))
    elif model_type == "mamba":
        for module in model.modules():
            if hasattr(module, "use_mambapy"):
                module.use_mambapy, previous = True, module.use_mambapy
                undo.append(partial(setattr, module, "use_mambapy", previous))
    try:
        yield
    finally:
        for fn in reversed(undo):
            fn()
