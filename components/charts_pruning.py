"""Plotly figures of pruning experiments, task vectors and token relevance. Pure functions: no streamlit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.pruning.copying import COPYING_TASK

# (summary column prefix, legend name, colour)
CONDITIONS = (("baseline", "Unpruned", "#6b7280"), ("pruned", "Pruned", "#c2410c"),
              ("random", "Random mask", "#2563eb"))
PANELS = (("accuracy", "Accuracy"), ("copy_error_rate", "Copy-error rate"))


def pruning_bars(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """Accuracy and copy-error rate per task (and the average), unpruned vs pruned vs the random control
    (mean, with the std over control seeds as error bars). ``summary`` is ``PruneEvalResult.summary()``
    for one shot count; conditions whose columns are all NaN (not run) are left out."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[name for _, name in PANELS], horizontal_spacing=0.08)
    tasks = summary["task"].tolist()
    for col, (metric, _) in enumerate(PANELS, start=1):
        for condition, name, colour in CONDITIONS:
            column = f"{condition}_{metric}" + ("_mean" if condition == "random" else "")
            if column not in summary or summary[column].isna().all():
                continue
            values = summary[column].astype(float).tolist()
            error = None
            if condition == "random" and f"random_{metric}_std" in summary:
                error = dict(type="data", array=summary[f"random_{metric}_std"].fillna(0).tolist(), visible=True)
            fig.add_trace(go.Bar(
                x=tasks, y=values, name=name, legendgroup=name, showlegend=col == 1, marker_color=colour,
                error_y=error, text=[f"{v:.0%}" for v in values], textposition="outside", cliponaxis=False,
                hovertemplate=f"{name}<br>%{{x}}: %{{y:.1%}}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(range=[0, 1.08], tickformat=".0%")
    fig.update_layout(barmode="group", title=title, height=440, margin=dict(t=70, b=70, l=40, r=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.12, x=0))
    return fig


def k_sweep_chart(table: pd.DataFrame, best: int | None = None) -> go.Figure:
    """Accuracy per task (solid) and the held-out copying task's copy-error rate (dashed) against k
    (log-like axis; k = 0 is the unpruned model), the chosen k marked."""
    fig = go.Figure()
    for task, rows in table.groupby("task", sort=False):
        rows = rows.sort_values("k")
        fig.add_trace(go.Scatter(x=rows.k, y=rows.accuracy, mode="lines+markers", name=f"{task} accuracy",
                                 hovertemplate=f"{task}<br>k=%{{x}}<br>accuracy %{{y:.1%}}<extra></extra>"))
    copying = table[table.task.str.startswith(COPYING_TASK)].sort_values("k")
    if len(copying):
        fig.add_trace(go.Scatter(x=copying.k, y=copying.copy_error_rate, mode="lines+markers",
                                 line=dict(dash="dash", color="#c2410c"), name="copy-error rate (copying task)",
                                 hovertemplate="k=%{x}<br>copy errors %{y:.1%}<extra></extra>"))
    if best is not None:
        fig.add_vline(x=best, line_dash="dot", line_color="#15803d", annotation_text=f"chosen k={best}")
    ticks = sorted(table.k.unique().tolist())
    fig.update_layout(xaxis=dict(title="k (neurons pruned)", type="category", categoryarray=ticks),
                      yaxis=dict(title="share of prompts", range=[0, 1], tickformat=".0%"), height=420,
                      margin=dict(t=40, b=40, l=40, r=10), legend=dict(orientation="h", y=-0.25))
    return fig


def task_vector_chart(curves: Mapping[str, Sequence[float]], zero_shot: Mapping[str, float] | None = None,
                      title: str = "") -> go.Figure:
    """Accuracy of the patched zero-shot prompt per layer, one line per condition (e.g. unpruned / pruned),
    with each condition's unpatched zero-shot accuracy as a dotted line."""
    fig = go.Figure()
    colours = ["#6b7280", "#c2410c", "#2563eb", "#15803d"]
    for (name, values), colour in zip(curves.items(), colours):
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=list(values), mode="lines+markers", name=name,
                                 line=dict(color=colour),
                                 hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.1%}}<extra></extra>"))
        if zero_shot and name in zero_shot:
            fig.add_hline(y=zero_shot[name], line_dash="dot", line_color=colour,
                          annotation_text=f"{name}, zero-shot without a vector")
    fig.update_layout(title=title, xaxis_title="layer patched", yaxis=dict(title="accuracy", range=[0, 1],
                      tickformat=".0%"), height=420, margin=dict(t=50, b=40, l=40, r=10))
    return fig


def relevance_chart(tokens: Sequence[str], scores: Mapping[str, Sequence[float]], title: str = "") -> go.Figure:
    """Token relevance per method as a methods x tokens heatmap, each row scaled by its max |value| (methods
    have different units); hover shows the raw value."""
    names = list(scores)
    raw = [[float(v) for v in scores[m]] for m in names]
    scaled = [[v / (max(abs(x) for x in row) or 1.0) for v in row] for row in raw]
    labels = [f"{i}:{t!r}"[:20] for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=scaled, x=labels, y=names, customdata=raw, colorscale="RdBu", reversescale=True,
                               zmid=0, zmin=-1, zmax=1,
                               hovertemplate="%{y}<br>%{x}<br>%{customdata:.4g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_tickangle=-60, height=140 + 40 * len(names),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
