"""The ground-truth benchmark's table as the attention page shows it: one row per method, one column group per
prompt family, each score with its 95 % interval in one cell (analysis/evaluation/ground_truth.py)."""

from __future__ import annotations

import math

import pandas as pd


def with_interval(mean: float, low: float, high: float, digits: int = 2) -> str:
    """'0.85 [0.70, 0.95]', or '' for a score with nothing behind it (no correctly answered prompt)."""
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ground_truth_view(frame: pd.DataFrame) -> pd.DataFrame:
    """Method x family: top-1 source accuracy and mean rank with intervals, and n (prompts answered
    correctly, of those built); a method its family cannot run keeps its note."""
    rows: dict[str, dict[str, str]] = {}
    for row in frame.itertuples(index=False):
        cells = rows.setdefault(row.method, {"method": row.method})
        name = row.family
        if row.note:
            cells[f"{name} top-1"] = row.note
            continue
        cells[f"{name} top-1"] = with_interval(row.top1, row.top1_lo, row.top1_hi)
        cells[f"{name} rank"] = with_interval(row.rank, row.rank_lo, row.rank_hi, 1)
        cells[f"{name} AUC"] = with_interval(row.auc, row.auc_lo, row.auc_hi, 3)
        cells[f"{name} n"] = f"{row.n} of {row.attempted}"
    return pd.DataFrame(list(rows.values())).fillna("")
