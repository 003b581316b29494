"""Model & task page: what is loaded, the shared task settings, and one prompt with its tokens."""

import streamlit as st

from analysis.errors import PrunescopeError
from analysis.hosting import public_mode
from analysis.models import model_choices
from analysis.models.loader import decode_text, describe_choice
from components import present, state
from components.layout import wrapping_columns
from components.markup import echo
from components.widgets import one_line, require_model, task_picker, token_chips

st.header("Model & task")
present.toolbar()
present.caption("Pick the model in the sidebar (SmolLM2-135M-Instruct, the default; the Gemma 3 270M base model; a toy "
                "checkpoint" + ("" if public_mode() else "; a Hugging Face id or a local directory") + "). The "
                "task and the settings below are shared by every page and saved in the page's link.")

loaded = require_model()
counts = loaded.adapter.neuron_counts()
c1, c2, c3, c4 = st.columns(4)
c1.metric("Family", loaded.family)
c2.metric("Layers", loaded.n_layers)
c3.metric("Neurons", f"{sum(counts):,}", help=f"{counts[0]} per layer at the adapter's neuron site")
c4.metric("Parameters", f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f} M")
about = describe_choice(loaded.name) if loaded.name in model_choices() else ""  # never the server's cache path
st.caption(" · ".join(filter(None, [loaded.describe(), about])))

with present.controls("Task settings"):
    col_task, col_shots, col_n, col_seed = wrapping_columns([3, 1, 1, 1], "mt_task", [300, 140, 140, 140])
    with col_task:
        task = task_picker()
    shots = state.bound(col_shots.number_input, "Shots", "shots", step=1)
    state.bound(col_n.number_input, "Prompts (n)", "n", step=1)
    seed = state.bound(col_seed.number_input, "Seed", "seed", step=1)

if task is not None and (note := task.repeats_note(int(state.get("n")))):
    st.caption(note)
if task is not None:
    try:
        prompt = task.sample_prompts(int(shots), 1, seed=int(seed))[0]
    except PrunescopeError as exc:
        st.error(one_line(exc))
    else:
        ids = loaded.tokenizer(prompt.text).input_ids
        st.subheader("Preview: one prompt")
        st.code(prompt.text + f"  ⟶ gold: {prompt.gold}", language=None)
        st.caption(f"{len(ids)} tokens; demonstration answers (a wrong answer equal to one of them is a copy "
                   f"error): {', '.join(echo(o) for o in prompt.demo_outputs) or 'none'}")
        st.html(token_chips([decode_text(loaded.tokenizer, [i]) for i in ids], ids))
