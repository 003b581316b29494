"""Evaluate page: k-shot ICL accuracy, copy-error and other-error rates of the picked model on a task."""

import streamlit as st

from analysis.errors import PrunescopeError
from analysis.evaluation import evaluate_task
from components.charts import outcome_bar_chart
from components.widgets import one_line, require_model, run_progress, task_picker

RUNS_KEY = "eval_runs"  # list of {"summary": dict, "records": DataFrame}, oldest first
MAX_RUNS = 12
TABLE_COLUMNS = ["query", "gold", "prediction", "outcome", "demo_outputs", "prompt"]

st.header("Evaluate")
st.caption("Greedy k-shot answers compared with the gold answer; a wrong answer equal to a demonstration's "
           "output counts as a copy error.")

loaded = require_model(' to evaluate')

runs = st.session_state.setdefault(RUNS_KEY, [])
col_task, col_shots, col_n, col_seed = st.columns([3, 1, 1, 1])
with col_task:
    task = task_picker("eval_task")
shots = col_shots.number_input("Shots", min_value=0, max_value=8, value=4, step=1, key="eval_shots")
n = col_n.number_input("Prompts (n)", min_value=1, max_value=500, value=40, step=1, key="eval_n")
seed = col_seed.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="eval_seed")

col_run, col_clear, _ = st.columns([1, 1, 6])
run_clicked = col_run.button("Evaluate", type="primary", disabled=task is None, key="eval_run")
if col_clear.button("Clear results", disabled=not runs, key="eval_clear"):
    runs.clear()
    st.rerun()

if run_clicked and task is not None:
    try:
        with run_progress(f"Evaluating {task.name}, {shots}-shot") as progress:
            result = evaluate_task(loaded, task, int(shots), int(n), seed=int(seed), progress=progress)
    except PrunescopeError as exc:
        st.error(one_line(exc))
    except Exception as exc:  # noqa: BLE001 - keep the page and earlier results alive
        st.error(f"evaluation failed: {type(exc).__name__}: {one_line(exc)}")
    else:
        runs.append({"summary": {**result.summary(), "seed": result.seed}, "records": result.records})
        del runs[:-MAX_RUNS]

if runs:
    latest = runs[-1]["summary"]
    st.subheader(f"{latest['task']}, {latest['shots']}-shot on {latest['model']}")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Accuracy", f"{latest['accuracy']:.1%}")
    m2.metric("Copy-error rate", f"{latest['copy_error_rate']:.1%}")
    m3.metric("Other-error rate", f"{latest['other_error_rate']:.1%}")
    m4.metric("n", latest["n"])
    st.plotly_chart(outcome_bar_chart([r["summary"] for r in runs]), key="eval_chart")
    shown = st.selectbox("Examples of run", range(len(runs)), index=len(runs) - 1,
                         format_func=lambda i: f"#{i + 1} {runs[i]['summary']['task']}, "
                                               f"{runs[i]['summary']['shots']}-shot")
    records = runs[shown]["records"].copy()
    records["demo_outputs"] = records["demo_outputs"].map(", ".join)
    st.dataframe(records[TABLE_COLUMNS], hide_index=True)
