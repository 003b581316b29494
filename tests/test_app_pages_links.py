"""AppTest of deep links: a link restores the page, model and settings (a per-layer mask, the attention view),
hostile values in a link are reset, each with a red line, and Copy link equals the address bar after every change."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from components.widgets import MODEL_KEY
from tests.app_helpers import MAIN, TIMEOUT, no_exception, open_app, st_mask_size


def test_a_link_reproduces_a_per_layer_mask(monkeypatch):
    """per_layer is a linked setting like k: a link with per_layer=1 opens the page with the box ticked and
    the top k of every layer selected, and unticking it is written back to the link."""
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "pruning", "per_layer": "1", "k": "2", "score_n": "4", "score_steps": "2",
                            "score_shots": "2"})
    no_exception(at.run())
    at.button(key="score_run").click()
    no_exception(at.run())
    assert at.checkbox(key="_w_per_layer").value is True
    layers = at.session_state["active_mask"]["mask"].by_layer()
    assert len(layers) == 4 and all(len(neurons) == 2 for neurons in layers.values())  # 2 in each of 4 layers
    assert at.query_params["per_layer"] in ("1", ["1"])
    at.checkbox(key="_w_per_layer").uncheck()
    no_exception(at.run())
    assert st_mask_size(at) == 2 and "per_layer" not in at.query_params


def test_hostile_scoring_options_in_a_link_are_reset(monkeypatch):
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", score_target="<script>", layers="0-99")
    assert any("target=`<script>` is not one of copy, copy-prob, echo; using copy" in e.value for e in at.error)
    assert any("layer range '0-99' is outside the model's layers 0-3" in e.value for e in at.error)


def test_deep_link_restores_page_model_and_settings():
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update({"page": "attention", "model": "toy-mamba", "task": "antonyms", "shots": "2",
                            "layer": "3", "present": "1"})
    no_exception(at.run())
    assert at.header[0].value == "Implicit attention"
    assert at.session_state[MODEL_KEY].name == "toy-mamba"
    assert at.number_input(key="_w_layer").value == 3 and at.session_state["setting_shots"] == 2
    assert at.session_state["attn_last"]["layer"] == 3 and at.session_state["attn_last"]["kind"] == "implicit"
    assert at.toggle(key="presentation_mode").value is True
    assert {"page": "attention", "model": "toy-mamba", "shots": "2", "layer": "3", "present": "1"}.items() \
        <= dict(at.query_params).items()
    at.number_input(key="_w_layer").set_value(1)
    no_exception(at.run())
    assert at.query_params["layer"] in ("1", ["1"])


def test_attention_view_and_prune_toggle_travel_in_the_link(monkeypatch):
    """Text, form, reduction and the model beside it are settings: a link restores them; a form that no
    family offers gets one red line; each model starts from its own default form."""
    at = open_app("toy-mamba", monkeypatch, "views/attention.py")
    assert next(b for b in at.selectbox if b.label == "Beside it").value == "toy-transformer"  # README's default
    next(b for b in at.selectbox if b.label == "Form").set_value("unified")
    at.text_area(key="attn_text").set_value("x:1 y:2 | x:")
    no_exception(at.run())
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in dict(at.query_params).items()}
    assert params["form"] == "unified" and params["text"] == "x:1 y:2 | x:" and "beside" not in params

    fresh = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    fresh.query_params.update({**params, "beside": "none", "reduce": "absmean"})
    no_exception(fresh.run())
    assert next(b for b in fresh.selectbox if b.label == "Form").value == "unified"
    assert next(b for b in fresh.selectbox if b.label == "Beside it").value == "none"
    assert fresh.text_area(key="attn_text").value == "x:1 y:2 | x:"
    assert fresh.text_input(key="attn_reduce").value == "absmean"

    hostile = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    hostile.query_params.update({"page": "attention", "model": "toy-transformer", "form": "<script>"})
    no_exception(hostile.run())
    assert [e.value for e in hostile.error] == ["form=`<script>` is not a choice here; using softmax"]


def test_copy_link_equals_the_address_bar_after_every_change(monkeypatch):
    """The link box is drawn after the page ran: a change made in this run (a typed n, a clamped k) is in it,
    and in the URL, at once; presentation mode stays in both."""
    from urllib.parse import parse_qs

    from components import present

    def shown_link(at) -> dict:
        box = at.sidebar.code[0]
        return {k: v[0] for k, v in parse_qs(box.value.split("?", 1)[1]).items()}

    def address(at) -> dict:
        return {k: (v[0] if isinstance(v, list) else v) for k, v in dict(at.query_params).items()}

    at = open_app("toy-transformer", monkeypatch, "views/evaluate.py")
    at.number_input(key="_w_n").set_value(7)
    no_exception(at.run())
    assert shown_link(at)["n"] == "7" and shown_link(at) == address(at)
    at.toggle(key=present.KEY).set_value(True)
    no_exception(at.run())
    assert shown_link(at)[present.PARAM] == "1" and shown_link(at) == address(at)
    at.session_state["setting_k"] = 10**9  # e.g. a link made for a bigger model: clamped on the pruning page
    at.switch_page("views/pruning.py")
    no_exception(at.run())
    clamped = next(e.value for e in at.error if "out of range" in e.value).rsplit("using k=", 1)[1]
    assert address(at)["k"] == clamped and shown_link(at) == address(at)
