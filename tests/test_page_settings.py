"""Every page setting is a bound, linked setting: a link sets it (clamped or refused in one line when hostile),
it survives a visit to another page (so a running job is found again under it), and it is written back to the
address bar."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from components.settings import TABLE
from components.state import DEFAULTS
from tests.app_helpers import MAIN


def _app(monkeypatch, **query) -> AppTest:
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    at = AppTest.from_file(str(MAIN), default_timeout=120)
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_link_sets_the_attribution_pages_own_settings(monkeypatch):
    at = _app(monkeypatch, page="attribution", ig_steps="7", ig_rule="gauss-legendre", ig_target="gold", ig_n="3")
    assert at.number_input(key="ig_steps").value == 7 and at.number_input(key="ig_n").value == 3
    assert at.selectbox(key="ig_rule").value == "gauss-legendre" and at.selectbox(key="ig_target").value == "gold"
    assert not at.error


def test_hostile_page_settings_are_clamped_or_refused_in_one_line(monkeypatch):
    at = _app(monkeypatch, page="attribution", ig_steps="100000", ig_rule="<script>", ig_n="-4")
    assert at.number_input(key="ig_steps").value == 256 and at.number_input(key="ig_n").value == 1
    assert at.selectbox(key="ig_rule").value == DEFAULTS["ig_rule"]
    assert [e.value for e in at.error] == ["ig_rule=`<script>` is not one of the choices here; using adaptive"]
    tasks = _app(monkeypatch, page="pruning", prune_tasks="antonyms,nope,next-letter")
    assert tasks.multiselect(key="prune_tasks").value == ["antonyms", "next-letter"]
    assert any("prune_tasks: `nope` not among the choices here" in e.value for e in tasks.error)


def test_page_settings_survive_another_page_and_reach_the_link(monkeypatch):
    at = _app(monkeypatch, page="attribution")
    at.number_input(key="ig_steps").set_value(9)
    at.run()
    at.switch_page("views/evaluate.py").run()
    assert "ig_steps" not in [n.key for n in at.number_input]  # the widget is gone on this page
    assert at.query_params["ig_steps"] in ("9", ["9"])  # ...its setting stays in the link
    at.switch_page("views/attribution.py").run()
    assert at.number_input(key="ig_steps").value == 9  # and back on its page


def test_every_page_setting_has_a_default_and_a_range_or_choices():
    for name, entry in TABLE.items():
        assert DEFAULTS[name] == entry.default
        if isinstance(entry.default, int):
            assert entry.bound is not None, f"{name} has no range in components/settings.py"


def test_a_layer_beyond_the_model_is_clamped_in_the_link_on_every_page(monkeypatch):
    """layer=1023 on a 4-layer model: the address bar held 1023 on every page but the attention page, whose
    widget clamped it; now the link holds the layer the pages use, without a red line."""
    for page in ("model", "evaluate", "attention"):
        at = _app(monkeypatch, page=page, layer="1023")
        assert at.session_state["setting_layer"] == 3, page
        assert at.query_params["layer"] in ("3", ["3"]) and not at.error, page
    kept = _app(monkeypatch, page="model", layer="2")
    assert kept.session_state["setting_layer"] == 2 and kept.query_params["layer"] in ("2", ["2"])


def test_a_fresh_session_shows_every_settings_default_on_every_page(monkeypatch):
    """No link: every setting a page binds or reads holds its table entry's default, and the address bar
    carries no setting (it lists only what differs from the table)."""
    for page in ("model", "evaluate", "attribution", "pruning", "attention", "task-vectors", "compare"):
        at = _app(monkeypatch, page=page)
        shown = {name: at.session_state[f"setting_{name}"] for name in TABLE
                 if f"setting_{name}" in at.session_state}
        assert shown == {name: TABLE[name].default for name in shown}, page
        assert set(at.query_params) <= {"page", "model"} and not at.error, (page, dict(at.query_params))
