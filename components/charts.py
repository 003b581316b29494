"""Plotly figure builders. Pure functions of result data: no streamlit here."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

# (summary key, legend name, colour): correct answers, copying errors, echoes of the query, other errors.
OUTCOME_SERIES = (
    ("accuracy", "Accuracy", "#15803d"),
    ("copy_error_rate", "Copy errors", "#c2410c"),
    ("echo_rate", "Echoes", "#a16207"),
    ("other_error_rate", "Other errors", "#6b7280"),
)


def run_label(summary: dict, index: int | None = None) -> str:
    """Short x-axis label of one evaluation run, e.g. ``#2 antonyms, 4-shot``."""
    prefix = f"#{index + 1} " if index is not None else ""
    if summary.get("label"):
        return prefix + str(summary["label"])
    label = f"{prefix}{summary.get('task', '?')}, {summary.get('shots', '?')}-shot"
    if summary.get("masked"):
        label += " (pruned)"
    return label


MAX_LABELLED_RUNS = 3  # groups of 4 bars whose percentages still fit above them side by side


def outcome_bar_chart(summaries: Sequence[dict], title: str | None = None) -> go.Figure:
    """Grouped bars of accuracy / copy-error / echo / other-error rates, one group per run summary.

    ``summaries`` are :meth:`analysis.evaluation.EvalResult.summary` dicts. Groups are labelled with
    :func:`run_label` (numbered, so repeated task/shot settings stay apart); bars show percentages.
    """
    labels = [run_label(s, i) for i, s in enumerate(summaries)]
    hover = [f"model {s.get('model', '?')}, n={s.get('n', '?')}" for s in summaries]
    labelled = len(summaries) <= MAX_LABELLED_RUNS  # beyond that the numbers would collide ("75%75%"): hover only
    fig = go.Figure()
    for key, name, colour in OUTCOME_SERIES:
        values = [float(s[key]) for s in summaries]
        fig.add_trace(go.Bar(
            name=name, x=labels, y=values, marker_color=colour, customdata=hover,
            text=[f"{v:.0%}" for v in values] if labelled else None, textposition="outside", textangle=0,
            cliponaxis=False,
            hovertemplate=f"{name}: %{{y:.1%}}<br>%{{customdata}}<extra>%{{x}}</extra>",
        ))
    fig.update_layout(
        barmode="group", title=title, yaxis=dict(range=[0, 1], tickformat=".0%", title="share of prompts"),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), margin=dict(t=60, b=40, l=40, r=10),
        uniformtext=dict(minsize=9, mode="hide"),
    )
    return fig


def token_font(count: int) -> int:
    """Tick label size (px) that keeps every one of ``count`` token labels (12 up to 40 tokens, down to 8)."""
    return 12 if count <= 40 else 10 if count <= 80 else 8


def token_axis(labels: Sequence[str], **extra) -> dict:
    """A category axis that labels every token (Plotly would drop labels beyond about 40), in a font that fits."""
    return dict(tickmode="array", tickvals=list(labels), ticktext=list(labels),
                tickfont=dict(size=token_font(len(labels))), **extra)


def attention_heatmap(attn, tokens: Sequence[str], title: str = "") -> go.Figure:
    """A T x T attention map (rows: output positions, columns: source tokens) with every token labelled.

    Non-negative maps (softmax probabilities) get a sequential scale from 0 to their largest weight; signed
    maps (implicit attention) a diverging one centred on zero. The hover shows the (output, source) token pair
    and the value."""
    values = [[float(v) for v in row] for row in attn]
    limit = max((abs(v) for row in values for v in row), default=1.0) or 1.0
    signed = any(v < 0 for row in values for v in row)
    labels = [f"{i}:{visible_token(t)}"[:24] for i, t in enumerate(tokens)]
    scale = dict(colorscale="RdBu", reversescale=True, zmid=0, zmin=-limit, zmax=limit) if signed else \
        dict(colorscale="Blues", zmin=0, zmax=limit)
    fig = go.Figure(go.Heatmap(
        z=values, x=labels, y=labels, **scale,
        colorbar=dict(title=dict(text="attention (signed)" if signed else "attention weight", side="right")),
        hovertemplate="output %{y}<br>source %{x}<br>%{z:.4g}<extra></extra>"))
    font = token_font(len(labels))
    fig.update_layout(title=title, height=max(620, 220 + (font + 3) * len(labels)),
                      xaxis=token_axis(labels, title="source token", tickangle=-60 if len(labels) <= 40 else -90),
                      yaxis=token_axis(labels, title="output position", autorange="reversed"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"})


def visible_token(token: str) -> str:
    """A token with its whitespace drawn (" 2" -> "␣2", "\n" -> "⏎"): a blank cell or label says nothing."""
    return str(token).translate(VISIBLE_WHITESPACE)


HEATMAP_SCALES = {"clip": "robust (clip at the median layer's 99.5th percentile of |score|)",
                  "per-layer": "per layer (row max = 1)",
                  "signed-log": "signed log", "max": "linear, full range"}


def neuron_heatmap(scores, max_columns: int = 256, title: str = "", scale: str = "clip",
                   percentile: float = 99.5, layers: tuple[int, int] | None = None, pickable: bool = False,
                   picked: tuple[int, int] | None = None) -> go.Figure:
    """Layers x neurons attribution heatmap. Wide layers are binned into at most ``max_columns`` columns, each
    showing its strongest (largest |score|) neuron; the x axis and the hover give real neuron indices.

    ``scale`` (one outlier, or one loud layer, must not wash the map out): ``clip`` colours at +- the median
    over layers of each layer's ``percentile`` of |score| and says so in the colour bar; ``per-layer`` divides
    each layer by its largest |score|; ``signed-log`` shows sign(s) log10(1 + |s|/t) with t the median nonzero
    |score| (linear below t); ``max`` the full range. The hover always shows the raw score.

    ``layers``: an inclusive (first, last) range to show (a zoom; the scale is computed on those layers).
    ``pickable``: an invisible marker on every cell, so a click selects a neuron (Plotly heatmaps report no
    selection; the marker's customdata is [layer, neuron, score]); ``picked`` (layer, neuron) is ringed.

    NaN marks a neuron a narrower layer does not have (analysis/attribution/ragged.py): a bin holding only
    such entries is blank, with no marker to click, and none of them counts in a scale."""
    if scale not in HEATMAP_SCALES:
        raise ValueError(f"unknown heatmap scale {scale!r}; choose one of {', '.join(HEATMAP_SCALES)}")
    first, last = layers if layers is not None else (0, len(scores) - 1)
    rows = [[float(v) for v in layer] for layer in scores][first:last + 1]
    width = len(rows[0]) if rows else 0
    size = max(1, -(-width // max_columns))
    raw: list[list[float | None]] = []
    neuron_ids: list[list[int | None]] = []
    for row in rows:
        cells: list[float | None] = []
        ids: list[int | None] = []
        for start in range(0, width, size):
            chunk = row[start:start + size]
            real = [i for i in range(len(chunk)) if not math.isnan(chunk[i])]
            offset = max(real, key=lambda i: abs(chunk[i])) if real else None
            cells.append(None if offset is None else chunk[offset])
            ids.append(None if offset is None else start + offset)
        raw.append(cells)
        neuron_ids.append(ids)
    present = [[v for v in row if not math.isnan(v)] for row in rows]  # the neurons each layer has
    magnitudes = np.abs(np.asarray([v for row in present for v in row], dtype=float))
    z, limit, bar_title, note = raw, float(magnitudes.max(initial=0.0)) or 1.0, "IG score", ""
    if scale == "clip":  # each layer's own percentile, then their median: a loud layer is clipped, not the rest
        per_layer = [float(np.percentile(np.abs(row), percentile)) for row in present if row]
        limit = float(np.median(per_layer)) if per_layer else 1.0
        limit = limit or float(magnitudes.max(initial=0.0)) or 1.0
        clipped = int((magnitudes > limit).sum())
        bar_title = f"IG score<br>clipped at ±{limit:.2g}"
        note = (f"colours clipped at ±{limit:.3g} (the median layer's {percentile:g}th percentile of |score|; "
                f"{clipped} neurons beyond)")
    elif scale == "per-layer":
        z = [[None if v is None else v / (max(abs(x) for x in row if x is not None) or 1.0) for v in row]
             for row in raw]
        limit, bar_title, note = 1.0, "score / layer max", "each layer scaled by its largest |score|"
    elif scale == "signed-log":
        nonzero = magnitudes[magnitudes > 0]
        knee = float(np.median(nonzero)) if nonzero.size else 1.0
        z = [[None if v is None else float(np.sign(v) * np.log10(1 + abs(v) / knee)) for v in row] for row in raw]
        limit = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
        bar_title, note = "sign·log10(1+|s|/t)", f"signed log, linear below t = {knee:.3g}"
    columns = list(range(0, width, size))  # each column's first neuron index
    custom = [[[i, r] for i, r in zip(ids, row)] for ids, row in zip(neuron_ids, raw)]
    y = list(range(first, first + len(rows)))
    hover = "layer %{y}<br>neuron %{customdata[0]}<br>score %{customdata[1]:.3g}<extra></extra>"
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=y, customdata=custom, colorscale="RdBu", reversescale=True, zmid=0, zmin=-limit,
        zmax=limit, colorbar=dict(title=dict(text=bar_title, side="right")),
        hovertemplate=hover, hoverinfo="skip" if pickable else None))
    if pickable:
        marks = [(layer, column, ids[i], row[i]) for layer, ids, row in zip(y, neuron_ids, raw)
                 for i, column in enumerate(columns) if ids[i] is not None]
        fig.add_trace(go.Scatter(
            x=[c[1] for c in marks], y=[c[0] for c in marks], mode="markers", showlegend=False,
            customdata=[[c[0], c[2], c[3]] for c in marks],
            marker=dict(size=9, symbol="square-open", color="#111827", opacity=0),
            selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)),
            selectedpoints=[i for i, c in enumerate(marks) if (c[0], c[2]) == picked] if picked else None,
            hovertemplate="layer %{y}<br>neuron %{customdata[1]}<br>score %{customdata[2]:.3g}<br>"
                          "click: this neuron's view<extra></extra>"))
    axis = "neuron" if size == 1 else f"neurons (max |IG| of each {size}, from the index shown)"
    fig.update_layout(title=title + (f"<br><sup>{note}</sup>" if note else ""), xaxis_title=axis,
                      yaxis_title="layer", height=520 if len(rows) > 8 else 200 + 40 * len(rows),
                      margin=dict(l=10, r=10, t=60, b=10), clickmode="event+select", dragmode="zoom")
    return fig


def layer_totals_bar(scores) -> go.Figure:
    """Per layer: the signed sum of its neurons' attributions (bars) and the sum of their magnitudes (line).

    Both are needed: where a normalisation follows the MLP (Gemma 3's post-feedforward RMSNorm) the output
    does not change when all of a layer's activations scale together, so at every point of IG's straight path
    ``sum_i a_i dF/da_i = dF(alpha a)/dalpha`` is about zero (Euler's theorem for a scale-invariant F) and the
    signed sum vanishes even for a layer whose neurons matter a lot; the norm's epsilon moves that layer's
    whole effect into a sliver next to alpha = 0 that no quadrature node reaches.
    """
    totals = [float(sum(v for v in layer if not math.isnan(v))) for layer in scores]  # NaN: a neuron it lacks
    magnitudes = [float(sum(abs(v) for v in layer if not math.isnan(v))) for layer in scores]
    layers = list(range(len(totals)))
    fig = go.Figure([
        go.Bar(x=layers, y=totals, name="signed sum", marker_color="#c2410c",
               hovertemplate="layer %{x}<br>signed sum %{y:.3g}<extra></extra>"),
        go.Scatter(x=layers, y=magnitudes, name="sum of |attribution|", mode="lines+markers",
                   line=dict(color="#1d4ed8"), hovertemplate="layer %{x}<br>sum |IG| %{y:.3g}<extra></extra>"),
    ])
    fig.update_layout(xaxis_title="layer", yaxis_title="attribution", height=300,
                      legend=dict(orientation="h", y=1.12), margin=dict(l=10, r=10, t=30, b=10))
    return fig
