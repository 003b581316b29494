"""Where the project's data lives: shipped assets in the repository, results in a user cache directory."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = PROJECT_ROOT / "assets"
TASKS_DIR = ASSETS_DIR / "tasks"
PRECOMPUTED_DIR = ASSETS_DIR / "precomputed"  # results shipped for the app's default settings (analysis/demo.py)


def cache_dir() -> Path:
    """User cache root: $PRUNESCOPE_CACHE, else $XDG_CACHE_HOME/prunescope, else ~/.cache/prunescope."""
    root = os.environ.get("PRUNESCOPE_CACHE")
    path = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunescope"
    path.mkdir(parents=True, exist_ok=True)
    return path
