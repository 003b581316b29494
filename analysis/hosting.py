"""Public mode for a hosted demo: visitors choose among the built-in models only, and see no server path.

``PRUNESCOPE_PUBLIC=1`` (the Dockerfile sets it; on Streamlit Community Cloud it is a secret) turns it on.
Then the app offers the real built-in models and the toy checkpoints, plus the ids listed one per line in the
file named by ``PRUNESCOPE_ALLOWED_MODELS`` (a lab's own demo), and nothing else: no hub id, no local
directory, from the sidebar or from a link. Messages shown to visitors pass through :func:`scrub`, which
replaces the server's own folders with "…". Without the variable (``make run`` on your own machine) nothing
changes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from analysis.errors import ModelLoadError
from analysis.paths import PROJECT_ROOT, cache_dir

PUBLIC_ENV = "PRUNESCOPE_PUBLIC"
ALLOWED_ENV = "PRUNESCOPE_ALLOWED_MODELS"


def public_mode() -> bool:
    return os.environ.get(PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def allowed_extra_models() -> list[str]:
    """The host's additional model ids (``PRUNESCOPE_ALLOWED_MODELS``: a file, one id per line, ``#`` comments)."""
    path = os.environ.get(ALLOWED_ENV, "").strip()
    if not path:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelLoadError(f"the allowed-models file named by {ALLOWED_ENV} cannot be read "
                             f"({type(exc).__name__})") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def offered_models() -> list[str]:
    """What a visitor may load: every built-in choice, plus the host's allow-list in public mode."""
    from analysis.models import model_choices

    choices = model_choices()
    return choices + [m for m in allowed_extra_models() if m not in choices] if public_mode() else choices


def check_offered(spec: str) -> None:
    """In public mode, refuse (one line, no path) any model that is not offered."""
    if public_mode() and spec not in offered_models():
        shown = spec if len(spec) <= 60 else spec[:57] + "..."
        raise ModelLoadError(f"model {scrub(shown)!r} is not offered on this demo; choose one of "
                             f"{', '.join(offered_models())}")


def _server_folders() -> list[str]:
    folders = {str(PROJECT_ROOT), str(cache_dir()), str(Path.home()), tempfile.gettempdir(), sys.prefix,
               sys.base_prefix}
    return sorted((f for f in folders if len(f) > 1), key=len, reverse=True)  # longest first: nested folders


def scrub(text: str) -> str:
    """``text`` without the server's own folders (in public mode; unchanged otherwise)."""
    if not public_mode():
        return text
    for folder in _server_folders():
        text = text.replace(folder, "…")
    return text
