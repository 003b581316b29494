"""Self-contained HTML reports: Plotly figures (interactive, plotly.js inlined once), tables and the parameters
that produced them, in one file that opens offline. Pure functions: no streamlit here."""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import pandas as pd
import plotly.graph_objects as go

STYLE = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#18181b}
table{border-collapse:collapse;font-size:0.85rem;margin:0.5rem 0 1.5rem}
th,td{border:1px solid #d4d4d8;padding:3px 8px;text-align:right}th{background:#f4f4f5}
td:first-child,th:first-child{text-align:left}h1{color:#c2410c}code{background:#f4f4f5;padding:1px 4px}"""


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
        parts.append(figure.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}))
    for name, frame in (tables or {}).items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, na_rep=""))
    parts.append("</body></html>")
    return "\n".join(parts)


def _text(value: object) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def table_json(frame: pd.DataFrame) -> str:
    """A table as a JSON list of row objects (NaN as null)."""
    return frame.to_json(orient="records", indent=1, force_ascii=False)
