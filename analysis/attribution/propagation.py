"""How gradients flow through attention and norms for token relevance: two registered attention functions,
``PROBE`` (the softmax probabilities stay in the graph and are recorded, for gradient-weighted attention) and
``CONSERVATIVE`` (they are constants for autograd), and :func:`conservative_propagation`, the ``lrp`` method's
context (2202.07304): the conservative attention, every norm's 1/sigma detached, and the family's LRP rules
(:mod:`analysis.implicit_attention.conservative`) in place of its modules' forwards, each checked first."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from analysis.attribution.norms import check_same, layer_norm_forward, rms_forward
from analysis.errors import PrunescopeError
from analysis.families import FAMILIES, family_of
from analysis.implicit_attention.conservative import Rule
from analysis.models.loader import LoadedModel, onloaded

LRP_FAMILIES = tuple(name for name, entry in FAMILIES.items() if entry.supports_lrp)
PROBE, CONSERVATIVE = "prunescope_probe", "prunescope_conservative"  # registered attention implementations
_STATE = threading.local()  # per-thread recorder of (module, probs) while PROBE runs


def _eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, detach=False, **kwargs):
    """Eager attention for any head layout (GQA/MQA: kv heads repeated), as the models' own eager code."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if kwargs.get("softcap"):
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = probs.detach() if detach else probs
    if getattr(_STATE, "records", None) is not None:
        _STATE.records.append((module, probs))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(PROBE, _eager)
    AttentionInterface.register(CONSERVATIVE, lambda *a, **k: _eager(*a, **{**k, "detach": True}))
    AttentionMaskInterface.register(PROBE, eager_mask)
    AttentionMaskInterface.register(CONSERVATIVE, eager_mask)


_register()


@contextmanager
def attention_mode(loaded: LoadedModel, name: str) -> Iterator[list]:
    """Run with attention implementation ``name`` (PROBE or CONSERVATIVE) under the lock; yields the list that
    collects (attention module, probabilities) of every attention call; the previous implementation and the
    recorder are restored on exit."""
    with loaded.lock:
        previous = loaded.model.config._attn_implementation
        saved = getattr(_STATE, "records", None)
        records: list[tuple[nn.Module, torch.Tensor]] = []
        _STATE.records = records
        try:
            loaded.model.set_attn_implementation(name)
            if loaded.model.config._attn_implementation != name:
                raise PrunescopeError(f"{loaded.model.config.model_type} cannot switch its attention function")
            yield records
        finally:
            loaded.model.set_attn_implementation(previous)
            _STATE.records = saved


@contextmanager
def conservative_propagation(loaded: LoadedModel) -> Iterator[None]:
    """Inside: softmax probabilities and each norm's 1/sigma are constants for autograd, and the modules the
    family's LRP rules name run their conservative forwards (same forward values, up to float rounding).
    Norms: ``nn.LayerNorm`` and Llama- or Gemma-style RMSNorm; each replacement is checked against the module
    on a random probe input, and any other norm class is an error. Everything (attention implementation,
    module forwards) is restored on exit."""
    rules = require_lrp(loaded)
    with loaded.lock:
        patched = []
        try:
            for module in loaded.model.modules():
                name, probe = type(module).__name__, None
                if name in rules:
                    forward, probe = rules[name].forward(module), rules[name].probe
                elif isinstance(module, nn.LayerNorm):
                    forward = layer_norm_forward(module)
                elif "rmsnorm" in name.lower() and (hasattr(module, "variance_epsilon") or hasattr(module, "eps")):
                    if "gate" in inspect.signature(module.forward).parameters:  # y * act(gate): a rule's work
                        raise PrunescopeError(f"lrp has no rule for the gated normalisation {name}")
                    forward = rms_forward(module)
                elif "norm" in name.lower() and any(True for _ in module.parameters(recurse=False)):
                    raise PrunescopeError(f"lrp does not know how to detach the normalisation {name}")
                else:
                    continue
                with onloaded(module):  # a norm a device map put on disk: its weight in memory for the check
                    check_same(module, forward, name, probe)
                # under a device map, accelerate's hook owns ``forward`` and calls ``_old_forward`` after loading
                # the weights: replace that one, so the hook keeps working
                attribute = "_old_forward" if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward") \
                    else "forward"
                patched.append((module, attribute, module.__dict__.get(attribute)))
                setattr(module, attribute, forward)
            with attention_mode(loaded, CONSERVATIVE) if family_of(loaded).has_softmax_layers else nullcontext():
                yield
        finally:
            for module, attribute, previous in reversed(patched):
                delattr(module, attribute)
                if previous is not None:
                    setattr(module, attribute, previous)


def require_lrp(loaded: LoadedModel) -> Mapping[str, Rule]:
    """The family's LRP rules (module class -> rule), or a one-line error for a family without LRP."""
    rules = family_of(loaded).lrp
    if rules is None:
        raise PrunescopeError(f"lrp (conservative propagation) supports {', '.join(LRP_FAMILIES)} models, "
                              f"not {loaded.family}")
    return rules
