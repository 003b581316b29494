"""On-disk results cache: content-addressed, atomic writes, corruption detected and recomputed.

An entry's key is a hash of everything that determines the result: a ``kind`` with the method's code
version (bump it when the method's numbers change), the model's weights fingerprint, the task data and
the parameters. Files hold a magic header, a SHA-256 of the payload and the payload: a safetensors blob with
the result's tensors and the rest as JSON (analysis/codec.py; nothing is unpickled, so a crafted entry cannot
run code). A file whose digest does not match, or that does not decode, is reported (a warning), removed and
recomputed. Temporary files that a killed write left behind are removed after an hour.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis import codec
from analysis.paths import PRECOMPUTED_DIR, cache_dir

MAGIC = b"PRUNESCOPE-CACHE-2\n"
SUFFIX = ".safetensors"
STALE_TMP_S = 3600  # a .tmp-* file this old belongs to a write that was killed
_swept: set[Path] = set()  # roots whose stale temporary files this process has removed
_sweep_lock = threading.Lock()


class CorruptCacheEntry(UserWarning):
    """A cache file failed its integrity check; the result is being recomputed."""


def stable_hash(value: Any) -> str:
    """SHA-256 of a JSON rendering with sorted keys (tuples as lists, other objects by ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def task_fingerprint(task) -> str:
    """Hash of a task's data and prompt format (not its name: renaming a file keeps its results)."""
    parts = {"pairs": task.pairs, "template": task.template, "kind": task.kind, "case_sensitive": task.case_sensitive}
    if getattr(task, "instruction", ""):  # only when set: every other task keeps its key
        parts["instruction"] = task.instruction
    return stable_hash(parts)


class ResultsCache:
    """A directory of cached results (default: ``<user cache>/results``), plus read-only ``fallbacks`` consulted
    on a miss (default: the results shipped in ``assets/precomputed/`` for the app's first clicks)."""

    def __init__(self, root: str | Path | None = None, fallbacks: tuple[Path, ...] = (PRECOMPUTED_DIR,)):
        self.root = Path(root) if root is not None else cache_dir() / "results"
        self.fallbacks = tuple(Path(f) for f in fallbacks if Path(f).resolve() != self.root.resolve())
        self._sweep_stale_tmp()

    def _sweep_stale_tmp(self) -> None:
        """Once per process and root: remove ``.tmp-*`` files older than an hour (killed writes)."""
        with _sweep_lock:
            if self.root in _swept:
                return
            _swept.add(self.root)
        cutoff = time.time() - STALE_TMP_S
        for tmp in self.root.glob("*/.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass  # another process got there first

    def key(self, kind: str, version: str, parts: dict) -> str:
        return stable_hash({"kind": kind, "version": version, "parts": parts})

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}{SUFFIX}"

    def get(self, kind: str, key: str) -> Any | None:
        """The cached value, or None when absent or corrupt (a corrupt file is reported and removed; a corrupt
        shipped file is reported and left alone)."""
        for root in (self.root, *self.fallbacks):
            path = root / kind / f"{key}{SUFFIX}"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            digest, payload = data[len(MAGIC): len(MAGIC) + 32], data[len(MAGIC) + 32:]
            problem = "is corrupt"
            if data.startswith(MAGIC) and hashlib.sha256(payload).digest() == digest:
                try:
                    return codec.loads(payload)
                except (codec.CodecError, ValueError, TypeError) as exc:
                    problem = f"does not decode ({exc})"
            warnings.warn(f"cache entry {path} {problem}; recomputing it", CorruptCacheEntry, stacklevel=2)
            if root == self.root:
                path.unlink(missing_ok=True)
        return None

    def put(self, kind: str, key: str, value: Any) -> Path:
        """Write atomically: a temporary file in the same directory, then a rename."""
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = codec.dumps(value)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def has(self, kind: str, version: str, parts: dict) -> bool:
        """Whether an entry exists (here or in a fallback), without reading it: what a page asks before it
        decides that a request is small enough to run without a click."""
        key = self.key(kind, version, parts)
        return any((root / kind / f"{key}{SUFFIX}").is_file() for root in (self.root, *self.fallbacks))

    def get_or_compute(self, kind: str, version: str, parts: dict, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, True) from the cache, or (compute(), False) after storing it."""
        key = self.key(kind, version, parts)
        value = self.get(kind, key)
        if value is not None:
            return value, True
        value = compute()
        self.put(kind, key, value)
        return value, False


def default_cache() -> ResultsCache:
    return ResultsCache()
