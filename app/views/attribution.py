"""Neuron attribution page: all-layer neuron Integrated Gradients for a target over a task's prompts."""

import streamlit as st

from analysis.attribution import QUADRATURES, TARGETS, attribute_task
from analysis.attribution.summary import top_neurons
from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from components.charts import layer_totals_bar, neuron_heatmap
from components.widgets import one_line, require_model, run_progress, task_picker

st.header("Neuron attribution")
st.caption("Integrated Gradients of a target at the answer position with respect to every layer's neurons "
           "(baseline zero); results are cached on disk, so a revisit is instant.")

loaded = require_model()

col_task, col_target = st.columns([3, 1])
with col_task:
    task = task_picker("ig_task")
target = col_target.selectbox("Target", TARGETS, index=1, key="ig_target",
                              help="gold: log p(gold); copy: logit(copied) - logit(gold); confidence: top logit")
col_n, col_shots, col_steps, col_rule = st.columns(4)
n = col_n.number_input("Prompts", min_value=1, max_value=256, value=8, key="ig_n")
shots = col_shots.number_input("Shots", min_value=1, max_value=8, value=4, key="ig_shots")
steps = col_steps.number_input("Steps", min_value=1, max_value=256, value=20, key="ig_steps")
rule = col_rule.selectbox("Quadrature", QUADRATURES, key="ig_rule")

if st.button("Attribute", type="primary", disabled=task is None, key="ig_run"):
    try:
        with run_progress(f"IG {target} on {task.name}") as progress:
            result = attribute_task(loaded, task, target, int(n), int(shots), 0, int(steps), rule,
                                    cache=ResultsCache(), progress=progress)
        st.session_state["ig_result"] = {"result": result, "top": top_neurons(loaded, result), "model": loaded.name}
    except PrunescopeError as exc:
        st.error(one_line(exc))

shown = st.session_state.get("ig_result")
if shown and shown["model"] == loaded.name:
    result = shown["result"]
    st.subheader(f"{result.target} target, {len(result.inputs)} prompts, {result.steps} {result.quadrature} steps")
    st.plotly_chart(neuron_heatmap(result.scores.tolist(), title="mean attribution per neuron"), key="ig_heat")
    st.plotly_chart(layer_totals_bar(result.scores.tolist()), key="ig_layers")
    st.dataframe(shown["top"], hide_index=True)
