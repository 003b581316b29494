"""Integrated Gradients over neurons, for every layer at the answer position, baseline zero.

``IG_i = a_i * sum_k w_k dF(alpha_k a)/da_i`` where ``a`` is one layer's neuron-site activation at the answer
position (the last token) and F a target (analysis/attribution/targets.py). Scaling layer l's neurons at
the last position changes nothing at earlier positions and nothing below layer l, so the fast path runs the
prefix once, keeps each block's clean input at the last position, and evaluates all (layer, step) rows in a
few batched passes that start at their own layer (:meth:`ModelAdapter.continue_from`). The reference runs a
full forward and backward per (layer, step); tests check both agree and that attributions are complete.

Completeness says ``sum_i IG_i = F(a) - F(0)``; every result carries its error per prompt and layer
(:attr:`NeuronIGResult.delta`), so a page can warn when the quadrature is too coarse. The fast path gets
``F(0)`` from one extra alpha = 0 row per layer in the batched passes (weight 0: it adds no gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from analysis.attribution.quadrature import Quadrature, check_quadrature
from analysis.attribution.quadrature import quadrature as quadrature_rule
from analysis.attribution.targets import AttributionInput, TargetKind
from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel

METHODS = ("fast", "reference")
COMPLETENESS_WARN = 0.10  # a completeness error above this fraction of |F(a) - F(0)| is worth a warning


@dataclass
class NeuronIGResult:
    """Per-prompt attributions [N, layers, neurons] and what produced them."""

    per_prompt: torch.Tensor
    inputs: list[AttributionInput]
    target: TargetKind
    steps: int
    quadrature: Quadrature
    f_clean: torch.Tensor  # F(a) per prompt
    meta: dict = field(default_factory=dict)
    # completeness error [N, layers]: sum_i IG[p, l, i] - (F(a) - F(layer l's site zeroed)); None in cache
    # entries written before it existed
    delta: torch.Tensor | None = None

    @property
    def scores(self) -> torch.Tensor:
        """Mean over prompts: [layers, neurons]."""
        return self.per_prompt.mean(dim=0)


def neuron_ig(loaded: LoadedModel, inputs: Sequence[AttributionInput], steps: int = 20,
              quadrature: str = "riemann", method: str = "fast", max_rows: int = 160,
              progress: Callable[[int, int], None] | None = None) -> NeuronIGResult:
    """All-layer neuron IG for each prepared input (see the module docstring)."""
    if method not in METHODS:
        raise PrunescopeError(f"unknown IG method {method!r}: use {' or '.join(METHODS)}")
    if not inputs:
        raise PrunescopeError("no prompts to attribute (N = 0)")
    widths = loaded.adapter.neuron_counts()
    if len(set(widths)) != 1:
        raise PrunescopeError("neuron IG needs the same neuron count in every layer")
    alphas, weights = quadrature_rule(quadrature, steps)
    rule = check_quadrature(quadrature)  # valid: quadrature_rule accepted it
    run_one = _fast_one if method == "fast" else _reference_one
    rows, clean, zeros = [], [], []
    for i, item in enumerate(inputs):
        with loaded.lock:  # per prompt: other sessions' work interleaves with a long job
            ig, f, f_zero = run_one(loaded, item, alphas, weights, max_rows)
        rows.append(ig)
        clean.append(f)
        zeros.append(f_zero)
        if progress:
            progress(i + 1, len(inputs))
    per_prompt = torch.stack(rows).float().cpu()
    f_clean = torch.tensor(clean)
    return NeuronIGResult(per_prompt, list(inputs), inputs[0].target.kind, steps, rule, f_clean,
                          meta={"method": method}, delta=completeness_delta(per_prompt, f_clean, torch.stack(zeros)))


def completeness_delta(per_prompt: torch.Tensor, f_clean: torch.Tensor, f_zero: torch.Tensor) -> torch.Tensor:
    """``sum_i IG[p, l, i] - (F_clean[p] - F_zero[p, l])`` as float32 [N, layers] (summed in float64)."""
    gap = f_clean.double()[:, None] - f_zero.double()
    return (per_prompt.double().sum(dim=-1) - gap).float()


def completeness_summary(result: NeuronIGResult) -> dict | None:
    """The completeness error relative to ``|F(a) - F(0)|``: ``median`` over prompts and layers of
    ``|delta| / |F(a) - F(0)|``, and the ``worst_layer`` by ``sum_p |delta| / sum_p |F(a) - F(0)|`` (a ratio
    of sums, so a prompt where zeroing the layer hardly moves F cannot blow it up) with that ratio as
    ``worst``. None for a result without ``delta`` (a cache entry written before it existed)."""
    if result.delta is None:
        return None
    delta = result.delta.double().abs()
    gap = (result.per_prompt.double().sum(dim=-1) - result.delta.double()).abs()  # |F(a) - F(0)|, [N, layers]
    per_layer = delta.sum(dim=0) / gap.sum(dim=0).clamp_min(1e-12)
    worst = int(per_layer.argmax())
    return {"median": float((delta / gap.clamp_min(1e-12)).median()), "worst_layer": worst,
            "worst": float(per_layer[worst])}


def _last_row(activation: torch.Tensor) -> torch.Tensor:
    """The last token's row of a site activation shaped [B, T, N] or flattened [B*T, N] (OPT), batch 1."""
    return activation.reshape(-1, activation.shape[-1])[-1]


def _fast_one(loaded: LoadedModel, item: AttributionInput, alphas: torch.Tensor, weights: torch.Tensor,
              max_rows: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(IG [layers, neurons], F(a), F(0) per layer); each layer's rows are its m steps then alpha = 0."""
    adapter, device = loaded.adapter, loaded.device
    ids = torch.tensor([item.input_ids], device=device)
    c = adapter.continuation_tokens
    if ids.shape[1] <= c:
        raise PrunescopeError(f"prompt {item.text!r} is too short to attribute (needs more than {c} tokens)")
    block_in: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        prefix = adapter.run_prefix(ids[:, :-c])
        with adapter.hook_block_inputs(lambda layer, h: block_in.__setitem__(layer, h.detach())), \
                adapter.hook_sites(lambda layer, a: acts.__setitem__(layer, _last_row(a).detach())):
            hidden = adapter.continue_from(prefix, ids[:, -c:], rows=1)
        f_clean = float(item.target.value(loaded, hidden[:, -1])[0])
    m = len(alphas) + 1  # the quadrature's steps and one alpha = 0 row, weight 0, for F(0)
    alphas = torch.cat([alphas, alphas.new_zeros(1)]).to(device=device, dtype=loaded.dtype)
    weights = torch.cat([weights, weights.new_zeros(1)]).to(device=device, dtype=torch.float32)
    ig = torch.zeros(adapter.n_layers, adapter.neuron_counts()[0], device=device)
    f_zero = torch.zeros(adapter.n_layers, dtype=torch.float64)
    for chunk in plan_chunks(adapter.n_layers, m, max_rows, adapter.layer_chunk_multiple()):
        rows = len(chunk) * m
        scaled = {layer: (alphas[:, None] * acts[layer][None]).requires_grad_(True) for layer in chunk}

        def replace(layer: int, activation: torch.Tensor, rows: int = rows, chunk: list[int] = chunk,
                    scaled: dict[int, torch.Tensor] = scaled) -> torch.Tensor:  # this chunk's, bound now
            out = activation.reshape(rows, c, activation.shape[-1]).clone()
            first = chunk.index(layer) * m
            out[first:first + m, -1] = scaled[layer]
            return out.reshape(activation.shape)

        with torch.enable_grad(), adapter.hook_sites(replace, layers=chunk):
            hidden = adapter.continue_from(prefix, ids[:, -c:], rows, start_layer=chunk[0],
                                           block_input=block_in[chunk[0]].expand(rows, -1, -1))
            f = item.target.value(loaded, hidden[:, -1])
            grads = torch.autograd.grad(f.sum(), [scaled[layer] for layer in chunk])
        zero_rows = f.detach()[m - 1::m].double().cpu()
        for index, (layer, grad) in enumerate(zip(chunk, grads)):
            ig[layer] = acts[layer].float() * (weights[:, None] * grad.float()).sum(dim=0)
            f_zero[layer] = zero_rows[index]
    return ig.cpu(), f_clean, f_zero


def plan_chunks(n_layers: int, steps: int, max_rows: int, multiple: int = 1) -> list[list[int]]:
    """Consecutive layer groups of at most ``max_rows`` (layer, step) rows (at least one layer each); every
    group starts at a multiple of ``multiple`` (RWKV's rescaling points)."""
    per_chunk = max(1, max_rows // steps)
    per_chunk = max(multiple, per_chunk - per_chunk % multiple)
    return [list(range(start, min(start + per_chunk, n_layers))) for start in range(0, n_layers, per_chunk)]


def site_scaled_target(loaded: LoadedModel, item: AttributionInput, layer: int, alpha: torch.Tensor,
                       activation: torch.Tensor | None = None) -> torch.Tensor:
    """F with layer ``layer``'s last-position activation replaced by ``alpha * activation`` (a full forward,
    differentiable in ``alpha``/``activation``); ``activation`` defaults to the clean one."""
    adapter = loaded.adapter
    ids = torch.tensor([item.input_ids], device=loaded.device)
    if activation is None:
        activation = clean_site_activations(loaded, item)[layer]
    value = alpha * activation

    def replace(_: int, act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out.reshape(-1, act.shape[-1])[-1] = value
        return out

    with adapter.hook_sites(replace, layers=[layer]):
        hidden = adapter.base_model(input_ids=ids, use_cache=False).last_hidden_state
    return item.target.value(loaded, hidden[:, -1])[0]


def clean_site_activations(loaded: LoadedModel, item: AttributionInput) -> list[torch.Tensor]:
    """Every layer's site activation at the last position, from one full forward."""
    acts: dict[int, torch.Tensor] = {}
    with torch.no_grad(), loaded.adapter.hook_sites(lambda layer, a: acts.__setitem__(layer, _last_row(a).clone())):
        loaded.adapter.base_model(input_ids=torch.tensor([item.input_ids], device=loaded.device), use_cache=False)
    return [acts[layer] for layer in range(loaded.adapter.n_layers)]


def _reference_one(loaded: LoadedModel, item: AttributionInput, alphas: torch.Tensor, weights: torch.Tensor,
                   max_rows: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """One layer at a time, one full forward and backward per quadrature step (and one at alpha = 0)."""
    acts = clean_site_activations(loaded, item)
    with torch.no_grad():
        f_clean = float(site_scaled_target(loaded, item, 0, torch.tensor(1.0, dtype=loaded.dtype), acts[0]))
        zero = torch.tensor(0.0, dtype=loaded.dtype)
        f_zero = torch.tensor([float(site_scaled_target(loaded, item, layer, zero, activation))
                               for layer, activation in enumerate(acts)], dtype=torch.float64)
    ig = torch.zeros(len(acts), acts[0].shape[-1])
    for layer, activation in enumerate(acts):
        total = torch.zeros_like(activation, dtype=torch.float32)
        for alpha, weight in zip(alphas.tolist(), weights.tolist()):
            point = (alpha * activation).requires_grad_(True)
            with torch.enable_grad():
                f = site_scaled_target(loaded, item, layer, torch.tensor(1.0, dtype=loaded.dtype), point)
                (grad,) = torch.autograd.grad(f, point)
            total += weight * grad.float()
        ig[layer] = (activation.float() * total).cpu()
    return ig, f_clean, f_zero
