"""Figures of the attribution page's views: one neuron's IG across prompts and its activation over a prompt's
tokens (the neuron view), and the relevance of every earlier token for each answer token. Pure functions of
library results; no streamlit here."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from analysis.attribution.answer_tokens import AnswerAttribution
from analysis.attribution.neuron_view import NeuronProfile
from components.charts import token_axis, token_font, visible_token


def neuron_ig_per_prompt(profile: NeuronProfile) -> go.Figure:
    """One bar per attributed prompt: the neuron's IG there (its share of F(a) - F(0)), the mean as a line."""
    ig = profile.ig
    mean = sum(ig) / len(ig) if ig else 0.0
    fig = go.Figure(go.Bar(x=list(range(len(ig))), y=ig, marker_color=["#b91c1c" if v > 0 else "#1d4ed8" for v in ig],
                           customdata=profile.at_answer, name="IG",
                           hovertemplate="prompt %{x}<br>IG %{y:.3g}<br>activation at the answer %{customdata:.3g}"
                                         "<extra></extra>"))
    fig.add_hline(y=mean, line_dash="dash", line_color="#111827",
                  annotation_text=f"mean {mean:.3g}", annotation_position="top left")
    fig.update_layout(title=f"Neuron {profile.layer}:{profile.neuron}: IG on each of {len(ig)} prompts",
                      xaxis_title="prompt", yaxis_title="IG (share of F(a) − F(0))", height=300,
                      margin=dict(l=10, r=10, t=50, b=10), showlegend=False)
    return fig


def neuron_activation_over_tokens(profile: NeuronProfile, prompt: int) -> go.Figure:
    """The neuron's activation at every token of prompt ``prompt`` (every token labelled; the answer position,
    where IG is read, is the last bar, outlined)."""
    tokens = [f"{i}:{visible_token(t)}"[:24] for i, t in enumerate(profile.tokens[prompt])]
    values = profile.activations[prompt]
    last = len(values) - 1
    fig = go.Figure(go.Bar(
        x=tokens, y=values, marker_color=["#b91c1c" if v > 0 else "#1d4ed8" for v in values],
        marker_line=dict(color=["#111827" if i == last else "rgba(0,0,0,0)" for i in range(len(values))],
                         width=2),
        hovertemplate="%{x}<br>activation %{y:.3g}<extra></extra>"))
    fig.update_layout(title=f"Neuron {profile.layer}:{profile.neuron} over prompt {prompt}'s tokens "
                            "(last bar: the answer position)",
                      xaxis=token_axis(tokens, tickangle=-60 if len(tokens) <= 40 else -90),
                      yaxis_title="activation", height=340, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def answer_attribution_heatmap(result: AnswerAttribution, last: int = 60) -> go.Figure:
    """Rows: answer tokens; columns: the tokens before them (prompt, then the answer), the last ``last`` of
    them (earlier ones are said in the axis title); blank where a token comes after the row's. Each row is its
    own explanation, so the colour scale is shared and signed (red raises the answer token's logit)."""
    width = result.scores.shape[1]
    start = max(0, width - last)
    columns = [f"{i}:{visible_token(t)}"[:24] for i, t in enumerate(result.tokens[:width])][start:]
    rows = [f"{s}:{visible_token(t)}"[:24] for s, t in enumerate(result.answer_tokens)]
    z = [[None if math.isnan(v) else v for v in row[start:]] for row in result.scores.tolist()]
    limit = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=rows, colorscale="RdBu", reversescale=True, zmid=0, zmin=-limit, zmax=limit,
        colorbar=dict(title=dict(text=f"{result.method} relevance", side="right")),
        hovertemplate="answer token %{y}<br>source %{x}<br>%{z:.3g}<extra></extra>"))
    shown = "" if not start else f" (the last {last} of {width}; earlier tokens left out)"
    fig.update_layout(
        title=f"Which tokens each answer token rests on ({result.method}, {result.source} answer)",
        xaxis=token_axis(columns, title=f"source token{shown}", tickangle=-60 if len(columns) <= 40 else -90),
        yaxis=dict(tickmode="array", tickvals=rows, ticktext=rows, autorange="reversed", title="answer token",
                   tickfont=dict(size=token_font(len(rows)))),
        height=260 + 28 * len(rows), margin=dict(l=10, r=10, t=50, b=10))
    return fig
