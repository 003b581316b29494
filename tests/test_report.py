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


TASKS = ["vowel-count[heldout]", "antonyms", "first-letter", "copy-required tasks", "other tasks", "average"]
TOKENS = ["<bos>", *(f" word{i}" if i % 4 else "\n" for i in range(1, 45))]  # 45 tokens
GLYPH_PX = 6  # a 12 px label's glyphs are at least this wide on average: a margin narrower than that cuts it


def _paired_summary() -> pd.DataFrame:
    """A prune-eval summary with realistic task names and paired changes (as ``PruneEvalResult.summary()``)."""
    rows = []
    for i, task in enumerate(TASKS):
        row = {"task": task, "shots": 4, "n": 40, "queries": 40}
        for j, metric in enumerate(("accuracy", "copy_error_rate", "echo_rate")):
            for group, value in (("baseline", 0.5), ("pruned", 0.45 + 0.02 * i), ("random", 0.5 - 0.01 * j)):
                row.update({f"{group}_{metric}": value, f"{group}_{metric}_lo": value - 0.07,
                            f"{group}_{metric}_hi": value + 0.08})
            for against, delta in (("baseline", 0.02 * i - 0.05), ("random", 0.01 * j - 0.02)):
                name = f"d_{metric}_vs_{against}"
                row.update({name: delta, f"{name}_lo": delta - 0.04, f"{name}_hi": delta + 0.05, f"{name}_p": 0.2,
                            f"{name}_p_holm": 0.6})
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def app_template(monkeypatch):
    """Figures built as in the app: importing streamlit makes its placeholder template plotly's default."""
    import plotly.io as pio
    import streamlit  # noqa: F401 - registers the "streamlit" template

    monkeypatch.setattr(pio.templates, "default", "streamlit")


def _left_needed(labels, title: bool) -> float:
    return GLYPH_PX * max(len(str(label)) for label in labels) + (12 if title else 0)


def test_report_figures_keep_tick_labels_and_margins_that_fit_them(app_template):
    """A report of figures made inside the app (Streamlit's template, whose placeholders only the app fills in,
    and 10 px margins the app's theme widened) had no token labels, "0 0 0 0" for per-layer ticks, task names cut
    to "t]" and "ns", and the heatmap's axis title over its last row."""
    import numpy as np

    from components.charts import attention_heatmap, layer_totals_bar, neuron_heatmap
    from components.charts_pruning import change_forest

    rng = np.random.default_rng(0)
    attention = np.tril(rng.random((len(TOKENS), len(TOKENS))))
    scores = rng.normal(0, 1e-3, (30, 1536)) + 0.02 * rng.normal(size=1536) * (np.arange(30) == 0)[:, None]
    figures = {"attention": attention_heatmap((attention / attention.sum(1, keepdims=True)).tolist(), TOKENS),
               "heat": neuron_heatmap(scores.tolist(), title="mean attribution per neuron"),
               "totals": layer_totals_bar(scores.tolist()),
               "forest": change_forest(_paired_summary(), "paired changes")}
    assert figures["attention"].layout.template.layout.colorway[0] == "#000001"  # built with the app's template
    text = html_report("Everything", figures, {"Summary": _paired_summary()})
    specs = dict(zip(figures, _figure_specs(text)))
    for name, spec in specs.items():
        assert "#000001" not in json.dumps(spec["layout"]["template"]), name  # a real template, not placeholders
        axes = [key for key in spec["layout"] if key.startswith(("xaxis", "yaxis"))]
        assert axes and all(spec["layout"][key]["automargin"] for key in axes), name

    attention_spec = specs["attention"]
    labels = [f"{i}:{t.replace(' ', '␣').replace(chr(10), '⏎')}" for i, t in enumerate(TOKENS)]
    assert attention_spec["data"][0]["x"] == labels and attention_spec["data"][0]["y"] == labels
    margin = attention_spec["layout"]["margin"]
    assert margin["l"] >= _left_needed(labels, title=True)  # "44:␣word44" and "output position" beside it
    assert margin["b"] >= GLYPH_PX * len("44:␣word44") * np.sin(np.radians(60)) + 12

    heat = specs["heat"]["layout"]
    assert heat["yaxis"]["title"]["text"] == "layer" and heat["margin"]["l"] >= _left_needed(["29"], title=True)
    assert heat["margin"]["b"] >= 12 + 12 + 12  # tick labels, then the axis title below them, not over a row

    totals = specs["totals"]
    sums = totals["data"][1]["y"]
    assert totals["layout"]["margin"]["l"] >= _left_needed([f"{max(sums):.2f}"], title=True)  # not "0 0 0 0"

    forest = specs["forest"]
    shown = forest["layout"]["yaxis"].get("ticktext") or forest["data"][0]["y"]
    assert set(TASKS) <= set(shown)
    assert forest["layout"]["margin"]["l"] >= _left_needed(TASKS, title=False)  # "vowel-count[heldout]" whole

    table = text.split("<h2>Summary</h2>", 1)[1]
    assert table.startswith("<div class='table'>") and ".table{overflow-x:auto" in text  # scrolls, in the page
