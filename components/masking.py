"""Which neuron mask a page uses: the link's mask, else the one set on the pruning page, else the top-k copying
neurons from cached copying scores (default scoring settings). Shared by the task-vector and compare pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import streamlit as st

from analysis.attribution.targets import CopyTarget
from analysis.demo import SCORING
from analysis.errors import PrunescopeError
from analysis.models import LoadedModel
from analysis.pruning import NeuronMask
from analysis.pruning.copying import CopyingScores, ScorePrompts, parse_layer_range, select_top_k
from analysis.pruning.stability import MaskStability
from analysis.queries import StabilityQuery, StoredScoresQuery
from components import state
from components.widgets import memo

ACTIVE_KEY = "active_mask"  # {"model": name, "mask": NeuronMask}


def scoring_settings() -> dict[str, Any]:
    """The copying-score settings of the current session (their link parameters are ``score_<name>``)."""
    return {name: _like(default, state.get(f"score_{name}")) for name, default in SCORING.items()}


def _like(default: object, value: object) -> object:
    """``value`` converted to the type of ``default`` (an int or a str: each converts from a link's text)."""
    return cast("Callable[[object], object]", type(default))(value)


def stored_copying_scores(loaded: LoadedModel, n: int, shots: int, steps: int, target: CopyTarget = "copy",
                          prompts: ScorePrompts = "all") -> CopyingScores | None:
    """Copying scores from the on-disk or shipped cache, or None; read once per session and settings."""
    query = StoredScoresQuery(n, shots, steps, target, prompts)
    return memo(query.key(loaded), lambda: query.run(loaded))


def top_k_mask(loaded: LoadedModel, scores) -> NeuronMask:
    """The session's top-k copying mask (k, per layer, layer range from the shared settings)."""
    layers = parse_layer_range(state.get("layers"), loaded.n_layers)
    return select_top_k(scores, int(state.get("k")), bool(state.get("per_layer")), layers)


def top_k_stability(loaded: LoadedModel, scored: CopyingScores, mask: NeuronMask) -> MaskStability | None:
    """How much the session's top-k mask depends on its scoring prompts (analysis/pruning/stability.py), once
    per session and settings; None with fewer than 2 scoring prompts."""
    if scored.n_used < 2:
        return None
    per_layer, layers = bool(state.get("per_layer")), parse_layer_range(state.get("layers"), loaded.n_layers)
    query = StabilityQuery((tuple(sorted(scored.options.items())), tuple(scored.used)), mask, per_layer, layers)
    return memo(query.key(loaded), lambda: query.run(loaded, scored))


def remember(loaded: LoadedModel, mask: NeuronMask | None) -> None:
    st.session_state[ACTIVE_KEY] = {"model": loaded.name, "mask": mask}


def link_mask(loaded: LoadedModel) -> NeuronMask:
    """The link's mask (the ``mask`` setting); a malformed or out-of-range one raises PrunescopeError and is
    left out of the link from then on (:func:`state.reject`)."""
    try:
        mask = NeuronMask.from_text(state.get("mask"), "mask in the link")
        mask.validate(loaded.adapter.neuron_counts(), "mask in the link")
    except PrunescopeError:
        state.reject("mask")
        raise
    return mask


def active_mask(loaded: LoadedModel) -> tuple[NeuronMask | None, str]:
    """(mask or None, where it came from); raises PrunescopeError for a malformed or out-of-range link mask."""
    if state.get("mask"):
        return link_mask(loaded), "from the link"
    active = st.session_state.get(ACTIVE_KEY)
    if active and active["model"] == loaded.name and active["mask"] is not None:
        return active["mask"], "set on the pruning page"
    scored = stored_copying_scores(loaded, **scoring_settings())
    if scored is not None:
        return top_k_mask(loaded, scored.scores), f"top {state.get('k')} copying neurons"
    return None, "no mask: compute copying scores on the pruning page"
