"""Normalisations with their scale detached, for conservative propagation (LRP, arXiv 2202.07304): the same
forward values, but autograd treats each norm's 1/sigma as a constant. Used by
:func:`analysis.attribution.propagation.conservative_propagation`, which swaps them in and checks each one (and the
family's mixer replacements, :mod:`analysis.implicit_attention.conservative`) against the module."""

from __future__ import annotations

import torch
from torch import nn

from analysis.errors import PrunescopeError


def rms_forward(module):
    """Llama's ``weight * x / rms`` or Gemma's ``(1 + weight) * x / rms`` (norms with ``eps``), rms detached."""
    gemma = not hasattr(module, "variance_epsilon")
    eps = module.eps if gemma else module.variance_epsilon

    def forward(hidden_states):
        weight = module.weight  # read at call time: an offloaded norm's weight is in memory only then
        h = hidden_states.to(torch.float32)
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True).detach() + eps)
        if gemma:
            return (normed * (1.0 + weight.float())).to(hidden_states.dtype)
        return weight * normed.to(hidden_states.dtype)
    return forward


def layer_norm_forward(module: nn.LayerNorm):
    dims = tuple(range(-len(module.normalized_shape), 0))

    def forward(x):
        wide = x.float()  # as torch's layer_norm computes a bfloat16 input: in float32, rounded once
        centred = wide - wide.mean(dims, keepdim=True)
        out = centred * torch.rsqrt(wide.var(dims, unbiased=False, keepdim=True).detach() + module.eps)
        out = out * module.weight.float() if module.weight is not None else out
        return (out + module.bias.float() if module.bias is not None else out).to(x.dtype)
    return forward


@torch.no_grad()
def check_same(module, forward, name: str, probe=None) -> None:
    """Refuse a replacement whose output differs from the module's on a random input: a norm's own shape, or
    what ``probe(module, generator)`` gives as (args, kwargs) (a family's LRP rule, which names the module)."""
    generator = torch.Generator().manual_seed(0)
    if probe is None:
        weight = next(module.parameters())
        shape = getattr(module, "normalized_shape", None) or tuple(weight.shape)
        args, kwargs = (torch.randn(2, *shape, generator=generator).to(weight.device, weight.dtype),), {}
    else:
        args, kwargs = probe(module, generator)
    ours, theirs = forward(*args, **kwargs), module(*args, **kwargs)
    ours, theirs = (o[0] if isinstance(o, tuple) else o for o in (ours, theirs))
    # float32: correct rules agree to ~5e-7 of the output's scale (Jamba's dt/B/C norms amplify rounding to
    # ~2.5e-6) while a rule mixing two heads' weights was 6e-4 off; bfloat16: a few roundings apart (0.06)
    wide = theirs.dtype in (torch.float32, torch.float64)
    tolerance = 1e-4 if wide else max(1e-3, 8 * torch.finfo(theirs.dtype).eps)
    if not torch.allclose(ours.float(), theirs.float(), rtol=tolerance, atol=tolerance):
        raise PrunescopeError(f"lrp does not know how to detach the normalisation {name}" if probe is None else
                              f"lrp's conservative {name} does not reproduce the module's output")
