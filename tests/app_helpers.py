"""What the AppTest modules share: the app's entry point, a timeout, and opening a page with settings."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
TIMEOUT = 120


def no_exception(at: AppTest) -> AppTest:
    """``at`` after asserting its run raised nothing (the exceptions' text is the failure message)."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_app(model: str, monkeypatch, page: str | None = None, **settings) -> AppTest:
    """The app run once on ``model`` with the shared settings given (``setting_<name>``), on ``page``."""
    monkeypatch.setenv("PRUNESCOPE_MODEL", model)
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    for name, value in settings.items():
        at.session_state[f"setting_{name}"] = value
    if page:
        at.switch_page(page)
    return no_exception(at.run())


def metrics_of(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def st_mask_size(at: AppTest) -> int:
    return len(at.session_state["active_mask"]["mask"])
