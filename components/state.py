"""Settings shared by every page, and deep links.

Streamlit drops a widget's state when a page that does not draw it runs, so the settings that several pages
use (task, shots, n, seed, layer, k, mask) live in plain session-state keys and the widgets are *bound* to
them (:func:`bound`); components/settings.py lists every such setting (link name, default, range, choices,
length). On a session's first run, the URL's query parameters fill those keys
(:func:`restore_from_query`); every run writes the current ones back (:func:`sync_query`), so the address bar
is always a link to what is on screen, and :func:`share_link` shows it with a copy button.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from components.markup import echo
from components.settings import DEFAULTS, TABLE
from components.settings import options as options_of

PREFIX = "setting_"  # session-state key of a setting
RESTORED = "_query_restored"
REJECTED = "_rejected_settings"  # setting -> the value a page rejected (kept out of the link while it stays)
PAGE_PARAM = "page"
MODEL_PARAM = "model"


UPLOAD_TASK = "Upload CSV/JSON…"  # the task picker's option for an uploaded task file


def safe_file_name(name: str) -> str:
    """A file name as a link may carry it, made harmless to show (letters, digits, '.', '-', '_', at most 60)."""
    return re.sub(r"[^\w.\-]+", "_", name)[:60]


def task_label() -> str:
    """The task as people should read it: a built-in name, or an uploaded file's name."""
    if get("task") == UPLOAD_TASK:
        return f"{get('upload') or 'a file'} (uploaded)"
    return str(get("task"))


def key(name: str) -> str:
    return PREFIX + name


def get(name: str) -> Any:
    """A shared setting's current value (its default until set)."""
    return st.session_state.get(key(name), DEFAULTS[name])


def put(name: str, value: Any) -> None:
    st.session_state[key(name)] = value


def restore_from_query() -> dict[str, str]:
    """On the session's first run only: copy known query parameters into the settings (and the model picker's
    keys); returns the parameters it saw (``page`` included) so the caller can switch page."""
    if st.session_state.get(RESTORED):
        return {}
    st.session_state[RESTORED] = True
    params = {name: st.query_params[name] for name in st.query_params}
    for name, text in params.items():
        if name in DEFAULTS:
            put(name, TABLE[name].parse(text))
    return params


def reject(name: str) -> None:
    """The page said it cannot use the setting's current value (a malformed mask, a bad layer range): the
    address bar and Copy link leave it out until the value changes; the page goes on showing it."""
    st.session_state.setdefault(REJECTED, {})[name] = get(name)


def rejected(name: str) -> bool:
    """Whether the setting still holds the value a page rejected."""
    kept = st.session_state.get(REJECTED, {})
    return name in kept and kept[name] == get(name)


def fit_to_model(n_layers: int) -> None:
    """Keep the layer setting within the loaded model's layers on every page, not only where a widget shows
    it, so the address bar and Copy link never hold a layer the pages do not use (``layer=1023`` on a 4-layer
    model becomes 3)."""
    if get("layer") > n_layers - 1:
        put("layer", max(n_layers - 1, 0))


def sync_query(page: str, model_spec: str | None, extra: dict[str, str] | None = None) -> None:
    """Write the page, the model, the settings that differ from their defaults (less a rejected value) and
    ``extra`` into the URL."""
    wanted = {PAGE_PARAM: page, **(extra or {})}
    if model_spec:
        wanted[MODEL_PARAM] = model_spec
    wanted.update({name: str(get(name)) for name in DEFAULTS if get(name) != DEFAULTS[name] and not rejected(name)})
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def link() -> str:
    """The full URL of the current view (host from the browser's request when known)."""
    base = (st.context.url or "").split("?", 1)[0]
    return f"{base}?{urlencode(dict(st.query_params))}"


def share_link() -> None:
    """A 'copy link' control: the deep link in a code box (with Streamlit's copy button)."""
    with st.popover("Copy link", icon=":material/link:"):
        st.caption("A link to this page with the current model, task and settings:")
        st.code(link(), language=None)


def _valid_choice(name: str, value: Any, options: list, default: Any) -> Any:
    """``value`` when it is one of ``options``; else one red line naming the setting (the value as code, cut
    short), and the default (or the first option)."""
    if value in options:
        return value
    fallback = default if default in options else options[0]
    if value not in ("", None):  # '' = "this model's default" (e.g. another model's list of choices)
        st.error(f"{name}={echo(value)} is not one of the choices here; using {fallback}")
    put(name, fallback)
    return fallback


def bound(widget: Callable[..., Any], label: str, name: str, widget_key: str | None = None, **kwargs) -> Any:
    """Draw ``widget(label, ...)`` bound to the setting ``name``: it starts from the setting and writes back to
    it, on any page. Numbers keep to the setting's range, choices (selectbox, radio) to their options (the
    table's fixed ones unless the page passes ``options``), a
    multiselect's picks (kept as comma-joined text) to its options; a link's value outside them is replaced,
    with one red line."""
    widget_key = widget_key or f"_w_{name}"
    value = get(name)
    kind = getattr(widget, "__name__", "")
    if kind in ("selectbox", "radio"):
        options = list(kwargs.pop("options") if "options" in kwargs else options_of(name))
        st.session_state[widget_key] = _valid_choice(name, value, options, DEFAULTS.get(name))
        value = widget(label, options, key=widget_key, on_change=lambda: put(name, st.session_state[widget_key]),
                       **kwargs)
        put(name, value)
        return value
    if kind == "multiselect":
        options = list(kwargs.pop("options"))
        picked = [item for item in str(value).split(",") if item]
        unknown = [item for item in picked if item not in options]
        if unknown:
            st.error(f"{name}: {', '.join(echo(u) for u in unknown[:3])} not among the choices here; left out")
        st.session_state[widget_key] = [item for item in picked if item in options]
        value = widget(label, options, key=widget_key,
                       on_change=lambda: put(name, ",".join(st.session_state[widget_key])), **kwargs)
        put(name, ",".join(value))
        return value
    setting_bound = TABLE[name].bound
    if setting_bound is not None and kind == "number_input":  # the one range (a page may narrow it: shots >= 1
        # where prompts need demonstrations, layer < the model's layer count)
        kwargs["min_value"] = max(kwargs.get("min_value", setting_bound.low), setting_bound.low)
        kwargs["max_value"] = min(kwargs.get("max_value", setting_bound.high), setting_bound.high)
    if kind in ("checkbox", "toggle"):  # kept as 0/1 (links, defaults), shown as bool
        st.session_state[widget_key] = bool(value)
        value = widget(label, key=widget_key, on_change=lambda: put(name, int(st.session_state[widget_key])),
                       **kwargs)
        put(name, int(value))
        return int(value)
    if isinstance(value, (int, float)):  # another page (or a link) may have set a value this widget cannot show
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        value = max(value, low) if low is not None else value
        value = min(value, high) if high is not None else value
        put(name, value)
    st.session_state[widget_key] = value  # before the widget exists in this run: allowed
    value = widget(label, key=widget_key, on_change=lambda: put(name, st.session_state[widget_key]), **kwargs)
    put(name, value)
    return value
