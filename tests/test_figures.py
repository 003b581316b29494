"""The figure builders say what their colours and axes mean and keep every label readable: softmax attention
on a sequential scale from 0, every token labelled, colour bars titled, the robust heatmap scale, the forest's
two intervals apart, the task-vector labels off the curves, and slides in large
dark text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.charts import attention_heatmap, neuron_heatmap
from components.charts_pruning import change_forest, relevance_chart, spread, task_vector_chart
from tests.test_report import TASKS, _paired_summary

TOKENS = [f" w{i}" if i % 5 else "\n" for i in range(60)]


def _softmax(size: int, seed: int = 0) -> np.ndarray:
    weights = np.tril(np.random.default_rng(seed).random((size, size)))
    return weights / weights.sum(1, keepdims=True)


def test_softmax_attention_is_sequential_from_zero_and_signed_maps_diverge():
    probabilities = attention_heatmap(_softmax(6).tolist(), TOKENS[:6]).data[0]
    assert probabilities.zmin == 0 and probabilities.zmax == pytest.approx(1.0) and probabilities.zmid is None
    assert probabilities.colorscale[0][1] != probabilities.colorscale[-1][1] and not probabilities.reversescale
    assert probabilities.colorscale[0][1].lower() in ("rgb(247,251,255)", "#f7fbff")  # Blues, white at 0
    assert probabilities.colorbar.title.text == "attention weight"
    signed = attention_heatmap([[0.5, 0.0], [-2.0, 1.0]], ["a", "b"]).data[0]
    assert (signed.zmin, signed.zmid, signed.zmax) == (-2.0, 0, 2.0)
    assert signed.colorbar.title.text == "attention (signed)"


@pytest.mark.parametrize("count", [12, 45, 60, 120])
def test_every_token_keeps_its_label(count):
    """Plotly drops category labels it thinks crowded (beyond about 40 tokens only every other one showed)."""
    tokens = TOKENS[:count] if count <= 60 else TOKENS * 2
    labels = [f"{i}:{t.replace(' ', '␣').replace(chr(10), '⏎')}" for i, t in enumerate(tokens)]
    attention = attention_heatmap(_softmax(count).tolist(), tokens)
    relevance = relevance_chart(tokens, {"gxi": list(range(count)), "rollout": [1.0] * count})
    for axis in (attention.layout.xaxis, attention.layout.yaxis, relevance.layout.xaxis):
        assert axis.tickmode == "array" and list(axis.tickvals) == labels and list(axis.ticktext) == labels
        assert 8 <= axis.tickfont.size <= 12
    font = attention.layout.yaxis.tickfont.size
    assert attention.layout.height >= count * (font + 2) + 100  # every row's label has its own height
    assert abs(attention.layout.xaxis.tickangle) == (60 if count <= 40 else 90)  # upright columns when crowded


def test_colour_bars_say_what_the_colour_is_and_relevance_says_rows_are_scaled():
    relevance = relevance_chart(["a", "b"], {"ig": [2.0, -4.0], "rollout": [0.1, 0.3]})
    assert "row's max |value|" in relevance.data[0].colorbar.title.text
    assert [list(row) for row in relevance.data[0].z] == [[0.5, -1.0], [pytest.approx(1 / 3), 1.0]]
    scores = np.random.default_rng(1).normal(size=(3, 8)).tolist()
    for scale in ("clip", "per-layer", "signed-log", "max"):
        assert neuron_heatmap(scores, scale=scale).data[0].colorbar.title.text


def test_the_default_heatmap_scale_survives_one_loud_layer():
    """Layer 0 forty times louder than the rest no longer washes the other 29 layers out."""
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 1e-3, (30, 1536))
    scores[0] *= 40
    fig = neuron_heatmap(scores.tolist())
    heat = fig.data[0]
    typical = np.median([np.percentile(np.abs(row), 99.5) for row in scores[1:]])
    assert heat.zmax == pytest.approx(typical, rel=0.05)  # the quiet layers' range, not layer 0's
    rest = np.abs(np.asarray(heat.z[1:])) / heat.zmax
    assert np.median(rest) > 0.3  # the other layers' colours are visible, not all white
    assert heat.colorbar.title.text == f"IG score<br>clipped at ±{heat.zmax:.2g}"
    assert "median layer's 99.5th percentile" in fig.layout.title.text
    assert fig.layout.xaxis.title.text.startswith("neurons (max |IG| of each 6")  # 1536 folded into 256 columns
    assert len(heat.x) == 256


def test_the_forests_two_intervals_sit_apart():
    fig = change_forest(_paired_summary())
    for panel in ("x", "x2", "x3"):
        unpruned, random = (next(t for t in fig.data if t.name == name and t.xaxis == panel)
                            for name in ("vs unpruned", "vs random masks"))
        assert list(unpruned.y) == pytest.approx([row - 0.17 for row in range(len(TASKS))])
        assert list(random.y) == pytest.approx([row + 0.17 for row in range(len(TASKS))])
        assert list(unpruned.text) == TASKS  # the hover names the task
    assert list(fig.layout.yaxis.ticktext) == TASKS and list(fig.layout.yaxis.tickvals) == list(range(len(TASKS)))
    assert fig.layout.yaxis.autorange == "reversed"  # the first task on top, each "vs unpruned" above "vs random"


def test_task_vector_labels_sit_in_the_margin_apart_from_each_other():
    curves = {"unpruned": [0.2, 0.9, 0.3], "pruned": [0.25, 0.5, 0.7]}
    fig = task_vector_chart(curves, {"unpruned": 0.2, "pruned": 0.25}, icl={"unpruned": 0.7, "pruned": 0.6})
    notes = fig.layout.annotations
    assert len(notes) == 4 and all(n.xref == "paper" and n.x == 1 and n.xanchor == "left" for n in notes)
    heights = sorted(n.y for n in notes)
    assert min(np.diff(heights)) >= 0.12 - 1e-9 and 0 <= heights[0] and heights[-1] <= 1.02
    longest = max(len(part) for n in notes for part in n.text.split("<br>"))
    assert fig.layout.margin.r >= 0.55 * notes[0].font.size * longest  # the labels fit right of the plot
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0.1  # the legend below, not there
    assert spread([0.2, 0.25]) == pytest.approx([0.165, 0.285]) and spread([0.0, 0.0]) == pytest.approx([0, 0.12])


def test_a_slides_figures_have_large_dark_labels():
    from components.charts_pruning import pruning_bars
    from components.present import SLIDE_INK, slide_figure

    figures = [pruning_bars(_paired_summary()), change_forest(_paired_summary()),
               neuron_heatmap(np.ones((30, 64)).tolist()), attention_heatmap(_softmax(6).tolist(), TOKENS[:6])]
    for figure in figures:
        slide = slide_figure(figure)
        axes = [*slide.select_xaxes(), *slide.select_yaxes()]
        assert axes and all(a.tickfont.size >= 16 and a.tickfont.color == SLIDE_INK for a in axes)
        assert all(a.title.font.size >= 16 for a in axes if a.title.text)
        assert slide.layout.legend.font.size >= 16 and slide.layout.height >= 440
        for trace in slide.data:
            if trace.type == "heatmap":
                assert trace.colorbar.tickfont.size >= 16 and trace.colorbar.tickfont.color == SLIDE_INK
    crowded = slide_figure(attention_heatmap(_softmax(60).tolist(), TOKENS))
    assert crowded.layout.xaxis.tickfont.size == 10 and crowded.layout.xaxis.tickfont.color == SLIDE_INK


def test_no_change_is_zero_points_not_minus_zero():
    """A paired change that is zero up to float noise (0.3 - (0.1 + 0.2) = -5.6e-17) or negative zero is drawn
    and hovered as 0, never "-0.0 points"; real changes stay as they were."""
    import math

    from components.charts_pruning import points

    drawn = points(pd.Series([0.3 - (0.1 + 0.2), -0.0, -0.025, 0.5]))
    assert [math.copysign(1, v) for v in drawn[:2]] == [1, 1] and list(drawn) == [0.0, 0.0, -2.5, 50.0]
    summary = _paired_summary()
    summary["d_accuracy_vs_baseline"] = 0.3 - (0.1 + 0.2)
    fig = change_forest(summary)
    trace = next(t for t in fig.data if t.name == "vs unpruned" and t.xaxis == "x")
    assert all(math.copysign(1, x) == 1 and x == 0 for x in trace.x)
