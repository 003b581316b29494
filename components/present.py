"""Presentation mode for lab meetings: each page is a slide. Larger fonts, the sidebar and the page's long
description hidden, every block of controls behind a button in one toolbar row, so the main figure and the
verdict sentence sit above the fold at 1440x900 and 1920x1080. On with the sidebar toggle or ``?present=1`` in
the URL (so a link opens straight into it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import plotly.graph_objects as go
import streamlit as st

PARAM = "present"
KEY = "presentation_mode"
TOOLBAR_KEY = "_present_toolbar"  # this run's toolbar container (reset before every page)
FIGURE_HEIGHT = 440  # px: below a title, the toolbar and two verdict lines, above the fold at 900 px
# A slide's figure text, explicit on every axis, colour bar, legend and subplot title: Streamlit's theme sets
# small light-grey tick labels that a figure-wide font leaves alone, unreadable on a projector.
SLIDE_FONT = 17  # px: titles and axis titles
SLIDE_TICKS = 16  # px: tick labels, legend, colour bars
SLIDE_INK = "#18181b"
SLIDE_LABELS = 24  # an axis with more labels than this keeps its builder's tick size

STYLE = """<style>
html, body, [data-testid="stAppViewContainer"] { font-size: 20px; }
[data-testid="stMarkdownContainer"] p, [data-testid="stCaptionContainer"] { font-size: 1.1rem; }
h1, h2 { font-size: 2.1rem !important; }
h3 { font-size: 1.5rem !important; }
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * { font-size: 3rem !important; line-height: 1.2; }
[data-testid="stMetricLabel"] * { font-size: 1.2rem !important; }
.block-container { padding-top: 4rem; max-width: 100%; }
[data-testid="stAlertContentInfo"] p, [data-testid="stAlertContentSuccess"] p, [data-testid="stAlertContentError"] p
  { font-size: 1rem; }
h1, h2 { padding-top: 0 !important; padding-bottom: 0.25rem !important; }
</style>"""


def requested() -> bool:
    """Presentation mode is on (the toggle's state, else the URL's ``present`` parameter)."""
    if KEY in st.session_state:
        return bool(st.session_state[KEY])
    return st.query_params.get(PARAM, "0") in ("1", "true", "yes")


def restore(params: dict[str, str]) -> None:
    """A deep link's ``present=1`` switches the mode on (read on the first run: page switches drop the URL's
    parameters)."""
    if params.get(PARAM) in ("1", "true", "yes"):
        st.session_state[KEY] = True


def toggle() -> bool:
    if KEY not in st.session_state:
        st.session_state[KEY] = requested()
    return st.toggle("Presentation mode", key=KEY, help="Larger fonts, controls collapsed, one figure per screen")


def apply_style() -> None:
    """Every run, before the page: the slide style, and no toolbar until the page starts its own."""
    st.session_state.pop(TOOLBAR_KEY, None)
    if requested():
        st.html(STYLE)




def toolbar() -> None:
    """Start the page's toolbar row: in presentation mode the following :func:`controls` blocks become buttons
    in it (call right after the header)."""
    if requested():
        st.session_state[TOOLBAR_KEY] = st.container(horizontal=True, vertical_alignment="center", gap="small")


def toolbar_row():
    """The toolbar row of this run (for widgets beside the control buttons), or a new row."""
    bar = st.session_state.get(TOOLBAR_KEY)
    return bar if bar is not None else st.container(horizontal=True, vertical_alignment="center", gap="small")


def caption(text: str) -> None:
    """A page's description: shown normally, left out of the slide (the speaker says it)."""
    if not requested():
        st.caption(text)


@contextmanager
def controls(label: str = "Controls") -> Iterator[None]:
    """A block of inputs: inline normally; in presentation mode a button that opens them (in the toolbar row
    when the page started one)."""
    if requested():
        bar = st.session_state.get(TOOLBAR_KEY)
        with (bar if bar is not None else st.container()):
            with st.popover(label, icon=":material/tune:"):
                yield
    else:
        yield


def slide_figure(figure: go.Figure, height: int = FIGURE_HEIGHT) -> go.Figure:
    """A copy of ``figure`` for a slide: at least ``height`` px tall (a tall map keeps its own), large dark text."""
    fig = go.Figure(figure)
    ticks, titles = dict(size=SLIDE_TICKS, color=SLIDE_INK), dict(size=SLIDE_FONT, color=SLIDE_INK)
    fig.update_layout(height=max(height, fig.layout.height or 0), font=titles, legend_font=ticks,
                      title_font=dict(size=SLIDE_FONT + 3, color=SLIDE_INK))
    for axis in [*fig.select_xaxes(), *fig.select_yaxes()]:  # many token labels keep their fitted size
        crowded = axis.tickfont.size and len(axis.tickvals or ()) > SLIDE_LABELS
        axis.update(tickfont=dict(size=axis.tickfont.size if crowded else SLIDE_TICKS, color=SLIDE_INK),
                    title_font=titles)
    fig.update_traces(colorbar=dict(tickfont=ticks, title_font=ticks), selector=dict(type="heatmap"))
    for note in fig.layout.annotations:  # a label its builder sized and coloured (and spaced) stays as it is
        note.font.update(size=note.font.size or SLIDE_TICKS, color=note.font.color or SLIDE_INK)
    return fig


def figure_height(normal: int | None = None) -> int | None:
    """Chart height: large in presentation mode, else ``normal`` (None = the figure's own)."""
    return FIGURE_HEIGHT if requested() else normal
