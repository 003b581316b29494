"""Headless app tests (streamlit AppTest) on a tiny random Llama, plus the pure chart builders."""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import patch

import pytest
from streamlit.testing.v1 import AppTest

from analysis.errors import TaskError
from analysis.models.tiny import build_tiny_model
from components.charts import outcome_bar_chart
from components.widgets import HUB_OPTION, MODEL_KEY, UPLOAD_OPTION, parse_upload
from tests.app_helpers import MAIN

TIMEOUT = 60
GOOD_CSV = b"input,output\n" + b"".join(f"w{i},{i}\n".encode() for i in range(6))
BAD_CSV = b"question,answer\ncat,dog\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def app(tiny_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("PRUNESCOPE_MODEL", str(tiny_dir))
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _percent(metric) -> float:
    return float(metric.value.rstrip("%")) / 100


def _evaluate(at: AppTest, shots: int = 1, n: int = 5) -> AppTest:
    if not at.header or at.header[0].value != "Evaluate":
        at.switch_page("views/evaluate.py").run()
    at.number_input(key="_w_shots").set_value(shots)
    at.number_input(key="_w_n").set_value(n)
    at.button(key="eval_run").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _chart_bars(at: AppTest) -> dict[str, list[float]]:
    (chart,) = at.get("plotly_chart")
    figure = json.loads(chart.proto.spec)
    return {trace["name"]: trace["y"] for trace in figure["data"]}


def test_renders_with_model_description(app, tiny_dir):
    loaded = app.session_state[MODEL_KEY]
    assert loaded is not None and loaded.family == "transformer"
    assert loaded.describe() in [s.value for s in app.success]
    assert app.text_input(key="model_local_dir").value == str(tiny_dir)
    assert app.sidebar.caption[0].value.startswith("Resolved: cpu")
    assert not app.error
    assert app.header[0].value == "Model & task"
    assert {m.label: m.value for m in app.metric}["Layers"] == "2"
    assert "⟶ gold:" in app.code[0].value  # the prompt preview
    app.switch_page("views/evaluate.py").run()
    assert app.header[0].value == "Evaluate" and app.button(key="eval_run").disabled is False


def test_rerun_keeps_sidebar(app):
    # A folder named app/pages would switch Streamlit to legacy pages-directory mode: reruns then skip
    # main.py (no sidebar). Pages live in app/views instead.
    assert not (MAIN.parent / "pages").exists()
    app.run()
    assert not app.exception
    assert app.selectbox(key="model_choice").value and app.session_state[MODEL_KEY] is not None
    assert app.sidebar.success


def test_evaluate_shows_metrics_chart_and_table(app):
    _evaluate(app, shots=1, n=5)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["n"] == "5"
    rates = [_percent(m) for m in app.metric if m.label != "n"]
    assert sum(rates) == pytest.approx(1.0, abs=0.0021)  # four values rounded to 0.1%
    (run,) = app.session_state["eval_runs"]
    summary = run["summary"]
    assert summary["n"] == 5 and summary["shots"] == 1
    assert summary["accuracy"] + summary["copy_error_rate"] + summary["echo_rate"] + summary["other_error_rate"] \
        == pytest.approx(1.0)
    bars = _chart_bars(app)
    assert bars["Accuracy"] == [summary["accuracy"]]
    assert bars["Copy errors"] == [summary["copy_error_rate"]]
    table = app.dataframe[0].value
    assert len(table) == 5 and set(table["outcome"]) <= {"correct", "copy", "echo", "other"}
    assert list(table["prediction"]) == list(run["records"]["prediction"])


def test_runs_accumulate_and_clear(app):
    _evaluate(app, shots=1, n=3)
    _evaluate(app, shots=2, n=3)
    assert [r["summary"]["shots"] for r in app.session_state["eval_runs"]] == [1, 2]
    assert len(_chart_bars(app)["Accuracy"]) == 2
    assert not any("settings above have changed" in i.value for i in app.info)
    app.number_input(key="_w_n").set_value(4).run()  # the last run's numbers stay, marked as another setting's
    assert any("settings above have changed" in i.value for i in app.info)
    app.button(key="eval_clear").click().run()
    assert not app.exception
    assert app.session_state["eval_runs"] == [] and not app.metric


def test_bad_upload_shows_error_and_keeps_results(app):
    _evaluate(app, shots=1, n=3)
    app.selectbox(key="_w_task").set_value(UPLOAD_OPTION).run()
    assert app.button(key="eval_run").disabled  # no task until a valid file
    app.file_uploader(key="task_upload").set_value(("bad.csv", BAD_CSV, "text/csv")).run()
    assert not app.exception
    assert any("expected the columns input,output" in e.value for e in app.error)
    assert app.metric and app.metric[-1].value == "3"  # earlier results stay visible
    app.file_uploader(key="task_upload").set_value(("good.csv", GOOD_CSV, "text/csv")).run()
    assert not app.error
    _evaluate(app, shots=1, n=4)
    assert app.session_state["eval_runs"][-1]["summary"]["task"] == "good.csv"  # the file's name everywhere
    assert app.subheader[0].value.startswith("good.csv, 1-shot, 4 prompts")
    assert app.query_params["upload"] in ("good.csv", ["good.csv"])
    assert app.session_state["setting_upload"] == "good.csv"  # what reports list (test below)


def test_a_link_to_an_uploaded_task_says_the_file_is_missing(tiny_dir, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_MODEL", str(tiny_dir))
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "evaluate", "task": UPLOAD_OPTION, "upload": "my<b>tasks</b>.csv"})
    at.run()
    assert not at.exception
    (warning,) = at.warning
    assert "uploaded task file, `my_b_tasks_b_.csv`, which this session does not have" in warning.value
    assert at.button(key="eval_run").disabled


def test_the_task_label_of_reports_names_the_uploaded_file():
    from components import state

    with patch.object(state, "get", {"task": state.UPLOAD_TASK, "upload": "pairs.json"}.get):
        assert state.task_label() == "pairs.json (uploaded)"
    with patch.object(state, "get", {"task": "antonyms", "upload": ""}.get):
        assert state.task_label() == "antonyms"


def test_too_many_shots_error_keeps_results(app):
    _evaluate(app, shots=1, n=3)
    app.selectbox(key="_w_task").set_value(UPLOAD_OPTION).run()
    tiny_task = b"input,output\na,b\nc,d\n"  # 2 pairs: 8-shot prompts are impossible
    app.file_uploader(key="task_upload").set_value(("two.csv", tiny_task, "text/csv")).run()
    _evaluate(app, shots=8, n=3)
    assert any("need at least 9" in e.value for e in app.error)
    assert len(app.session_state["eval_runs"]) == 1 and app.metric[-1].value == "3"


def test_unknown_model_shows_error(app):
    app.text_input(key="model_local_dir").set_value("/nonexistent/prunescope-model").run()
    assert not app.exception
    assert len(app.error) == 1 and "unknown model" in app.error[0].value
    assert app.session_state[MODEL_KEY] is None
    assert any("Pick a working model" in i.value for i in app.info)


def test_hub_option_waits_for_an_id(app):
    app.selectbox(key="model_choice").set_value(HUB_OPTION).run()
    assert not app.exception and not app.error
    assert app.text_input(key="model_hub_id").value == ""
    assert any("Pick a working model" in i.value for i in app.info)


def test_parse_upload_rejects_wrong_columns():
    with pytest.raises(TaskError, match="expected the columns input,output"):
        parse_upload(BAD_CSV, "bad.csv")
    assert len(parse_upload(GOOD_CSV, "good.csv").pairs) == 6


def test_outcome_bar_chart_values():
    summaries = [
        {"model": "m", "task": "antonyms", "shots": 4, "n": 10, "accuracy": 0.5, "copy_error_rate": 0.3,
         "echo_rate": 0.0, "other_error_rate": 0.2},
        {"model": "m", "task": "antonyms", "shots": 4, "n": 10, "accuracy": 0.25, "copy_error_rate": 0.0,
         "echo_rate": 0.5, "other_error_rate": 0.25},
    ]
    fig = outcome_bar_chart(summaries)
    bars = {trace.name: trace for trace in fig.data}
    assert list(bars) == ["Accuracy", "Copy errors", "Echoes", "Other errors"]
    assert list(bars["Echoes"].y) == [0.0, 0.5]
    assert list(bars["Accuracy"].y) == [0.5, 0.25]
    assert list(bars["Copy errors"].y) == [0.3, 0.0]
    assert list(bars["Other errors"].y) == [0.2, 0.25]
    assert list(bars["Accuracy"].text) == ["50%", "25%"]
    assert len(set(bars["Accuracy"].x)) == 2  # repeated settings stay separate groups
    assert fig.layout.barmode == "group" and tuple(fig.layout.yaxis.range) == (0, 1)
    crowded = outcome_bar_chart(summaries * 3)  # six runs: 24 bars, no room for their numbers ("75%75%")
    assert all(trace.text is None for trace in crowded.data) and crowded.layout.uniformtext.mode == "hide"


def test_attention_page_for_a_mamba_model(tmp_path_factory, monkeypatch):
    mamba = build_tiny_model("mamba", tmp_path_factory.mktemp("tiny") / "mamba")
    monkeypatch.setenv("PRUNESCOPE_MODEL", str(mamba))
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.switch_page("views/attention.py").run()
    assert not at.exception, [e.value for e in at.exception]
    last = at.session_state["attn_last"]
    assert last["kind"] == "implicit" and "".join(last["tokens"]) == "a:3 b:5 c:1 d:7 | b:5 a:"
    next(box for box in at.selectbox if box.label == "Form").set_value("unified")
    at.text_input(key="attn_reduce").set_value("median").run()
    assert not at.exception and "unknown reduction 'median'" in at.error[0].value


def test_attention_heatmap_values_and_scale():
    from components.charts import attention_heatmap

    fig = attention_heatmap([[0.5, 0.0], [-2.0, 1.0]], ["a", "b"])
    heat = fig.data[0]
    assert [list(r) for r in heat.z] == [[0.5, 0.0], [-2.0, 1.0]]
    assert heat.zmin == -2.0 and heat.zmax == 2.0 and heat.zmid == 0
    assert list(heat.x) == ["0:a", "1:b"]
    assert fig.layout.xaxis.title.text == "source token" and fig.layout.yaxis.title.text == "output position"


def test_attribution_page_runs_ig_and_shows_top_neurons(app):
    app.switch_page("views/attribution.py").run()
    assert not app.exception
    app.selectbox(key="_w_task").set_value("vowel-count")
    app.number_input(key="ig_n").set_value(2)
    app.number_input(key="_w_shots").set_value(2)
    app.number_input(key="ig_steps").set_value(3)
    app.button(key="ig_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    shown = app.session_state["ig_result"]["value"]
    assert tuple(shown["result"].scores.shape) == (2, 64)
    top = shown["top"]
    assert len(top) == 20 and (top.score.abs().diff().dropna() <= 1e-12).all()  # sorted by |score|
    assert app.dataframe[0].value.shape[0] == 20
    assert app.subheader[0].value.startswith("vowel-count, 2-shot")  # the heading names task and settings
    evaluations = shown["result"].meta["evaluations_per_layer"]  # what the rule spent, not its "steps"
    assert app.subheader[0].value.endswith(f"the adaptive rule ({evaluations:.1f} evaluations per layer)")
    assert not app.error, [e.value for e in app.error]  # the defaults are all valid choices: no red line
    app.selectbox(key="_w_task").set_value("antonyms").run()  # a change hides the old result and says so
    assert not app.get("plotly_chart") and not app.dataframe
    assert any("The last attribution was for other settings (vowel-count, 2-shot" in i.value for i in app.info)


def test_whitespace_tokens_are_visible_in_labels_tables_and_chips():
    from components.charts import attention_heatmap, visible_token
    from components.charts_pruning import relevance_chart
    from components.widgets import token_chips

    assert visible_token(" 2") == "␣2" and visible_token("\n") == "⏎" and visible_token("a\tb") == "a⇥b"
    tokens = ["Input", ":", " ", "\n"]
    assert list(attention_heatmap([[1.0] * 4] * 4, tokens).data[0].x) == ["0:Input", "1::", "2:␣", "3:⏎"]
    assert list(relevance_chart(tokens, {"raw": [1.0] * 4}).data[0].x)[2:] == ["2:␣", "3:⏎"]
    assert ">␣</span>" in token_chips(tokens, [1, 2, 3, 4]) and ">⏎</span>" in token_chips(tokens, [1, 2, 3, 4])


def test_neuron_heatmap_scales_resist_one_outlier():
    import numpy as np

    from components.charts import neuron_heatmap

    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.01, size=(4, 1000))
    scores[0, 68] = 3.3  # one outlier would wash a linear full-range map out
    clip = neuron_heatmap(scores.tolist(), scale="clip")
    expected = np.median([np.percentile(np.abs(row), 99.5) for row in scores])  # the median layer's percentile
    assert clip.data[0].zmax == pytest.approx(expected) and clip.data[0].zmax < 0.05
    assert f"{expected:.3g}" in clip.layout.title.text and "22 neurons beyond" in clip.layout.title.text
    assert clip.data[0].colorbar.title.text == f"IG score<br>clipped at ±{expected:.2g}"  # the bar says so
    per_layer = neuron_heatmap(scores.tolist(), scale="per-layer", max_columns=1000)
    assert [max(abs(v) for v in row) for row in per_layer.data[0].z] == pytest.approx([1.0] * 4)
    assert per_layer.data[0].customdata[0][68][1] == pytest.approx(3.3)  # the hover keeps the raw score
    log = neuron_heatmap(scores.tolist(), scale="signed-log", max_columns=1000)
    knee = np.median(np.abs(scores))
    assert log.data[0].z[0][68] == pytest.approx(np.log10(1 + 3.3 / knee))
    order = np.argsort(scores[1])
    assert np.all(np.diff(np.asarray(log.data[0].z[1])[order]) >= 0)  # monotonic: signs and order kept
    with pytest.raises(ValueError, match="unknown heatmap scale"):
        neuron_heatmap(scores.tolist(), scale="loud")


def test_neuron_heatmap_bins_keep_the_strongest_neuron():
    from components.charts import layer_totals_bar, neuron_heatmap

    scores = [[0.1, -0.9, 0.2, 0.3], [0.0, 0.1, 0.5, -0.4]]
    fig = neuron_heatmap(scores, max_columns=2, scale="max")
    assert [list(r) for r in fig.data[0].z] == [[-0.9, 0.3], [0.1, 0.5]]
    assert [[c[0] for c in r] for r in fig.data[0].customdata] == [[1, 3], [1, 2]]  # the strongest neuron's index
    assert list(fig.data[0].x) == [0, 2]  # columns named by neuron index, not bin number
    assert fig.data[0].zmax == pytest.approx(0.9)
    totals = layer_totals_bar(scores)
    assert list(totals.data[0].y) == pytest.approx([-0.3, 0.2])  # signed sums
    assert list(totals.data[1].y) == pytest.approx([1.5, 1.0])  # sums of magnitudes


def test_an_upload_is_parsed_once_per_file_content(app, monkeypatch):
    import components.widgets as widgets

    calls = []
    real = widgets.parse_task_bytes
    monkeypatch.setattr(widgets, "parse_task_bytes", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    app.switch_page("views/evaluate.py").run()
    app.selectbox(key="_w_task").set_value(UPLOAD_OPTION).run()
    app.file_uploader(key="task_upload").set_value(("good.csv", GOOD_CSV, "text/csv")).run()
    app.number_input(key="_w_n").set_value(3).run()  # reruns with the same file
    app.run()
    assert calls == ["good.csv"]
    app.file_uploader(key="task_upload").set_value(("good.csv", GOOD_CSV + b"w9,9\n", "text/csv")).run()
    assert calls == ["good.csv", "good.csv"] and not app.exception


def test_neuron_view_picks_zooms_and_adds_to_the_mask(app):
    """The neuron view under the heatmap: the strongest neuron by default, a typed or clicked neuron, a zoom at
    full resolution, one-click "add to mask", and a bad neuron as one red line."""
    app.switch_page("views/attribution.py").run()
    app.selectbox(key="_w_task").set_value("vowel-count")
    app.number_input(key="ig_n").set_value(3)
    app.number_input(key="_w_shots").set_value(2)
    app.button(key="ig_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    result = app.session_state["ig_result"]["value"]["result"]
    layer, neuron, _ = result.top_k(1)[0]
    assert any(s.value == f"Neuron {layer}:{neuron}" for s in app.subheader)  # the strongest by default
    top_prompts = app.dataframe[1].value
    assert list(top_prompts.columns[:5]) == ["prompt", "peak", "peak_token", "at_answer", "ig"]
    assert list(top_prompts["peak"]) == sorted(top_prompts["peak"], reverse=True) and len(top_prompts) == 3
    assert list(top_prompts["ig"]) == pytest.approx(
        [float(result.per_prompt[p, layer, neuron]) for p in top_prompts["prompt"]])

    app.text_input(key="_w_ig_neuron").set_value("1:5").run()
    assert any(s.value == "Neuron 1:5" for s in app.subheader) and not app.error
    app.button(key="neuron_add").click().run()
    assert app.session_state["setting_mask"] == "1.5"  # the pruning page's mask, in the link
    assert any("the mask has 1 neurons" in s.value for s in app.success)

    app.session_state["ig_heat"] = {"selection": {"points": [{"customdata": [0, 17, 0.1]}], "point_indices": [0],
                                                  "box": [], "lasso": []}}
    app.run()
    assert app.session_state["setting_ig_neuron"] == "0:17"  # a click on the heatmap picks the neuron
    assert any(s.value == "Neuron 0:17" for s in app.subheader)

    app.text_input(key="_w_ig_zoom").set_value("1-1").run()
    heat = app.get("plotly_chart")[0].proto.spec
    figure = json.loads(heat)
    assert figure["data"][0]["y"] == [1] and len(figure["data"][0]["x"]) == 64  # every neuron of layer 1

    app.text_input(key="_w_ig_neuron").set_value("9:9").run()
    assert [e.value for e in app.error] == ["neuron '9:9': the model has layers 0-1"]
    assert not app.exception


def test_per_answer_token_view_on_a_click(app):
    """The attribution page's per-answer-token view: nothing until the click, then one heatmap row per answer
    token with the library's scores (NaN after each row's own position drawn blank)."""
    from analysis.attribution.answer_tokens import attribute_answer

    app.switch_page("views/attribution.py").run()
    app.selectbox(key="_w_task").set_value("vowel-count")
    app.number_input(key="ig_n").set_value(2)
    app.number_input(key="_w_shots").set_value(2)
    app.button(key="ig_run").click().run()
    assert not app.exception and not app.error, ([e.value for e in app.exception], [e.value for e in app.error])
    assert app.session_state["ig_result"], [i.value for i in app.info]
    charts = len(app.get("plotly_chart"))
    app.selectbox(key="answer_method").set_value("gxi")
    app.radio(key="answer_source").set_value("gold")
    app.button(key="answer_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert len(app.get("plotly_chart")) == charts + 1
    figure = json.loads(app.get("plotly_chart")[-1].proto.spec)
    result = app.session_state["ig_result"]["value"]["result"]
    item = result.inputs[0]
    loaded = app.session_state["_memo"]  # the page's memo holds the same attribution
    expected = next(v for k, v in loaded.items() if k[0] == "answer-attribution")
    assert len(figure["data"][0]["y"]) == len(expected.answer_ids) >= 1
    first = [v for v in figure["data"][0]["z"][0] if v is not None]
    assert first == pytest.approx(expected.scores[0, :expected.prompt_length].tolist(), rel=1e-6)
    assert expected.source == "gold" and expected.tokens[expected.prompt_length:] == expected.answer_tokens
    assert attribute_answer  # the library call the view makes (checked against autograd in test_answer_tokens)
    assert item.prompt.gold.strip() in "".join(expected.answer_tokens)
