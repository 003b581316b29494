"""The pruning page's general-capability panel: next-token loss on general text, unpruned vs the mask vs its
random controls (analysis/evaluation/general.py), shown from the cache (shipped for the defaults) or computed
as a background job on a click."""

from __future__ import annotations

import streamlit as st

from analysis.evaluation.general import (
    PASSAGES,
    shipped_passages,
)
from analysis.models import LoadedModel
from analysis.pruning import NeuronMask
from analysis.queries import GeneralQuery
from components import speculation
from components.widgets import guarded, memo


def general_text_panel(loaded: LoadedModel, mask: NeuronMask, controls: int) -> str:
    """The panel; returns its sentence for the report ('' while nothing is computed)."""
    st.subheader("General text")
    passages = shipped_passages()[:PASSAGES]
    query = GeneralQuery(mask, controls, tuple(passages))
    key = query.key(loaded)

    with guarded("general text"):
        found = memo(key, lambda: query.stored(loaded))
        if found is None:
            st.caption(f"Does the mask cost the model elsewhere? The next-token loss on {len(passages)} passages "
                       "of general prose (the Jargon File, public domain), unpruned vs pruned vs the random masks, "
                       "paired by passage.")
            units = (2 + controls) * len(passages)
            clicked = st.button("Compute the loss on general text", key="general_run")
            result = speculation.follow("job_general", key, "General text",
                                        lambda progress: query.run(loaded, progress), start=clicked,
                                        unit="passages", total=units)
            if result is not None:
                found = memo(key, lambda: result)
        if found is not None:
            sentence = found.sentence()
            low = found.vs_baseline.ci95[0]
            (st.warning if low > 0 else st.info)(sentence, icon=":material/menu_book:")
            return sentence
    return ""
