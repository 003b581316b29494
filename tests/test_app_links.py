"""AppTest of links, slides and notes a newcomer found wrong: a rejected link value leaves the address bar and
Copy link, the Compare page as a slide shows its stored result, a toy model's attention says what it learnt."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from streamlit.testing.v1 import AppTest

from tests.app_helpers import MAIN, TIMEOUT, no_exception, open_app


def _address(at: AppTest) -> dict[str, str]:
    return {k: (v[0] if isinstance(v, list) else v) for k, v in dict(at.query_params).items()}


def _copy_link(at: AppTest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(at.sidebar.code[0].value.split("?", 1)[1]).items()}


def _open(monkeypatch, **params: str) -> AppTest:
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update(params)
    return no_exception(at.run())


def test_a_rejected_link_value_leaves_the_address_bar_and_copy_link(monkeypatch):
    """mask=abc was said to be rejected yet stayed in the URL and in Copy link; now both leave it out (the other
    settings stay), until the visitor sets another value."""
    at = _open(monkeypatch, page="compare", mask="abc", n="12", shots="2")
    assert any(e.value.startswith("mask in the link: 'abc' is not a layer.index pair") for e in at.error)
    assert _address(at) == {"page": "compare", "model": "toy-transformer", "n": "12", "shots": "2"}
    assert _copy_link(at) == _address(at)
    at.radio(key="cmp_mode").set_value("two models")  # a rerun where no page reads the mask: still left out
    no_exception(at.run())
    assert "mask" not in _address(at) and _address(at)["cmp_mode"] == "two models"
    pruning = _open(monkeypatch, page="pruning", mask="0.1,9.4", layers="x-y", k="7")
    errors = [e.value for e in pruning.error]
    assert any(e.startswith("mask in the link: layer 9 does not exist") for e in errors), errors
    assert "layer range 'x-y' is not 'first-last' (e.g. 10-20)" in errors, errors
    assert _address(pruning) == {"page": "pruning", "model": "toy-transformer", "k": "7"} == _copy_link(pruning)
    pruning.session_state["setting_mask"] = "0.1,1.2"  # a new, valid value is linked again
    no_exception(pruning.run())
    assert _address(pruning)["mask"] == "0.1,1.2" and not any("mask in the link" in e.value for e in pruning.error)


def test_a_toy_models_attention_says_it_was_trained_on_synthetic_data(monkeypatch):
    """Toy checkpoints learnt a synthetic corpus: the attention page says so beside their maps, for each toy
    shown (the sidebar's model and the one beside it), and says nothing of the kind for other models."""
    from analysis.models.toy import TRAINING_DATA, synthetic_note

    at = open_app("toy-mamba", monkeypatch, "views/attention.py", text="The cat sat on the mat.")
    notes = [c.value for c in at.caption if "trained only on" in c.value]
    assert notes == [f"toy-mamba and toy-transformer were trained only on {TRAINING_DATA} (analysis/models/toy.py): "
                     "on natural text the maps show what that corpus taught, not how a language model reads."]
    assert "key:value recall lines" in notes[0]
    at.selectbox(key="attn_beside_toy-mamba").set_value("none")
    no_exception(at.run())
    assert [c.value for c in at.caption if "trained only on" in c.value] == [notes[0].replace(
        "toy-mamba and toy-transformer were", "toy-mamba was")]
    assert synthetic_note(["HuggingFaceTB/SmolLM2-135M-Instruct", "default"]) is None


def test_compare_as_a_slide_shows_the_stored_comparison(monkeypatch):
    """On a slide the Compare button hides behind Controls, and the page showed only its heading although the
    comparison was stored (shipped, for the real models' defaults): stored results now show at once, with
    plain labels ('B: active mask (2 neurons)', not 'B (toy-transformer (active mask, 2 neurons))')."""
    from components import present

    link = dict(page="compare", task="to-upper", shots="2", n="6", mask="0.1,1.5")
    at = _open(monkeypatch, **link)  # computed once in another session (a click): stored on disk
    at.button(key="cmp_run").click()
    no_exception(at.run())
    runs = at.session_state["cmp_runs"]["value"]["runs"]
    assert list(runs) == ["A: no mask", "B: active mask (2 neurons)"]
    slide = _open(monkeypatch, **link, present="1")
    assert slide.session_state[present.KEY] and not slide.button(key="cmp_run").value  # nothing clicked
    [bars] = [c for c in slide.get("plotly_chart") if c.key == "cmp_chart"]
    figure = json.loads(bars.proto.spec)
    assert figure["layout"]["height"] == present.FIGURE_HEIGHT
    accuracy = next(t for t in figure["data"] if t["name"] == "Accuracy")
    assert accuracy["y"] == [r.accuracy for r in runs.values()]
    sentences = [i.value for i in slide.info if i.value.startswith("B (")]
    assert len(sentences) == 1 and sentences[0].startswith("B (active mask, 2 neurons) against A (no mask): ")


def test_pruning_results_come_before_the_folded_controls(monkeypatch):
    """At 1024x768 the scoring and mask controls filled the first screen and the bar panels' slanted task names
    ran into each other: with scores the controls fold into expanders above the verdict and numbers, and the
    task names run straight down in a figure tall enough for them; the forest has few x ticks per panel."""
    from components.charts_pruning import FOREST_TICKS, TICK_CHAR_PX, change_forest

    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", shots=2, n=4, score_n=4, score_steps=2)
    assert at.expander[0].label == "Copying scores and mask" and at.expander[0].proto.expanded
    at.button(key="score_run").click()
    no_exception(at.run())  # the scores are computed in this run, under the open expander; the next run folds it
    no_exception(at.run())
    folded = {e.label: e.proto.expanded for e in at.expander}
    assert folded["Copying scores and mask"] is False and folded["Tasks and random masks"] is False
    labels = [e.label for e in at.main if getattr(e, "label", None)]
    assert labels.index("Copying scores and mask") < labels.index("Accuracy, unpruned")
    assert at.number_input(key="_w_score_n").value == 4  # still drawn (folded): the same settings
    [bars] = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == "prune_bars"]
    assert {bars["layout"][axis]["tickangle"] for axis in ("xaxis", "xaxis2", "xaxis3")} == {-90}
    assert bars["layout"]["height"] == 320 + TICK_CHAR_PX * len("vowel-count[heldout]")
    forest = change_forest(at.session_state["prune_summary"].assign(
        **{f"d_{m}_vs_{a}{s}": 0.0 for m in ("accuracy", "copy_error_rate", "echo_rate")
           for a in ("baseline", "random") for s in ("", "_lo", "_hi", "_p")}))
    assert {axis.nticks for axis in forest.select_xaxes()} == {FOREST_TICKS}
