"""What a page shows is keyed by everything that produced it: one helper for every page's displayed result.

A page keeps its last result in the session under a *key*: its request's or query's key (the model's
fingerprint, its dtype and every setting the result used: analysis/requests.py, analysis/queries.py). Under
other settings the page says what the result was for and what to click, instead of showing numbers that
belong to another model, dtype or setting (a previous model's k-sweep curve, an attribution under other
steps).
"""

from __future__ import annotations

from typing import Any

import streamlit as st


def keep(slot: str, key: tuple, value: Any, label: str) -> None:
    """Remember ``value`` as the page's shown result, under ``key``; ``label`` says in words what it was for."""
    st.session_state[slot] = {"key": key, "value": value, "label": label}


def shown(slot: str, key: tuple | None, what: str, action: str) -> Any:
    """The page's kept result when it was made under ``key``; else None, and, when one exists for other
    settings, a line naming them and ``action`` (e.g. "click Attribute") for these."""
    kept = st.session_state.get(slot)
    if not kept:
        return None
    if kept["key"] != key:
        st.info(f"The last {what} was for other settings ({kept['label']}): {action} for these.",
                icon=":material/history:")
        return None
    return kept["value"]
