"""How well LRP conserves relevance: the sum of the input relevances against the explained logit F.

Under :func:`~analysis.attribution.propagation.conservative_propagation` a family with conservative rules is,
given its detached factors, an affine function of the input embeddings: every op is linear, a product with
a detached factor, or a product split half and half, so Euler's identity holds for gradient x input over
the embeddings *and* the additive constants. The constants are the bias parameters (Linear, conv and norm
biases); so ``F = sum_t R_t + sum_b <dF/db, b>``, exactly up to float rounding, and with zero biases the
relevances sum to F itself. Transformers' MLP nonlinearities keep their ordinary gradient, so there the
identity does not hold (:attr:`Conservation.error` says by how much).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.attribution.propagation import conservative_propagation
from analysis.attribution.tokens import prompt_ids, target_logit, top_prediction
from analysis.models.loader import LoadedModel


@dataclass(frozen=True)
class Conservation:
    """One prompt's LRP budget: F, the sum of the token relevances and the bias terms' share."""

    logit: float  # F, the explained logit
    relevance: float  # sum over tokens of the LRP scores
    bias_share: float  # sum over bias parameters b of <dF/db, b> under the same rules

    @property
    def error(self) -> float:
        """(relevance + bias share - F) / |F|: 0 where relevance is conserved."""
        return (self.relevance + self.bias_share - self.logit) / max(abs(self.logit), 1e-12)


def lrp_conservation(loaded: LoadedModel, text: str, target_id: int | None = None) -> Conservation:
    """F, the LRP relevances' sum and the biases' share for ``text`` (target: the top prediction by default),
    from one forward and backward under conservative propagation; the bias parameters are made to require
    gradients for that pass (under the model's lock) and restored."""
    ids = torch.tensor([prompt_ids(loaded, text)], device=loaded.device)
    with loaded.lock:
        target = top_prediction(loaded, ids) if target_id is None else int(target_id)
        biases = [p for name, p in loaded.model.named_parameters() if name.endswith("bias")
                  and p.is_floating_point() and p.device.type != "meta"]
        frozen = [p for p in biases if not p.requires_grad]
        try:
            for p in frozen:
                p.requires_grad_(True)
            with conservative_propagation(loaded), torch.enable_grad():
                embeds = loaded.adapter.embed(ids).detach().requires_grad_(True)  # as token_relevance's
                logit = target_logit(loaded, embeds, target, linear_cap=True).sum()
                grads = torch.autograd.grad(logit, [embeds, *biases], allow_unused=True)
        finally:
            for p in frozen:
                p.requires_grad_(False)
    share = sum(float((g.double() * p.double()).sum()) for g, p in zip(grads[1:], biases) if g is not None)
    return Conservation(float(logit.detach()), float((grads[0].double() * embeds.detach().double()).sum()), share)
