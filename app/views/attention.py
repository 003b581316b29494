"""Implicit attention page: one layer's (implicit) attention map for a text beside a transformer's real
attention, token relevance by every method, the perturbation-faithfulness table and the ground-truth table."""

from collections.abc import Sequence
from functools import partial

import pandas as pd
import streamlit as st

from analysis.attention import FORMS
from analysis.attribution.propagation import LRP_FAMILIES
from analysis.attribution.tokens import METHODS
from analysis.cache import ResultsCache
from analysis.device import dtype_name
from analysis.distributed import env_pool
from analysis.evaluation.ground_truth import GroundTruth
from analysis.families import family_of
from analysis.head_grid import without_sink
from analysis.models import model_choices, model_label
from analysis.models.toy import synthetic_note
from analysis.queries import FaithfulnessQuery, MapsQuery, RelevanceQuery
from analysis.tasks import builtin_tasks
from components import head_grid_view, present, settings, speculation, state
from components.charts import attention_heatmap, visible_token
from components.charts_pruning import relevance_chart
from components.export import chart, report_button, table
from components.ground_truth_view import ground_truth_view
from components.layout import wrapping_columns
from components.markup import echo
from components.results import keep, shown
from components.widgets import cached_model, guarded, memo, require_model

NO_COMPARISON = "none"
MAX_TEXT = 20_000  # characters a link may carry into the text box (the model's own length check comes later)

st.header("Implicit attention")
present.toolbar()
present.caption("Attention-free layers (Mamba, RWKV, Griffin, LFM2, xLSTM, the delta rule, lightning attention; "
                "hybrids too): the exact implicit attention computed from each layer's own "
                "parameters and activations (arXiv 2403.01590, 2405.16504); transformers: the real softmax attention.")

loaded = require_model()
others = [NO_COMPARISON, *[m for m in model_choices() if m != loaded.name]]
default_other = "toy-transformer" if loaded.family != "transformer" and "toy-transformer" in others else NO_COMPARISON


def choose(column, label: str, name: str, options: Sequence[str], default: str, known: set[str], **kwargs) -> str:
    """A selectbox bound to the setting ``name``, stored as '' while it shows this model's ``default`` (so a
    link stays short and the next model starts from its own default). A value offered for another model is
    quietly replaced by the default; one offered nowhere (a hostile or stale link) gets one red line."""
    value = state.get(name)
    if value and value not in options and value not in known:
        st.error(f"{name}={echo(value)} is not a choice here; using {default}")
    current = value if value in options else default
    widget_key = f"attn_{name}_{loaded.name}"  # per model: what another model showed never leaks in
    if st.session_state.get(widget_key) != current:
        st.session_state[widget_key] = current

    def store(picked: str) -> None:
        state.put(name, "" if picked == default else picked)

    chosen = column.selectbox(label, options, key=widget_key,
                              on_change=lambda: store(st.session_state[widget_key]), **kwargs)
    store(chosen)
    return chosen


if len(state.get("text")) > MAX_TEXT:
    st.error(f"the text has {len(state.get('text'))} characters; keeping the first {MAX_TEXT}")
    state.put("text", state.get("text")[:MAX_TEXT])
with present.controls():
    text = state.bound(st.text_area, "Text", "text", widget_key="attn_text", max_chars=settings.limit("text"))
    col_form, col_reduce, col_layer, col_other = wrapping_columns(4, "attn_controls", 180)
    form = family_of(loaded).check_form(choose(col_form, "Form", "form", FORMS[loaded.family],
                                               FORMS[loaded.family][0], {f for forms in FORMS.values() for f in forms}))
    reduce = state.bound(col_reduce.text_input, "Reduction", "reduce", widget_key="attn_reduce",
                         help="mean, absmean, or channels:IDX[,IDX...] (heads for transformers)")
    layer = state.bound(col_layer.number_input, "Layer", "layer", min_value=0, max_value=loaded.n_layers - 1,
                        step=1)
    other_spec = choose(col_other, "Beside it", "beside", others, default_other, {loaded.name},
                        format_func=model_label,
                        help="a second model's attention on the same text (its last layer by default)")
    col_sink, col_heads = wrapping_columns(2, "attn_toggles", 260)
    sink = bool(state.bound(col_sink.toggle, "Leave out the first token (attention sink)", "sink",
                            widget_key="attn_sink", help="most heads put their weight on the first token "
                            "(<bos>); without its row and column the colours show where the rest goes (maps and "
                            "token relevance)"))
    state.bound(col_heads.toggle, "Every head (layers x heads grid)", "heads", widget_key="attn_heads",
                help="every layer's heads, or channel groups, as thumbnails; click one to open it here")

if not text.strip():  # one line, instead of one per panel that needs the text
    st.error("the text is empty: type or paste a text to look at")
    st.stop()


def describe(*parts: str) -> str:
    """'softmax, mean' rather than 'softmax, softmax, mean': each part once, in order."""
    return ", ".join(dict.fromkeys(p for p in parts if p))


def map_figure(maps, title: str):
    """The map's heatmap, without the first token's row and column when the sink toggle is on."""
    if sink:
        return attention_heatmap(without_sink(maps.attn[0]).tolist(), maps.tokens[1:],
                                 f"{title}, first token {visible_token(maps.tokens[0])!r} left out")
    return attention_heatmap(maps.attn[0].tolist(), maps.tokens, title)


figures, tables = {}, {}
MAP_MIN_WIDTH = 420  # px: below this an attention map's token labels crowd its cells
# side by side on a wide screen, one above the other below about 1200 px (at 1024 px each map was 100 px wide)
left, right = wrapping_columns(2, "attn_pair", MAP_MIN_WIDTH, gap="medium") if other_spec != NO_COMPARISON \
    else (st.container(), None)
with left, guarded("attention map"):
    query = MapsQuery(text, form, reduce, (int(layer),))
    maps = memo(query.key(loaded), lambda: query.run(loaded))
    kind = maps.kinds[0]
    title = f"{model_label(loaded.name)} layer {int(layer)} ({describe(kind, maps.form, maps.reduce)})"
    figures[title] = map_figure(maps, title)
    chart(figures[title], "attn_chart", "attention")
    st.session_state["attn_last"] = {"layer": int(layer), "kind": kind, "tokens": maps.tokens}
if right is not None:
    with right, guarded(f"attention of {other_spec}"):
        other = cached_model(other_spec, "auto", "auto")
        other_layer = min(int(layer), other.n_layers - 1)
        other_query = MapsQuery(text, layers=(other_layer,))
        other_maps = memo(other_query.key(other), lambda: other_query.run(other))
        other_title = f"{other.name} layer {other_layer} ({describe(other_maps.kinds[0], other_maps.form)})"
        figures[other_title] = map_figure(other_maps, other_title)
        chart(figures[other_title], "attn_other_chart", "attention-comparison")
    st.caption("Each map has its own colour scale (0 to its largest weight, or ± its largest |value| for a signed "
               "map): compare where the weight goes, not the colours' strength across the two.")
figures |= head_grid_view.show(loaded, text, form, sink)
if toy_note := synthetic_note([loaded.name, *([other_spec] if right is not None else [])]):
    st.caption(toy_note)  # a slide shows it too: it says how to read the maps

st.subheader("Token relevance")
methods = [m for m in METHODS if m != "lrp" or loaded.family in LRP_FAMILIES]
state.put("rel_methods", ",".join(m for m in str(state.get("rel_methods")).split(",")  # another family's
                                  if m in methods or m not in METHODS))  # methods leave quietly, unknown ones say so
with present.controls("Relevance methods"):  # on a slide, behind a button like the page's other inputs
    chosen = state.bound(st.multiselect, "Methods", "rel_methods", widget_key="rel_methods", options=methods,
                         help="relevance of each token for the model's top next-token prediction")
if chosen:
    with guarded("token relevance"):
        queries = {m: RelevanceQuery(text, m, form) for m in chosen}
        results = {m: memo(q.key(loaded), partial(q.run, loaded)) for m, q in queries.items()}
        first = next(iter(results.values()))
        target = loaded.tokenizer.decode([first.target_id])
        rel_title = f"relevance for the predicted next token {target!r} ({dtype_name(loaded.dtype)} model)"
        skip = 1 if sink and len(first.tokens) > 1 else 0  # the sink toggle leaves the first token out here too
        figures[rel_title] = relevance_chart(first.tokens[skip:], {m: r.scores.tolist()[skip:]
                                                                   for m, r in results.items()},
                                             rel_title + (", first token left out" if skip else ""))
        chart(figures[rel_title], "rel_chart", "token-relevance")
        if "ig" in results and results["ig"].delta is not None:
            st.caption(f"ig completeness error (sum of scores − (F(x) − F(baseline))): {results['ig'].delta:.3g}")
        tables["Token relevance"] = pd.DataFrame({"token": [visible_token(t) for t in first.tokens],
                                                  **{m: r.scores.tolist()
                                                     for m, r in results.items()}})

st.subheader("Faithfulness")
st.caption("Tokens are replaced with padding most-relevant-first (lower area = more faithful) and least-relevant-"
           "first (higher = more faithful), tracking the probability of the model's prediction; random orders are "
           "the baseline.")
with present.controls("Faithfulness settings"):
    c_task, c_n, c_run = wrapping_columns([2, 1, 1], "faith_controls", [240, 140, 160])
    task_name = state.bound(c_task.selectbox, "Task", "faith_task", widget_key="faith_task",
                            options=list(builtin_tasks()))
    faith_n = state.bound(c_n.number_input, "Prompts", "faith_n", widget_key="faith_n")
    faith_work = int(faith_n) * (len(chosen) + 1)  # per prompt: each method, and the random orders
    speculation.cost_note(loaded, faith_work, "faith", f"{int(faith_n)} prompts x {len(chosen)} methods and random")
    run = c_run.button("Run faithfulness", key="faith_run", disabled=not chosen)
faith_query = FaithfulnessQuery(task_name, int(faith_n), tuple(chosen))
faith_key = faith_query.key(loaded)
with guarded("faithfulness test"):  # a click starts a job; while it runs every rerun follows it
    faith = speculation.follow("job_faithfulness", faith_key, "Faithfulness", lambda progress: faith_query.run(
        loaded, progress=progress, pool=env_pool(loaded.name)), start=run, total=int(faith_n),
        speed=(loaded, "faith", faith_work))
    if faith is not None:
        keep("faith_table", faith_key, faith, f"{task_name}, {int(faith_n)} prompts, {', '.join(chosen)}, "
                                              f"{model_label(loaded.name)}")
faith_table = shown("faith_table", faith_key, "faithfulness test", "run it again")
if faith_table is not None:
    table(faith_table, "faithfulness")
    tables["Faithfulness"] = faith_table
st.subheader("Ground truth")
st.caption("Synthetic key-value recall, copying and induction prompts whose answer comes from a known token: "
           "top-1 = how often a method's most relevant token is that source (higher is better), rank = where "
           "the source falls (1 = first), AUC as above; only prompts the model answers correctly count (n of "
           "those built), with 95% bootstrap intervals over prompts.")
with present.controls("Ground-truth settings"):
    c_gt_n, c_gt_run = wrapping_columns([1, 1], "gt_controls", [140, 160])
    gt_n = state.bound(c_gt_n.number_input, "Prompts per family", "gt_n", widget_key="gt_n")
    gt_request = GroundTruth(tuple(chosen), int(gt_n))
    gt_work = gt_request.work(loaded) * (len(chosen) + 1)
    speculation.cost_note(loaded, gt_work, "faith", f"{gt_request.work(loaded)} prompts x {len(chosen)} methods "
                                                    "and random")
    gt_run = c_gt_run.button("Run ground truth", key="gt_run", disabled=not chosen)
gt_key = gt_request.key(loaded)
with guarded("ground-truth benchmark"):  # a stored result shows at once; a click starts a job
    gt_found = memo(gt_key, lambda: gt_request.stored(loaded))
    if gt_found is None:
        gt_found = speculation.follow("job_ground_truth", gt_key, "Ground truth", lambda progress: gt_request.run(
            loaded, ResultsCache(), progress), start=gt_run, total=gt_request.work(loaded),
            speed=(loaded, "faith", gt_work))
    if gt_found is not None:
        keep("gt_table", gt_key, gt_found, f"{int(gt_n)} prompts per family, {', '.join(chosen)}, "
                                           f"{model_label(loaded.name)}")
gt_table = shown("gt_table", gt_key, "ground-truth run", "run it again")
if gt_table is not None:
    tables["Ground truth"] = ground_truth_view(gt_table)
    table(tables["Ground truth"], "ground-truth")
if figures:
    report_button("Implicit attention", figures, tables, {"model": loaded.describe(), "text": text, "form": form,
                                                         "reduction": reduce, "beside": other_spec},
                  settings=("layer",))
