"""Plotly figure builders. Pure functions of result data: no streamlit here."""

from __future__ import annotations

from collections.abc import Sequence

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


def outcome_bar_chart(summaries: Sequence[dict], title: str | None = None) -> go.Figure:
    """Grouped bars of accuracy / copy-error / echo / other-error rates, one group per run summary.

    ``summaries`` are :meth:`analysis.evaluation.EvalResult.summary` dicts. Groups are labelled with
    :func:`run_label` (numbered, so repeated task/shot settings stay apart); bars show percentages.
    """
    labels = [run_label(s, i) for i, s in enumerate(summaries)]
    hover = [f"model {s.get('model', '?')}, n={s.get('n', '?')}" for s in summaries]
    fig = go.Figure()
    for key, name, colour in OUTCOME_SERIES:
        values = [float(s[key]) for s in summaries]
        fig.add_trace(go.Bar(
            name=name, x=labels, y=values, marker_color=colour, customdata=hover,
            text=[f"{v:.0%}" for v in values], textposition="outside", cliponaxis=False,
            hovertemplate=f"{name}: %{{y:.1%}}<br>%{{customdata}}<extra>%{{x}}</extra>",
        ))
    fig.update_layout(
        barmode="group", title=title, yaxis=dict(range=[0, 1], tickformat=".0%", title="share of prompts"),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), margin=dict(t=60, b=40, l=40, r=10),
        uniformtext=dict(minsize=9, mode="show"),
    )
    return fig


def attention_heatmap(attn, tokens: Sequence[str], title: str = "") -> go.Figure:
    """A T x T attention map (rows: output positions, columns: source tokens) with token labels.

    Implicit attention is signed, so the colour scale is diverging and centred on zero; the hover shows the
    (output, source) token pair and the value.
    """
    values = [[float(v) for v in row] for row in attn]
    limit = max((abs(v) for row in values for v in row), default=1.0) or 1.0
    labels = [f"{i}:{t!r}"[: 24] for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(
        z=values, x=labels, y=labels, colorscale="RdBu", reversescale=True, zmid=0, zmin=-limit, zmax=limit,
        hovertemplate="output %{y}<br>source %{x}<br>%{z:.4g}<extra></extra>"))
    fig.update_layout(title=title, yaxis_autorange="reversed", xaxis_tickangle=-60, height=620,
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def neuron_heatmap(scores, max_columns: int = 256, title: str = "") -> go.Figure:
    """Layers x neurons attribution heatmap. Wide layers are binned into at most ``max_columns`` columns, each
    showing its strongest (largest |score|) neuron's score; hover names the layer and the neuron."""
    rows = [[float(v) for v in layer] for layer in scores]
    width = len(rows[0]) if rows else 0
    size = max(1, -(-width // max_columns))
    z, neuron_ids = [], []
    for row in rows:
        cells, ids = [], []
        for start in range(0, width, size):
            chunk = row[start:start + size]
            offset = max(range(len(chunk)), key=lambda i: abs(chunk[i]))
            cells.append(chunk[offset])
            ids.append(start + offset)
        z.append(cells)
        neuron_ids.append(ids)
    limit = max((abs(v) for r in z for v in r), default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, customdata=neuron_ids, colorscale="RdBu", reversescale=True, zmid=0, zmin=-limit, zmax=limit,
        hovertemplate="layer %{y}<br>neuron %{customdata}<br>score %{z:.3g}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=f"neurons (bins of {size})" if size > 1 else "neuron",
                      yaxis_title="layer", height=520, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def layer_totals_bar(scores) -> go.Figure:
    """Per layer: the signed sum of its neurons' attributions (bars) and the sum of their magnitudes (line).

    Both are needed: where a normalisation follows the MLP (Gemma 3's post-feedforward RMSNorm) the output
    does not change when all of a layer's activations scale together, so at every point of IG's straight path
    ``sum_i a_i dF/da_i = dF(alpha a)/dalpha`` is about zero (Euler's theorem for a scale-invariant F) and the
    signed sum vanishes even for a layer whose neurons matter a lot; the norm's epsilon moves that layer's
    whole effect into a sliver next to alpha = 0 that no quadrature node reaches.
    """
    totals = [float(sum(layer)) for layer in scores]
    magnitudes = [float(sum(abs(v) for v in layer)) for layer in scores]
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
