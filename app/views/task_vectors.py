"""Task vectors page: is the task compressed into one hidden state, and does pruning change where? Accuracy of
the zero-shot prompt with the k-shot task vector patched in at each layer, unpruned vs pruned."""

import pandas as pd
import streamlit as st

from analysis.cache import ResultsCache
from analysis.evaluation.task_vectors import task_vectors
from components import present, state
from components.charts_pruning import task_vector_chart
from components.export import chart, report_button, table
from components.masking import active_mask
from components.widgets import guarded, require_model, run_progress, task_picker

st.header("Task vectors")
st.caption("The residual stream entering layer L at the last token of k-shot prompts, averaged, is patched into "
           "the zero-shot prompt at layer L (Hendel et al. 2023); accuracy per layer, with and without the mask.")

loaded = require_model()
mask, source = None, ""
with guarded("mask"):
    mask, source = active_mask(loaded)
with present.controls():
    col_task, col_shots, col_n, col_vec = st.columns([3, 1, 1, 1])
    with col_task:
        task = task_picker()
    shots = state.bound(col_shots.number_input, "Shots", "shots", min_value=1, max_value=8, step=1)
    n = col_n.number_input("Queries", 1, 200, 20, key="tv_n")
    vector_prompts = col_vec.number_input("Vector prompts", 1, 64, 8, key="tv_vec")
    with_mask = st.checkbox(f"Also with the mask ({len(mask)} neurons, {source})" if mask is not None else source,
                            value=mask is not None, disabled=mask is None, key="tv_masked")
    clicked = st.button("Run task vectors", type="primary", disabled=task is None, key="tv_run")

if clicked and task is not None:
    conditions = {"unpruned": None, **({"pruned": mask} if with_mask and mask is not None else {})}
    results = {}
    with guarded("task vectors"):
        for name, condition_mask in conditions.items():
            with run_progress(f"Task vectors, {name}", "layers") as progress:
                results[name] = task_vectors(loaded, task, int(shots), int(n), int(vector_prompts),
                                             seed=int(state.get("seed")), mask=condition_mask, progress=progress,
                                             cache=ResultsCache())
        st.session_state["tv_results"] = (loaded.name, results)

shown = st.session_state.get("tv_results")
if shown and shown[0] == loaded.name:
    results = shown[1]
    first = next(iter(results.values()))
    figure = task_vector_chart({name: r.table.accuracy.tolist() for name, r in results.items()},
                               {name: r.zero_shot_accuracy for name, r in results.items()},
                               f"{first.task}: {first.shots}-shot vectors, {first.n} zero-shot queries")
    chart(figure, "tv_chart", "task-vectors")
    summary = pd.DataFrame([{"condition": name, "best_layer": r.best_layer, "best_accuracy": r.best_accuracy,
                             "zero_shot_accuracy": r.zero_shot_accuracy, "icl_accuracy": r.icl_accuracy}
                            for name, r in results.items()])
    table(summary, "task-vectors-summary")
    per_layer = pd.concat([r.table.assign(condition=name) for name, r in results.items()], ignore_index=True)
    with st.expander("Accuracy per layer"):
        table(per_layer, "task-vectors-per-layer")
    report_button("Task vectors", {"Task-vector accuracy per layer": figure},
                  {"Summary": summary, "Per layer": per_layer}, {"model": loaded.describe()})
