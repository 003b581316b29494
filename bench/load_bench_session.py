"""One session of the load benchmark (bench/load_bench.py): its kind, deep link and what it showed, and how a
value is written as the page writes it (so shown and expected values compare as text)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlencode

from analysis.pruning import NeuronMask

SHOTS = 2
PAGES = {"prune": "pruning", "evaluate": "evaluate", "compare": "compare", "attribution": "attribution",
         "task-vectors": "task-vectors", "attention": "attention", "faithfulness": "attention"}

Values = dict[str, str]  # what one session shows (or should show): label -> value as the page writes it
TABLE = "table: "  # a label from a data grid, which draws only the rows in view: one it did not draw is not compared


def pct(value) -> str:
    return f"{float(value):.1%}"


def cell(value) -> str:
    """A float as st.dataframe draws it: at most 4 decimals, trailing zeros dropped (the grid's accessible text
    holds the full value)."""
    number = float(value)
    if math.isnan(number):
        return "nan"
    text = f"{number:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass
class Session:
    index: int
    kind: str
    model: str
    mask: NeuronMask | None
    params: dict[str, str | int]
    beside: str = ""  # attention: the model whose map the page shows beside (none: "")
    shown: Values | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float | None = None
    redraws: int = 0  # reads that found a chart or table not drawn yet

    def link(self, url: str) -> str:
        return f"{url}/?" + urlencode({"page": PAGES[self.kind], **self.params})
