"""prunescope app entry point: `streamlit run app/main.py` from the repository root.

Pages are listed in PAGES (one line each) and live in app/views/. The folder must not be named
``pages/``: Streamlit then falls back to its legacy pages-directory mode, which can run a page script
without this file (no sidebar) on the server's first run and on every AppTest rerun. The sidebar holds the model
picker, presentation mode and the copy-link control; pages read the loaded model with
:func:`components.widgets.current_model` and shared settings from :mod:`components.state`.
"""

import streamlit as st

from analysis.paths import ASSETS_DIR
from components import present, state
from components.widgets import SPEC_KEY, apply_model_spec, guarded, model_picker, show_cancelled

presenting = present.requested()
# A local favicon: with a Material icon (or a page's), the browser fetches it from fonts.gstatic.com, which an
# offline host cannot reach.
st.set_page_config(page_title="prunescope", page_icon=str(ASSETS_DIR / "favicon.png"), layout="wide",
                   initial_sidebar_state="collapsed" if presenting else "auto")

PAGES = {
    "model": st.Page("views/model_task.py", title="Model & task", icon=":material/tune:", default=True),
    "evaluate": st.Page("views/evaluate.py", title="Evaluate", icon=":material/checklist:"),
    "attribution": st.Page("views/attribution.py", title="Neuron attribution", icon=":material/neurology:"),
    "pruning": st.Page("views/pruning.py", title="Copying neurons & pruning", icon=":material/content_cut:"),
    "attention": st.Page("views/attention.py", title="Implicit attention", icon=":material/grid_on:"),
    "task-vectors": st.Page("views/task_vectors.py", title="Task vectors", icon=":material/moving:"),
    "compare": st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
}

params = state.restore_from_query()
present.restore(params)
if params.get(state.MODEL_PARAM):
    apply_model_spec(params[state.MODEL_PARAM])
page = st.navigation(list(PAGES.values()))
wanted = PAGES.get(params.get(state.PAGE_PARAM, ""))
if wanted is not None and wanted.url_path != page.url_path:
    st.switch_page(wanted)

with st.sidebar:
    st.title("prunescope")
    loaded = model_picker()
    if loaded is not None:
        state.fit_to_model(loaded.n_layers)  # before the address bar is written
    present.toggle()
    link_slot = st.empty()  # filled after the page ran: the link must include what the page just changed
present.apply_style()
show_cancelled()
page_name = next(name for name, p in PAGES.items() if p.url_path == page.url_path)


def sync_link() -> None:
    """The address bar and the Copy link box show the same, current view."""
    state.sync_query(page_name, st.session_state.get(SPEC_KEY), {present.PARAM: "1"} if present.requested() else {})


sync_link()
try:
    with guarded(f"the {page.title} page"):  # the one error boundary: one red line, the traceback in the log
        page.run()
finally:  # also when the page stops early (st.stop) or a widget clamped a setting (e.g. k) during the run
    sync_link()
    with link_slot.container():
        state.share_link()
