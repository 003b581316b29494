"""Compare page: two models, or two neuron masks on the picked model, on the same task and prompts."""

import pandas as pd
import streamlit as st

from analysis.cache import ResultsCache
from analysis.evaluation import evaluate_task
from analysis.evaluation.paired import compare, verdict
from analysis.models import model_choices, model_label
from analysis.pruning import NeuronMask
from analysis.pruning.copying import random_mask_like
from components import present, state
from components.charts import outcome_bar_chart
from components.export import chart, report_button, table
from components.masking import active_mask
from components.widgets import cached_model, guarded, require_model, run_progress, task_picker

st.header("Compare")
st.caption("The same prompts (task, shots, n, seed) through two models, or through the picked model under two "
           "neuron masks; the table lists the prompts whose answers differ.")

loaded = require_model()
MASK_OPTIONS = ("no mask", "active mask", "random mask of the same size", "upload")

with present.controls():
    mode = st.radio("Compare", ["two masks", "two models"], horizontal=True, key="cmp_mode")
    col_task, col_shots, col_n = st.columns([3, 1, 1])
    with col_task:
        task = task_picker()
    shots = state.bound(col_shots.number_input, "Shots", "shots", min_value=0, max_value=8, step=1)
    n = state.bound(col_n.number_input, "Prompts (n)", "n", min_value=1, max_value=500, step=1)
    col_a, col_b = st.columns(2)
    if mode == "two models":
        other = col_b.selectbox("Model B", [m for m in model_choices() if m != loaded.name], key="cmp_model",
                                format_func=model_label)
        col_a.caption(f"Model A: {model_label(loaded.name)} (the sidebar's model)")
        picks = {"A": ("model", loaded.name), "B": ("model", other)}
    else:
        picks = {}
        for side, col, default in (("A", col_a, 0), ("B", col_b, 1)):
            choice = col.selectbox(f"Mask {side}", MASK_OPTIONS, index=default, key=f"cmp_mask_{side}")
            upload = col.file_uploader(f"Mask {side} file", type=["json"], key=f"cmp_up_{side}") \
                if choice == "upload" else None
            picks[side] = ("mask", choice, upload)
    clicked = st.button("Compare", type="primary", disabled=task is None, key="cmp_run")


def resolve_mask(choice: str, upload) -> NeuronMask | None:
    if choice == "no mask":
        return None
    if choice == "upload":
        if upload is None:
            raise ValueError("upload a mask file (JSON) first")
        return NeuronMask.from_bytes(upload.getvalue(), f"mask file {upload.name}")
    mask, source = active_mask(loaded)
    if mask is None:
        raise ValueError(source)
    return mask if choice == "active mask" else random_mask_like(mask, loaded.adapter.neuron_counts(), 0)


def paired_sentence(a, b, label_a: str, label_b: str) -> str:
    """B against A on the same prompts: the paired changes with intervals, as one generated sentence."""
    frames = [r.records.assign(task=r.task, shots=r.shots, condition=name) for name, r in (("A", a), ("B", b))]
    [cell] = [c for c in compare(pd.concat(frames), treatment="B", baseline="A") if c.task != "average"]
    sentence = verdict(cell.vs_baseline, f"A ({label_a.removeprefix('A: ')})", subject="B")
    return f"B ({label_b.removeprefix('B: ')}) against" + sentence.removeprefix("Against")


if clicked and task is not None:
    runs = {}
    with guarded("comparison"):
        for side, pick in picks.items():
            model, mask = loaded, None
            if pick[0] == "model":
                model = cached_model(pick[1], "auto", "auto")
            else:
                mask = resolve_mask(pick[1], pick[2])
            label = f"{side}: {model.name}" + (f" ({pick[1]}, {len(mask or ())} neurons)" if pick[0] == "mask" else "")
            with run_progress(f"Evaluating {side}", "prompts") as progress:
                runs[label] = evaluate_task(model, task, int(shots), int(n), seed=int(state.get("seed")), mask=mask,
                                            progress=progress, cache=ResultsCache())
        st.session_state["cmp_runs"] = runs

runs = st.session_state.get("cmp_runs")
if runs:
    summaries = [{**r.summary(), "label": label} for label, r in runs.items()]
    (label_a, a), (label_b, b) = runs.items()
    sentence = paired_sentence(a, b, label_a, label_b)
    st.info(sentence, icon=":material/balance:")
    figure = outcome_bar_chart(summaries, f"{summaries[0]['task']}, {summaries[0]['shots']}-shot")
    chart(figure, "cmp_chart", "comparison")
    overview = pd.DataFrame(summaries)
    table(overview, "comparison-summary")
    differ = a.records["prediction"] != b.records["prediction"]
    diff = pd.DataFrame({"query": a.records["query"], "gold": a.records["gold"], "A": a.records["prediction"],
                         "B": b.records["prediction"], "A_outcome": a.records["outcome"],
                         "B_outcome": b.records["outcome"]})[differ]
    st.subheader(f"Answers that differ ({len(diff)} of {len(a.records)})")
    table(diff, "comparison-differences")
    report_button("Compare", {"Comparison": figure}, {"Summary": overview, "Differences": diff},
                  {"A": label_a, "B": label_b}, findings=[sentence], settings=("task", "shots", "n", "seed"))
