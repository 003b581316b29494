"""Neuron attribution page: all-layer neuron Integrated Gradients for a target over a task's prompts."""

import streamlit as st

from analysis.attribution.neuron_ig import COMPLETENESS_WARN, completeness_summary
from analysis.attribution.quadrature import cost_units
from analysis.attribution.runs import Attribution
from analysis.attribution.summary import top_neurons
from analysis.cache import ResultsCache
from analysis.device import dtype_name
from analysis.distributed import env_pool
from analysis.errors import PrunescopeError
from analysis.models.builtin import model_label
from analysis.pruning.copying import parse_layer_range
from analysis.queries import CopyProblemQuery
from components import answer_view, neuron_view, present, results, speculation, state
from components.charts import HEATMAP_SCALES, layer_totals_bar, neuron_heatmap, visible_token
from components.export import chart, report_button, table
from components.layout import wrapping_columns
from components.widgets import guarded, memo, require_model, task_picker

FULL_RESOLUTION_LAYERS = 8  # a zoom this narrow shows every neuron, not the strongest of each bin

st.header("Neuron attribution")
present.toolbar()
present.caption("Integrated Gradients of a target at the answer position with respect to every layer's neurons "
                "(baseline zero); results are cached on disk, so a revisit is instant.")

loaded = require_model()

with present.controls():
    col_task, col_target = wrapping_columns([3, 1], "ig_task", [300, 160])
    with col_task:
        task = task_picker()
    target = state.bound(col_target.selectbox, "Target", "ig_target", widget_key="ig_target",
                         help="gold: log p(gold); copy: logit(copied) - logit(gold); confidence: top logit")
    col_n, col_shots, col_steps, col_rule = wrapping_columns(4, "ig_settings", 150)
    n = state.bound(col_n.number_input, "Prompts", "ig_n", widget_key="ig_n")
    shots = state.bound(col_shots.number_input, "Shots", "shots", min_value=1, step=1)
    steps = state.bound(col_steps.number_input, "Steps", "ig_steps", widget_key="ig_steps")
    rule = state.bound(col_rule.selectbox, "Quadrature", "ig_rule", widget_key="ig_rule")
    what = f"{int(n)} prompts x " + ("the adaptive rule" if rule == "adaptive" else f"{int(steps)} steps")
    speculation.cost_note(loaded, cost_units(int(n), int(steps), rule), "ig", what)
    problem = None
    if task is not None and target in ("copy", "copy-prob"):  # said before a click, not after (tokenizer only)
        picked = task  # a Task here: the lambda reads this name (mypy keeps no narrowing of a global in a lambda)
        with guarded("prompts"):
            problem_query = CopyProblemQuery(picked, int(n), int(shots), int(state.get("seed")))
            problem = memo(problem_query.key(loaded), lambda: problem_query.run(loaded))
        if problem:
            st.warning(f"{problem}; pick another target or task.", icon=":material/block:")
    clicked = st.button("Attribute", type="primary", disabled=task is None or bool(problem), key="ig_run")

key = None
if task is not None:
    request = Attribution(task, target, int(n), int(shots), int(state.get("seed")), int(steps), rule)
    key = request.key(loaded)
    label = f"{task.name}, {shots}-shot, {model_label(loaded.name)}"

    def with_top(result):
        if result is None:
            return None
        top = top_neurons(loaded, result)
        return {"result": result, "top": top.assign(fires_most_on=top.fires_most_on.map(visible_token)),
                "label": label}

    with guarded("attribution"):  # a cached result (on disk or shipped) is shown at once, read once per session
        found = memo(key, lambda: with_top(request.stored(loaded)))
        if found is None:  # a click starts a job; while it runs every rerun follows it
            result = speculation.follow("job_attribution", key, f"IG {target} on {task.name}", lambda progress:
                                        request.run(loaded, ResultsCache(), progress, env_pool(loaded.name)),
                                        start=clicked, speed=(loaded, "ig", cost_units(int(n), int(steps), rule)),
                                        total=request.work(loaded))
            if result is not None:
                found = memo(key, lambda: with_top(result))
        if found is not None:
            results.keep("ig_result", key, found, label)

shown = results.shown("ig_result", key, "attribution", "click Attribute")  # only under its own settings
if shown:
    result = shown["result"]
    evaluations = result.meta.get("evaluations_per_layer")
    rule = (f"the adaptive rule ({evaluations:.1f} evaluations per layer)" if result.quadrature == "adaptive"
            and evaluations else f"{result.steps} {result.quadrature} steps")
    st.subheader(f"{shown['label']}: {result.target} target, {len(result.inputs)} prompts, {rule}")
    st.caption(f"Model run in {dtype_name(loaded.dtype)} on {loaded.placement}; attributions accumulated in "
               f"{dtype_name(result.per_prompt.dtype)}.")
    with present.controls("Colour scale"):
        scale = state.bound(st.radio, "Colour scale", "ig_scale", widget_key="ig_scale",
                            format_func=HEATMAP_SCALES.get, horizontal=True,
                            help="one strong neuron can wash a linear map out; the hover shows raw scores")
        zoom_text = state.bound(st.text_input, "Zoom to layers", "ig_zoom", placeholder=f"0-{loaded.n_layers - 1}",
                                help=f"a layer range, e.g. 3-5; up to {FULL_RESOLUTION_LAYERS} layers show every "
                                     "neuron (the full map folds wide layers)")
    zoom = None
    with guarded("zoom"):
        try:
            zoom = parse_layer_range(zoom_text, loaded.n_layers)
        except PrunescopeError:
            state.reject("ig_zoom")
            raise
    full = zoom is not None and zoom[1] - zoom[0] < FULL_RESOLUTION_LAYERS
    neuron = neuron_view.picked_neuron(loaded, result)
    heat = neuron_heatmap(result.scores.tolist(), title="mean attribution per neuron", scale=scale, layers=zoom,
                          max_columns=result.scores.shape[1] if full else 256, pickable=not present.requested(),
                          picked=neuron)
    totals = layer_totals_bar(result.scores.tolist())
    neuron = neuron_view.take_pick(chart(heat, "ig_heat", "neuron-attribution", pickable=not present.requested())
                                   ) or neuron
    chart(totals, "ig_layers", "attribution-per-layer")
    st.caption("Per layer: signed sum (bars) and sum of magnitudes (line). Where a normalisation follows the MLP "
               "(Gemma 3) the signed sum is near zero by construction; read the line.")
    error = completeness_summary(result)  # None for a result cached before the error was stored
    if error is not None:
        note = (f"Completeness error (a layer's attributions summed, minus F(a) − F(layer zeroed)): median "
                f"{error['median']:.1%} of |F(a) − F(layer zeroed)|; worst layer {error['worst_layer']} at "
                f"{error['worst']:.1%}.")
        if error["median"] > COMPLETENESS_WARN:
            st.warning(f"{note} Above {COMPLETENESS_WARN:.0%}: use the adaptive quadrature, which "
                       "checks itself interval by interval (fixed rules miss F's jump near alpha = 0, e.g. at "
                       "SmolLM2's layer 0 or after Gemma 3's post-MLP norm).")
        else:
            st.caption(note)
    st.caption("Top neurons by mean |attribution|, with the prompt token where each fires most")
    table(shown["top"], "top-neurons")
    neuron_figures = neuron_view.show(loaded, result, key or (), neuron)
    neuron_figures |= answer_view.show(loaded, result, key or (), task.delimiter if task is not None else "\n")
    report_button("Neuron attribution", {"Mean attribution per neuron": heat, "Total per layer": totals,
                                         **neuron_figures},
                  {"Top neurons": shown["top"]},
                  {"model": loaded.describe(), "target": result.target, "prompts": len(result.inputs),
                   "steps": result.steps, "quadrature": result.quadrature},
                  settings=("task", "shots", "seed", "ig_neuron"))
