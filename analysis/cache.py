"""On-disk results cache: content-addressed, atomic writes, corruption detected and recomputed.

An entry's key is a hash of everything that determines the result: a ``kind`` with the method's code
version (bump it when the method's numbers change), the model's weights fingerprint, the task data and
the parameters. Files hold a magic header, a SHA-256 of the payload and the payload (``torch.save``);
a file whose digest does not match is reported (a warning), removed and recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from analysis.paths import cache_dir

MAGIC = b"PRUNESCOPE-CACHE-1\n"


class CorruptCacheEntry(UserWarning):
    """A cache file failed its integrity check; the result is being recomputed."""


def stable_hash(value: Any) -> str:
    """SHA-256 of a JSON rendering with sorted keys (tuples as lists, other objects by ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def task_fingerprint(task) -> str:
    """Hash of a task's data and prompt format (not its name: renaming a file keeps its results)."""
    return stable_hash({"pairs": task.pairs, "template": task.template, "kind": task.kind,
                        "case_sensitive": task.case_sensitive})


class ResultsCache:
    """A directory of cached results (default: ``<user cache>/results``), plus read-only ``fallbacks`` consulted
    on a miss (default: the results shipped in ``assets/precomputed/`` for the app's first clicks)."""

    def __init__(self, root: str | Path | None = None, fallbacks: tuple[Path, ...] | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "results"
        if fallbacks is None:
            from analysis.demo import PRECOMPUTED_DIR
            fallbacks = (PRECOMPUTED_DIR,)
        self.fallbacks = tuple(Path(f) for f in fallbacks if Path(f).resolve() != self.root.resolve())

    def key(self, kind: str, version: str, parts: dict) -> str:
        return stable_hash({"kind": kind, "version": version, "parts": parts})

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.pt"

    def get(self, kind: str, key: str) -> Any | None:
        """The cached value, or None when absent or corrupt (a corrupt file is reported and removed; a corrupt
        shipped file is reported and left alone)."""
        for root in (self.root, *self.fallbacks):
            path = root / kind / f"{key}.pt"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            digest, payload = data[len(MAGIC): len(MAGIC) + 32], data[len(MAGIC) + 32:]
            if not data.startswith(MAGIC) or hashlib.sha256(payload).digest() != digest:
                warnings.warn(f"cache entry {path} is corrupt; recomputing it", CorruptCacheEntry, stacklevel=2)
                if root == self.root:
                    path.unlink(missing_ok=True)
                continue
            return torch.load(io.BytesIO(payload), weights_only=False)
        return None

    def put(self, kind: str, key: str, value: Any) -> Path:
        """Write atomically: a temporary file in the same directory, then a rename."""
        path = self.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(value, buffer)
        payload = buffer.getvalue()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

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
