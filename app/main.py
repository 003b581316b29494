"""prunescope app entry point: `streamlit run app/main.py` from the repository root.

Pages are listed in PAGES (one line each) and live in app/views/. The folder must not be named
``pages/``: Streamlit then falls back to its legacy pages-directory mode, which can run a page script
without this file (no sidebar) on the server's first run and on every AppTest rerun. The sidebar holds the model
picker; pages read the loaded model with :func:`components.widgets.current_model`.
"""

import streamlit as st

from components.widgets import model_picker

st.set_page_config(page_title="prunescope", layout="wide")

PAGES = [
    st.Page("views/evaluate.py", title="Evaluate", icon=":material/checklist:", default=True),
    st.Page("views/attribution.py", title="Neuron attribution", icon=":material/neurology:"),
    st.Page("views/attention.py", title="Attention", icon=":material/grid_on:"),
]

page = st.navigation(PAGES)
with st.sidebar:
    st.title("prunescope")
    model_picker()
page.run()
