"""Evaluate page: k-shot ICL accuracy, copy-error and other-error rates of the picked model on a task."""

import pandas as pd
import streamlit as st

from analysis.cache import ResultsCache
from analysis.evaluation import evaluate_task
from analysis.evaluation.icl import Evaluation
from components import present, state
from components.charts import outcome_bar_chart
from components.export import chart, report_button, table
from components.layout import wrapping_columns
from components.widgets import cost_note, guarded, require_model, run_progress, task_picker

RUNS_KEY = "eval_runs"  # list of {"summary": dict, "records": DataFrame}, oldest first
MAX_RUNS = 12
TABLE_COLUMNS = ["query", "gold", "prediction", "outcome", "demo_outputs", "prompt"]

st.header("Evaluate")
present.toolbar()
present.caption("Greedy k-shot answers compared with the gold answer; a wrong answer equal to a demonstration's "
                "output counts as a copy error.")

loaded = require_model(' to evaluate')

runs = st.session_state.setdefault(RUNS_KEY, [])
with present.controls():
    col_task, col_shots, col_n, col_seed = wrapping_columns([3, 1, 1, 1], "eval_task", [300, 140, 140, 140])
    with col_task:
        task = task_picker()
    shots = state.bound(col_shots.number_input, "Shots", "shots", step=1)
    n = state.bound(col_n.number_input, "Prompts (n)", "n", step=1)
    seed = state.bound(col_seed.number_input, "Seed", "seed", step=1)
    if task is not None and (note := task.repeats_note(int(n))):
        st.caption(note)
    cost_note(loaded, int(n), "eval", f"{int(n)} prompts")
    col_run, col_clear, _ = st.columns([1, 1, 6])
    run_clicked = col_run.button("Evaluate", type="primary", disabled=task is None, key="eval_run")
    if col_clear.button("Clear results", disabled=not runs, key="eval_clear"):
        runs.clear()
        st.rerun()

if run_clicked and task is not None:
    with guarded("evaluation"), run_progress(f"Evaluating {task.name}, {shots}-shot", "prompts",
                                                       speed=(loaded, "eval", int(n))) as progress:
        result = evaluate_task(loaded, task, int(shots), int(n), seed=int(seed), progress=progress,
                               cache=ResultsCache())
        runs.append({"summary": {**result.summary(), "seed": result.seed}, "records": result.records,
                     "key": Evaluation(task, int(shots), int(n), int(seed)).key(loaded)})
        del runs[:-MAX_RUNS]

if runs:
    latest = runs[-1]["summary"]
    st.subheader(f"{latest['task']}, {latest['shots']}-shot, {latest['n']} prompts, seed {latest['seed']} on "
                 f"{latest['model']}")
    current = Evaluation(task, int(shots), int(n), int(seed)).key(loaded) if task else None
    if current != runs[-1].get("key"):  # another model (weights or dtype), task or setting
        st.info("These are the numbers of the last run; the settings above have changed since: click Evaluate "
                "for them.", icon=":material/history:")
    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Accuracy", f"{latest['accuracy']:.1%}")
    m2.metric("Copy errors", f"{latest['copy_error_rate']:.1%}", help="a demonstration's answer repeated")
    m3.metric("Echoes", f"{latest['echo_rate']:.1%}", help="the query's own input repeated")
    m4.metric("Other errors", f"{latest['other_error_rate']:.1%}")
    m5.metric("n", latest["n"])
    figure = outcome_bar_chart([r["summary"] for r in runs])
    chart(figure, "eval_chart", "outcomes")
    shown = st.selectbox("Examples of run", range(len(runs)), index=len(runs) - 1,
                         format_func=lambda i: f"#{i + 1} {runs[i]['summary']['task']}, "
                                               f"{runs[i]['summary']['shots']}-shot")
    records = runs[shown]["records"].copy()
    records["demo_outputs"] = records["demo_outputs"].map(", ".join)
    table(records[TABLE_COLUMNS], f"evaluate-run{shown + 1}")
    summaries = pd.DataFrame([r["summary"] for r in runs])
    with st.expander("All runs"):
        table(summaries, "evaluate-runs")
    report_button("Evaluate", figures={"Outcomes per run": figure},
                  tables={"Runs": summaries, f"Run #{shown + 1} prompts": records[TABLE_COLUMNS]},
                  params={"model": loaded.describe()}, settings=("task", "shots", "n", "seed"))
