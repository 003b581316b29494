"""Quadrature rules for Integrated Gradients on [0, 1]: nodes alpha_k and weights w_k."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from analysis.errors import PrunescopeError, check_choice

Quadrature = Literal["adaptive", "riemann", "gauss-legendre"]
QUADRATURES: tuple[Quadrature, ...] = get_args(Quadrature)
# what one prompt of the adaptive rule costs, in prompt-steps of a fixed rule: it takes 0.8-0.9x the time of
# Riemann-20 on SmolLM2 and 0.57x on Gemma 3 (bench/ig_bench.py), so 20 errs on the expensive side
ADAPTIVE_COST_STEPS = 20


def cost_units(n: int, steps: int, method: str) -> int:
    """Prompt-steps of IG work (the unit cost estimates are measured in): ``n * steps`` for a fixed rule."""
    return n * (ADAPTIVE_COST_STEPS if method == "adaptive" else steps)


def check_quadrature(name: str) -> Quadrature:
    """``name`` as a quadrature rule's name, else a one-line error."""
    return check_choice(name, QUADRATURES, "quadrature", " or ")


def gauss_legendre(k: int, start: float = 0.0, end: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-node Gauss-Legendre nodes and weights on [start, end] (float64)."""
    nodes, weights = np.polynomial.legendre.leggauss(k)
    return (torch.from_numpy(start + (end - start) * (nodes + 1) / 2),
            torch.from_numpy(weights * (end - start) / 2))


def quadrature(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights) as float64 tensors.

    ``riemann`` is the right Riemann sum: alpha_k = k/m, w_k = 1/m for k = 1..m. ``gauss-legendre`` maps the
    m-point Legendre rule from [-1, 1] to [0, 1] (as captum's ``gausslegendre``). ``adaptive`` chooses its
    nodes per prompt and layer (analysis/attribution/adaptive.py): it has no fixed rule.
    """
    if steps < 1:
        raise PrunescopeError(f"IG needs at least 1 step (got {steps})")
    rule = check_quadrature(method)
    if rule == "adaptive":
        raise PrunescopeError("the adaptive quadrature chooses its nodes per prompt and layer; it has no fixed rule")
    if rule == "riemann":
        alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        return alphas, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    return gauss_legendre(steps)
