"""Copying neurons & pruning page: score the neurons behind copying bias (IG of the copy target on the copying
task), pick the top k (or load a mask), and compare the pruned model live against the unpruned model and a
same-size random mask on the chosen tasks."""

import json

import streamlit as st

from analysis.cache import ResultsCache
from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, pruning_tasks
from analysis.errors import PrunescopeError
from analysis.pruning import NeuronMask
from analysis.pruning.copying import K_GRID, copying_scores, k_sweep, select_top_k
from analysis.pruning.evaluate import prune_eval
from components import present, state
from components.charts import neuron_heatmap
from components.charts_pruning import k_sweep_chart, pruning_bars
from components.export import chart, report_button, table
from components.masking import remember, stored_copying_scores
from components.widgets import guarded, one_line, require_model, run_progress

st.header("Copying neurons & pruning")
st.caption("Copying score of a neuron: its Integrated-Gradients attribution to logit(copied demo answer) − "
           "logit(gold) on the copying task, normalised per prompt and averaged (arXiv 2410.01288). Pruning zeroes "
           "the top-k neurons; the control zeroes as many random neurons in the same layers.")

def k_options(limit: int, current: int) -> list[int]:
    """Slider stops: every k up to 10, then about 1-2-5 per decade up to the neuron count (and the current k)."""
    stops = {k for k in range(11)} | {m * 10**e for e in range(1, 7) for m in (1, 1.5, 2, 3, 5, 7)}
    return sorted({int(k) for k in stops if k <= limit} | {limit, current})


def per_layer_chosen() -> bool:
    return bool(st.session_state.get("per_layer"))


loaded = require_model()
cache = ResultsCache()
counts = loaded.adapter.neuron_counts()

with present.controls("Copying scores"):
    c_n, c_shots, c_steps, c_run = st.columns([1, 1, 1, 2])
    score_n = state.bound(c_n.number_input, "Scoring prompts", "score_n", min_value=1, max_value=256)
    score_shots = state.bound(c_shots.number_input, "Scoring shots", "score_shots", min_value=1, max_value=8)
    score_steps = state.bound(c_steps.number_input, "IG steps", "score_steps", min_value=1, max_value=128)
    compute = c_run.button("Compute copying scores", type="primary", key="score_run")

params = dict(n=int(score_n), shots=int(score_shots), steps=int(score_steps))
scored = None
with guarded("copying scores"):
    scored = stored_copying_scores(loaded, **params)  # cached (or shipped) results show at once
    if scored is None and compute:
        with run_progress("IG of the copy target", "prompts") as progress:
            scored = copying_scores(loaded, **params, cache=cache, progress=progress)
if scored is None:
    st.info("No copying scores for these settings yet: compute them (progress is shown; the result is cached on "
            "disk), or load a saved mask below.")
scores = None if scored is None else scored[0]

with present.controls("Mask"):
    c_k, c_layer, c_file = st.columns([2, 1, 3])
    limit = counts[0] if per_layer_chosen() else sum(counts)
    if state.get("k") > limit:  # e.g. a link made on a bigger model
        st.error(f"k={state.get('k')} is out of range: the model has {limit} neurons"
                 + (" per layer" if per_layer_chosen() else "") + f"; using k={limit}")
        state.put("k", limit)
    k = state.bound(c_k.select_slider, "k (neurons to prune)", "k", options=k_options(limit, state.get("k")),
                    disabled=scores is None, help="the k highest copying scores; any k also works in the link")
    per_layer = c_layer.checkbox("top k per layer", key="per_layer", disabled=scores is None)
    upload = c_file.file_uploader("…or load a mask (JSON)", type=["json"], key="mask_upload")

mask = None
with guarded("mask"):
    if upload is not None:
        mask = NeuronMask.from_bytes(upload.getvalue(), f"mask file {upload.name}")
        state.put("mask", mask.to_text())
    elif state.get("mask"):
        mask = NeuronMask.from_text(state.get("mask"), "mask in the link")
    elif scores is not None:
        mask = select_top_k(scores, int(k), per_layer)
    if mask is not None:
        mask.validate(counts)
remember(loaded, mask)
if mask is not None:
    source = "uploaded" if upload is not None else "from the link" if state.get("mask") else "top-k copying"
    st.caption(f"Mask: {len(mask)} neurons ({source}) in layers {sorted(mask.by_layer()) or '—'}")
    if state.get("mask") and st.button("Use the top-k copying mask instead", key="mask_clear"):
        state.put("mask", "")
        st.rerun()
    st.download_button("Save mask (JSON)", lambda: json.dumps(mask.to_json(), indent=1),
                       f"mask-{loaded.name.replace('/', '_')}-{len(mask)}.json", "application/json",
                       key="mask_save", icon=":material/download:")


@st.fragment
def live_panel() -> None:
    """Re-runs alone when the toggle, tasks or controls change: the model is never reloaded, cached
    evaluations return at once."""
    offered = pruning_tasks()
    c_tasks, c_ctrl, c_on = st.columns([4, 1, 1])
    chosen = c_tasks.multiselect("Tasks", list(offered), default=list(PRUNE_TASKS), key="prune_tasks")
    controls = c_ctrl.number_input("Random seeds", 0, 5, PRUNE_CONTROLS, key="prune_controls")
    pruned = c_on.toggle("Prune", key="prune_on", disabled=mask is None,
                         help="Zero the mask's neurons and re-evaluate the tasks")
    shots, n = int(state.get("shots")), int(state.get("n"))
    st.caption(f"{shots}-shot, {n} prompts per task, seed {state.get('seed')} (change them on Model & task)")
    tasks = [offered[name] for name in chosen]
    if not tasks:
        st.info("Pick at least one task.")
        return
    result = None
    with guarded("evaluation"):
        with run_progress("Evaluating", "evaluations") as progress:
            if pruned and mask is not None:
                result = prune_eval(loaded, mask, tasks, shots=[shots], n=n, random_controls=0,
                                    seed=int(state.get("seed")), cache=cache, progress=progress)
                if controls:  # the pruned numbers are already computed (and cached); now the controls
                    result = prune_eval(loaded, mask, tasks, shots=[shots], n=n, random_controls=int(controls),
                                        seed=int(state.get("seed")), cache=cache, progress=progress)
            else:
                result = prune_eval(loaded, None, tasks, shots=[shots], n=n, seed=int(state.get("seed")),
                                    cache=cache, progress=progress)
    if result is None:
        return
    summary = result.summary()
    if not pruned:
        summary = summary.dropna(axis=1, how="all")
    st.session_state["prune_summary"] = summary
    average = summary[summary.task == "average"].iloc[0]
    m = st.columns(4)
    m[0].metric("Accuracy, unpruned", f"{average.baseline_accuracy:.1%}")
    m[1].metric("Copy errors, unpruned", f"{average.baseline_copy_error_rate:.1%}")
    if pruned:
        m[2].metric("Accuracy, pruned", f"{average.pruned_accuracy:.1%}",
                    f"{average.pruned_accuracy - average.baseline_accuracy:+.1%}")
        m[3].metric("Copy errors, pruned", f"{average.pruned_copy_error_rate:.1%}",
                    f"{average.pruned_copy_error_rate - average.baseline_copy_error_rate:+.1%}", delta_color="inverse")
    figure = pruning_bars(summary, f"{shots}-shot, {len(mask) if pruned else 0} neurons pruned")
    chart(figure, "prune_bars", "pruning-comparison")
    table(summary, "pruning-summary")
    tables = {"Summary": summary}
    if pruned:
        st.subheader(f"Flipped examples ({len(result.flipped)})")
        table(result.flipped, "flipped-examples")
        tables["Flipped examples"] = result.flipped
    report_button("Copying neurons and pruning", figures={"Pruning comparison": figure}, tables=tables,
                  params={"model": loaded.describe(), "mask size": len(mask) if mask else 0,
                          "mask": mask.to_text() if mask else ""})


live_panel()

if scores is not None:
    with st.expander("Copying scores per neuron and the k-sweep", expanded=False):
        chart(neuron_heatmap(scores.tolist(), title="copying score per neuron"), "copy_heat", "copying-scores")
        if st.button("Run k-sweep (held-out copying task + 3 ICL dev tasks, 2-shot, 40 prompts)", key="sweep_run"):
            with guarded("k-sweep"), run_progress("k-sweep", "evaluations") as progress:
                st.session_state["sweep"] = k_sweep(loaded, scores, K_GRID, cache=cache, progress=progress)
        sweep = st.session_state.get("sweep")
        if sweep is not None:
            chart(k_sweep_chart(*sweep), "sweep_chart", "k-sweep")
            table(sweep[0], "k-sweep")
