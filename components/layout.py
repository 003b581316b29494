"""Layout helpers for narrow screens (a 1024-px laptop or projector): columns that wrap instead of squeezing.

``st.columns`` keeps every column on one row until the phone breakpoint, so at 1024 px five inputs show cut
labels and two attention maps shrink to 100 px each. These columns get minimum widths and wrap onto more rows
when the page is narrower than their sum; on a wide page they keep the ratios of ``spec`` (a keyed container
scopes the rule to one row of columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import streamlit as st

Gap = Literal["xxsmall", "xsmall", "small", "medium", "large", "xlarge", "xxlarge"]  # st.columns gaps


def wrapping_columns(spec: int | Sequence[float], key: str, min_width: int | Sequence[int],
                     gap: Gap = "small") -> list:
    """``st.columns(spec)`` whose columns are at least ``min_width`` px wide (one value, or one per column),
    wrapping onto more rows, which they then fill, when the page is narrower."""
    count = spec if isinstance(spec, int) else len(spec)
    widths = [min_width] * count if isinstance(min_width, int) else list(min_width)
    scope = f".st-key-{key} [data-testid='stHorizontalBlock']"
    rules = [f"{scope} {{ flex-wrap: wrap; }}"] + [
        f"{scope} > [data-testid='stColumn']:nth-child({i + 1}) {{ min-width: min({w}px, 100%); }}"
        for i, w in enumerate(widths)]
    st.html(f"<style>{' '.join(rules)}</style>")
    return st.container(key=key).columns(spec, gap=gap)
