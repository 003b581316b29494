"""AppTest of the attention page's head grid and sink toggle."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from tests.app_helpers import no_exception, open_app


def _figure(at: AppTest, key: str) -> dict:
    return json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.spec)


def test_head_grid_opens_a_head_and_the_sink_leaves_the_first_token_out(monkeypatch):
    """The head grid is off by default; on, it shows every layer's heads, and a click on a cell opens that head
    above (layer and reduction, in the link). The sink toggle drops the first token from the maps, the grid
    and the relevance chart."""
    at = open_app("toy-transformer", monkeypatch, "views/attention.py", rel_methods="raw")
    assert "heads_chart" not in {c.key for c in at.get("plotly_chart")}
    tokens = len(_figure(at, "attn_chart")["data"][0]["x"])
    at.toggle(key="attn_heads").set_value(True)
    no_exception(at.run())
    grid = _figure(at, "heads_chart")
    assert len(grid["data"][1]["customdata"]) == 4 * 4  # 4 layers x 4 heads
    at.session_state["heads_chart"] = {"selection": {"points": [{"customdata": [2, 3]}], "point_indices": [11],
                                                     "box": [], "lasso": []}}
    no_exception(at.run())
    assert at.session_state["setting_layer"] == 2 and at.session_state["setting_reduce"] == "channels:3"
    assert at.number_input(key="_w_layer").value == 2 and at.text_input(key="attn_reduce").value == "channels:3"
    assert "layer 2 (softmax, channels:3)" in _figure(at, "attn_chart")["layout"]["title"]["text"]
    assert _figure(at, "heads_chart")["data"][1]["selectedpoints"] == [11]  # the open head is ringed
    at.toggle(key="attn_sink").set_value(True)
    no_exception(at.run())
    assert len(_figure(at, "attn_chart")["data"][0]["x"]) == tokens - 1
    assert len(_figure(at, "rel_chart")["data"][0]["x"]) == tokens - 1
    assert "attention sink" in _figure(at, "heads_chart")["layout"]["title"]["text"]
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in dict(at.query_params).items()}
    assert params["heads"] == "1" and params["sink"] == "1" and params["reduce"] == "channels:3"
