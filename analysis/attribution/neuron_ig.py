"""Integrated Gradients over neurons, for every layer at the answer position, baseline zero.

``IG_i = a_i * sum_k w_k dF(alpha_k a)/da_i`` where ``a`` is one layer's neuron-site activation at the answer
position (the last token) and F a target (analysis/attribution/targets.py). Scaling layer l's neurons at
the last position changes nothing at earlier positions and nothing below layer l, so the fast path runs the
prefix once and then passes in which every (layer, node) row joins the batch at its own layer
(analysis/attribution/passes.py): a clean pass without gradients (each layer's activation, F(0)) and one
gradient pass for all nodes. The reference runs a full forward and backward per (layer, node); tests check both
agree, that the reference agrees with captum, and that attributions are complete.

The default rule is ``adaptive`` (analysis/attribution/adaptive.py): Gauss-Legendre where F is smooth, a
composite rule checked interval by interval where it is not (SmolLM2's layer 0, every layer of Gemma 3).
``riemann`` (the paper's choice, 2410.01288) and ``gauss-legendre`` stay as options.

Completeness says ``sum_i IG_i = F(a) - F(0)``; every result carries its error per prompt and layer
(:attr:`NeuronIGResult.delta`), so a page can warn when the quadrature is too coarse.

Layers may differ in width (Jamba's dense MLPs of I channels beside MoE layers of E x I, Nemotron-H's mixer,
attention, MLP and MoE blocks): the result is then padded to the widest layer with NaN, which marks a neuron the
layer does not have (:attr:`NeuronIGResult.widths` lists the real counts; it is kept in ``meta`` only for such
models, so equal-width results and their cache entries are as before). Every selection (:meth:`top_k`,
:func:`analysis.select_top_k`, ...) skips NaN entries, and sums read them as 0 (:func:`zero_missing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from analysis.attribution.adaptive import adaptive_ig
from analysis.attribution.normalised import shared_residual
from analysis.attribution.passes import clean_pass, gradient_pass
from analysis.attribution.quadrature import Quadrature, check_quadrature
from analysis.attribution.quadrature import quadrature as quadrature_rule
from analysis.attribution.ragged import ragged_meta, selectable, stack_layers, zero_missing
from analysis.attribution.targets import AttributionInput, TargetKind
from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel

METHODS = ("fast", "reference")
COMPLETENESS_WARN = 0.10  # a completeness error above this fraction of |F(a) - F(0)| is worth a warning


@dataclass
class NeuronIGResult:
    """Neuron IG of N prompts: ``per_prompt`` [N, layers, neurons] (each neuron's share of F(a) - F(0) at the
    answer position), the prepared ``inputs``, the target, the rule (``steps``, ``quadrature``), F at each
    clean prompt, and ``delta``, the completeness error per prompt and layer (:func:`completeness_summary`).
    :attr:`scores` averages over prompts; :meth:`top_k` lists the strongest neurons."""

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
        """Mean over prompts: [layers, neurons] (NaN where a narrower layer has no such neuron)."""
        return self.per_prompt.mean(dim=0)

    @property
    def widths(self) -> list[int]:
        """Neurons per layer: ``meta["widths"]`` where layers differ, else the full width at every layer."""
        _, n_layers, width = self.per_prompt.shape
        return [int(w) for w in self.meta.get("widths") or [width] * n_layers]

    def completeness(self) -> dict | None:
        """How far ``sum_i IG_i`` is from ``F(a) - F(0)``, relative to it: :func:`completeness_summary`."""
        return completeness_summary(self)

    def top_k(self, k: int = 20, signed: bool = False) -> list[tuple[int, int, float]]:
        """The ``k`` neurons with the largest mean attribution, as (layer, neuron, mean IG), strongest first:
        by magnitude, or with ``signed`` by value (the neurons that raise F most; what a copying mask keeps,
        :func:`analysis.select_top_k`)."""
        scores = self.scores
        k = max(0, min(int(k), sum(self.widths)))
        order = selectable(scores if signed else scores.abs()).flatten().topk(k).indices.tolist()
        width = scores.shape[1]
        return [(i // width, i % width, float(scores.flatten()[i])) for i in order]


def neuron_ig(loaded: LoadedModel, inputs: Sequence[AttributionInput], steps: int = 4,
              quadrature: str = "adaptive", method: str = "fast", max_rows: int = 320,
              progress: Callable[[int, int], None] | None = None) -> NeuronIGResult:
    """All-layer neuron IG for each prepared input (see the module docstring); :func:`analysis.attribute_task`
    samples, prepares and caches for you.

    Args:
        loaded: the model.
        inputs: prompts prepared with their target (:func:`analysis.prepare_inputs`).
        steps: the fixed rules' nodes; with ``adaptive``, the Gauss-Legendre nodes of its smooth layers.
        quadrature: ``adaptive`` (default: checked interval by interval, right at every layer), ``riemann``
            (the paper's) or ``gauss-legendre``.
        method: ``fast`` (every layer in a few batched passes) or ``reference`` (a forward and backward per
            layer and node: slow, for checking).
        max_rows: the most gradient rows one pass carries (memory); more make several passes, same result.
        progress: ``progress(done, total)`` after every prompt; it may raise to stop the run.

    Returns:
        A :class:`NeuronIGResult` with the completeness error of every prompt and layer.

    Raises:
        PrunescopeError: no inputs, an unknown method or rule, fewer than 1 step.

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> items = ps.prepare_inputs(model, ps.get_task("antonyms").sample_prompts(2, 1), "gold")
        >>> result = ps.neuron_ig(model, items)
        >>> result.completeness()["worst"] < 0.05  # sum IG = F(a) - F(0), at every layer within 5 %
        True
        >>> layer, neuron, value = result.top_k(1)[0]
    """
    if method not in METHODS:
        raise PrunescopeError(f"unknown IG method {method!r}: use {' or '.join(METHODS)}")
    if not inputs:
        raise PrunescopeError("no prompts to attribute (N = 0)")
    rule = check_quadrature(quadrature)
    fixed = None if rule == "adaptive" else quadrature_rule(rule, steps)
    if steps < 1:
        raise PrunescopeError(f"IG needs at least 1 step (got {steps})")
    rows, clean, zeros, evaluations = [], [], [], []
    for i, item in enumerate(inputs):
        with loaded.lock:  # per prompt: other sessions' work interleaves with a long job
            shares: list[torch.Tensor | None] = [None] * loaded.n_layers
            if fixed is None:
                run = adaptive_ig(loaded, item, steps, max_rows)
                ig, f, f_zero, layer_rules, counts = run.ig, run.f_clean, run.f_zero, run.rules, run.evaluations
                shares = run.shares
            else:
                layer_rules = [fixed] * loaded.n_layers
                counts = [len(fixed[0])] * loaded.n_layers
                if method == "fast":
                    ig, f, f_zero = _fast_fixed(loaded, item, *fixed, max_rows)
            if method == "reference":  # the same rules, a pass per (layer, node); normalised sites as the rule
                ig, f, f_zero = _reference_one(loaded, item, layer_rules)
                for layer, layer_shares in enumerate(shares):
                    if layer_shares is not None:
                        width = len(layer_shares)
                        ig[layer, :width] = shared_residual(ig[layer, :width], layer_shares,
                                                            f - float(f_zero[layer]))
        _check_finite(loaded, ig, f, i)
        rows.append(ig)
        clean.append(f)
        zeros.append(f_zero)
        evaluations.append(sum(counts) / len(counts))
        if progress:
            progress(i + 1, len(inputs))
    per_prompt = torch.stack(rows).float().cpu()
    f_clean = torch.tensor(clean)
    meta = {"method": method, "evaluations_per_layer": sum(evaluations) / len(evaluations),
            **ragged_meta(loaded)}
    return NeuronIGResult(per_prompt, list(inputs), inputs[0].target.kind, steps, rule, f_clean, meta=meta,
                          delta=completeness_delta(per_prompt, f_clean, torch.stack(zeros)))


def _check_finite(loaded: LoadedModel, ig: torch.Tensor, f_clean: float, prompt: int) -> None:
    """A one-line error where a prompt's F or a real neuron's IG is NaN or infinite (an overflowing forward in
    half precision, a broken checkpoint): NaN also marks the neurons a narrower layer lacks, which selections
    skip and sums read as 0, so a genuine one must not get that far."""
    widths = loaded.adapter.neuron_counts()
    bad = [layer for layer, width in enumerate(widths) if not torch.isfinite(ig[layer, :width]).all()]
    if bad or not math.isfinite(f_clean):
        where = f"at layer(s) {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}" if bad else "in F"
        raise PrunescopeError(f"neuron IG of prompt {prompt + 1} is not finite {where} (F = {f_clean:.4g}): the "
                              f"model's {str(loaded.dtype).removeprefix('torch.')} forward gives NaN or inf there")


def completeness_delta(per_prompt: torch.Tensor, f_clean: torch.Tensor, f_zero: torch.Tensor) -> torch.Tensor:
    """``sum_i IG[p, l, i] - (F_clean[p] - F_zero[p, l])`` as float32 [N, layers] (summed in float64; padding
    of narrower layers counts 0)."""
    gap = f_clean.double()[:, None] - f_zero.double()
    return (zero_missing(per_prompt.double()).sum(dim=-1) - gap).float()


def completeness_summary(result: NeuronIGResult) -> dict | None:
    """The completeness error relative to ``|F(a) - F(0)|``: ``median`` over prompts and layers of
    ``|delta| / |F(a) - F(0)|``, and the ``worst_layer`` by ``sum_p |delta| / sum_p |F(a) - F(0)|`` (a ratio
    of sums, so a prompt where zeroing the layer hardly moves F cannot blow it up) with that ratio as
    ``worst``. None for a result without ``delta`` (a cache entry written before it existed)."""
    if result.delta is None:
        return None
    delta = result.delta.double().abs()
    # |F(a) - F(0)|, [N, layers]
    gap = (zero_missing(result.per_prompt.double()).sum(dim=-1) - result.delta.double()).abs()
    per_layer = delta.sum(dim=0) / gap.sum(dim=0).clamp_min(1e-12)
    worst = int(per_layer.argmax())
    return {"median": float((delta / gap.clamp_min(1e-12)).median()), "worst_layer": worst,
            "worst": float(per_layer[worst])}


def _last_row(activation: torch.Tensor) -> torch.Tensor:
    """The last token's row of a site activation shaped [B, T, N] or flattened [B*T, N] (OPT), batch 1."""
    return activation.reshape(-1, activation.shape[-1])[-1]


def _fast_fixed(loaded: LoadedModel, item: AttributionInput, alphas: torch.Tensor, weights: torch.Tensor,
                max_rows: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(IG [layers, widest], F(a), F(0) per layer) with one rule at every layer: F(0) from the clean pass
    (no backward), the nodes' gradients from one gradient pass (or a few, within ``max_rows``)."""
    n_layers = loaded.adapter.n_layers
    zero = torch.zeros(1, dtype=torch.float64)
    prompt, values = clean_pass(loaded, item, {layer: zero for layer in range(n_layers)}, max_rows)
    grads = gradient_pass(loaded, prompt, {layer: alphas for layer in range(n_layers)}, max_rows)
    weights = weights.to(device=loaded.device, dtype=torch.float32)
    ig = stack_layers([prompt.acts[layer].float() * (weights[:, None] * grads[layer][0]).sum(dim=0)
                       for layer in range(n_layers)])
    return ig.cpu(), prompt.f_clean, torch.cat([values[layer] for layer in range(n_layers)])


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


def _reference_one(loaded: LoadedModel, item: AttributionInput, rules: Sequence[tuple[torch.Tensor, torch.Tensor]]
                   ) -> tuple[torch.Tensor, float, torch.Tensor]:
    """One layer at a time, one full forward and backward per node of that layer's rule (and one forward at
    alpha = 0)."""
    acts = clean_site_activations(loaded, item)
    with torch.no_grad():
        f_clean = float(site_scaled_target(loaded, item, 0, torch.tensor(1.0, dtype=loaded.dtype), acts[0]))
        zero = torch.tensor(0.0, dtype=loaded.dtype)
        f_zero = torch.tensor([float(site_scaled_target(loaded, item, layer, zero, activation))
                               for layer, activation in enumerate(acts)], dtype=torch.float64)
    rows = []
    for layer, (activation, (alphas, weights)) in enumerate(zip(acts, rules)):
        total = torch.zeros_like(activation, dtype=torch.float32)
        for alpha, weight in zip(alphas.tolist(), weights.tolist()):
            point = (alpha * activation).requires_grad_(True)
            with torch.enable_grad():
                f = site_scaled_target(loaded, item, layer, torch.tensor(1.0, dtype=loaded.dtype), point)
                (grad,) = torch.autograd.grad(f, point)
            total += weight * grad.float()
        rows.append((activation.float() * total).cpu())
    return stack_layers(rows), f_clean, f_zero
