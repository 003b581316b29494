"""The pruning page's baselines panel: magnitude pruning, an instruction prompt and contextual calibration on
the same prompts as the mask, each compared with the unpruned model in one table (analysis/pruning/baselines.py),
as a background job on a click."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.evaluation.verdicts import signed_points
from analysis.models import LoadedModel
from analysis.pruning import NeuronMask
from analysis.pruning.baselines import BASELINES, METHOD_LABELS, method_table
from analysis.pruning.evaluate import PruneEvalResult
from analysis.queries import BaselinesQuery
from analysis.tasks.task import Task
from components import speculation
from components.export import table
from components.widgets import guarded

OUTCOMES = (("accuracy", "accuracy"), ("copy_error_rate", "copy errors"), ("echo_rate", "echoes"))


def baselines_panel(loaded: LoadedModel, mask: NeuronMask, result: PruneEvalResult, tasks: list[Task], shots: int,
                    n: int, seed: int) -> dict:
    """The expander; returns the method table for the report (empty until it ran)."""
    with st.expander("Baselines: magnitude pruning, an instruction prompt, contextual calibration"):
        chosen = st.multiselect("Baselines", BASELINES, default=list(BASELINES), format_func=METHOD_LABELS.__getitem__,
                                key="baselines_chosen")
        if not chosen:
            return {}
        units = len(tasks) * len(chosen) * n
        speculation.cost_note(loaded, units, "eval", f"{units:,} prompts")
        clicked = st.button("Run the baselines", key="baselines_run")
        query = BaselinesQuery(mask, tuple(tasks), shots, n, seed, tuple(chosen))
        with guarded("baselines"):
            extra = speculation.follow("job_baselines", query.key(loaded), "Baselines",
                                       lambda progress: query.run(loaded, progress), start=clicked,
                                       speed=(loaded, "eval", units), total=units)
            if extra is None:
                return {}
            methods = method_table(pd.concat([result.records, extra], ignore_index=True), result.resamples)
            shown = pd.DataFrame({"method": methods["method"], **{
                f"{name} change, points [95 % CI]": [
                    f"{signed_points(row[f'd_{m}'])} [{signed_points(row[f'd_{m}_lo'])}, "
                    f"{signed_points(row[f'd_{m}_hi'])}]"
                    for _, row in methods.iterrows()]
                for m, name in OUTCOMES}})
            st.caption("Each method against the unpruned model on the same prompts, task average, paired by "
                       "prompt (intervals over queries).")
            table(shown, "baselines")
            return {"Baselines": shown}
    return {}  # it failed: the error line is shown
