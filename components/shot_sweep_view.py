"""The pruning page's shot sweep: the mask's paired effect at several numbers of demonstrations (the paper's
reviewers asked for more shots), one background job over every shot count, one figure with intervals."""

from __future__ import annotations

import streamlit as st

from analysis.distributed import env_pool
from analysis.models import LoadedModel
from analysis.pruning import NeuronMask
from analysis.queries import ShotSweepQuery
from analysis.tasks.task import Task
from components import speculation
from components.charts_pruning import shot_sweep_chart
from components.export import chart, table
from components.widgets import guarded

SHOT_CHOICES = (0, 1, 2, 4, 8, 16, 32)
DEFAULT_SHOTS = (1, 2, 4, 8, 16)


def shot_sweep_panel(loaded: LoadedModel, mask: NeuronMask, tasks: list[Task], n: int, seed: int,
                     controls: int) -> dict:
    """The expander with its shot choice, cost, button, progress and figure; returns the figures for the
    report (empty until the sweep ran)."""
    with st.expander("Effect vs shots"):
        most = min(len(task.pairs) for task in tasks) - 1  # a prompt needs its demonstrations and its query
        offered = [s for s in SHOT_CHOICES if s <= most]
        shots = st.multiselect("Shots", offered, default=[s for s in DEFAULT_SHOTS if s in offered],
                               key="sweep_shots", help="each shot count runs every task under every condition; "
                                                       "long prompts beyond the model's context are refused")
        if not shots:
            st.info("Pick at least one shot count.")
            return {}
        shots = sorted(shots)
        units = len(shots) * len(tasks) * (2 + controls) * n
        speculation.cost_note(loaded, units, "eval", f"{units:,} prompts")
        clicked = st.button("Run the shot sweep", key="shot_sweep_run")
        query = ShotSweepQuery(mask, tuple(tasks), tuple(shots), n, seed, controls)
        with guarded("shot sweep"):
            result = speculation.follow("job_shot_sweep", query.key(loaded), "Shot sweep", lambda progress: query.run(
                loaded, progress, env_pool(loaded.name)), start=clicked, speed=(loaded, "eval", units), total=units)
            if result is None:
                return {}
            summary = result.summary()
            figure = shot_sweep_chart(summary, f"{len(mask)} neurons pruned, {len(tasks)} tasks, {n} prompts each")
            chart(figure, "shot_sweep", "effect-vs-shots")
            for count in shots:
                for sentence in result.verdicts(shots=count).values():
                    st.caption(f"{count}-shot: {sentence}")
            table(summary[summary.task == "average"], "shot-sweep")
            return {"Effect vs shots": figure}
    return {}  # it failed: the error line is shown
