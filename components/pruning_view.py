"""Streamlit display of pruning results: the verdict sentences, the headline metrics with their intervals,
the bars and the paired changes, the flips between outcome classes. The numbers come from
``PruneEvalResult`` (analysis/pruning/evaluate.py, analysis/evaluation/paired.py); this module only shows them.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import streamlit as st

from analysis.evaluation.paired import Cell, format_p
from analysis.evaluation.verdicts import DEPENDS, excludes_zero, interval_text, signed_points
from analysis.pruning.evaluate import PruneEvalResult, flip_counts
from analysis.pruning.stability import MaskStability
from components import present
from components.charts_pruning import change_forest, pruning_bars
from components.export import chart, table


def show_verdicts(sentences: dict[str, str]) -> None:
    """One line per comparison: green when accuracy gains beyond noise, red when it falls, amber when the tasks
    disagree, else neutral."""
    for sentence in sentences.values():
        if sentence.endswith("pruning gains accuracy."):
            st.success(sentence, icon=":material/trending_up:")
        elif sentence.endswith("pruning costs accuracy."):
            st.error(sentence, icon=":material/trending_down:")
        elif DEPENDS in sentence or sentence.endswith("do more than copy."):
            st.warning(sentence, icon=":material/call_split:")
        else:
            st.info(sentence, icon=":material/balance:")


METRIC_WIDTH = 210  # px: fits "Copy errors, unpruned" and "CI -17.5 to -8.8" beside the change; four in 1440 px


def _interval(rate) -> str:
    return f"95 % CI {rate.ci95[0]:.1%}–{rate.ci95[1]:.1%}"


def show_metrics(cell: Cell, pruned: bool) -> None:
    """Accuracy and copy errors of the unpruned and (when on) the pruned model, averaged over the tasks; the
    delta is the paired change, its interval in the tooltip."""
    base = cell.rates["baseline"]
    # a wrapping row of fixed-width cards: four in a row on a wide screen, two and two at 1024 px, where four
    # columns cut the labels ("Accuracy, unpru...")
    row = st.container(horizontal=True, wrap=True, gap="medium")
    width = int(METRIC_WIDTH * (1.5 if present.requested() else 1))  # a slide's fonts are 1.5x
    row.metric("Accuracy, unpruned", f"{base['accuracy'].value:.1%}", help=_interval(base["accuracy"]),
               width=width)
    row.metric("Copy errors, unpruned", f"{base['copy_error_rate'].value:.1%}",
               help=_interval(base["copy_error_rate"]), width=width)
    if not pruned or "pruned" not in cell.rates:
        return
    shown: tuple[tuple[str, str, Literal["normal", "inverse"]], ...] = (
        ("accuracy", "Accuracy, pruned", "normal"), ("copy_error_rate", "Copy errors, pruned", "inverse"))
    for metric, label, colour in shown:
        change = cell.vs_baseline[metric]
        row.metric(label, f"{cell.rates['pruned'][metric].value:.1%}", f"{signed_points(change.delta)} points",
                   delta_color=colour if excludes_zero(change.ci95) else "off",
                   delta_arrow="off" if signed_points(change.delta) == "0.0" else "auto",  # no arrow on 0.0
                   delta_description=interval_text(change.ci95).removeprefix("95 % "), width=width,
                   help=f"change vs unpruned, paired by prompt: {interval_text(change.ci95)} points, "
                        f"{format_p(change.p)} (sign-flip test over queries); grey when the interval includes zero")


def show_result(result: PruneEvalResult, pruned: bool, shots: int, mask_size: int) -> dict:
    """Everything the live panel shows for one evaluation; returns the figures, tables and findings for the
    HTML report."""
    summary = result.summary()
    average = result.cell(shots=shots)
    findings = list(result.verdicts(shots=shots).values()) if pruned else []
    show_verdicts(result.verdicts(shots=shots) if pruned else {})
    if not present.requested():  # on a slide the figure comes right below the verdicts, the numbers after it
        show_metrics(average, pruned)
    figures = {"Rates with 95 % intervals": pruning_bars(
        summary, f"{shots}-shot, {mask_size if pruned else 0} neurons pruned, {len(result.controls)} random masks")}
    chart(figures["Rates with 95 % intervals"], "prune_bars", "pruning-comparison")
    if present.requested():
        show_metrics(average, pruned)
    if pruned:
        figures["Paired changes"] = change_forest(summary, "Pruned minus unpruned, and minus random masks")
        chart(figures["Paired changes"], "prune_changes", "pruning-changes")
    table(summary, "pruning-summary")
    tables = {"Summary": summary}
    if pruned:
        moves = flip_counts(result.flipped)
        st.subheader(f"Flipped examples ({len(result.flipped)})")
        st.caption("How the prompts whose answer changed moved between outcome classes (copy: a demonstration's "
                   "answer; echo: the query repeated).")
        table(moves, "flip-counts")
        table(result.flipped, "flipped-examples")
        tables.update({"Flips between outcomes": moves, "Flipped examples": result.flipped})
    return {"figures": figures, "tables": tables, "findings": findings}


def mask_table(rows: list[dict], stability: MaskStability | None = None) -> pd.DataFrame:
    """The mask's neurons with their copying scores and, when known, the share of bootstrap resamples of the
    scoring prompts whose top k selects each."""
    frame = pd.DataFrame(rows, columns=["layer", "neuron", "score"])
    if stability is not None:
        frame["selected in resamples"] = [stability.frequency.get((int(layer), int(neuron)), 0.0)
                                          for layer, neuron in zip(frame.layer, frame.neuron)]
    return frame
