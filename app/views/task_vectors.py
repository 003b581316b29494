"""Task vectors page: is the task compressed into one hidden state, and does pruning change where? Accuracy of
the zero-shot prompt with the k-shot task vector patched in at each layer, unpruned vs pruned; a layer is named
best only when it beats the unpatched zero-shot answers in a paired test."""

import dataclasses
from collections.abc import Callable

import pandas as pd
import streamlit as st

from analysis.cache import ResultsCache
from analysis.evaluation.task_vectors import TaskVectors, task_vector_work
from analysis.models.builtin import model_label
from components import present, speculation, state
from components.charts_pruning import task_vector_chart
from components.export import chart, report_button, table
from components.layout import wrapping_columns
from components.masking import active_mask
from components.results import keep, shown
from components.settings import TV_FORMATS
from components.widgets import guarded, memo, require_model, task_picker

st.header("Task vectors")
present.toolbar()
present.caption("Each query's k demonstrations are followed by a dummy query; the residual stream entering layer L at "
                "its last token (averaged over the dummies) replaces the same position of the zero-shot prompt, which "
                "then answers (Hendel et al. 2023). A layer beats zero-shot when an exact McNemar test on the same "
                "queries, Bonferroni-corrected over layers, says so; on small models the prompt format decides whether "
                "any layer does (try the Input:/Output: format below).")

loaded = require_model()
mask, source = None, ""
with guarded("mask"):
    mask, source = active_mask(loaded)
with present.controls():
    col_task, col_shots, col_n, col_dummies = wrapping_columns([3, 1, 1, 1], "tv_task", [300, 140, 140, 140])
    with col_task:
        task = task_picker()
    shots = state.bound(col_shots.number_input, "Shots", "shots", min_value=1, step=1)
    n = state.bound(col_n.number_input, "Queries", "tv_n", widget_key="tv_n")
    dummies = state.bound(col_dummies.number_input, "Dummy queries", "tv_dummies", widget_key="tv_dummies",
                          help="dummy queries whose states are averaged into each query's vector")
    prompt_format = state.bound(st.radio, "Prompt format", "tv_format", widget_key="tv_format", horizontal=True)
    with_mask = state.bound(st.checkbox, f"Also with the mask ({len(mask)} neurons, {source})" if mask is not None
                            else source, "tv_masked", widget_key="tv_masked", disabled=mask is None)
    runs = 1 + bool(with_mask and mask is not None)
    speculation.cost_note(loaded, runs * task_vector_work(loaded, int(n), int(dummies)), "eval",
              f"{runs} x {task_vector_work(loaded, int(n), int(dummies)):,} generations")
    clicked = st.button("Run task vectors", type="primary", disabled=task is None, key="tv_run")

key = None
if task is not None:
    template = TV_FORMATS[prompt_format]
    if template:
        task = dataclasses.replace(task, template=template)
    conditions = {"unpruned": None, **({"pruned": mask} if with_mask and mask is not None else {})}
    seed = int(state.get("seed"))
    requests = {name: TaskVectors(task, int(shots), int(n), int(dummies), seed, condition_mask)
                for name, condition_mask in conditions.items()}
    key = tuple(request.key(loaded) for request in requests.values())
    label = (f"{task.name}, {shots}-shot, {n} queries, {dummies} dummies, {prompt_format} format, "
             f"{' and '.join(conditions)}, {model_label(loaded.name)}")

    def stored_results() -> dict | None:
        got = {name: request.stored(loaded) for name, request in requests.items()}
        return None if None in got.values() else got

    with guarded("task vectors"):  # stored results (on disk or shipped) show at once, read once per session
        stored = memo(key, stored_results)
        if stored is None:  # a click starts a job (the conditions one after the other, one bar); reruns follow it

            def run_all(progress: Callable[[int, int], None]) -> dict:
                stages = len(conditions)

                def stage(i: int) -> Callable[[int, int], None]:  # one bar over the conditions, one after the other
                    return lambda done, total: progress(i * total + done, stages * total)

                return {name: request.run(loaded, ResultsCache(), stage(i))
                        for i, (name, request) in enumerate(requests.items())}

            work = sum(request.work(loaded) for request in requests.values())
            results = speculation.follow("job_task_vectors", key, f"Task vectors, {' and '.join(conditions)}",
                                         run_all, start=clicked, speed=(loaded, "eval", work))
            if results is not None:
                stored = memo(key, lambda: results)
        if stored is not None:
            keep("tv_results", key, stored, label)

results = shown("tv_results", key, "task-vector run", "click Run task vectors")
if results:
    st.subheader(st.session_state["tv_results"]["label"])
    first = next(iter(results.values()))
    verdicts = [f"{name}: {r.verdict()}" for name, r in results.items()]
    for name, r in results.items():
        (st.success if r.best_layer is not None else st.info)(f"{name}: {r.verdict()}")
    figure = task_vector_chart({name: r.table.accuracy.tolist() for name, r in results.items()},
                               {name: r.zero_shot_accuracy for name, r in results.items()},
                               f"{first.task}: {first.shots}-shot vectors, {first.n} zero-shot queries",
                               beats={name: r.table.beats_zero_shot.tolist() for name, r in results.items()},
                               icl={name: r.icl_accuracy for name, r in results.items()})
    chart(figure, "tv_chart", "task-vectors")
    summary = pd.DataFrame([{"condition": name, "best_layer": "none" if r.best_layer is None else str(r.best_layer),
                             "top_layer": r.top_layer, "top_accuracy": float(r.table.accuracy.max()),
                             "top_p_adjusted": float(r.table.set_index("layer").p_adjusted[r.top_layer]),
                             "zero_shot_accuracy": r.zero_shot_accuracy, "icl_accuracy": r.icl_accuracy}
                            for name, r in results.items()])
    table(summary, "task-vectors-summary")
    per_layer = pd.concat([r.table.assign(condition=name) for name, r in results.items()], ignore_index=True)
    with st.expander("Per layer: accuracy, copy rate, discordant queries, p (raw and Bonferroni)"):
        table(per_layer, "task-vectors-per-layer")
    records = pd.concat([r.records.assign(mask=name) for name, r in results.items()], ignore_index=True)
    with st.expander("Every answer"):
        table(records, "task-vectors-answers")
    report_button("Task vectors", {"Task-vector accuracy per layer": figure},
                  {"Summary": summary, "Per layer": per_layer}, {"model": loaded.describe()}, findings=verdicts,
                  settings=("task", "shots", "seed"))
