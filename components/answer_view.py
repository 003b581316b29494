"""The attribution page's per-answer-token view (Inseq's): for one attributed prompt, which earlier tokens each
token of the answer rests on, with the model's greedy answer or the gold one forced."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.attribution.answer_tokens import ANSWER_METHODS, AnswerSource
from analysis.attribution.neuron_ig import NeuronIGResult
from analysis.attribution.propagation import LRP_FAMILIES
from analysis.models import LoadedModel
from analysis.queries import AnswerQuery
from components.charts import visible_token
from components.charts_attribution import answer_attribution_heatmap
from components.export import chart
from components.widgets import guarded, memo

SOURCES: dict[AnswerSource, str] = {"model": "the model's answer", "gold": "the gold answer"}


def show(loaded: LoadedModel, result: NeuronIGResult, result_key: tuple, delimiter: str) -> dict[str, go.Figure]:
    """An expander with the view; computed on a click (one backward pass per answer token, per IG node for
    ig), then kept for the session. Returns its figure (for the report) once computed."""
    methods = [m for m in ANSWER_METHODS if m != "lrp" or loaded.family in LRP_FAMILIES]
    with st.expander("Per answer token: which tokens each token of the answer rests on",
                     icon=":material/segment:"):
        left, middle, right = st.columns([2, 1, 1])
        prompt = left.selectbox("Prompt", range(len(result.inputs)), key="answer_prompt",
                                format_func=lambda p: f"prompt {p}: …{visible_token(result.inputs[p].text[-40:])}")
        method = middle.selectbox("Method", methods, key="answer_method",
                                  help="gradient x input, IG on the embeddings, conservative LRP (where the "
                                       "family has it) or gradient-weighted attention rollout")
        source = right.radio("Answer", list(SOURCES), key="answer_source", format_func=SOURCES.get)
        item = result.inputs[int(prompt)]
        query = AnswerQuery(result_key, int(prompt), method, source)
        clicked = st.button("Attribute the answer's tokens", key="answer_run")
        found = None
        with guarded("per-token attribution"):
            with st.spinner("one backward pass per answer token…"):  # memo keeps no None: none yet, no click
                found = memo(query.key(loaded), (lambda: query.run(loaded, result, delimiter)) if clicked
                             else lambda: None)
        if found is None:
            st.caption("Click to attribute each token of the answer to the tokens before it.")
            return {}
        answer = "".join(found.answer_tokens)
        st.caption(f"Answer {visible_token(answer)!r} ({len(found.answer_ids)} tokens; gold "
                   f"{visible_token(item.prompt.gold)!r}). Each row explains one answer token's logit at the "
                   "position before it; a row's scores are that token's, blank after it.")
        figure = answer_attribution_heatmap(found)
        chart(figure, "answer_heat", "answer-token-attribution")
        return {"Per answer token": figure}
