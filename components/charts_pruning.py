"""Plotly figures of pruning experiments, task vectors and token relevance. Pure functions: no streamlit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from components.charts import token_axis, token_font, visible_token

# In the figure's top margin, right of the title, clear of the subplot titles and the rotated task names.
TOP_RIGHT_LEGEND = dict(orientation="h", yref="container", y=0.99, yanchor="top", x=1, xanchor="right")
# (summary column prefix, legend name, colour)
CONDITIONS = (("baseline", "Unpruned", "#6b7280"), ("pruned", "Pruned", "#c2410c"),
              ("random", "Random masks (mean)", "#2563eb"))
PANELS = (("accuracy", "Accuracy"), ("copy_error_rate", "Copy errors"), ("echo_rate", "Echoes"))
COMPARISONS = (("baseline", "vs unpruned", "#c2410c"), ("random", "vs random masks", "#2563eb"))
TICK_CHAR_PX = 6  # px per character of a vertical 12 px tick label (the default tasks: 440 px, as before)
FOREST_TICKS = 4  # at most this many x ticks per forest panel: more ran into the next panel's at 1024 px ("1−1")
FOREST_OFFSET = 0.17  # rows apart: each task's "vs unpruned" interval above its "vs random masks" one


def pruning_bars(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """Accuracy, copy-error and echo rates per task (and the average), unpruned vs pruned vs the random controls'
    mean, each bar with its 95 % interval as a whisker (bootstrap over queries; for the random mean the control
    seeds are resampled too, so the whisker holds their spread). ``summary`` is ``PruneEvalResult.summary()``
    for one shot count; conditions and metrics that were not run are left out."""
    panels = [(m, name) for m, name in PANELS if f"baseline_{m}" in summary]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for _, name in panels],
                        horizontal_spacing=0.06)
    tasks = summary["task"].tolist()
    for col, (metric, _) in enumerate(panels, start=1):
        for condition, name, colour in CONDITIONS:
            column = f"{condition}_{metric}"
            if column not in summary or summary[column].isna().all():
                continue
            values = summary[column].astype(float)
            error = None
            if f"{column}_lo" in summary:
                error = dict(type="data", symmetric=False, visible=True, thickness=1.5, width=3,
                             array=(summary[f"{column}_hi"] - values).fillna(0).tolist(),
                             arrayminus=(values - summary[f"{column}_lo"]).fillna(0).tolist())
            hover = f"{name}<br>%{{x}}: %{{y:.1%}}"
            if f"{column}_lo" in summary:
                hover += " (95 % CI %{customdata[0]:.1%}–%{customdata[1]:.1%})"
            custom = summary[[f"{column}_lo", f"{column}_hi"]].to_numpy() if f"{column}_lo" in summary else None
            if condition == "random" and f"random_{metric}_min" in summary:
                hover += "<br>seeds from %{customdata[2]:.1%} to %{customdata[3]:.1%}"
                custom = summary[[f"{column}_lo", f"{column}_hi", f"random_{metric}_min",
                                  f"random_{metric}_max"]].to_numpy()
            fig.add_trace(go.Bar(
                x=tasks, y=values.tolist(), name=name, legendgroup=name, showlegend=col == 1, marker_color=colour,
                error_y=error, customdata=custom, hovertemplate=hover + "<extra></extra>"), row=1, col=col)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    # task names run straight down: slanted, a long one ran under the next panel's names at narrow widths
    # ("averagevowel-count[heldout]" at 1024 px); the figure grows by the longest name so the bars keep their room
    longest = max((len(str(t)) for t in tasks), default=0)
    fig.update_xaxes(tickangle=-90, automargin=True)
    fig.update_layout(barmode="group", title=title, height=320 + TICK_CHAR_PX * longest,
                      margin=dict(t=80, b=20, l=40, r=10), legend=TOP_RIGHT_LEGEND)
    return fig


def points(share: pd.Series) -> pd.Series:
    """A change in shares as percentage points, with float noise (-5.6e-15 from 0.1 + 0.2 - 0.3) and negative
    zero read as 0, so a hover never says "-0.0 points" for no change."""
    return (100 * share.astype(float)).round(9) + 0.0


def interval_bars(value: pd.Series, low: pd.Series, high: pd.Series, thickness: float) -> dict:
    """Plotly error bars drawing [low, high] around ``value`` (a 95 % interval, not symmetric)."""
    return dict(type="data", symmetric=False, array=(high - value).tolist(), arrayminus=(value - low).tolist(),
                thickness=thickness, width=4)


def change_forest(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """The paired changes themselves: per task (and the average), pruned minus unpruned and pruned minus the
    random controls, in percentage points with 95 % intervals, around a line at zero. An interval crossing
    zero is no evidence of an effect, whatever the bars suggest. The two intervals of a task sit just above and
    below its row (``FOREST_OFFSET``), so neither hides the other."""
    panels = [(m, name) for m, name in PANELS if f"d_{m}_vs_baseline" in summary]
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[f"Change in {name.lower()}"
                                                                          for _, name in panels],
                        shared_yaxes=True, horizontal_spacing=0.07)
    labels = [f"{t} ({s}-shot)" if summary["shots"].nunique() > 1 else str(t)
              for t, s in zip(summary["task"], summary["shots"])]
    for col, (metric, _) in enumerate(panels, start=1):
        for against, name, colour in COMPARISONS:
            column = f"d_{metric}_vs_{against}"
            if column not in summary:
                continue
            delta = points(summary[column])
            low, high = points(summary[f"{column}_lo"]), points(summary[f"{column}_hi"])
            shift = FOREST_OFFSET if against == "random" else -FOREST_OFFSET  # the y axis runs downwards
            fig.add_trace(go.Scatter(
                x=delta, y=[row + shift for row in range(len(labels))], text=labels, mode="markers", name=name,
                legendgroup=name, showlegend=col == 1,
                marker=dict(color=colour, size=9, symbol="diamond" if against == "random" else "circle"),
                error_x=interval_bars(delta, low, high, thickness=2),
                customdata=summary[[f"{column}_lo", f"{column}_hi", f"{column}_p"]].to_numpy(),
                hovertemplate=f"{name}<br>%{{text}}: %{{x:+.1f}} points<br>95 % CI %{{customdata[0]:.1%}} to "
                              f"%{{customdata[1]:.1%}}, p = %{{customdata[2]:.3f}}<extra></extra>"),
                row=1, col=col)
        fig.add_vline(x=0, line_color="#18181b", line_width=1, row=1, col=col)
    fig.update_xaxes(title_text="points", zeroline=False, nticks=FOREST_TICKS)
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(range(len(labels))), ticktext=labels,
                     zeroline=False)
    fig.update_layout(title=title, height=130 + 40 * len(labels), margin=dict(t=80, b=40, l=10, r=10),
                      legend=TOP_RIGHT_LEGEND)
    return fig


def shot_sweep_chart(summary: pd.DataFrame, title: str = "") -> go.Figure:
    """The mask's paired effect against the number of demonstrations: for the task average at each shot count,
    pruned minus unpruned and pruned minus the random masks, in points with 95 % intervals, one panel per
    outcome class, around a line at zero. ``summary`` is ``PruneEvalResult.summary()`` over several shots."""
    average = summary[summary["task"] == "average"].sort_values("shots")
    panels = [(m, name) for m, name in PANELS if f"d_{m}_vs_baseline" in average]
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[f"Change in {name.lower()}"
                                                                          for _, name in panels],
                        shared_yaxes=True, horizontal_spacing=0.05)
    shots = average["shots"].astype(int).tolist()
    for col, (metric, _) in enumerate(panels, start=1):
        for against, name, colour in COMPARISONS:
            column = f"d_{metric}_vs_{against}"
            if column not in average or average[column].isna().all():
                continue
            delta = points(average[column])
            low, high = points(average[f"{column}_lo"]), points(average[f"{column}_hi"])
            fig.add_trace(go.Scatter(
                x=shots, y=delta, mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                line=dict(color=colour, width=2, dash="dot" if against == "random" else "solid"),
                marker=dict(color=colour, size=8, symbol="diamond" if against == "random" else "circle"),
                error_y=interval_bars(delta, low, high, thickness=1.5),
                hovertemplate=f"{name}<br>%{{x}}-shot: %{{y:+.1f}} points<extra></extra>"), row=1, col=col)
        fig.add_hline(y=0, line_color="#18181b", line_width=1, row=1, col=col)
    fig.update_xaxes(title_text="shots (demonstrations)", type="log", tickvals=shots, ticktext=[str(s) for s in shots])
    fig.update_yaxes(title_text="points", row=1, col=1)
    fig.update_layout(title=title, height=420, margin=dict(t=80, b=50, l=10, r=10), legend=TOP_RIGHT_LEGEND)
    return fig


def k_sweep_chart(sweep) -> go.Figure:
    """The k-sweep (``analysis.pruning.autok.KSweep``): the change against the unpruned model (k = 0) of the
    sweep tasks' average accuracy and copy-error rate, in points with 95 % intervals, per k; each task's
    accuracy change as a faint line (hidden until clicked in the legend); the chosen k marked, or a note that
    none was chosen."""
    table = sweep.table[sweep.table.k > 0]
    average = table[table.task == "average"].sort_values("k")
    fig = go.Figure()
    for task, rows in table[table.task != "average"].groupby("task", sort=False):
        rows = rows.sort_values("k")
        fig.add_trace(go.Scatter(x=rows.k.astype(str), y=points(rows.d_accuracy), mode="lines", name=f"{task}",
                                 line=dict(width=1), opacity=0.5, visible="legendonly",
                                 hovertemplate=f"{task}<br>k=%{{x}}: %{{y:+.1f}} accuracy points<extra></extra>"))
    for metric, name, colour, dash in (("accuracy", "accuracy (average)", "#15803d", "solid"),
                                       ("copy_error_rate", "copy errors (average)", "#c2410c", "dash")):
        delta = points(average[f"d_{metric}"])
        fig.add_trace(go.Scatter(
            x=average.k.astype(str), y=delta, mode="lines+markers", name=name, line=dict(color=colour, dash=dash),
            error_y=dict(type="data", symmetric=False, array=(points(average[f"d_{metric}_hi"]) - delta).tolist(),
                         arrayminus=(delta - points(average[f"d_{metric}_lo"])).tolist()),
            hovertemplate=f"{name}<br>k=%{{x}}: %{{y:+.1f}} points<extra></extra>"))
    fig.add_hline(y=0, line_color="#18181b", line_width=1)
    if sweep.chosen:
        fig.add_vline(x=str(sweep.chosen), line_dash="dot", line_color="#15803d",
                      annotation_text=f"chosen k={sweep.chosen}")
    else:
        fig.add_annotation(text="no k beats the unpruned model beyond noise", xref="paper", yref="paper", x=0.02,
                           y=0.98, showarrow=False, font=dict(color="#b91c1c"))
    fig.update_layout(xaxis=dict(title="k (neurons pruned)", type="category"),
                      yaxis=dict(title="change vs unpruned (points)"), height=420,
                      title=f"{sweep.shots}-shot, {sweep.n} prompts per task, 95 % intervals",
                      margin=dict(t=50, b=40, l=40, r=10), legend=dict(orientation="h", y=-0.25))
    return fig


def task_vector_chart(curves: Mapping[str, Sequence[float]], zero_shot: Mapping[str, float] | None = None,
                      title: str = "", beats: Mapping[str, Sequence[bool]] | None = None,
                      icl: Mapping[str, float] | None = None) -> go.Figure:
    """Accuracy of the patched zero-shot prompt per layer, one line per condition (e.g. unpruned / pruned), with
    each condition's unpatched zero-shot accuracy dotted and its k-shot ICL accuracy dashed. Only the layers in
    ``beats`` (significantly above zero-shot) get a star; a chart with no star has no best layer."""
    fig = go.Figure()
    colours = ["#6b7280", "#c2410c", "#2563eb", "#15803d"]
    for (name, values), colour in zip(curves.items(), colours):
        layers = list(range(len(values)))
        fig.add_trace(go.Scatter(x=layers, y=list(values), mode="lines+markers", name=name,
                                 line=dict(color=colour), marker=dict(size=5),
                                 hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.1%}}<extra></extra>"))
        winners = [i for i, b in enumerate((beats or {}).get(name, ())) if b]
        if winners:
            fig.add_trace(go.Scatter(x=winners, y=[values[i] for i in winners], mode="markers",
                                     name=f"{name}: beats zero-shot", marker=dict(symbol="star", size=13, color=colour),
                                     hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.1%}}, beats zero-shot"
                                                   "<extra></extra>"))
    # Reference lines, labelled in the right margin beside their height (never over the curves); conditions with
    # the same value share one line and one label, and labels too close to each other are pushed apart.
    labels: list[tuple[float, str, str]] = []
    for reference, dash, label in ((zero_shot, "dot", "zero-shot without a vector"), (icl, "dash", "k-shot ICL")):
        shared: dict[float, list[str]] = {}
        for name in curves:
            if reference and name in reference:
                shared.setdefault(round(float(reference[name]), 9), []).append(name)
        for value, names in shared.items():
            colour = colours[list(curves).index(names[0]) % len(colours)]
            fig.add_hline(y=value, line_dash=dash, line_color=colour)
            labels.append((value, f"{' and '.join(names)},<br>{label}", colour))
    labels.sort()
    for (_, text, colour), y in zip(labels, spread([value for value, _, _ in labels])):
        fig.add_annotation(text=text, xref="paper", x=1, xanchor="left", xshift=8, y=y, yanchor="middle",
                           align="left", showarrow=False, font=dict(color=colour, size=LABEL_FONT))
    width = max((len(part) for _, text, _ in labels for part in text.split("<br>")), default=0)
    fig.update_layout(title=title, xaxis_title="layer patched (input of block L)",
                      yaxis=dict(title="accuracy", range=[0, 1.02], tickformat=".0%"), height=440,
                      margin=dict(t=50, b=90, l=40, r=16 + int(0.6 * LABEL_FONT * width)),
                      legend=dict(orientation="h", yref="container", y=0.01, yanchor="bottom", x=0))
    return fig


LABEL_FONT = 13  # px, the reference lines' labels
LABEL_GAP = 0.12  # accuracy units between two stacked two-line labels (about 36 px of a 440 px chart)


def spread(values: Sequence[float], gap: float = LABEL_GAP, low: float = 0.0, top: float = 1.02) -> list[float]:
    """Label heights for ``values`` (sorted ascending), at least ``gap`` apart, within ``low``..``top`` where they
    fit: labels too close to each other form a group centred on their values' mean."""
    groups: list[list[float]] = []
    for value in values:
        groups.append([value])
        while len(groups) > 1 and _centre(groups[-1]) - (len(groups[-1]) - 1) * gap / 2 \
                < _centre(groups[-2]) + (len(groups[-2]) + 1) * gap / 2:
            last = groups.pop()
            groups[-1] += last
    placed = [_centre(g) + (i - (len(g) - 1) / 2) * gap for g in groups for i in range(len(g))]
    shift = max(0.0, low - min(placed, default=low)) or min(0.0, top - max(placed, default=top))
    return [y + shift for y in placed]


def _centre(group: list[float]) -> float:
    return sum(group) / len(group)


def relevance_chart(tokens: Sequence[str], scores: Mapping[str, Sequence[float]], title: str = "") -> go.Figure:
    """Token relevance per method as a methods x tokens heatmap, each row scaled by its own max |value| (methods
    have different units; the colour bar says so), every token labelled; the hover shows the raw value."""
    names = list(scores)
    raw = [[float(v) for v in scores[m]] for m in names]
    scaled = [[v / (max(abs(x) for x in row) or 1.0) for v in row] for row in raw]
    labels = [f"{i}:{visible_token(t)}"[:20] for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=scaled, x=labels, y=names, customdata=raw, colorscale="RdBu", reversescale=True,
                               zmid=0, zmin=-1, zmax=1,
                               colorbar=dict(title=dict(text="relevance ÷<br>row's max |value|", side="right")),
                               hovertemplate="%{y}<br>%{x}<br>%{customdata:.4g}<extra></extra>"))
    fig.update_layout(title=title, height=140 + 40 * len(names) + 5 * token_font(len(labels)),
                      xaxis=token_axis(labels, tickangle=-60 if len(labels) <= 40 else -90),
                      yaxis_title="method", margin=dict(l=10, r=10, t=40, b=10))
    return fig
