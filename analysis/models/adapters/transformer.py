"""The transformer family's adapter (softmax attention and an MLP per block), which the linear-recurrence
hybrids (adapters/linear.py) extend."""

from __future__ import annotations

import torch

from analysis.models.adapters.base import Layout, ModelAdapter, SiteNorm

_GATED_MLP = Layout("model.layers", "mlp.down_proj", "input", "mlp.down_proj")
NORMALISED_SITES = ("gemma2", "gemma3_text", "olmo2")  # an RMS norm right after the MLP (attribution/normalised.py)


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

    def site_norm(self, layer: int) -> SiteNorm | None:
        """Gemma 2/3's and OLMo 2's post-feedforward RMS norm: the neurons (the down projection's input) reach
        the residual only through a bias-free down projection and that norm (no centring)."""
        block = self.block(layer)
        norm, mlp = getattr(block, "post_feedforward_layernorm", None), getattr(block, "mlp", None)
        down = getattr(mlp, "down_proj", None)
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
        if (self.model_type not in NORMALISED_SITES or norm is None or down is None or down.bias is not None
                or eps is None or "rmsnorm" not in type(norm).__name__.lower()):
            return None
        return SiteNorm(down, float(eps))

    def _continue_kwargs(self, cache, prefix_len, c, rows, device):
        kwargs = {"past_key_values": cache,
                  "attention_mask": torch.ones(rows, prefix_len + c, dtype=torch.long, device=device)}
        if self._accepts("position_ids"):
            kwargs["position_ids"] = torch.arange(prefix_len, prefix_len + c, device=device).expand(rows, -1)
        return kwargs
