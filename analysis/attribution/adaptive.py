"""The adaptive quadrature, the default rule of neuron IG: accurate at every layer, per neuron and in sum, for
about 7 gradient evaluations per layer on SmolLM2 and 9 on Gemma 3 (bench/ig_bench.py).

Layers whose neurons are RMS-normalised on their way out (Gemma 2/3, OLMo 2: the adapter's ``site_norm``) take
one round of a rule made for that shape (analysis/attribution/normalised.py): exact in sum, 9 nodes. Every
other layer goes through the checked rules below.

Most layers' ``F(alpha a)`` is smooth on [0, 1] and ``steps``-node Gauss-Legendre (4 by default) integrates
it to the float32 floor (~3e-5 completeness error on SmolLM2, as with 8 nodes). Some are not: layer 0 of
SmolLM2 swings by 8 logits on alpha in [1e-4, 0.05] and oscillates up to 0.4 (the answer position's first MLP
carries a massive activation), and Gemma 3 normalises every MLP's output, so each layer's F moves only where
``alpha^2 ms(out) ~ eps``, over alpha ~ 1e-5 .. 0.05, and is flat above (the checked rules took ~50
evaluations per layer there; the normalised-site rule now takes 9). Gauss-Legendre on [0, 1] puts no
node there (its first is 0.02): 119 % completeness error at SmolLM2's layer 0 and 87 % median on Gemma with
8 nodes, 200 % at layer 0 with 20 Riemann steps.

The rule therefore looks before it integrates. A forward-only pass measures F at the ends of the intervals
``CUTS`` (0, 1e-5, ..., 0.05, 0.2, 0.5, 1) for every layer. A layer whose F moves on [0, 0.05] far more than
a straight line would (``NEAR_ZERO`` of its total variation) is *structured*; the others are *smooth*:

* smooth layers get Gauss-Legendre with ``steps`` nodes on [0, 1]; if its completeness error exceeds
  ``SMOOTH_TOL``, the layer is treated as structured in the next round;
* structured layers get a composite rule, Gauss-Legendre on each interval with more nodes where F moves more
  (``FIRST_NODES``, at least ``MIN_NODES``). Each interval has its own exact check: the sum of its IG must
  equal ``F(end) - F(start)``, both measured; an interval off by more than ``INTERVAL_TOL`` of the layer's
  scale gets twice the nodes in the next round (four times when ten times off), up to ``MAX_NODES``.
  Sums cannot see errors that cancel between neurons, and after Gemma 3's norm F is flat over intervals where
  single neurons' contributions are large and opposite (2 nodes left 8 % per-neuron error there). So an
  interval with fewer than ``VERIFY_BELOW`` nodes that carries ``MASS_SHARE`` of the layer's |IG| is
  integrated again with twice the nodes, and again while that still moves the neurons by more than
  ``NEURON_TOL`` of the layer's IG norm.

Passes, per prompt: the forward-only probe pass, then gradient passes. Each layer goes through its own rounds
(at most ``ROUNDS`` after the first), and its decisions depend on its own pieces only, so layers need not
keep step: a pass computes what every layer's next round lacks, then each layer takes as many rounds as the
contributions known so far allow (:func:`_advance`). Nothing carries over from one prompt to the next: which
rows share a pass changes a gradient's last bits, and a result must not depend on the prompt run before it
(remembering which layers were structured on the previous prompt saved SmolLM2 0.75 passes per prompt, and
made a Ray shard's IG differ from a serial run's in the last bits).
tests/test_adaptive_ig.py checks the rule on closed-form integrands, against captum and against a dense
reference; bench/ig_bench.py against a 256-node composite reference on the real models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analysis.attribution import normalised
from analysis.attribution.passes import Prompt, clean_pass, gradient_pass
from analysis.attribution.quadrature import gauss_legendre
from analysis.attribution.ragged import stack_layers
from analysis.attribution.targets import AttributionInput
from analysis.models.loader import LoadedModel

# Changing any constant below changes results: bump IG_VERSION (analysis/attribution/runs.py), whose cache
# keys do not see them, and recompute assets/precomputed.
CUTS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 1.0)
NEAR = CUTS.index(0.05)  # the intervals below this cut are "near zero"
# first round of a structured layer: Gauss-Legendre nodes of an interval by how far F moves over it,
# |F(end) - F(start)| / scale (at least this much -> this many nodes; below the last, MIN_NODES)
FIRST_NODES = ((0.15, 8), (0.02, 4), (0.003, 2))
MAX_NODES = 32  # per interval
MIN_NODES = 2
NEAR_ZERO = 0.5
SMOOTH_TOL = 1e-2
INTERVAL_TOL = 3e-3
MASS_SHARE = 0.02  # an interval carrying at least this share of the layer's |IG| mass is verified per neuron
NEURON_TOL = 1e-2  # per-neuron change on doubling, relative to the layer's IG norm, that calls for more nodes
VERIFY_BELOW = 8  # pieces with fewer nodes are verified per neuron (8 Gauss-Legendre nodes were right to 1e-5)
ROUNDS = 4


@dataclass
class LayerPlan:
    """Where one layer's integration stands: its measured F at the cuts and its current pieces. A piece is
    (interval index, or None for the whole of [0, 1]; nodes; weights; IG contribution [neurons] or None;
    the contribution of the rule it replaced, or None)."""

    f_cuts: torch.Tensor  # float64 [len(CUTS)]: F at each cut, F(1) the clean value ([F(0), F(1)] with shares)
    structured: bool
    pieces: list[list] = field(default_factory=list)
    evaluations: int = 0
    shares: torch.Tensor | None = None  # a normalised site's c (analysis/attribution/normalised.py): one round

    @property
    def gap(self) -> float:
        return float(self.f_cuts[-1] - self.f_cuts[0])

    @property
    def scale(self) -> float:
        """What errors are relative to: |F(1) - F(0)|, but at least a tenth of the variation over the cuts
        (a layer whose F returns to where it started has a tiny gap and real work in between)."""
        variation = float(self.f_cuts.diff().abs().sum())
        return max(abs(self.gap), 0.1 * variation, 1e-12)

    def interval_error(self, piece: list) -> float:
        index, _, _, ig, _ = piece
        measured = float(self.f_cuts[index + 1] - self.f_cuts[index])
        return abs(float(ig.double().sum()) - measured) / self.scale

    def ig(self) -> torch.Tensor:
        ig = torch.stack([piece[3] for piece in self.pieces]).sum(dim=0)
        return ig if self.shares is None else normalised.shared_residual(ig, self.shares, self.gap)


def _piece(index: int | None, k: int, previous: torch.Tensor | None = None) -> list:
    nodes, weights = gauss_legendre(k) if index is None else gauss_legendre(k, CUTS[index], CUTS[index + 1])
    return [index, nodes, weights, None, previous]


def _first_pieces(plan: LayerPlan) -> list[list]:
    """A structured layer's first composite rule: more nodes where F moves more (``FIRST_NODES``)."""
    moves = (plan.f_cuts.diff().abs() / plan.scale).tolist()
    return [_piece(i, next((k for bound, k in FIRST_NODES if move >= bound), MIN_NODES))
            for i, move in enumerate(moves)]


def _structured(f_cuts: torch.Tensor) -> bool:
    """F moves on [0, 0.05] by more than ``NEAR_ZERO`` of its variation beyond what a straight line would."""
    gap = float(f_cuts[-1] - f_cuts[0])
    variation = float(f_cuts.diff().abs().sum())
    near = abs(float(f_cuts[NEAR] - f_cuts[0]) - CUTS[NEAR] * gap)
    return near > NEAR_ZERO * max(variation, 1e-12)


@dataclass
class AdaptiveRun:
    """One prompt's adaptive IG: ``ig`` [layers, widest] (NaN-padded where layers differ), F(a), F(0) per
    layer, each layer's final rule as (nodes, weights), and each layer's gradient evaluations (the final rule's
    nodes and those of the rounds it replaced), and each normalised site's shares (None elsewhere)."""

    ig: torch.Tensor
    f_clean: float
    f_zero: torch.Tensor
    rules: list[tuple[torch.Tensor, torch.Tensor]]
    evaluations: list[int]
    shares: list[torch.Tensor | None]


def _key(layer: int, piece: list) -> tuple[int, int | None, int]:
    """A piece's identity: a piece's nodes (and so its contribution) follow from its interval and node count."""
    return layer, piece[0], len(piece[1])


def adaptive_ig(loaded: LoadedModel, item: AttributionInput, steps: int, budget: int) -> AdaptiveRun:
    """Neuron IG of one prepared prompt at every layer with the adaptive rule (see the module docstring)."""
    n_layers = loaded.adapter.n_layers
    norms = {layer: norm for layer in range(n_layers) if (norm := loaded.adapter.site_norm(layer)) is not None}
    cuts, zero = torch.tensor(CUTS[:-1], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    prompt, values = clean_pass(loaded, item, {layer: zero if layer in norms else cuts for layer in range(n_layers)},
                                budget)
    plans = []
    for layer in range(n_layers):
        f_cuts = torch.cat([values[layer], torch.tensor([prompt.f_clean], dtype=torch.float64)])
        if layer in norms:  # one round: the sum exact by the shares, the rest smooth in tau
            shares, alpha_star = normalised.site_shares(norms[layer], prompt.acts[layer])
            plan = LayerPlan(f_cuts, False, shares=shares)
            plan.pieces = [[None, *normalised.sinh_rule(alpha_star), None, None] if alpha_star < 1
                           else _piece(None, steps)]
        else:
            structured = _structured(f_cuts)
            plan = LayerPlan(f_cuts, structured)
            plan.pieces = _first_pieces(plan) if structured else [_piece(None, steps)]
        plans.append(plan)
    known: dict[tuple[int, int | None, int], torch.Tensor] = {}
    rounds, done = [0] * n_layers, [False] * n_layers
    while True:
        needs = {}
        for layer, plan in enumerate(plans):
            missing = [] if done[layer] else _advance(layer, plan, known, rounds, done, steps)
            if missing:
                needs[layer] = missing
        if not needs:
            break
        _integrate(loaded, prompt, plans, needs, known, budget)
    rules = [(torch.cat([p[1] for p in plan.pieces]), torch.cat([p[2] for p in plan.pieces])) for plan in plans]
    return AdaptiveRun(stack_layers([plan.ig() for plan in plans]), prompt.f_clean,
                       torch.stack([plan.f_cuts[0] for plan in plans]), rules, [plan.evaluations for plan in plans],
                       [plan.shares for plan in plans])


def _advance(layer: int, plan: LayerPlan, known: dict, rounds: list[int], done: list[bool],
             steps: int) -> list[list]:
    """Take the layer through its rounds as far as ``known`` contributions allow; returns the pieces its next
    round still lacks (none once it is done). A layer's decisions depend on its own pieces only, so it runs
    the same rounds as if every layer took one pass per round, at most ``ROUNDS`` after the first."""
    while True:
        pending = [piece for piece in plan.pieces if piece[3] is None]
        missing = [piece for piece in pending if _key(layer, piece) not in known]
        if missing:
            return missing
        for piece in pending:
            piece[3] = known[_key(layer, piece)]
        if rounds[layer] == ROUNDS or not _refine(plan, steps):
            done[layer] = True
            return []
        rounds[layer] += 1


def _integrate(loaded: LoadedModel, prompt: Prompt, plans: list[LayerPlan], pieces: dict[int, list[list]],
               known: dict, budget: int) -> None:
    """One gradient pass for the given pieces; their IG contributions go into ``known`` by :func:`_key`."""
    nodes = {layer: torch.cat([p[1] for p in layer_pieces]) for layer, layer_pieces in pieces.items()}
    grads = gradient_pass(loaded, prompt, nodes, budget)
    for layer, layer_pieces in pieces.items():
        grad, offset = grads[layer][0], 0
        acts = prompt.acts[layer].float()
        for piece in layer_pieces:
            k = len(piece[1])
            weights = piece[2].to(device=grad.device, dtype=torch.float32)
            known[_key(layer, piece)] = (acts * (weights[:, None] * grad[offset:offset + k]).sum(dim=0)).cpu()
            offset += k
        plans[layer].evaluations += offset


def _refine(plan: LayerPlan, steps: int) -> bool:
    """Set up one layer's next round of pieces; False when it needs none."""
    if plan.shares is not None:
        return False
    if not plan.structured:
        error = abs(float(plan.ig().double().sum()) - plan.gap) / plan.scale
        if error > SMOOTH_TOL:  # Gauss-Legendre missed something: integrate interval by interval
            plan.structured, plan.pieces = True, _first_pieces(plan)
            return True
        return False
    more = False
    ig = plan.ig()
    norm, mass = max(float(ig.norm()), 1e-12), sum(float(p[3].abs().sum()) for p in plan.pieces) + 1e-12
    for position, piece in enumerate(plan.pieces):
        index, nodes, _, contribution, previous = piece
        k = len(nodes)
        if k >= MAX_NODES:
            continue
        error = plan.interval_error(piece)
        if error > INTERVAL_TOL:  # misses the measured change: far off, four times the nodes, else twice
            factor = 4 if error > 10 * INTERVAL_TOL else 2
        elif previous is None:  # right in sum; per neuron unverified where few nodes carry real mass
            factor = 2 if k < VERIFY_BELOW and float(contribution.abs().sum()) > MASS_SHARE * mass else 1
        else:  # verified once: again while doubling still moves single neurons
            factor = 2 if float((contribution - previous).norm()) > NEURON_TOL * norm else 1
        if factor > 1:
            plan.pieces[position] = _piece(index, min(MAX_NODES, k * factor), contribution)
            more = True
    return more
