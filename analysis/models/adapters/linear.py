"""Adapters of the linear-recurrence families whose blocks otherwise look like a transformer's: LFM2 (gated
short convolutions beside attention), xLSTM (mLSTM blocks) and the delta-rule hybrids (Gated DeltaNet in
Qwen3-Next, Kimi Delta Attention in Kimi Linear)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import torch

from analysis.errors import UnsupportedArchitectureError
from analysis.models.adapters.base import Layout, ModelAdapter, NeuronSite
from analysis.models.adapters.transformer import _GATED_MLP, TransformerAdapter


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
    """Qwen3-Next: Gated DeltaNet layers beside gated softmax attention, dense MLPs as the neuron site (a
    sparse-MoE feed-forward, as in the released checkpoints, is refused until MoE neuron sites exist). One
    transformers cache holds both kinds of layer: keys and values, and conv and recurrent states that a cached
    step overwrites in place (forked per row by ``repeat_cache``)."""

    family = "gated_deltanet"
    layouts = {"qwen3_next": _GATED_MLP}
    state_updated_in_place = True

    def _make_site(self, layer: int) -> NeuronSite:
        mlp = self._blocks[layer].get_submodule("mlp")
        if not hasattr(mlp, "down_proj"):
            raise UnsupportedArchitectureError(
                f"{self.model_type} layer {layer} has a sparse-MoE feed-forward ({type(mlp).__name__}); prunescope "
                f"supports {self.model_type} with dense MLPs only (no MoE neuron site yet)")
        return super()._make_site(layer)

    def linear_layers(self) -> list[int]:
        """Layers whose token mixer is recurrent (``block_type == "linear_attention"``); the others are
        softmax attention."""
        return [i for i, b in enumerate(self._blocks) if getattr(b, "block_type", None) == "linear_attention"]


class KimiDeltaAdapter(GatedDeltaNetAdapter):
    """Kimi Linear: Kimi Delta Attention layers beside multi-head latent attention (MLA); the cache as above."""

    family = "kimi_delta"
    layouts = {"kimi_linear": _GATED_MLP}
