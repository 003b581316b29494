"""The attention page's head grid: every layer's heads (or channel groups) as thumbnails, computed when the
visitor turns it on (linked as ``heads``); a click on a cell opens that map above (its layer and its
``channels:`` reduction), and the sink toggle (``sink``) leaves the first token out of every map."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.families import Form
from analysis.head_grid import HeadGrid
from analysis.models import LoadedModel, model_label
from analysis.queries import HeadGridQuery
from components import state
from components.charts_heads import head_grid_figure
from components.export import chart
from components.widgets import guarded, memo

LAST_PICK = "_heads_last_pick"  # the grid selection already opened (a rerun repeats the selection)


def take_pick(grid: HeadGrid, points: list[dict]) -> bool:
    """A new click on a cell opens its map: the ``layer`` and ``reduce`` settings become the cell's. Returns
    whether anything changed (the page then reruns so the map above shows it)."""
    picked = next((p.get("customdata") for p in points if p.get("customdata")), None)
    if picked is None:
        return False
    layer, cell = int(picked[0]), int(picked[1])
    if st.session_state.get(LAST_PICK) == (layer, cell) or layer not in grid.layers:
        return False
    row = grid.layers.index(layer)
    if not 0 <= cell < len(grid.reductions[row]):
        return False
    st.session_state[LAST_PICK] = (layer, cell)
    state.put("layer", layer)
    state.put("reduce", grid.reductions[row][cell])
    return True


def shown_cell(grid: HeadGrid, layer: int, reduce: str) -> tuple[int, int] | None:
    """The cell the map above shows (its layer and reduction), to ring it."""
    if layer not in grid.layers:
        return None
    row = grid.layers.index(layer)
    return (layer, grid.reductions[row].index(reduce)) if reduce in grid.reductions[row] else None


def show(loaded: LoadedModel, text: str, form: Form, sink: bool) -> dict[str, go.Figure]:
    """Draw the grid when the ``heads`` setting is on; returns its figure (for the report)."""
    if not state.get("heads"):
        return {}
    figures: dict[str, go.Figure] = {}
    with guarded("head grid"):
        query = HeadGridQuery(text, form)
        grid = memo(query.key(loaded), lambda: query.run(loaded))
        title = f"{model_label(loaded.name)}: every layer's heads ({grid.form})"
        figure = head_grid_figure(grid, sink=sink, title=title,
                                  picked=shown_cell(grid, int(state.get("layer")), str(state.get("reduce"))))
        figures[title] = figure
        if take_pick(grid, chart(figure, "heads_chart", "attention-heads", pickable=True)):
            st.rerun()
        st.caption("Rows are layers (softmax or implicit), columns heads, or channel groups where a layer has more "
                   "than 32 matrices (their mean); each cell is scaled to its own largest weight. Click a cell to "
                   "open its map above.")
    return figures
