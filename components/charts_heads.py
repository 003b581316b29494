"""The layers x heads grid of attention thumbnails (analysis/head_grid.py): one heatmap trace with every
layer's heads side by side, each cell scaled to its own largest |weight| (heads differ by orders of magnitude),
and an invisible marker on each cell so that a click opens its full map."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from analysis.head_grid import HeadGrid, without_sink
from components.charts import visible_token

THUMB = 24  # a cell shows at most this many tokens a side (longer texts are averaged into THUMB bins)
GAP = 1  # blank rows / columns between cells


def thumbnail(attn: torch.Tensor, size: int = THUMB) -> torch.Tensor:
    """A [T, T] map averaged into at most ``size`` x ``size`` bins, scaled by its largest |value|."""
    if attn.shape[-1] > size:
        attn = F.adaptive_avg_pool2d(attn[None, None].float(), size)[0, 0]
    peak = float(attn.abs().max()) or 1.0
    return attn.float() / peak


def head_grid_figure(grid: HeadGrid, sink: bool = False, picked: tuple[int, int] | None = None,
                     title: str = "") -> go.Figure:
    """Every layer's heads (or channel groups) as thumbnails, layers down, heads across. ``sink``: the first
    token's row and column left out of every cell. ``picked`` (layer, cell index) is ringed. A marker at each
    cell's centre carries customdata [layer, cell index] for a click."""
    cells = [[without_sink(c) if sink else c for c in row] for row in grid.cells]
    size = min(THUMB, max((c.shape[-1] for row in cells for c in row), default=1))
    width = max((len(row) for row in cells), default=0)
    step = size + GAP
    z = torch.full((len(cells) * step - GAP, width * step - GAP), float("nan"))
    signed = False
    for r, row in enumerate(cells):
        for h, cell in enumerate(row):
            thumb = thumbnail(cell, size)
            signed |= bool((thumb < 0).any())
            n = thumb.shape[-1]
            z[r * step:r * step + n, h * step:h * step + n] = thumb
    scale = dict(colorscale="RdBu", reversescale=True, zmid=0, zmin=-1, zmax=1) if signed else \
        dict(colorscale="Blues", zmin=0, zmax=1)
    fig = go.Figure(go.Heatmap(
        z=[[None if v != v else round(float(v), 4) for v in line] for line in z.tolist()], **scale,
        hoverinfo="skip", colorbar=dict(title=dict(text="weight ÷ the cell's<br>largest |weight|", side="right"))))
    centre = (size - 1) / 2
    marks = [(r, h) for r, row in enumerate(cells) for h in range(len(row))]
    fig.add_trace(go.Scatter(
        x=[h * step + centre for _, h in marks], y=[r * step + centre for r, _ in marks], mode="markers",
        showlegend=False, customdata=[[grid.layers[r], h] for r, h in marks],
        text=[f"layer {grid.layers[r]} ({grid.kinds[r]}), {grid.labels[r][h]}" for r, h in marks],
        marker=dict(size=max(8, min(40, 2 * size)), symbol="square-open", color="#111827", opacity=0,
                    line=dict(width=2)),
        selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)),
        selectedpoints=[i for i, (r, h) in enumerate(marks) if (grid.layers[r], h) == picked] if picked else None,
        hovertemplate="%{text}<br>click: open this map<extra></extra>"))
    row_labels = [f"L{layer} {'softmax' if kind == 'softmax' else 'implicit'}"
                  for layer, kind in zip(grid.layers, grid.kinds, strict=True)]
    head_labels = _column_labels(grid.labels, width)
    tokens = grid.tokens[1:] if sink else grid.tokens
    pooled = len(tokens) > size
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>{_axis_note(tokens, pooled, sink, grid.tokens)}</sup>", y=1,
                   yanchor="top", yref="container", pad=dict(t=16)),
        height=max(360, 150 + len(cells) * max(24, min(48, 900 // max(width, 1)))),
        xaxis=dict(tickvals=[h * step + centre for h in range(width)], ticktext=head_labels, side="top",
                   tickangle=0 if max(map(len, head_labels), default=0) * width <= 100 else -45, showgrid=False,
                   zeroline=False),
        yaxis=dict(tickvals=[r * step + centre for r in range(len(cells))], ticktext=row_labels,
                   autorange="reversed", showgrid=False, zeroline=False, scaleanchor="x"),
        margin=dict(l=10, r=10, t=130, b=20), plot_bgcolor="white")
    return fig


def _column_labels(labels: Sequence[Sequence[str]], width: int) -> list[str]:
    """A column's short label where every layer calls it the same ('h3', 'c0-95'), else its position ('#3');
    the hover names each cell in full."""
    out = []
    for h in range(width):
        names = {row[h] for row in labels if h < len(row)}
        name = names.pop() if len(names) == 1 else None
        out.append(f"{name[0]}{name.split()[-1]}" if name else f"#{h}")
    return out


def _axis_note(tokens: Sequence[str], pooled: bool, sink: bool, all_tokens: Sequence[str]) -> str:
    note = f"columns: h = head, c = channels (their mean); a cell: output rows x source columns, {len(tokens)} tokens"
    if pooled:
        note += f" averaged into {THUMB} bins a side"
    if sink:
        note += f"; the first token {visible_token(all_tokens[0])!r} left out (attention sink)"
    return note
