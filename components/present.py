"""Presentation mode for lab meetings: wide layout, larger fonts, controls collapsed, one large figure per
screen. On with the sidebar toggle or ``?present=1`` in the URL (so a link opens straight into it)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import streamlit as st

PARAM = "present"
KEY = "presentation_mode"
FIGURE_HEIGHT = 640  # px: one figure fills a projector screen

STYLE = """<style>
html, body, [data-testid="stAppViewContainer"] { font-size: 20px; }
[data-testid="stMarkdownContainer"] p, [data-testid="stCaptionContainer"] { font-size: 1.1rem; }
h1, h2, h3 { font-size: 2.1rem !important; }
[data-testid="stMetricValue"], [data-testid="stMetricValue"] * { font-size: 3rem !important; line-height: 1.2; }
[data-testid="stMetricLabel"] * { font-size: 1.2rem !important; }
.block-container { padding-top: 3.5rem; max-width: 100%; }
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
    if requested():
        st.html(STYLE)


@contextmanager
def controls(label: str = "Controls") -> Iterator[None]:
    """A block of inputs: inline normally, a collapsed expander in presentation mode."""
    if requested():
        with st.expander(label, expanded=False):
            yield
    else:
        yield


def figure_height(normal: int | None = None) -> int | None:
    """Chart height: large in presentation mode, else ``normal`` (None = the figure's own)."""
    return FIGURE_HEIGHT if requested() else normal
