"""Streamlit widgets for output: charts with Plotly's PNG download, tables with CSV/JSON downloads, and the
HTML report button. Every page shows its figures and tables through these, so every one is exportable."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis.export import safe_csv
from components import present, state
from components.report import html_report, table_json


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "prunescope"


def chart(figure: go.Figure, key: str, name: str | None = None, pickable: bool = False) -> list[dict]:
    """A Plotly chart whose camera button saves a 2x PNG named after the figure (tall in presentation mode).
    ``pickable``: a click selects a point, and the selected points come back (else [])."""
    config = {"displaylogo": False,
              "toImageButtonOptions": {"format": "png", "filename": _slug(name or key), "scale": 2}}
    height = present.figure_height()
    if height:  # a slide: large dark text, and at least the slide's figure height (a tall map keeps its own)
        figure = present.slide_figure(figure, height)
    if not pickable:
        st.plotly_chart(figure, key=key, config=config)
        return []
    event = st.plotly_chart(figure, key=key, config=config, on_select="rerun", selection_mode="points")
    found: dict = dict(event or {})  # a PlotlyState is a dict with attribute access
    return list((found.get("selection") or {}).get("points") or [])


def table(frame: pd.DataFrame, name: str, **dataframe_kwargs) -> None:
    """A dataframe with CSV and JSON download buttons (the CSV with formula-like text cells defused)."""
    frame = frame.copy()
    frame.attrs = {}  # library tables keep curves in attrs; Arrow cannot serialise them
    st.dataframe(frame, hide_index=True, **dataframe_kwargs)
    slug = _slug(name)
    row = st.container(horizontal=True, gap="small")  # buttons at their natural width ("C." in narrow columns)
    row.download_button("CSV", lambda: safe_csv(frame), f"{slug}.csv", "text/csv", key=f"csv_{slug}",
                         icon=":material/download:")
    row.download_button("JSON", lambda: table_json(frame), f"{slug}.json", "application/json",
                          key=f"json_{slug}", icon=":material/download:")


def report_button(title: str, figures: Mapping[str, go.Figure] | None = None,
                  tables: Mapping[str, pd.DataFrame] | None = None, params: Mapping[str, object] | None = None,
                  findings: Sequence[str] = (), settings: Sequence[str] = ()) -> None:
    """Download a self-contained HTML report of what the page shows (findings, figures, tables, parameters,
    link). ``settings``: the shared settings this page uses, the only ones the report lists."""
    shown = {name: state.task_label() if name == "task" else state.get(name) for name in settings}
    parts = (title, dict(figures or {}), dict(tables or {}), {**shown, **(params or {})}, state.link())
    build = lambda: html_report(*parts[:4], link=parts[4], findings=list(findings))  # noqa: E731 - on click only
    st.download_button("HTML report", build,
                       f"prunescope-{_slug(title)}.html", "text/html",
                       key=f"report_{_slug(title)}", icon=":material/description:", type="primary")
