"""AppTest of the pruning, task-vector, compare and attention pages and their bad inputs (the deep links and Copy
link: test_app_pages_links.py; the helpers every AppTest module shares: tests/app_helpers.py)."""

from __future__ import annotations

import json

import pytest

from analysis.pruning import NeuronMask
from components.widgets import MODEL_KEY
from tests.app_helpers import TIMEOUT, metrics_of, no_exception, open_app, st_mask_size


def test_pruning_toggle_changes_the_numbers(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", shots=2, n=12, k=150)
    assert any("No copying scores" in i.value for i in at.info)
    at.number_input(key="_w_score_n").set_value(4)
    at.number_input(key="_w_score_steps").set_value(4)
    at.button(key="score_run").click()
    no_exception(at.run())
    at.multiselect(key="prune_tasks").set_value(["vowel-count[heldout]", "next-letter"])
    no_exception(at.run())
    before = metrics_of(at)
    assert set(before) == {"Accuracy, unpruned", "Copy errors, unpruned"}
    assert "Pruned" not in json.dumps([c.proto.spec for c in at.get("plotly_chart") if c.key == "prune_bars"])
    job = at.session_state["speculative_job"]  # the pruned runs, speculated while Prune is off
    assert job.wait(TIMEOUT) and job.state == "done", job.error

    def no_generation(*args, **kwargs):
        raise AssertionError("switching Prune on computed instead of reading the speculated runs")

    from analysis.evaluation import icl

    generate_answers = icl.generate_answers
    monkeypatch.setattr("analysis.evaluation.icl.generate_answers", no_generation)
    at.toggle(key="prune_on").set_value(True)
    no_exception(at.run())
    assert not at.error, [e.value for e in at.error]
    after = metrics_of(at)
    assert after["Accuracy, unpruned"] == before["Accuracy, unpruned"]
    assert (after["Accuracy, pruned"], after["Copy errors, pruned"]) != (before["Accuracy, unpruned"],
                                                                        before["Copy errors, unpruned"])
    summary = at.session_state["prune_summary"]
    assert {"pruned_accuracy", "random_accuracy", "d_accuracy_vs_random_lo", "d_echo_rate_vs_baseline_p"} \
        <= set(summary.columns)
    assert list(summary.task) == ["vowel-count[heldout]", "next-letter", "average"]
    bars = json.loads(next(c for c in at.get("plotly_chart") if c.key == "prune_bars").proto.spec)
    assert {t["name"] for t in bars["data"]} == {"Unpruned", "Pruned", "Random masks (mean)"}
    pruned_bar = next(t for t in bars["data"] if t["name"] == "Pruned" and t.get("xaxis", "x") == "x")
    average = summary.iloc[-1]
    assert pruned_bar["error_y"]["array"][-1] == pytest.approx(average.pruned_accuracy_hi - average.pruned_accuracy)
    sentences = [i.value for i in [*at.info, *at.success, *at.error, *at.warning]]
    assert any(t.startswith("Against the unpruned model: copy errors") for t in sentences)
    assert any(t.startswith("Against random masks of the same size: ") for t in sentences)
    assert {c.key for c in at.get("plotly_chart")} >= {"prune_bars", "prune_changes"}
    assert at.number_input(key="prune_controls").value == 3
    assert st_mask_size(at) == 150
    assert at.query_params["prune"] in ("1", ["1"])  # the link opens the page pruned
    at.button(key="general_run").click()  # general text: the same mask and random masks, paired by passage
    no_exception(at.run())
    general = [t.value for t in [*at.info, *at.warning] if t.value.startswith("On general text (100 passages)")]
    assert len(general) == 1 and "random masks of the same size" in general[0], general
    at.multiselect(key="sweep_shots").set_value([1, 2])  # the mask's effect at several shot counts
    at.button(key="shot_sweep_run").click()
    no_exception(at.run())
    sweep = json.loads(next(c for c in at.get("plotly_chart") if c.key == "shot_sweep").proto.spec)
    accuracy = next(t for t in sweep["data"] if t["name"] == "vs unpruned" and t.get("xaxis", "x") == "x")
    assert accuracy["x"] == [1, 2] and len(accuracy["error_y"]["array"]) == 2
    assert any(c.value.startswith("2-shot: Against the unpruned model:") for c in at.caption)
    monkeypatch.setattr("analysis.evaluation.icl.generate_answers", generate_answers)  # new conditions compute
    at.button(key="baselines_run").click()  # magnitude pruning, an instruction prompt, calibration: same prompts
    no_exception(at.run())
    methods = next(d.value for d in at.dataframe if "method" in d.value.columns)
    assert list(methods.method) == ["copying mask", "magnitude pruning (same k)", "instruction prompt",
                                    "contextual calibration"]
    at.toggle(key="prune_on").set_value(False)
    no_exception(at.run())
    assert metrics_of(at) == before  # back to the cached unpruned numbers
    assert "prune" not in at.query_params


def test_pruning_page_bad_inputs_show_errors(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", mask="0.1,9.4")
    assert any("layer 9 does not exist" in e.value for e in at.error)
    at.session_state["setting_mask"] = ""
    at.file_uploader(key="mask_upload").set_value(("m.json", b"{not json", "application/json"))
    no_exception(at.run())
    assert any("m.json: line 1: invalid JSON" in e.value for e in at.error)
    good = json.dumps(NeuronMask.from_pairs([(0, 1), (1, 2)]).to_json()).encode()
    at.file_uploader(key="mask_upload").set_value(("m.json", good, "application/json"))
    no_exception(at.run())
    assert not at.error and at.session_state["setting_mask"] == "0.1,1.2"
    assert any("2 neurons (uploaded)" in c.value for c in at.caption)
    floats = b'{"format": "prunescope-mask/1", "neurons": [[1.7, 2.9]]}'  # once read as neuron (1, 2)
    at.file_uploader(key="mask_upload").set_value(("floats.json", floats, "application/json"))
    no_exception(at.run())
    assert [e.value for e in at.error] == ["mask file floats.json: neurons must be \\[layer, index\\] pairs of "
                                           "non-negative integers (got \\[1.7, 2.9\\])"]  # Markdown-escaped
    assert at.session_state["active_mask"]["mask"] is None and at.session_state["setting_mask"] == ""
    assert any(c.value.startswith("No mask is active") for c in at.caption)  # the earlier upload is gone
    assert not any("(uploaded)" in c.value for c in at.caption) and at.toggle(key="prune_on").disabled


def test_scoring_options_layer_range_and_mask_table(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", score_n=4, score_steps=2, score_shots=2,
                score_target="copy-prob", layers="2-3", k=5)
    assert at.selectbox(key="_w_score_target").value == "copy-prob"
    at.button(key="score_run").click()
    no_exception(at.run())
    mask = at.session_state["active_mask"]["mask"]
    assert len(mask) == 5 and set(mask.by_layer()) <= {2, 3}
    neurons = next(d.value for d in at.dataframe
                   if list(d.value.columns) == ["layer", "neuron", "score", "selected in resamples"])
    assert len(neurons) == 5 and set(neurons.layer) <= {2, 3} and neurons.score.is_monotonic_decreasing
    assert ((neurons["selected in resamples"] >= 0) & (neurons["selected in resamples"] <= 1)).all()
    assert any("Scores from 4 of 4 prompts (all prompts)" in c.value for c in at.caption)
    assert any(c.value.startswith("Stability: over 200 bootstrap resamples of the 4 scoring prompts, the top 5")
               for c in at.caption)
    assert {"score_target": "copy-prob", "layers": "2-3"}.items() <= dict(at.query_params).items()
    # the toy transformer never copies on these prompts: 'copied' has nothing to score, and says so
    at.selectbox(key="_w_score_prompts").set_value("copied")
    no_exception(at.run())
    assert any("none of the 4 scoring prompts is a copy error" in e.value for e in at.error)
    assert at.query_params["score_prompts"] in ("copied", ["copied"])


def test_k_larger_than_the_neuron_count(monkeypatch, tmp_path):
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", k=10**6)  # e.g. a link made on a bigger model
    assert any("k=1000000 is out of range: the model has 1536 neurons; using k=1536" in e.value for e in at.error)
    at.number_input(key="_w_score_n").set_value(1)
    at.number_input(key="_w_score_steps").set_value(2)
    at.button(key="score_run").click()
    no_exception(at.run())
    assert not at.error and st_mask_size(at) == 1536


def test_attention_page_beside_a_transformer_with_relevance_and_faithfulness(monkeypatch):
    at = open_app("toy-rwkv", monkeypatch, "views/attention.py", rel_methods="raw,rollout,gradattn,gxi,lrp")
    keys = {c.key for c in at.get("plotly_chart")}
    assert {"attn_chart", "attn_other_chart", "rel_chart"} <= keys
    assert "lrp" in at.multiselect(key="rel_methods").value  # RWKV's conservative rules (MambaLRP-style)
    at.number_input(key="faith_n").set_value(2)
    at.button(key="faith_run").click()
    no_exception(at.run())
    table = at.session_state["faith_table"]["value"]
    assert set(table.method) == {"raw", "rollout", "gradattn", "gxi", "lrp", "random"}
    tables_with_result = len(at.dataframe)
    at.number_input(key="faith_n").set_value(3)  # another prompt count: the old table is not shown under it
    no_exception(at.run())
    assert len(at.dataframe) == tables_with_result - 1
    assert any("last faithfulness test was for other settings" in i.value and "2 prompts" in i.value
               for i in at.info)
    at.text_area(key="attn_text").set_value("   ")
    no_exception(at.run())
    assert [e.value for e in at.error] == ["the text is empty: type or paste a text to look at"]  # one line


def test_task_vectors_and_compare_pages(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/task_vectors.py", task="to-upper", shots=2, mask="0.1,1.5")
    at.number_input(key="tv_n").set_value(4)
    at.number_input(key="tv_dummies").set_value(1)
    at.button(key="tv_run").click()
    no_exception(at.run())
    results, label = at.session_state["tv_results"]["value"], at.session_state["tv_results"]["label"]
    assert list(results) == ["unpruned", "pruned"] and len(results["pruned"].table) == 4
    assert label.startswith("to-upper, 2-shot, 4 queries, 1 dummies") and at.subheader[0].value == label
    shown = [m.value for m in [*at.info, *at.success]]
    assert all(f"{name}: {r.verdict()}" in shown for name, r in results.items())
    at.number_input(key="tv_n").set_value(5)  # other settings: the old curve is not shown under them
    no_exception(at.run())
    assert any("for other settings (to-upper, 2-shot, 4 queries" in i.value for i in at.info)
    assert "tv_chart" not in {c.key for c in at.get("plotly_chart")}
    fresh = open_app("toy-transformer", monkeypatch, "views/task_vectors.py", task="to-upper", shots=2,
                   mask="0.1,1.5")  # a new session: the stored run shows without a click
    fresh.number_input(key="tv_n").set_value(4)
    fresh.number_input(key="tv_dummies").set_value(1)
    no_exception(fresh.run())
    assert "tv_chart" in {c.key for c in fresh.get("plotly_chart")}
    assert fresh.session_state["tv_results"]["label"] == label
    at.switch_page("views/compare.py").run()
    at.session_state["setting_n"] = 4
    at.selectbox(key="cmp_mask_B").set_value("active mask")
    at.button(key="cmp_run").click()
    no_exception(at.run())
    runs = at.session_state["cmp_runs"]["value"]["runs"]
    assert [r.n for r in runs.values()] == [4, 4] and any("2 neurons" in label for label in runs)
    at.radio(key="cmp_mode").set_value("two models")
    no_exception(at.run())
    at.selectbox(key="cmp_model").set_value("toy-mamba")
    at.button(key="cmp_run").click()
    no_exception(at.run())
    runs = at.session_state["cmp_runs"]["value"]["runs"]
    assert [label.split(":")[1].strip() for label in runs] == ["toy-transformer", "toy-mamba"]
    assert any(i.value.startswith("B (toy-mamba) against A (toy-transformer): ") for i in at.info)
    trained = [w.value for w in at.warning]  # both toys learnt to-upper in training: said once per model
    assert [w.split(" was trained on")[0] for w in trained] == ["toy-transformer", "toy-mamba"]
    at.session_state["setting_n"] = 5  # other settings: the comparison is hidden, the old settings named
    no_exception(at.run())
    assert any("last comparison was for other settings (to-upper, 2-shot, 4 prompts" in i.value for i in at.info)
    assert "cmp_chart" not in {c.key for c in at.get("plotly_chart")}
    at.radio(key="cmp_mode").set_value("two masks")
    at.selectbox(key="_w_task").set_value("vowel-count")  # the copying task: the mask was scored on it
    no_exception(at.run())
    at.button(key="cmp_run").click()
    no_exception(at.run())
    assert any("scored on vowel-count prompts" in w.value for w in at.warning)


def test_bad_model_inputs_keep_the_app_running(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    at = open_app(str(tmp_path), monkeypatch)
    assert any("architecture 'bert'" in e.value and "supported" in e.value for e in at.error)
    at.selectbox(key="model_choice").set_value("Hugging Face id…").run()
    at.text_input(key="model_hub_id").set_value("no-such-org/no-such-model")
    no_exception(at.run())
    assert any("no-such-org/no-such-model" in e.value for e in at.error)
    at.selectbox(key="model_choice").set_value("toy-transformer")
    no_exception(at.run())
    assert not at.error and at.session_state[MODEL_KEY].name == "toy-transformer"


def test_overlong_text_and_out_of_memory_are_errors_not_crashes(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/attention.py")
    at.multiselect(key="rel_methods").set_value([])
    at.text_area(key="attn_text").set_value("a:1 " * 3000)  # 12 000 characters: cut at the text's limit
    no_exception(at.run())
    assert at.session_state["setting_text"] == ("a:1 " * 150) and not at.error
    import torch

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("analysis.attention.attention_maps", boom)
    at.text_area(key="attn_text").set_value("a:1 b:2 | a:")
    no_exception(at.run())
    assert any(e.value.startswith("out of memory while computing the attention map") for e in at.error)
    assert at.header[0].value == "Implicit attention"


def test_a_setting_out_of_another_pages_range_is_clamped(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/evaluate.py", layer=9)
    at.number_input(key="_w_shots").set_value(0)
    no_exception(at.run())
    at.switch_page("views/attribution.py")
    no_exception(at.run())
    assert at.number_input(key="_w_shots").value == 1 and at.session_state["setting_shots"] == 1
    at.switch_page("views/attention.py")
    no_exception(at.run())
    assert at.number_input(key="_w_layer").value == 3  # toy-transformer has 4 layers


@pytest.mark.parametrize("model", ["toy-mamba", "toy-mamba2", "toy-rwkv", "toy-griffin", "toy-transformer"])
def test_attention_page_on_every_family(monkeypatch, model):
    """Each family's map (its default form), the second model's map and the relevance heatmap render."""
    at = open_app(model, monkeypatch, "views/attention.py")
    assert not at.error
    last = at.session_state["attn_last"]
    assert last["kind"] == ("softmax" if model == "toy-transformer" else "implicit")
    keys = {c.key for c in at.get("plotly_chart")}
    assert {"attn_chart", "rel_chart"} <= keys
    assert ("attn_other_chart" in keys) == (model != "toy-transformer")  # beside it: the toy transformer



def test_attention_page_ground_truth_table(monkeypatch):
    """The ground-truth table: nothing until Run (no error on the default view), then one row per method and
    random with the family columns; the result is cached, so a fresh session shows it without a click."""
    at = open_app("toy-transformer", monkeypatch, "views/attention.py")
    assert not at.error and "gt_table" not in at.session_state
    at.multiselect(key="rel_methods").set_value(["raw", "gxi"])
    at.number_input(key="gt_n").set_value(2)
    at.button(key="gt_run").click()
    no_exception(at.run())
    shown = at.session_state["gt_table"]["value"]
    assert list(shown.method.unique()) == ["raw", "gxi", "random"] and set(shown.family) == {"recall", "copy",
                                                                                             "induction"}
    view = at.dataframe[-1].value
    assert list(view.method) == ["raw", "gxi", "random"] and "copy top-1" in view.columns
    again = open_app("toy-transformer", monkeypatch, "views/attention.py", rel_methods="raw,gxi", gt_n=2)
    assert again.session_state["gt_table"]["value"].equals(shown)  # read from the results cache
