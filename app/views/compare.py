"""Compare page: two models, or two neuron masks on the picked model, on the same task and prompts."""

import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from analysis.cache import ResultsCache, task_fingerprint
from analysis.errors import PrunescopeError
from analysis.evaluation import evaluate_task
from analysis.evaluation.icl import is_evaluated
from analysis.evaluation.paired import compare
from analysis.evaluation.verdicts import verdict
from analysis.models import model_choices, model_label
from analysis.models.toy import trained_on
from analysis.pruning import NeuronMask
from analysis.pruning.copying import COPYING_TASK, random_mask_like
from analysis.queries import CompareQuery
from components import present, state
from components.charts import outcome_bar_chart
from components.export import chart, report_button, table
from components.layout import wrapping_columns
from components.masking import active_mask
from components.results import keep, shown
from components.settings import CMP_MASKS
from components.widgets import (
    cached_model,
    cost_note,
    guarded,
    one_line,
    require_model,
    run_progress,
    task_picker,
)

st.header("Compare")
present.toolbar()
present.caption("The same prompts (task, shots, n, seed) through two models, or through the picked model under two "
                "neuron masks; the table lists the prompts whose answers differ.")

loaded = require_model()
Pick = tuple[str, str, UploadedFile | None]  # ("model", name, None) or ("mask", choice, its uploaded file)
FROM_ACTIVE = CMP_MASKS[1:3]  # the options built from the active mask (the link's, the pruning page's, top k)
active, mask_problem = None, ""
try:
    active = active_mask(loaded)[0]
except PrunescopeError as exc:  # e.g. a link's mask=1.2x: said once below, where a mask choice needs it
    mask_problem = one_line(exc)

with present.controls():
    mode = state.bound(st.radio, "Compare", "cmp_mode", widget_key="cmp_mode", horizontal=True)
    col_task, col_shots, col_n = wrapping_columns([3, 1, 1], "cmp_task", [300, 140, 140])
    with col_task:
        task = task_picker()
    shots = state.bound(col_shots.number_input, "Shots", "shots", step=1)
    n = state.bound(col_n.number_input, "Prompts (n)", "n", step=1)
    col_a, col_b = st.columns(2)
    if mode == "two models":
        other = state.bound(col_b.selectbox, "Model B", "cmp_model", widget_key="cmp_model",
                            options=[m for m in model_choices() if m != loaded.name], format_func=model_label)
        col_a.caption(f"Model A: {model_label(loaded.name)} (the sidebar's model)")
        picks: dict[str, Pick] = {"A": ("model", loaded.name, None), "B": ("model", other, None)}
    else:
        picks = {}
        for side, col in (("A", col_a), ("B", col_b)):
            choice = state.bound(col.selectbox, f"Mask {side}", f"cmp_mask_{side}", widget_key=f"cmp_mask_{side}")
            upload = col.file_uploader(f"Mask {side} file", type=["json"], key=f"cmp_up_{side}") \
                if choice == "upload" else None
            picks[side] = ("mask", choice, upload)
    blocked = bool(mask_problem) and any(pick[0] == "mask" and pick[1] in FROM_ACTIVE for pick in picks.values())
    if blocked:
        st.error(mask_problem)
    cost_note(loaded, 2 * int(n), "eval", f"2 x {int(n)} prompts")
    clicked = st.button("Compare", type="primary", disabled=task is None or blocked, key="cmp_run")


def resolve_mask(choice: str, upload) -> NeuronMask | None:
    if choice == "no mask":
        return None
    if choice == "upload":
        if upload is None:
            raise PrunescopeError("upload a mask file (JSON) first")
        return NeuronMask.from_bytes(upload.getvalue(), f"mask file {upload.name}")
    mask, source = active_mask(loaded)
    if mask is None:
        raise PrunescopeError(source)
    return mask if choice == "active mask" else random_mask_like(mask, loaded.adapter.neuron_counts(), 0)


def side_names(side: str, model_name: str, pick: Pick, mask: NeuronMask | None) -> tuple[str, str]:
    """(the run's label, the side's name in the sentence): 'B: active mask (20 neurons)' and 'active mask, 20
    neurons' for a mask; 'B: toy-mamba' and 'toy-mamba' for a model."""
    if pick[0] == "model":
        return f"{side}: {model_name}", model_name
    what = "uploaded mask" if pick[1] == "upload" else pick[1]
    if mask is None:
        return f"{side}: {what}", what
    return f"{side}: {what} ({len(mask)} neurons)", f"{what}, {len(mask)} neurons"


def paired_sentence(a, b, name_a: str, name_b: str) -> str:
    """B against A on the same prompts: the paired changes with intervals, as one generated sentence."""
    frames = [r.records.assign(task=r.task, shots=r.shots, condition=name) for name, r in (("A", a), ("B", b))]
    [cell] = [c for c in compare(pd.concat(frames), treatment="B", baseline="A") if c.task != "average"]
    sentence = verdict(cell.vs_baseline, f"A ({name_a})", subject="B")
    return f"B ({name_b}) against" + sentence.removeprefix("Against")


def warnings(task, models: list[str], masked: bool) -> list[str]:
    """What makes this comparison misleading: a toy evaluated on a task it was trained on, or the copying mask
    evaluated on the task it was scored on."""
    notes = [f"{name} was trained on {task.name} prompts (its training corpus, analysis/models/toy.py): its "
             "accuracy here measures memorisation, not in-context learning." for name in dict.fromkeys(models)
             if trained_on(name, task.name)]
    if masked and task.name == COPYING_TASK:
        notes.append(f"The copying mask was scored on {COPYING_TASK} prompts (its fit split), so these prompts "
                     "overlap the ones that chose the neurons; judge the mask on the held-out split "
                     f"({COPYING_TASK}[heldout], on the pruning page) or on another task.")
    return notes


key = None
if task is not None:
    key = CompareQuery(task_fingerprint(task), int(shots), int(n), int(state.get("seed")),
                       tuple((pick[1], pick[2].file_id if pick[2] else None) for pick in picks.values()),
                       tuple(sorted(active.neurons)) if active else ()).key(loaded)
    shown_name = model_label(loaded.name)
    label = (f"{task.name}, {shots}-shot, {n} prompts, seed {state.get('seed')}: "
             + (f"{shown_name} vs {picks['B'][1]}" if mode == "two models" else f"two masks on {shown_name}"))



def evaluate_picks(stored_only: bool) -> dict | None:
    """Both sides on the same prompts: evaluated (a click), or with ``stored_only`` read when both are stored
    (on disk, or shipped for the page's defaults) and need no second model, else None."""
    assert task is not None
    runs, names, models, cache = {}, {}, {}, ResultsCache()
    seed = int(state.get("seed"))
    for side, pick in picks.items():
        model, mask = loaded, None
        if pick[0] == "model":
            if stored_only:
                return None
            model = cached_model(pick[1], "auto", "auto")
        else:
            try:
                mask = resolve_mask(pick[1], pick[2])
            except PrunescopeError:
                if stored_only:  # said when Compare is clicked
                    return None
                raise
        if stored_only and not is_evaluated(model, task, int(shots), int(n), seed, mask, cache):
            return None
        models[side] = model
        run_label, names[side] = side_names(side, model.name, pick, mask)
        if stored_only:
            runs[run_label] = evaluate_task(model, task, int(shots), int(n), seed=seed, mask=mask, cache=cache)
            continue
        with run_progress(f"Evaluating {side}", "prompts") as progress:
            runs[run_label] = evaluate_task(model, task, int(shots), int(n), seed=seed, mask=mask,
                                            progress=progress, cache=cache)
    masked = any(pick[0] == "mask" and pick[1] != "no mask" for pick in picks.values())
    return {"runs": runs, "names": names, "warnings": warnings(task, [m.name for m in models.values()], masked)}


if task is not None and key is not None:
    with guarded("comparison"):
        # a click evaluates; stored results for these settings show at once (also on a slide, where Compare
        # sits behind the Controls button)
        fresh = st.session_state.get("cmp_runs", {}).get("key") != key
        result = evaluate_picks(False) if clicked else evaluate_picks(True) if fresh and not blocked else None
        if result is not None:
            keep("cmp_runs", key, result, label)

kept = shown("cmp_runs", key, "comparison", "click Compare")
if kept:
    runs = kept["runs"]
    st.subheader(st.session_state["cmp_runs"]["label"])
    for note in kept["warnings"]:
        st.warning(note, icon=":material/warning:")
    summaries = [{**r.summary(), "label": label} for label, r in runs.items()]
    (label_a, a), (label_b, b) = runs.items()
    sentence = paired_sentence(a, b, kept["names"]["A"], kept["names"]["B"])
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
