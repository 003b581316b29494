"""Adapters of the linear-recurrence families whose blocks otherwise look like a transformer's: LFM2 (gated
short convolutions beside attention), xLSTM (mLSTM blocks), the delta-rule hybrids (Gated DeltaNet in
Qwen3-Next, Kimi Delta Attention in Kimi Linear) and MiniMax (lightning attention beside softmax attention)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

import torch

from analysis.models.adapters.base import Layout, ModelAdapter, SiteChoice, repeat_cache
from analysis.models.adapters.transformer import TransformerAdapter

MOE_SITE = "mlp.experts.neurons"  # a sparse-MoE layer's routed experts' channels (analysis/models/experts.py)
# a MoE layer's experts where the block has them, else the dense MLP's down projection input
_MOE_OR_MLP = Layout("model.layers", MOE_SITE, "input", MOE_SITE, "moe",
                     also=(SiteChoice("mlp.down_proj", "input", "mlp.down_proj", "mlp"),))


class Lfm2Adapter(TransformerAdapter):
    """LFM2: gated short-convolution layers and softmax-attention layers, each with a SwiGLU MLP (``w1``, ``w3``,
    down projection ``w2``). Its cache holds key/values for the attention layers and a conv state per conv layer
    (``repeat_cache`` copies those); the forward picks each block's mask by ``config.layer_types[i]``."""

    family = "lfm2"
    layouts = {"lfm2": Layout("model.layers", "feed_forward.w2", "input", "feed_forward.w2")}

    def __init__(self, model):
        super().__init__(model)
        # a padded position's input is zeroed before in_proj; with biases its B * x is not 0, and the conv
        # carries it into the next tokens (LFM2 checkpoints have none)
        self.supports_left_padding = not model.config.conv_bias

    def conv_layers(self) -> list[int]:
        """Layers whose operator is the gated short convolution (the others are softmax attention): the one test
        of it, used by the family registry's implicit layers and the LFM2 attention module."""
        return [i for i, b in enumerate(self._blocks) if not b.is_attention_layer]


class XlstmAdapter(ModelAdapter):
    """xLSTM (transformers' native mLSTM kernels, no ``xlstm`` package): mLSTM blocks with a SwiGLU FFN
    (``proj_up_gate``, ``proj_up``, down projection ``proj_down``). Its cache (``xLSTMCache``) keeps per layer a
    (C, n, m) state that every step overwrites in place, and the forward reads ``rnn_state[k]`` for the k-th block
    it runs: a fork's states are repeated copies, read through :class:`_StatesFromStart` so that a truncated
    forward's k-th block (block ``start + k``) gets its own layer's state."""

    family = "xlstm"
    layouts = {"xlstm": Layout("backbone.blocks", "ffn.proj_down", "input", "ffn.proj_down")}
    supports_left_padding = False  # transformers' xLSTM takes no attention mask
    state_updated_in_place = True
    first_block_run = 0  # the block a truncated forward starts at (set by _truncated, under the model's lock)

    def __init__(self, model):
        super().__init__(model)
        for block in self._blocks:
            backend = block.mlstm_layer.mlstm_backend
            if "forward" not in vars(backend):  # once per model
                backend.forward = partial(_empty_state_in_input_dtype, backend.forward)

    def max_context(self) -> int | None:
        return None

    def gradient_context(self) -> int | None:
        """transformers runs longer prompts in chunks under ``no_grad``: no gradient reaches the input."""
        return int(self.model.config.max_inference_chunksize)

    def _cache_from(self, output):
        return output.cache_params

    def _repeat_cache(self, cache, rows):
        forked = copy.copy(cache)
        forked.seqlen_offset = cache.seqlen_offset.clone()  # a step adds to it in place
        forked.rnn_state = _StatesFromStart(self, {
            layer: tuple(s.repeat_interleave(rows if isinstance(rows, int) else rows[layer], dim=0) for s in states)
            for layer, states in cache.rnn_state.items()})
        return forked

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        return {"cache_params": cache}

    @contextmanager
    def _truncated(self, start_layer: int) -> Iterator[None]:
        with super()._truncated(start_layer):
            self.first_block_run = start_layer
            try:
                yield
            finally:
                self.first_block_run = 0

    def logit_soft_cap(self) -> float | None:
        return self.model.config.output_logit_soft_cap  # the LM soft-caps its logits under this name


def _empty_state_in_input_dtype(forward, *, query, key, value, c_initial=None, n_initial=None, m_initial=None,
                                **kwargs):
    """transformers 5.23's native mLSTM starts an empty state as float32 zeros, which its chunkwise kernel then
    multiplies with bfloat16 keys and fails (whenever a prompt fills a chunk and no cache is given); the cached
    path, whose states have the model's dtype, runs. So a half-precision forward without a state starts from
    zeros in the inputs' dtype, as the cached one does; float32 runs are left exactly as they were."""
    if c_initial is None and query.dtype != torch.float32:
        batch, heads, _, dqk = query.shape
        c_initial = query.new_zeros(batch, heads, dqk, value.shape[-1])
        n_initial, m_initial = query.new_zeros(batch, heads, dqk), query.new_zeros(batch, heads, 1)
    return forward(query=query, key=key, value=value, c_initial=c_initial, n_initial=n_initial, m_initial=m_initial,
                   **kwargs)


class _StatesFromStart(Mapping):
    """A forked xLSTM cache's per-layer states, indexed as the running forward counts its blocks: the k-th block
    run is block ``adapter.first_block_run + k``."""

    def __init__(self, adapter: XlstmAdapter, states: dict[int, tuple[torch.Tensor, ...]]):
        self._adapter, self._states = adapter, states

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self._states[index + self._adapter.first_block_run]

    def __iter__(self):
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)


class GatedDeltaNetAdapter(TransformerAdapter):
    """Qwen3-Next: Gated DeltaNet layers beside gated softmax attention. The neuron site is a sparse-MoE layer's
    routed experts' channels (``mlp.experts.neurons``, as in the released checkpoints; the shared expert beside
    them is not part of it) or a dense MLP's intermediate. One transformers cache holds both kinds of layer:
    keys and values, and conv and recurrent states that a cached step overwrites in place (forked per row by
    ``repeat_cache``)."""

    family = "gated_deltanet"
    layouts = {"qwen3_next": _MOE_OR_MLP}
    state_updated_in_place = True

    def __init__(self, model):
        super().__init__(model)
        # experts multiply as many rows as were routed to them: a row's bits may depend on its batch
        self.batch_invariant = "moe" not in self.site_kinds()

    def linear_layers(self) -> list[int]:
        """Layers whose token mixer is recurrent (``block_type == "linear_attention"``); the others are
        softmax attention."""
        return [i for i, b in enumerate(self._blocks) if getattr(b, "block_type", None) == "linear_attention"]


class KimiDeltaAdapter(GatedDeltaNetAdapter):
    """Kimi Linear: Kimi Delta Attention layers beside multi-head latent attention (MLA); MoE or dense
    feed-forwards (the released model's first layer is dense); the cache as above."""

    family = "kimi_delta"
    layouts = {"kimi_linear": _MOE_OR_MLP}


class MiniMaxAdapter(GatedDeltaNetAdapter):
    """MiniMax: lightning-attention layers (decayed linear attention) beside softmax attention, a sparse-MoE
    feed-forward in every layer (its routed experts' channels are the neurons). Its ``MiniMaxCache`` keeps
    attention keys and values in its layers and each lightning layer's [B, H, d, d] state in a list of its own,
    ``linear_cache``, which a cached step replaces (``ratio * S + k v^T``, a new tensor) rather than overwrites,
    so a fork shares the prefix's states as expanded views, as it does keys and values."""

    family = "minimax"
    layouts = {"minimax": Layout("model.layers", MOE_SITE, "input", MOE_SITE, "moe")}
    state_updated_in_place = False
    # transformers 5.23 sizes a cached step's attention mask by the cache's first layer that is not marked
    # linear; MiniMaxCache marks none, so with a lightning layer first (the released model) a decode step's mask
    # spans one key and a left-padded row attends to its padding (prefill is exact; greedy decoding of one
    # unpadded row equals full forwards)
    supports_left_padding = False

    def _repeat_cache(self, cache, rows: int | Sequence[int]):
        forked = repeat_cache(cache, rows)
        forked.linear_cache = [
            state.expand(rows if isinstance(rows, int) else rows[layer], *state.shape[1:])
            if isinstance(state, torch.Tensor) else state for layer, state in enumerate(cache.linear_cache)]
        return forked
