"""Background jobs: a long computation on a worker thread, with progress to poll and a stop flag.

The library's long loops report ``progress(done, total)`` after every batch or prompt; a job wraps that callback
so it also checks the job's stop flag and raises :class:`Cancelled` there, which ends the work within one batch.
The app uses this to compute a pruned run speculatively (components/speculation.py) while the user looks at the
unpruned numbers. Results go where the wrapped function puts them (the on-disk ResultsCache), so a job that
finishes after its page has gone still saves its work; the model's own lock is taken by the library per batch,
so a job and a page's foreground work interleave batch by batch instead of running hooks at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Literal

from analysis.errors import PrunescopeError

JobState = Literal["queued", "running", "done", "cancelled", "failed"]
Progress = Callable[[int, int], None]


class Cancelled(PrunescopeError):
    """A job stopped at its stop flag (a Cancel click, or a newer job replacing it)."""


class Job:
    """``work(progress)`` on a daemon thread. At most ``slots`` (a semaphore shared by jobs that should not
    run at the same time, e.g. one per process so visitors of a hosted demo do not share two CPU cores with
    many speculative runs) run at once; the others wait in state "queued"."""

    def __init__(self, key: Hashable, work: Callable[[Progress], Any], total: int = 0,
                 slots: threading.Semaphore | None = None, name: str = "prunescope-job"):
        self.key, self.total, self.done = key, total, 0
        self.state: JobState = "queued"
        self.result: Any = None
        self.error: BaseException | None = None
        self._work, self._slots = work, slots
        self._stop = threading.Event()
        self._end = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop at its next progress report (a queued job never starts)."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (True) or ``timeout`` seconds passed (False)."""
        return self._end.wait(timeout)

    def progress(self, done: int, total: int) -> None:
        """The callback handed to the work: records progress, raises Cancelled once the stop flag is set."""
        self.done, self.total = done, total
        if self._stop.is_set():
            raise Cancelled("job cancelled")

    def _run(self) -> None:
        acquired = False
        try:
            while self._slots is not None and not self._stop.is_set():
                if self._slots.acquire(timeout=0.2):
                    acquired = True
                    break
            if self._stop.is_set():
                raise Cancelled("job cancelled before it started")
            self.state = "running"
            self.result = self._work(self.progress)
            self.state = "done"
        except Cancelled:
            self.state = "cancelled"
        except BaseException as exc:  # noqa: BLE001 - a worker thread has no caller to raise to; kept for the page
            self.error, self.state = exc, "failed"
        finally:
            if acquired and self._slots is not None:  # acquired implies slots
                self._slots.release()
            self._end.set()
