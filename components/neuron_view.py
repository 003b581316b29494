"""The attribution page's neuron view: pick a neuron (a click on the heatmap, the link's ``ig_neuron``, else
the strongest neuron), see its IG on every prompt, the prompts where it fires most and its activation over a
prompt's tokens, and add it to the pruning mask in one click."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.attribution.neuron_view import NeuronProfile, parse_neuron
from analysis.errors import PrunescopeError
from analysis.models import LoadedModel
from analysis.pruning import NeuronMask
from analysis.queries import NeuronProfileQuery
from components import present, state
from components.charts import visible_token
from components.charts_attribution import neuron_activation_over_tokens, neuron_ig_per_prompt
from components.export import chart, table
from components.masking import active_mask
from components.widgets import guarded, memo

MAX_PROFILE_PROMPTS = 64  # one forward pass each: the view stays quick on the largest attribution runs
LAST_PICK = "_ig_last_pick"  # the heatmap selection already taken into ig_neuron (a rerun repeats it)


def take_pick(points: list[dict]) -> tuple[int, int] | None:
    """A new click on the heatmap's markers (customdata [layer, neuron, score]) becomes the ``ig_neuron``
    setting and is returned; the same selection seen again on a later rerun changes nothing (None), so a typed
    neuron stays."""
    picked = next((p.get("customdata") for p in points if p.get("customdata")), None)
    if picked is None:
        return None
    text = f"{int(picked[0])}:{int(picked[1])}"
    if st.session_state.get(LAST_PICK) == text:
        return None
    st.session_state[LAST_PICK] = text
    state.put("ig_neuron", text)
    return int(picked[0]), int(picked[1])


def picked_neuron(loaded: LoadedModel, result: NeuronIGResult) -> tuple[int, int]:
    """The neuron the view shows: the ``ig_neuron`` setting when it names one of this model's neurons (a bad
    one: one red line, left out of the link), else the neuron with the largest mean |IG|."""
    strongest = result.top_k(1)[0]
    with guarded("neuron"):
        try:
            found = parse_neuron(state.get("ig_neuron"), loaded.adapter.neuron_counts())
        except PrunescopeError:
            state.reject("ig_neuron")
            raise
        if found is not None:
            return found
    return strongest[0], strongest[1]


def show(loaded: LoadedModel, result: NeuronIGResult, result_key: tuple, picked: tuple[int, int]
         ) -> dict[str, go.Figure]:
    """Draw the view of neuron ``picked`` (:func:`picked_neuron`) under the heatmap; returns its figures (for the
    report)."""
    layer, neuron = picked
    st.subheader(f"Neuron {layer}:{neuron}")
    with present.controls("Neuron"):
        state.bound(st.text_input, "Neuron (layer:neuron)", "ig_neuron", placeholder=f"{layer}:{neuron}",
                    help="click a cell of the heatmap, or type one, e.g. 12:345; empty: the strongest neuron")
    profile: NeuronProfile | None = None
    with guarded("neuron view"):
        query = NeuronProfileQuery(result_key, layer, neuron, MAX_PROFILE_PROMPTS)
        profile = memo(query.key(loaded), lambda: query.run(loaded, result))
    if profile is None:
        return {}
    shown = len(profile.ig)
    mean = float(result.scores[layer, neuron])
    st.caption(f"Mean IG {mean:.3g} over {len(result.inputs)} prompts"
               + (f" (the view reads the first {shown})" if shown < len(result.inputs) else "")
               + f"; rank {rank_of(result, layer, neuron)} of {sum(result.widths)} by |mean IG|.")
    if not present.requested():
        add_to_mask_button(loaded, layer, neuron)
    figures = {"IG of the neuron on each prompt": neuron_ig_per_prompt(profile)}
    chart(figures["IG of the neuron on each prompt"], "neuron_ig", f"neuron-{layer}-{neuron}-ig")
    rows = pd.DataFrame(profile.top_prompts(10))
    rows["peak_token"] = rows["peak_token"].map(visible_token)
    rows["prompt text (end)"] = [visible_token(profile.texts[p][-60:]) for p in rows["prompt"]]
    st.caption("Prompts where it fires most (peak activation over the prompt's tokens)")
    table(rows, f"neuron-{layer}-{neuron}-top-prompts")
    options = list(rows["prompt"])
    with present.controls("Prompt"):
        prompt = st.selectbox("Prompt to show token by token", options, key="neuron_prompt",
                              format_func=lambda p: f"prompt {p} (peak {profile.peak[p]:.3g})")
    prompt = prompt if prompt in options else options[0]
    figures["Activation over the prompt's tokens"] = neuron_activation_over_tokens(profile, int(prompt))
    chart(figures["Activation over the prompt's tokens"], "neuron_tokens", f"neuron-{layer}-{neuron}-tokens")
    return figures


def rank_of(result: NeuronIGResult, layer: int, neuron: int) -> int:
    """1-based rank of the neuron by |mean IG| among all neurons (NaN padding of narrower layers never ranks)."""
    scores = result.scores.abs()
    return int((scores > scores[layer, neuron]).sum()) + 1  # NaN > x is False


def add_to_mask_button(loaded: LoadedModel, layer: int, neuron: int) -> None:
    """One click adds the neuron to the pruning page's mask (the link's ``mask``: the active mask plus it)."""
    current: NeuronMask | None = None
    with guarded("mask"):
        current, _ = active_mask(loaded)
    pairs = set(current.neurons) if current is not None else set()
    if (layer, neuron) in pairs:
        st.caption(f"In the active mask ({len(pairs)} neurons); the pruning page prunes it.")
        return
    if st.button(f"Add {layer}:{neuron} to the mask", key="neuron_add", icon=":material/add:"):
        state.put("mask", NeuronMask.from_pairs(pairs | {(layer, neuron)}).to_text())
        st.success(f"Added: the mask has {len(pairs) + 1} neurons; the pruning page uses it.")
