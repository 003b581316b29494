"""The transformer family's adapter (softmax attention and an MLP per block), which the linear-recurrence
hybrids (adapters/linear.py) extend."""

from __future__ import annotations

import torch

from analysis.models.adapters.base import Layout, ModelAdapter

_GATED_MLP = Layout("model.layers", "mlp.down_proj", "input", "mlp.down_proj")


class TransformerAdapter(ModelAdapter):
    family = "transformer"
    layouts = {
        **{t: _GATED_MLP for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                   "smollm3", "olmo", "olmo2", "granite", "phi3")},
        "gpt2": Layout("transformer.h", "mlp.act", "output", "mlp.c_proj"),
        "gpt_neox": Layout("gpt_neox.layers", "mlp.act", "output", "mlp.dense_4h_to_h"),
        "opt": Layout("model.decoder.layers", "activation_fn", "output", "fc2"),
        "bloom": Layout("transformer.h", "mlp.gelu_impl", "output", "mlp.dense_4h_to_h"),
    }
    indexes_layer_types = True

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        kwargs = {"past_key_values": cache,
                  "attention_mask": torch.ones(rows, prefix_len + c, dtype=torch.long, device=device)}
        if self._accepts("position_ids"):
            kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)
        return kwargs
