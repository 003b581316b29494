"""Self-contained HTML reports: Plotly figures (interactive, plotly.js inlined once), tables and the parameters
that produced them, in one file that opens offline. Pure functions: no streamlit here."""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import pandas as pd
import plotly.graph_objects as go

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#18181b}
.table{overflow-x:auto;max-width:100%;margin:0.5rem 0 1.5rem}table{border-collapse:collapse;font-size:0.85rem}
th,td{border:1px solid #d4d4d8;padding:3px 8px;text-align:right}th{background:#f4f4f5}
td:first-child,th:first-child{text-align:left;position:sticky;left:0;white-space:nowrap}
td:first-child{background:#fff}
h1{color:#c2410c}code{background:#f4f4f5;padding:1px 4px}"""
# A report's figures leave the app: Streamlit's plotly template (placeholder colours, its margins and label
# sizes filled in by the app's frontend) is replaced by a real one, and the margins are sized for the labels.
TEMPLATE = "plotly_white"
FONT_SIZE = 12  # px, the template's
GLYPH = 0.62  # average glyph width / font size (generous: a cut label is worse than a wide margin)
PAGE_WIDTH = 1100  # px a figure gets in the report's column


def html_report(title: str, figures: Mapping[str, go.Figure] | None = None,
                tables: Mapping[str, pd.DataFrame] | None = None, params: Mapping[str, object] | None = None,
                link: str | None = None, findings: Sequence[str] = ()) -> str:
    """One HTML document with the findings (the generated verdict sentences), a parameters list, every figure
    (plotly.js embedded in the first, so the file needs no network) and every table (numbers to 4 decimals)."""
    created = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)} — prunescope</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>prunescope report, {created}.</p>"]
    if link and urlsplit(link).scheme in ("http", "https"):  # never a javascript: or data: link in a report
        parts.append(f"<p>Open in the app: <a href='{html.escape(link)}'>{html.escape(link)}</a></p>")
    if findings:
        parts.append("<h2>Findings</h2>")
        parts += [f"<p class='finding'>{html.escape(sentence)}</p>" for sentence in findings]
    if params:
        parts.append("<h2>Parameters</h2><ul>")
        parts += [f"<li><b>{html.escape(str(k))}</b>: <code>{html.escape(_text(v))}</code></li>"
                  for k, v in params.items()]
        parts.append("</ul>")
    for i, (name, figure) in enumerate((figures or {}).items()):
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(standalone(figure).to_html(full_html=False, include_plotlyjs=(i == 0),
                                                config={"displaylogo": False}))
    for name, frame in (tables or {}).items():  # a wide table scrolls inside the page, its first column kept
        parts.append(f"<h2>{html.escape(name)}</h2><div class='table'>")
        parts.append(frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, na_rep="") + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def standalone(figure: go.Figure) -> go.Figure:
    """A copy of ``figure`` for a file that opens outside the app: the report's template (not Streamlit's, whose
    placeholders only the app fills in), dark text, automatic margins on every axis, and left and bottom
    margins at least as wide as the longest tick label needs (long category labels tilted 45 degrees when they
    would not fit side by side)."""
    fig = go.Figure(figure)
    fig.update_layout(template=TEMPLATE, font_color="#18181b")
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    size = fig.layout.font.size or FONT_SIZE
    left, bottom = fig.layout.margin.l or 0, fig.layout.margin.b or 0
    x_axes = [name for name in fig.layout if name.startswith("xaxis")]
    for name in [*x_axes, *(n for n in fig.layout if n.startswith("yaxis"))]:
        axis = fig.layout[name]
        if axis.side == "right" or axis.overlaying or axis.visible is False or axis.showticklabels is False:
            continue
        labels = tick_labels(fig, name)
        longest = max((len(label) for label in labels), default=0) * GLYPH * (axis.tickfont.size or size)
        title = 1.6 * size + 8 if axis.title.text else 0
        if name.startswith("y"):
            left = max(left, int(longest + title + 12))
            continue
        if axis.tickangle is None and _is_category(labels) \
                and len(labels) * (longest + size) > PAGE_WIDTH / len(x_axes):
            axis.tickangle = -45
        tilt = abs(math.sin(math.radians(axis.tickangle or 0)))
        bottom = max(bottom, int(longest * tilt + 1.4 * size + title + 12))
    fig.update_layout(margin=dict(l=left, b=bottom))
    return fig


def tick_labels(figure: go.Figure, axis: str) -> list[str]:
    """The labels an axis (``xaxis``, ``yaxis2``...) draws, about: its ``ticktext``, else its traces'
    categories, else its numbers' range as Plotly writes them."""
    layout = figure.layout[axis]
    if layout.ticktext is not None:
        return [str(t) for t in layout.ticktext]
    letter = axis[0]
    ref = letter + axis[len(letter + "axis"):]
    values: list = []
    for trace in figure.data:
        if (getattr(trace, f"{letter}axis", None) or letter) != ref:
            continue
        if trace[letter] is not None:
            values += list(trace[letter])
        elif getattr(trace, "z", None) is not None:  # a heatmap's implied indices
            values += [0, len(trace.z) if letter == "y" else len(trace.z[0])]
    if _is_category(values):
        return [str(v) for v in values]
    numbers = [float(v) for v in values if v is not None] or [0.0]
    if layout.tickformat and "%" in layout.tickformat:
        return ["100%"]
    low, high = min(numbers), max(numbers)
    return [f"{v:.3g}" for v in (low, high, low + (high - low) / 7)]


def _is_category(values: Sequence) -> bool:
    return any(isinstance(v, str) for v in values)


def _text(value: object) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def table_json(frame: pd.DataFrame) -> str:
    """A table as a JSON list of row objects (NaN as null)."""
    return frame.to_json(orient="records", indent=1, force_ascii=False)
