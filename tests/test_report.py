"""The HTML report is self-contained (plotly.js inlined once) and holds the figures, tables and parameters;
masks round-trip through their link text."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.errors import PrunescopeError
from analysis.pruning import NeuronMask
from components.charts_pruning import pruning_bars
from components.report import html_report, table_json


def _summary() -> pd.DataFrame:
    rates = {"baseline": (0.5, 0.3), "pruned": (0.6, 0.1), "random": (0.45, 0.3)}
    row = {"task": "antonyms", "shots": 4, "n": 10}
    for group, (accuracy, copies) in rates.items():
        for metric, value in (("accuracy", accuracy), ("copy_error_rate", copies)):
            row.update({f"{group}_{metric}": value, f"{group}_{metric}_lo": value - 0.05,
                        f"{group}_{metric}_hi": value + 0.1})
    return pd.DataFrame([row])


def test_html_report_is_self_contained_with_figures_tables_and_params():
    figure = pruning_bars(_summary())
    text = html_report("Pruning <test>", {"Comparison": figure, "Again": figure}, {"Summary": _summary()},
                       {"model": "toy", "mask": "0.1,2.3"}, link="http://localhost:8501/?page=pruning",
                       findings=["Against the unpruned model: accuracy changes by 1.0 points (CI -2.0 to 4.0): "
                                 "no evidence of a gain."])
    assert "<p class='finding'>Against the unpruned model: accuracy changes by 1.0 points" in text
    assert text.startswith("<!DOCTYPE html>") and "Pruning &lt;test&gt;" in text
    assert text.count("<script src=") == 0  # nothing fetched from a CDN
    assert text.count("plotly.js v") == 1 and text.count("Plotly.newPlot") == 2  # library inlined once
    assert "<td>antonyms</td>" in text and "0.6000" in text and "0.1000" in text
    assert "<code>0.1,2.3</code>" in text and "?page=pruning" in text


def test_pruning_bars_values_and_missing_conditions():
    figure = pruning_bars(_summary())
    bars = {(t.name, t.xaxis): t for t in figure.data}
    assert list(bars[("Pruned", "x")].y) == [0.6] and list(bars[("Pruned", "x2")].y) == [0.1]
    assert list(bars[("Random masks (mean)", "x")].y) == [0.45]
    whisker = bars[("Pruned", "x")].error_y  # asymmetric: the interval is 0.55-0.70 around 0.6
    assert list(whisker.array) == pytest.approx([0.1]) and list(whisker.arrayminus) == pytest.approx([0.05])
    baseline_only = pruning_bars(_summary().drop(columns=[c for c in _summary() if c.startswith(("pruned", "random"))]))
    assert {t.name for t in baseline_only.data} == {"Unpruned"}


def test_table_json_and_mask_text_round_trip():
    assert json.loads(table_json(pd.DataFrame({"a": [1.5, float("nan")]}))) == [{"a": 1.5}, {"a": None}]
    mask = NeuronMask.from_pairs([(3, 17), (0, 2)])
    assert mask.to_text() == "0.2,3.17" and NeuronMask.from_text(mask.to_text()) == mask
    assert len(NeuronMask.from_text("")) == 0
    with pytest.raises(PrunescopeError, match="'3-17' is not a layer.index pair"):
        NeuronMask.from_text("3-17")
    with pytest.raises(PrunescopeError, match="not a prunescope mask"):
        NeuronMask.from_bytes(b'{"neurons": []}')


def _figure_specs(text: str) -> list[dict]:
    """The figure JSON of every ``Plotly.newPlot`` call in a report (data and layout)."""
    decoder, specs = json.JSONDecoder(), []
    for chunk in text.split("Plotly.newPlot(")[1:]:
        rest = chunk.split(",", 1)[1].lstrip()  # after the element id
        data, end = decoder.raw_decode(rest)
        layout, _ = decoder.raw_decode(rest[end:].lstrip(", \n"))
        specs.append({"data": data, "layout": layout})
    return specs


def test_report_figures_keep_visible_token_labels_and_method_names():
    from components.charts import attention_heatmap
    from components.charts_pruning import relevance_chart

    tokens = ["a", " b", "\n", "c"]
    attention = attention_heatmap([[1, 0, 0, 0], [.5, .5, 0, 0], [.3, .3, .4, 0], [.25] * 4], tokens,
                                  "toy layer 0 (softmax)")
    relevance = relevance_chart(tokens, {"rollout": [.1, .2, .3, .4], "gxi": [.4, .3, .2, .1]}, "relevance")
    text = html_report("Implicit attention", {"attention": attention, "relevance": relevance},
                       {"Token relevance": pd.DataFrame({"token": ["a", "␣b", "⏎", "c"], "gxi": [.4, .3, .2, .1]})})
    heat, bars = _figure_specs(text)
    labels = ["0:a", "1:␣b", "2:⏎", "3:c"]
    assert heat["data"][0]["x"] == labels and heat["data"][0]["y"] == labels
    assert heat["layout"]["xaxis"]["title"]["text"] == "source token"
    assert bars["data"][0]["x"] == labels and bars["data"][0]["y"] == ["rollout", "gxi"]
    assert "<td>␣b</td>" in text and "<td>⏎</td>" in text


@pytest.mark.parametrize("link", ["javascript:alert(document.domain)", " JavaScript:alert(1)",
                                  "data:text/html,<script>alert(1)</script>", "file:///etc/passwd"])
def test_report_links_only_to_http_urls(link):
    text = html_report("Pruning", link=link)
    assert "Open in the app" not in text and "alert" not in text and "passwd" not in text
    assert "Open in the app: <a href='https://demo.example/?page=pruning&amp;k=3'>" in html_report(
        "Pruning", link="https://demo.example/?page=pruning&k=3")


def test_shot_sweep_chart_plots_the_average_change_per_shot_with_its_interval():
    from components.charts_pruning import shot_sweep_chart

    rows = []
    for shots, delta in ((1, 0.10), (4, -0.02), (16, 0.05)):
        for task in ("t", "average"):
            rows.append({"task": task, "shots": shots, "d_accuracy_vs_baseline": delta,
                         "d_accuracy_vs_baseline_lo": delta - 0.03, "d_accuracy_vs_baseline_hi": delta + 0.04,
                         "d_accuracy_vs_random": delta / 2, "d_accuracy_vs_random_lo": delta / 2 - 0.05,
                         "d_accuracy_vs_random_hi": delta / 2 + 0.05})
    fig = shot_sweep_chart(pd.DataFrame(rows[::-1]))  # any row order: sorted by shots, averages only
    unpruned = next(t for t in fig.data if t.name == "vs unpruned")
    assert list(unpruned.x) == [1, 4, 16] and list(unpruned.y) == pytest.approx([10.0, -2.0, 5.0])
    assert list(unpruned.error_y.array) == pytest.approx([4.0, 4.0, 4.0])
    assert list(unpruned.error_y.arrayminus) == pytest.approx([3.0, 3.0, 3.0])
    assert [t.name for t in fig.data] == ["vs unpruned", "vs random masks"]
    assert list(fig.layout.xaxis.ticktext) == ["1", "4", "16"]
