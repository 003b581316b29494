"""CSV that a spreadsheet opens safely (OWASP "CSV injection"): a text cell starting with ``= + - @``, a tab or a
carriage return would run as a formula in Excel or LibreOffice, so it gets a leading apostrophe; numbers stay
numbers. Every CSV the app or the CLI writes goes through :func:`safe_csv`, since its cells hold task items,
model answers and file names that came from strangers.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def defuse(cell: Any) -> Any:
    """``cell`` with a leading ``'`` when it is text a spreadsheet would read as a formula; anything else as is."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell


def neutralize(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names cannot start a formula; numeric, boolean and
    date columns are left alone (a negative number stays a number)."""
    out = frame.copy()
    for position in range(out.shape[1]):
        column = out.iloc[:, position]
        if pd.api.types.is_string_dtype(column.dtype) or isinstance(column.dtype, pd.CategoricalDtype):
            out.isetitem(position, column.map(defuse))
    out.columns = [defuse(name) for name in out.columns]
    return out


def safe_csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text without its index, every text cell defused (:func:`neutralize`). Rows end in CRLF
    (RFC 4180), so a cell holding a lone carriage return is quoted too (with pandas' default newline it is not,
    and that row falls apart when read)."""
    return neutralize(frame).to_csv(index=False, lineterminator="\r\n")


__all__ = ["FORMULA_STARTS", "defuse", "neutralize", "safe_csv"]
