"""Copying neurons & pruning page: score the neurons behind copying bias (IG on the copying task), pick the top
k (or load a mask), and compare the pruned model live against the unpruned model and random masks of the same
size, paired by prompt, with intervals and a verdict sentence."""

import json
import time
from typing import Literal

import streamlit as st

from analysis.attribution.quadrature import cost_units
from analysis.cache import ResultsCache
from analysis.demo import PRUNE_CONTROLS, pruning_tasks
from analysis.device import dtype_name
from analysis.distributed import env_pool
from analysis.errors import PrunescopeError
from analysis.evaluation.paired import BASELINE
from analysis.models.builtin import model_label
from analysis.pruning import NeuronMask
from analysis.pruning.autok import K_GRID, SWEEP_N, default_dev_tasks
from analysis.pruning.copying import (
    mask_neurons_table,
    parse_layer_range,
)
from analysis.pruning.evaluate import PruneEval
from analysis.queries import KSweepQuery, ScoresQuery
from analysis.tasks import icl_task_names
from components import present, settings, speculation, state
from components.baselines_view import baselines_panel
from components.charts import neuron_heatmap
from components.charts_pruning import k_sweep_chart
from components.export import chart, report_button, table
from components.general_view import general_text_panel
from components.layout import wrapping_columns
from components.markup import echo
from components.masking import (
    link_mask,
    remember,
    scoring_settings,
    stored_copying_scores,
    top_k_mask,
    top_k_stability,
)
from components.pruning_view import mask_table, show_result
from components.results import keep, shown
from components.shot_sweep_view import shot_sweep_panel
from components.widgets import cost, guarded, measured_speed, require_model, run_progress

TARGET_LABELS = {"copy": "logit(copied) − logit(gold)", "copy-prob": "P(copied) — the paper's",
                 "echo": "logit(echo) − logit(gold): echo bias"}
PROMPT_LABELS = {"all": "all prompts", "copied": "only prompts the model copies (echo: echoes) on"}

st.header("Copying neurons & pruning")
present.toolbar()
present.caption("Copying score of a neuron: its Integrated-Gradients attribution on the copying task, to "
                "logit(copied demo answer) − logit(gold) or to the paper's probability of the copied answer, "
                "normalised per prompt and averaged (arXiv 2410.01288). Pruning zeroes the top-k neurons; each "
                "control zeroes as many random neurons in the same layers. Every comparison is paired by prompt, "
                "with 95 % intervals.")


def sweep_tasks(target: str) -> list[str]:
    """The k-sweep's dev tasks: a multiselect bound to the ``sweep_tasks`` setting, whose '' means the scoring
    target's default (echo-heavy tasks for the echo target), so a link carries only a choice that differs."""
    default = list(default_dev_tasks(target))
    options = icl_task_names()
    picked = [name for name in str(state.get("sweep_tasks")).split(",") if name]
    unknown = [name for name in picked if name not in options]
    if unknown:
        st.error(f"sweep_tasks: {', '.join(echo(u) for u in unknown[:3])} not among the built-in tasks; left out")
        picked = [name for name in picked if name in options]
        state.put("sweep_tasks", ",".join(picked))
    st.session_state["sweep_tasks_pick"] = picked or default

    def changed() -> None:
        chosen = st.session_state["sweep_tasks_pick"]
        state.put("sweep_tasks", "" if chosen == default else ",".join(chosen))

    return st.multiselect("Dev tasks (beside the copying task's held-out split)", options, key="sweep_tasks_pick",
                          on_change=changed, help="the tasks the sweep chooses k on; keep them apart from the tasks "
                          "you judge the pruning on. Default: " + ", ".join(default))


def k_options(limit: int, current: int) -> list[int]:
    """Slider stops: every k up to 10, then about 1-2-5 per decade up to the neuron count (and the current k)."""
    stops = {k for k in range(11)} | {m * 10**e for e in range(1, 7) for m in (1, 1.5, 2, 3, 5, 7)}
    return sorted({int(k) for k in stops if k <= limit} | {limit, current})


def valid_choice(name: Literal["score_target", "score_prompts"]) -> None:
    """A link may carry any text: reset a choice setting that is not one of its options, saying so."""
    options = settings.options(name)
    if state.get(name) not in options:
        st.error(f"{name.replace('score_', '')}={echo(state.get(name))} is not one of "
                 f"{', '.join(options)}; using {settings.default(name)}")
        state.put(name, settings.default(name))


loaded = require_model()
cache = ResultsCache()
counts = loaded.adapter.neuron_counts()
valid_choice("score_target")
valid_choice("score_prompts")

# The scoring and mask controls fill the first screen at 1024x768: once scores exist they fold into one
# expander, so the verdict and the headline numbers come right after the header (a slide has its buttons).
try:
    unscored = stored_copying_scores(loaded, **scoring_settings()) is None
except PrunescopeError:
    unscored = True  # said below, by the block that reads them
settings_open = unscored or bool(state.get("mask")) or st.session_state.get("mask_upload") is not None
with (st.container() if present.requested() else
      st.expander("Copying scores and mask", expanded=settings_open, icon=":material/tune:")):
    with present.controls("Copying scores"):
        c_n, c_shots, c_steps, c_target, c_prompts = wrapping_columns([1, 1, 1, 2, 2], "score_settings",
                                                                      [110, 110, 110, 190, 190])
        state.bound(c_n.number_input, "Scoring prompts", "score_n")
        state.bound(c_shots.number_input, "Scoring shots", "score_shots")
        state.bound(c_steps.number_input, "IG steps", "score_steps")
        state.bound(c_target.selectbox, "Target", "score_target", format_func=TARGET_LABELS.get)
        state.bound(c_prompts.selectbox, "Prompts", "score_prompts", format_func=PROMPT_LABELS.get)
        speculation.cost_note(loaded, cost_units(int(state.get("score_n")), int(state.get("score_steps")), "adaptive"),
                              "ig", f"{state.get('score_n')} prompts of IG (adaptive rule)")
        compute = st.button("Compute copying scores", type="primary", key="score_run")

    params = scoring_settings()
    scored = None
    with guarded("copying scores"):
        scored = stored_copying_scores(loaded, **params)  # cached (or shipped) results show at once
        if scored is None:  # a click starts a job; while it runs every rerun follows it (components/speculation.py)
            scores_query = ScoresQuery(tuple(sorted(params.items())))
            scored = speculation.follow(
                "job_copying_scores", scores_query.key(loaded), "IG of the copy target", lambda progress:
                scores_query.run(loaded, cache=cache, progress=progress, pool=env_pool(loaded.name)),
                start=compute, speed=(loaded, "ig", cost_units(params["n"], params["steps"], "adaptive")),
                total=params["n"])
    if scored is None:
        st.info("No copying scores for these settings yet: compute them (progress is shown; the result is cached on "
                "disk), or load a saved mask below.")
    elif not present.requested():
        st.caption(f"Scores from {scored.n_used} of {params['n']} prompts ({PROMPT_LABELS[params['prompts']]}); model "
                   f"in {dtype_name(loaded.dtype)}, IG accumulated in {dtype_name(scored.scores.dtype)}.")
    scores = None if scored is None else scored.scores

    with present.controls("Mask"):
        c_k, c_layer, c_range, c_file = wrapping_columns([2, 1, 1, 3], "mask_settings", [190, 120, 100, 250])
        per_layer = bool(state.bound(c_layer.checkbox, "top k per layer", "per_layer", disabled=scores is None))
        layer_text = state.bound(c_range.text_input, "Layers", "layers", placeholder=f"0-{loaded.n_layers - 1}",
                                 disabled=scores is None, help="select only in this range, e.g. 10-20; empty: all")
        layers = None
        with guarded("layer range"):
            try:
                layers = parse_layer_range(layer_text, loaded.n_layers)
            except PrunescopeError:
                state.reject("layers")  # said in one line; the link leaves it out
                raise
        span = loaded.n_layers if layers is None else layers[1] - layers[0] + 1
        limit = counts[0] if per_layer else span * counts[0]
        if state.get("k") > limit:  # e.g. a link made on a bigger model
            st.error(f"k={state.get('k')} is out of range: the model has {limit} neurons"
                     + (" per layer" if per_layer else "") + f"; using k={limit}")
            state.put("k", limit)
        k = state.bound(c_k.select_slider, "k (neurons to prune)", "k", options=k_options(limit, state.get("k")),
                        disabled=scores is None, help="the k highest copying scores; any k also works in the link")
        upload = c_file.file_uploader("…or load a mask (JSON)", type=["json"], key="mask_upload")

    mask, rejected = None, False
    with guarded("mask"):
        rejected = True  # until the mask is read and fits the model: a rejected mask is never applied
        candidate: NeuronMask | None
        if upload is not None:
            state.put("mask", "")  # not the previous upload's mask either
            candidate = NeuronMask.from_bytes(upload.getvalue(), f"mask file {upload.name}")
            candidate.validate(counts, f"mask file {upload.name}")
            state.put("mask", candidate.to_text())
        elif state.get("mask"):
            candidate = link_mask(loaded)
        else:
            candidate = top_k_mask(loaded, scores) if scores is not None else None
        mask, rejected = candidate, False
    remember(loaded, mask)
    if rejected:
        st.caption("No mask is active: the one above was rejected, so nothing is pruned.")
source = "uploaded" if upload is not None else "from the link" if state.get("mask") else "top-k copying"
if mask is not None and not present.requested():  # on a slide the Prune row names the mask
    st.caption(f"Mask: {len(mask)} neurons ({source}) in layers {sorted(mask.by_layer()) or '—'}")


def mask_details(mask: NeuronMask) -> None:
    """Below the results: the mask's stability, its neurons, the way back to top k, and its file."""
    stability = top_k_stability(loaded, scored, mask) if scored is not None and source == "top-k copying" else None
    if stability is not None:
        st.caption(f"Stability: {stability.describe(mask)}.", help="A mask that changes when a few scoring prompts "
                   "change is a sample, not a property of the model: score on more prompts, or keep the stable "
                   "neurons (`copying-neurons --stable 0.8`).")
    with st.expander(f"The {len(mask)} neurons of the mask"):
        table(mask_table(mask_neurons_table(mask, scores), stability), "mask-neurons")
    if state.get("mask") and st.button("Use the top-k copying mask instead", key="mask_clear"):
        state.put("mask", "")
        st.rerun()
    saved: NeuronMask = mask  # the file is made on a click (deferred): from a name that is never None
    st.download_button("Save mask (JSON)", lambda: json.dumps(saved.to_json(), indent=1),
                       f"mask-{loaded.name.replace('/', '_')}-{len(mask)}.json", "application/json",
                       key="mask_save", icon=":material/download:")


AUTO_RUN_PROMPTS = 400  # uncached prompts the page runs without a click (its defaults need 160 when not shipped)
SPECULATE_PROMPTS = 1200  # uncached pruned-run prompts computed in the background unasked (defaults: 640)


def prune_off() -> None:
    """After a Cancel of the pruned runs: the toggle goes off, so the next run does not start them again."""
    st.session_state["prune_on"] = False
    state.put("prune", 0)


def task_controls(offered: dict, toggle_row) -> tuple[list[str], int]:
    """The tasks and the number of random masks, folded into an expander (a button in the toolbar row on a
    slide), so the results start near the top at 1024x768."""
    with toggle_row.popover("Tasks", icon=":material/tune:") if toggle_row is not None else \
            st.expander("Tasks and random masks", icon=":material/checklist:"):
        c_tasks, c_ctrl = wrapping_columns([4, 1], "prune_task_row", [300, 150])
        chosen = state.bound(c_tasks.multiselect, "Tasks", "prune_tasks", widget_key="prune_tasks",
                             options=list(offered))
        controls = state.bound(c_ctrl.number_input, "Random masks", "prune_controls", widget_key="prune_controls",
                               min_value=PRUNE_CONTROLS, max_value=10,
                               help="random masks of the same size and layer distribution (at least 3, so their "
                                    "spread shows)")
    return chosen, int(controls)


def prune_toggle(toggle_row, presenting: bool, shots: int, n: int, seed: int) -> bool:
    """The Prune toggle on its own row (in a narrow column it read "P..."), bound to the ``prune`` setting; a
    change reruns the whole app so that the address bar and Copy link follow."""
    if "prune_on" not in st.session_state:  # a link may open the page with pruning on
        st.session_state["prune_on"] = bool(state.get("prune"))
    with toggle_row if toggle_row is not None else st.container(horizontal=True, vertical_alignment="center",
                                                                gap="medium"):
        pruned = st.toggle("Prune", key="prune_on", disabled=mask is None or not len(mask), width="content",
                           help="Zero the mask's neurons and re-evaluate the tasks")
        if presenting and mask is not None:
            st.caption(f"{len(mask)} neurons ({source}) · {shots}-shot · {n} prompts per task")
        else:
            st.caption(f"{shots}-shot, {n} prompts per task, seed {seed} (change them on Model & task)")
    if int(pruned) != state.get("prune"):
        state.put("prune", int(pruned))
        st.rerun()
    return bool(pruned)


def approved(needed: int, computing: bool, key: tuple) -> bool:
    """Whether to run ``needed`` uncached prompts now: at once when few or when the background job is already
    computing them, else after a click on the button this shows."""
    if needed <= AUTO_RUN_PROMPTS or computing or st.session_state.get("prune_approved") == key:
        return True
    st.info(f"This runs {needed:,} prompts that are not cached ({cost(loaded, needed)}) before showing numbers.",
            icon=":material/hourglass_top:")
    if st.button(f"Run {needed:,} prompts", key="prune_approve", type="primary"):
        st.session_state["prune_approved"] = key
        st.rerun()
    return False


def panels_and_report(result, pruned: bool, active: NeuronMask | None, tasks: list, controls: int) -> None:
    """The comparison, the pruned model's extra panels (general text, shot sweep, baselines) and the report."""
    shots, n, seed = int(state.get("shots")), int(state.get("n")), int(state.get("seed"))
    view = show_result(result, pruned, shots, len(mask) if mask is not None else 0)
    if pruned and active is not None and not present.requested():
        general = general_text_panel(loaded, active, controls)
        view["findings"] += [general] if general else []
        view["figures"].update(shot_sweep_panel(loaded, active, tasks, n, seed, controls))
        view["tables"].update(baselines_panel(loaded, active, result, tasks, shots, n, seed))
    st.session_state["prune_summary"] = view["tables"]["Summary"]
    report_button("Copying neurons and pruning", view["figures"], view["tables"],
                  {"model": loaded.describe(), "mask size": len(mask) if mask else 0,
                   "mask": mask.to_text() if mask else "", "random masks": controls}, view["findings"],
                  settings=("shots", "n", "seed", "k", "per_layer", "layers", "prune",
                            *(name for name in settings.TABLE if name.startswith("score_"))))


def live_panel() -> None:
    """The tasks, the Prune toggle and the comparison. A fragment (re-runs alone when the tasks or controls
    change: the model is never reloaded, cached evaluations return at once), except on a slide, where its
    controls join the page's toolbar row, which a fragment may not write to."""
    offered = pruning_tasks()
    presenting = present.requested()
    toggle_row = present.toolbar_row() if presenting else None
    chosen, controls = task_controls(offered, toggle_row)
    shots, n, seed = int(state.get("shots")), int(state.get("n")), int(state.get("seed"))
    pruned = prune_toggle(toggle_row, presenting, shots, n, seed)
    speculation_line = st.empty()
    tasks = [offered[name] for name in chosen]
    if not tasks:
        st.info("Pick at least one task.")
        return
    active = mask if mask is not None and len(mask) > 0 else None  # the mask when it prunes anything
    # the pruned runs (unpruned, pruned, then the controls: one job, one bar) go through a background job, the
    # same one that speculates them while Prune is off (components/speculation.py)
    request = PruneEval(active, tuple(tasks), (shots,), n, controls, seed)
    key = request.key(loaded)
    uncached = request.uncached(loaded, cache)
    missing = {True: uncached.get(BASELINE, 0),  # prompts to compute: unpruned (True), the rest (False)
               False: sum(count for name, count in uncached.items() if name != BASELINE)}

    def pruned_runs(restart: bool):
        # with $PRUNESCOPE_RAY set, the job's evaluations run on that cluster (the pool starts in the job's
        # thread, so the page never waits for it); the page only polls the job
        return speculation.ensure_job(key, lambda progress: request.run(
            loaded, cache, progress, env_pool(loaded.name)), request.work(loaded), restart=restart,
            cost_s=speculation.estimate_s(loaded, missing[True] + missing[False], "eval"))

    needed = missing[True] + (missing[False] if pruned else 0)
    background = speculation.session_job()  # already computing these prompts: follow it, no question asked
    if not approved(needed, background is not None and background.key == key and background.running, key):
        return
    result = None
    with guarded("evaluation"):
        started = time.monotonic()
        if pruned and active is not None:
            result = speculation.wait_for(pruned_runs(restart=True), "Evaluating", "prompts", on_cancel=prune_off)
        else:
            with run_progress("Evaluating", "prompts") as progress:
                result = PruneEval(None, tuple(tasks), (shots,), n, 0, seed).run(loaded, cache, progress)
        if result is not None and needed:
            measured_speed(loaded, needed, time.monotonic() - started)
    if result is None:
        return
    # the unpruned numbers are cached now: speculate the pruned ones (unless that is a big job nobody asked for)
    if not pruned and active is not None and missing[False] <= SPECULATE_PROMPTS:
        with speculation_line.container():
            speculation.status_line(pruned_runs(restart=False), "Pruned runs ready: switching Prune on shows them "
                                    "at once", "Pruned runs")
    panels_and_report(result, pruned, active, tasks, controls)


def guarded_panel() -> None:
    """A fragment's rerun bypasses the app's error boundary: it gets its own."""
    with guarded("the pruning panel"):
        live_panel()


(live_panel if present.requested() else st.fragment(guarded_panel))()
if mask is not None and not present.requested():
    mask_details(mask)

if scores is not None:
    with st.expander("Copying scores per neuron and the k-sweep", expanded=False):
        chart(neuron_heatmap(scores.tolist(), title="copying score per neuron"), "copy_heat", "copying-scores")
        st.caption("The k-sweep prunes the top k for each k and compares every k with the unpruned model on the "
                   "held-out copying split and the dev tasks below (2-shot, 80 prompts each, paired). A k is "
                   "chosen only when its accuracy gain is above zero beyond noise and copy errors do not rise.")
        dev_tasks = tuple(sweep_tasks(params["target"]))
        sweep_query = KSweepQuery(tuple(sorted(params.items())), per_layer, layers, dev_tasks)
        sweep_key = sweep_query.key(loaded)
        sweep_work = len({0, *K_GRID}) * (1 + len(dev_tasks)) * SWEEP_N  # evaluated prompts, at most
        speculation.cost_note(loaded, sweep_work, "eval", f"{sweep_work:,} prompts")
        sweep_clicked = st.button("Run k-sweep", key="sweep_run")
        sweep_scores = scores  # the job runs later, on a worker thread: from a name that is never None
        with guarded("k-sweep"):
            swept = speculation.follow("job_k_sweep", sweep_key, "k-sweep", lambda progress: sweep_query.run(
                loaded, sweep_scores, cache=cache, progress=progress, pool=env_pool(loaded.name)),
                start=sweep_clicked, speed=(loaded, "eval", sweep_work))
            if swept is not None:
                keep("sweep", sweep_key, swept, f"{'top k per layer' if per_layer else 'top k overall'}, layers "
                                                f"{'{}-{}'.format(*layers) if layers else 'all'}, "
                                                f"{model_label(loaded.name)}")
        sweep = shown("sweep", sweep_key, "k-sweep", "run it again")  # another model, scoring or selection: not
        if sweep is not None:  # this curve
            (st.success if sweep.chosen else st.warning)(sweep.message)
            chart(k_sweep_chart(sweep), "sweep_chart", "k-sweep")
            table(sweep.table, "k-sweep")
            if sweep.chosen and st.button(f"Use k={sweep.chosen}", key="sweep_use"):
                state.put("k", int(sweep.chosen))
                st.rerun()
