"""Token-level relevance: how much each prompt token matters for one target token at the last position.

F is the *logit* of the target token at the last position (default target: the model's top prediction there).
Methods (``METHODS``), all batch 1, ``use_cache=False``, under ``loaded.lock``:

* ``raw``: the last row of the attention map (:func:`attention_maps`), averaged over the chosen layers
  (default: the last layer). Implicit maps of Mamba/RWKV/Griffin may be negative; the sign is kept.
* ``rollout``: last row of ``R = A'_{l_k} ... A'_{l_1}`` with ``A'_l = rownorm(I + |A_l|)`` over the chosen
  layers (default all), later layers on the left (Abnar & Zuidema 2020).
* ``gradattn``: per layer ``(mean_c dF/dA[c] * A[c])^+`` over channels/heads, then rollout. Since a layer's
  output is ``y[i,c] = sum_j A[c,i,j] u[j,c]``, ``dF/dA[c,i,j] = g[i,c] u[j,c]`` with ``g = dF/dy``: one
  forward+backward captures ``g`` at the tensor each form maps to (each family's relevance target, named by
  the registry, :mod:`analysis.families`), ``u`` and the matrices come from the family's capture. Transformers
  (and Griffin's local-attention layers) run a registered eager attention function whose softmax
  probabilities sit in the graph, so dF/dA is read directly.
* ``ig``: captum Integrated Gradients on the input embeddings, zero baseline, ``steps`` Gauss-Legendre
  nodes, summed over the hidden dimension. Completeness (scores sum to F(x) - F(0)) holds only as well as
  the quadrature resolves the path, and ``delta`` reports the error: with pre-norm models F(alpha x) jumps
  at tiny alpha, where the norms' eps dominates (tiny llama: 0 -> 6.5 by alpha = 1e-3; SmolLM2: 0 -> 21 by
  3e-5), so the sum misses by 10-150% at 64 steps and more steps do not reliably help. Models whose norms
  never see ~0 on the path (GPT-2: position embeddings) are accurate to < 0.1% at 64 steps.
* ``gxi``: gradient x input on the input embeddings, summed over the hidden dimension.
* ``lrp``: conservative propagation (Ali et al. 2022, arXiv 2202.07304) as gradient x input with the softmax
  probabilities, every norm's 1/sigma and a final logit soft cap's ratio detached
  (:func:`analysis.attribution.propagation.conservative_propagation`). Recurrent families also replace their mixers'
  forwards by their registry entry's rules (MambaLRP, Jafari et al. 2024: the data-dependent gates and coefficients
  detached, activations linearised, gated products split half and half;
  :mod:`analysis.implicit_attention.conservative`), so relevance is conserved there: the scores sum to F minus the
  bias terms' share (:func:`analysis.attribution.conservation.lrp_conservation`). Transformers' MLP nonlinearities
  (gated MLPs, GELU) keep their ordinary gradient, so their sum is not conserved.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from analysis.attention import attention_maps
from analysis.attribution.propagation import PROBE, attention_mode, conservative_propagation, require_lrp
from analysis.errors import PromptTooLongError, PrunescopeError
from analysis.families import Family, Form, family_of
from analysis.implicit_attention.common import Reduction, reduce_in_chunks
from analysis.models.hooks import hook_scope
from analysis.models.loader import LoadedModel, decode_text

METHODS = ("raw", "rollout", "gradattn", "ig", "gxi", "lrp")
GRADIENT_METHODS = ("gradattn", "ig", "gxi", "lrp")


@dataclass
class TokenRelevance:
    """``scores[t]``: relevance of prompt token ``t`` for ``target_id`` at the last position."""

    scores: torch.Tensor
    tokens: list[str]
    input_ids: list[int]
    method: str
    target_id: int
    delta: float | None = None  # ig only: sum(scores) - (F(x) - F(0)), the completeness error


def token_relevance(loaded: LoadedModel, text: str, method: str, target_id: int | None = None,
                    layers: list[int] | None = None, form: Form | None = None, steps: int = 32) -> TokenRelevance:
    """Relevance of every token of ``text`` for the next-token logit ``target_id`` at the last position.

    Args:
        loaded: the model.
        text: the input text.
        method: ``raw`` (attention to the last position), ``rollout``, ``gradattn`` (gradient-weighted
            attention, implicit for attention-free families), ``ig`` (embedding IG), ``gxi`` (gradient x input)
            or ``lrp`` (conservative LRP, 2202.07304 and MambaLRP; families with LRP rules).
        target_id: the token whose logit is explained (default: the top prediction).
        layers, form: the attention layers and map form of raw / rollout / gradattn.
        steps: IG's Riemann steps.

    Returns:
        A :class:`TokenRelevance`: one score per token, the tokens and the target.

    Raises:
        PrunescopeError: an unknown method, LRP on a family without it, fewer than 1 IG step, a text
            longer than the model's context or than its gradients pass (xLSTM).

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-mamba", device="cpu")
        >>> relevance = ps.token_relevance(model, "a:3 b:5 | a:", "gxi")
        >>> len(relevance.scores) == len(relevance.tokens)
        True
    """
    if method not in METHODS:
        raise PrunescopeError(f"unknown relevance method {method!r}: use one of {', '.join(METHODS)}")
    if method == "lrp":
        require_lrp(loaded)
    if method == "ig" and int(steps) < 1:
        raise PrunescopeError(f"ig needs at least 1 step (got {steps})")
    ids = prompt_ids(loaded, text)
    check_gradient_length(loaded, len(ids), method)
    if method == "gradattn" and len(ids) < 2:  # one position: no attention to weigh (block_tree raised here)
        raise PrunescopeError(f"gradattn needs a text of at least 2 tokens; {text[:40]!r} is {len(ids)}")
    delta = None
    with loaded.lock:
        input_ids = torch.tensor([ids], device=loaded.device)
        target = top_prediction(loaded, input_ids) if target_id is None else _check_target(loaded, target_id)
        if method in ("raw", "rollout"):
            chosen = layers if layers is not None else ([loaded.n_layers - 1] if method == "raw" else None)
            attn = attention_maps(loaded, text, form=form, layers=chosen).attn
            scores = attn.mean(0)[-1] if method == "raw" else rollout(attn)[-1]
        elif method == "gradattn":
            scores = rollout(gradient_weighted_maps(loaded, input_ids, target, layers, form))[-1]
        elif method == "ig":
            scores, delta = _integrated_gradients(loaded, input_ids, target, int(steps))
        else:
            with conservative_propagation(loaded) if method == "lrp" else nullcontext():
                scores = gradient_x_input(loaded, input_ids, target, linear_cap=method == "lrp")
    tokens = [decode_text(loaded.tokenizer, [i]) for i in ids]
    return TokenRelevance(scores.detach().float().cpu(), tokens, ids, method, target, delta)


# -- shared helpers ------------------------------------------------------------------------------------------
def prompt_ids(loaded: LoadedModel, text: str) -> list[int]:
    """Token ids of ``text``; empty or over-long texts are one-line errors."""
    if not isinstance(text, str) or not text.strip():
        raise PrunescopeError("the text is empty")
    ids, limit = list(loaded.tokenizer(text).input_ids), loaded.adapter.max_context()
    if limit is not None and len(ids) > limit:
        raise PromptTooLongError(f"text of {len(ids)} tokens exceeds the model's context of {limit}")
    return ids


def check_gradient_length(loaded: LoadedModel, tokens: int, method: str) -> None:
    """A one-line error where gradient method ``method`` could not flow through ``tokens`` tokens (xLSTM runs
    longer prompts without gradients)."""
    if method in GRADIENT_METHODS and (limit := loaded.adapter.gradient_context()) is not None and tokens > limit:
        raise PromptTooLongError(f"{method} needs gradients through all {tokens} tokens; {loaded.family} passes "
                                 f"gradients through at most {limit}")


def _check_target(loaded: LoadedModel, target_id) -> int:
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    if not 0 <= int(target_id) < vocab:
        raise PrunescopeError(f"target token id {target_id} is outside the vocabulary (0..{vocab - 1})")
    return int(target_id)


@torch.no_grad()
def top_prediction(loaded: LoadedModel, input_ids: torch.Tensor) -> int:
    """The model's most likely next token after ``input_ids`` [1, T]."""
    with loaded.lock:
        hidden = loaded.adapter.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        return int(loaded.adapter.logits(hidden[:, -1]).argmax(-1)[0])


def target_logit(loaded: LoadedModel, embeds: torch.Tensor, target: int, linear_cap: bool = False) -> torch.Tensor:
    """F for input embeddings [B, T, H] -> [B]: the target's logit at the last position (only that logit);
    ``linear_cap``: a soft cap's ratio detached (LRP)."""
    hidden = loaded.adapter.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    ids = torch.tensor([target], device=embeds.device)
    return loaded.adapter.logits(hidden[:, -1], ids, linear_cap=linear_cap)[:, 0].float()


def _embeds(loaded: LoadedModel, input_ids: torch.Tensor) -> torch.Tensor:
    return loaded.adapter.embed(input_ids).detach()


def rollout(maps: torch.Tensor) -> torch.Tensor:
    """``prod_l rownorm(I + |A_l|)`` for maps [L, T, T] taken in order (later layers multiply on the left)."""
    eye = torch.eye(maps.shape[-1], dtype=torch.float64)
    result = eye.clone()
    for step in eye + maps.detach().double().cpu().abs():
        result = (step / step.sum(-1, keepdim=True)) @ result
    return result.float()


# -- input-gradient methods ------------------------------------------------------------------------------------
def gradient_x_input(loaded: LoadedModel, input_ids: torch.Tensor, target: int, linear_cap: bool = False
                     ) -> torch.Tensor:
    """[T] sum over the hidden dim of dF/de * e at the input embeddings e."""
    with loaded.lock, torch.enable_grad():
        embeds = _embeds(loaded, input_ids).requires_grad_(True)
        (grad,) = torch.autograd.grad(target_logit(loaded, embeds, target, linear_cap).sum(), embeds)
    return (grad * embeds).detach()[0].sum(-1)


def _integrated_gradients(loaded: LoadedModel, input_ids: torch.Tensor, target: int, steps: int
                          ) -> tuple[torch.Tensor, float]:
    """([T] IG scores, completeness error) from captum, zero embedding baseline, Gauss-Legendre nodes."""
    from captum.attr import IntegratedGradients

    embeds = _embeds(loaded, input_ids)
    batch = max(1, min(steps, 8192 // embeds.shape[1]))  # rows of the path evaluated together
    ig = IntegratedGradients(lambda e: target_logit(loaded, e, target))
    with loaded.lock:
        attributions, delta = ig.attribute(embeds, baselines=torch.zeros_like(embeds), n_steps=steps,
                                           internal_batch_size=batch, return_convergence_delta=True)
    return attributions.detach()[0].sum(-1), float(delta[0])


integrated_gradients = _integrated_gradients  # public name for per-answer-token attribution (answer_tokens.py)


# -- gradient-weighted attention -------------------------------------------------------------------------------
def gradient_weighted_maps(loaded: LoadedModel, input_ids: torch.Tensor, target: int,
                           layers: list[int] | None = None, form: str | None = None) -> torch.Tensor:
    """[len(layers), T, T]: per layer ``(mean_c dF/dA[c] * A[c])^+`` (channels, or heads for softmax layers);
    the identity for a block that mixes no tokens."""
    entry = family_of(loaded)
    form = entry.check_form(form)
    layers = list(range(loaded.n_layers)) if layers is None else sorted({int(i) for i in layers})
    bad = [i for i in layers if not 0 <= i < loaded.n_layers]
    if bad:
        raise PrunescopeError(f"layer {bad[0]} does not exist (the model has {loaded.n_layers})")
    with loaded.lock:
        shown_implicit = set(entry.implicit_layers_for(loaded.adapter, form))
        position_wise = set(loaded.adapter.position_wise_layers())  # they mix no tokens: the identity
        softmax = [i for i in layers if i not in shown_implicit | position_wise]  # a layer with both: the form's
        maps = _softmax_weighted(loaded, input_ids, target, softmax) if entry.has_softmax_layers and softmax else {}
        for i in position_wise.intersection(layers):
            maps[i] = torch.eye(input_ids.shape[-1], device=input_ids.device)
        implicit = [i for i in layers if i not in maps]
        if implicit:
            maps.update(_implicit_weighted(loaded, entry, input_ids, target, implicit, entry.implicit_form(form)))
        missing = [i for i in layers if i not in maps]
        if missing:
            raise PrunescopeError(f"{entry.name} layer {missing[0]} has no attention map to weigh")
    return torch.stack([maps[i].clamp(min=0).float().cpu() for i in layers])


def _softmax_weighted(loaded: LoadedModel, input_ids: torch.Tensor, target: int, layers: list[int]
                      ) -> dict[int, torch.Tensor]:
    """mean_h dF/dA_h * A_h of every softmax-attention layer among ``layers`` (one forward + backward)."""
    with attention_mode(loaded, PROBE) as records, torch.enable_grad():
        embeds = _embeds(loaded, input_ids).requires_grad_(True)
        value = target_logit(loaded, embeds, target).sum()
    layer_of = {id(m): i for i in range(loaded.n_layers) for m in loaded.adapter.block(i).modules()}
    chosen = [(layer_of[id(m)], p) for m, p in records if layer_of.get(id(m)) in layers]
    if not chosen:
        return {}
    grads = torch.autograd.grad(value, [p for _, p in chosen])
    return {i: (g[0].float() * p[0].detach().float()).mean(0) for (i, p), g in zip(chosen, grads)}


def _implicit_weighted(loaded: LoadedModel, entry: Family, input_ids: torch.Tensor, target: int, layers: list[int],
                       form: Form) -> dict[int, torch.Tensor]:
    """mean_c dF/dA[c] * A[c] of the family's implicit layers among ``layers``, with g = dF/dy read where the
    family's relevance target says (:class:`analysis.implicit_attention.ops.RelevanceTarget`)."""
    implicit = set(entry.implicit_layers(loaded.adapter))
    layers = [i for i in layers if i in implicit]  # Griffin: recurrent layers only
    if not layers:
        return {}
    internals, target_of = entry.require("capture")(loaded, input_ids, layers), entry.require("relevance_target")
    targets = {i: target_of(loaded.adapter.block(i), internals[i], form) for i in layers}
    matrices = entry.require("matrices")
    seen: dict[int, torch.Tensor] = {}

    def pre(layer, how):
        def hook(module, args, kwargs):
            seen[layer] = args[0] if args else kwargs["hidden_states"]
            if how == "gated":  # the norm's first line, done here so that the gated tensor is in the graph
                gate = args[1] if len(args) > 1 else kwargs.get("gate")
                seen[layer] = seen[layer].to(torch.float32) * F.silu(gate.to(torch.float32))
                return (seen[layer],), {}
        return hook

    with loaded.lock, torch.enable_grad():
        with hook_scope(loaded.model) as add:
            for i, spot in targets.items():
                module, how = spot.module, spot.how
                if how == "output":
                    add(module, lambda m, a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out))
                else:
                    add(module, pre(i, how), pre=True, with_kwargs=True)
                if how == "gated":  # the norm returned float32 now; give the next layer its usual dtype
                    add(module, lambda m, a, out: out.to(m.weight.dtype))
            embeds = _embeds(loaded, input_ids).requires_grad_(True)
            value = target_logit(loaded, embeds, target).sum()
        grads = torch.autograd.grad(value, [seen[i] for i in layers])
    result = {}
    for i, grad in zip(layers, grads):
        inn, spot = internals[i], targets[i]
        g = grad[0].float() if spot.gate is None else grad[0].float() * spot.gate
        u, per = spot.source, spot.group  # per: channels sharing one matrix (Mamba-2 s6: a head's)
        g3, u3 = g.reshape(len(g), -1, per), u.reshape(len(u), -1, per)

        def weighted(idx, inn=inn, g3=g3, u3=u3):
            idx = idx.to(g3.device)
            return matrices(inn, form, idx) * torch.einsum("icp,jcp->cij", g3[:, idx], u3[:, idx])
        result[i] = reduce_in_chunks(weighted, g3.shape[1], len(g), Reduction("mean"))
    return result
