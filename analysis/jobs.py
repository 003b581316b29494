"""Background jobs: a long computation on a worker thread, with progress to poll and a stop flag, run through one
process-wide :class:`Scheduler`.

The library's long loops report ``progress(done, total)`` after every batch or prompt; a job wraps that callback
so it also checks the job's stop flag and raises :class:`Cancelled` there, which ends the work within one batch.
Results go where the wrapped function puts them (the on-disk ResultsCache, which stores a result only once its
computation returned, atomically), so a cancelled job leaves nothing half-written and a job that finishes after
its page has gone still saves its work. The model's own lock is taken by the library per batch, so a job and a
page's foreground work interleave batch by batch.

The scheduler is what keeps a shared (hosted) process usable: a bounded number of jobs run at once and the rest
wait in a queue, served round-robin over sessions (``owner``: an opaque id from the app); a session has at most
one job per ``kind`` (a new one cancels the old); a long job (estimated at :data:`LONG_S` or more, or not
estimated) never takes the last free slot, so a short job is not stuck behind someone's hour of IG. In public
mode (analysis/hosting.py) it also refuses a job estimated above the per-job cap or beyond the session's budget
for the hour, and cancels the jobs of a session that stopped polling (a closed tab) unless they are nearly done.
Settings (environment variables, read when a job is submitted; see the README's hosting section):
``PRUNESCOPE_JOB_SLOTS`` (jobs running at once; default half the CPUs, 2 to 8, read once per scheduler),
``PRUNESCOPE_JOB_MAX_MIN`` (10), ``PRUNESCOPE_SESSION_BUDGET_MIN`` (30 estimated minutes per hour) and
``PRUNESCOPE_JOB_ABANDON_S`` (120).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

from analysis.errors import PrunescopeError
from analysis.hosting import public_mode

LOG = logging.getLogger("prunescope")
JobState = Literal["queued", "running", "done", "cancelled", "failed"]
Progress = Callable[[int, int], None]
SLOTS_ENV, JOB_MAX_ENV = "PRUNESCOPE_JOB_SLOTS", "PRUNESCOPE_JOB_MAX_MIN"
BUDGET_ENV, ABANDON_ENV = "PRUNESCOPE_SESSION_BUDGET_MIN", "PRUNESCOPE_JOB_ABANDON_S"
LONG_S = 120.0  # a job estimated at this or more is "long": it never takes the last free slot
WINDOW_S = 3600.0  # a session's budget is per this many seconds (a sliding hour)


class Cancelled(PrunescopeError):
    """A job stopped at its stop flag (a Cancel click, a newer job replacing it, or its session gone)."""


class JobRefused(PrunescopeError):
    """A job over the demo's per-job cap or beyond its session's budget (public mode); one line for the page."""


def duration(seconds: float) -> str:
    """'about 40 s' / 'about 12 min': how the app states an estimate."""
    return f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"


class Job:
    """``work(progress)`` on a daemon thread, started by :meth:`start` (alone) or by a :class:`Scheduler` (when a
    slot frees). ``cost_s``: its estimated seconds (None: unknown); ``polled_at``: when a page last looked at
    it, on the scheduler's clock."""

    def __init__(self, key: Hashable, work: Callable[[Progress], Any], total: int = 0, name: str = "prunescope-job",
                 owner: Hashable = None, kind: str = "", cost_s: float | None = None):
        self.key, self.total, self.done = key, total, 0
        self.owner, self.kind, self.cost_s = owner, kind, cost_s
        self.state: JobState = "queued"
        self.result: Any = None
        self.error: BaseException | None = None
        self.polled_at = 0.0
        self._work = work
        self._stop = threading.Event()
        self._end = threading.Event()
        self._lock = threading.Lock()
        self._on_end: Callable[[Job], None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Job:
        """Run now, outside any scheduler (a script, a benchmark)."""
        self._launch()
        return self

    def cancel(self) -> None:
        """Ask the work to stop at its next progress report; a job that has not started ends here and now."""
        self._stop.set()
        with self._lock:
            never_started = self.state == "queued"
            if never_started:
                self.state = "cancelled"
        if never_started:
            self._finish()

    @property
    def running(self) -> bool:
        """Queued or running: not ended yet."""
        return self.state in ("queued", "running")

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 while the total is unknown)."""
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (True) or ``timeout`` seconds passed (False)."""
        return self._end.wait(timeout)

    def progress(self, done: int, total: int) -> None:
        """The callback handed to the work: records progress, raises Cancelled once the stop flag is set."""
        self.done, self.total = done, total
        if self._stop.is_set():
            raise Cancelled("job cancelled")

    def _launch(self) -> bool:
        """queued -> running and the thread starts; False when it was cancelled first."""
        with self._lock:
            if self.state != "queued":
                return False
            self.state = "running"
        self._thread.start()
        return True

    def _finish(self) -> None:
        """The scheduler learns first (it frees the slot and starts the next job), then waiters wake."""
        try:
            if self._on_end is not None:
                self._on_end(self)
        finally:
            self._end.set()

    def _run(self) -> None:
        try:
            if self._stop.is_set():
                raise Cancelled("job cancelled before it started")
            self.result = self._work(self.progress)
            self.state = "done"
        except Cancelled:
            self.state = "cancelled"
        except BaseException as exc:  # noqa: BLE001 - a worker thread has no caller to raise to; kept for the page
            self.error, self.state = exc, "failed"
        finally:
            self._finish()


def _env_number(name: str, default: float) -> float:
    """A positive number from the environment, or ``default`` (with a log line) when it is unset or not one."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        LOG.warning("%s=%r is not a positive number; using %s", name, text[:20], default)
        return default
    return value


def default_slots() -> int:
    """``PRUNESCOPE_JOB_SLOTS``, else half the CPUs, at least 2 (one for short jobs) and at most 8."""
    return max(1, int(_env_number(SLOTS_ENV, max(2, min(8, (os.cpu_count() or 2) // 2)))))


@dataclass(frozen=True)
class Limits:
    """Public mode's limits, in seconds: ``job_max_s`` per job (estimated), ``budget_s`` per session per
    :data:`WINDOW_S`, ``abandon_s`` without a poll before a session's jobs are cancelled, unless at least
    ``nearly_done`` of their progress is made."""

    job_max_s: float = 600.0
    budget_s: float = 1800.0
    abandon_s: float = 120.0
    nearly_done: float = 0.9

    @classmethod
    def from_env(cls) -> Limits:
        return cls(job_max_s=60 * _env_number(JOB_MAX_ENV, 10), budget_s=60 * _env_number(BUDGET_ENV, 30),
                   abandon_s=_env_number(ABANDON_ENV, 120))


@dataclass
class _Charge:
    """A job in a session's budget: its whole estimate once asked for, or the part its progress reached when it
    was cancelled or failed."""

    at: float
    owner: Hashable
    job: Job | None
    amount: float = 0.0

    def seconds(self) -> float:
        job = self.job
        if job is None:
            return self.amount
        return (job.cost_s or 0.0) * (job.fraction if job.stopping or job.state == "failed" else 1.0)


class Scheduler:
    """Every background job of a process (module docstring). ``limits`` and ``public``: None reads them from the
    environment at each submit; ``liveness(owner)``: True while the app knows that session is still open (counts
    as a poll of all its jobs), None when it cannot tell; ``janitor_s``: how often a thread sweeps abandoned jobs
    while any job is active (None: only :meth:`submit` and :meth:`sweep` do)."""

    def __init__(self, slots: int | None = None, limits: Limits | None = None, public: bool | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 liveness: Callable[[Hashable], bool | None] | None = None, janitor_s: float | None = 5.0):
        self.slots = slots if slots is not None else default_slots()
        self._limits, self._public, self.clock, self.liveness = limits, public, clock, liveness
        self.janitor_s = janitor_s
        self._lock = threading.RLock()
        self._queue: list[Job] = []  # FIFO, jobs not started yet
        self._running: list[Job] = []
        self._latest: dict[tuple[Hashable, str], Job] = {}  # (owner, kind) -> its job
        self._ledger: list[_Charge] = []  # what each session asked for, in the last WINDOW_S
        self._starts = 0  # jobs started so far
        self._started: dict[Hashable, int] = {}  # owner -> the number of its last start (sessions of the last hour)
        self._janitor: threading.Thread | None = None

    @property
    def limits(self) -> Limits:
        return self._limits if self._limits is not None else Limits.from_env()

    @property
    def public(self) -> bool:
        return self._public if self._public is not None else public_mode()

    def submit(self, owner: Hashable, kind: str, key: Hashable, work: Callable[[Progress], Any], total: int = 0,
               cost_s: float | None = None, name: str = "prunescope-job") -> Job:
        """Queue ``work`` for ``owner`` (cancelling its previous job of this ``kind``) and start it when a slot is
        free. In public mode raises :class:`JobRefused` (one line) above the per-job cap or the session's budget."""
        with self._lock:
            now = self.clock()
            self._sweep(now)
            old = self._latest.pop((owner, kind), None)
            if old is not None:
                old.cancel()
            if self.public:
                self._check(owner, cost_s, now)
            job = Job(key, work, total, name=name, owner=owner, kind=kind, cost_s=cost_s)
            job.polled_at, job._on_end = now, self._ended
            self._latest[(owner, kind)] = job
            self._ledger.append(_Charge(now, owner, job))
            self._queue.append(job)
            self._dispatch()
            self._start_janitor()
        return job

    def _check(self, owner: Hashable, cost_s: float | None, now: float) -> None:
        limits = self.limits
        if cost_s is not None and cost_s > limits.job_max_s:
            raise JobRefused(f"this job takes {duration(cost_s)} on this machine; this demo allows "
                             f"{duration(limits.job_max_s)} per job: use fewer prompts or steps")
        spent = self.spent(owner, now)
        if cost_s is not None and spent + cost_s > limits.budget_s:
            raise JobRefused(f"this job takes {duration(cost_s)} and this session has "
                             f"{duration(max(limits.budget_s - spent, 0.0))} left of the demo's "
                             f"{duration(limits.budget_s)} per hour: come back later or use fewer prompts or steps")

    def spent(self, owner: Hashable, now: float | None = None) -> float:
        """Estimated seconds ``owner`` used in the last :data:`WINDOW_S` (:class:`_Charge`)."""
        with self._lock:
            self._forget(self.clock() if now is None else now)
            return sum(charge.seconds() for charge in self._ledger if charge.owner == owner)

    def poll(self, job: Job) -> None:
        """A page looked at ``job``: its session is still there."""
        job.polled_at = self.clock()

    def position(self, job: Job) -> int:
        """0 once running (or ended), else its place in the queue from 1: round-robin over sessions, each
        session's jobs in the order asked for (the order :meth:`_next` starts them, slot limits aside)."""
        with self._lock:
            return self._order().index(job) + 1 if job in self._queue else 0

    def wait_s(self, job: Job) -> float | None:
        """Roughly how long a queued ``job`` waits: the running jobs' remaining and the earlier queued jobs'
        estimates, shared by the slots; None when one of them has no estimate."""
        with self._lock:
            ahead = self._order()[:max(self.position(job) - 1, 0)]
            if any(j.cost_s is None for j in (*self._running, *ahead)):
                return None
            return sum((j.cost_s or 0.0) * (1 - j.fraction) for j in (*self._running, *ahead)) / self.slots

    def sweep(self) -> list[Job]:
        """Cancel the jobs of sessions gone quiet (public mode); the cancelled jobs."""
        with self._lock:
            return self._sweep(self.clock())

    def _forget(self, now: float) -> None:
        self._ledger = [charge for charge in self._ledger if now - charge.at < WINDOW_S]
        recent = {charge.owner for charge in self._ledger}
        self._started = {owner: n for owner, n in self._started.items() if owner in recent}

    def _sweep(self, now: float) -> list[Job]:
        self._forget(now)
        active = self._active()
        for job in active:
            if self.liveness is not None and self.liveness(job.owner):
                job.polled_at = now
        if not self.public:
            return []
        limits = self.limits
        gone = [job for job in active if now - job.polled_at > limits.abandon_s and not job.stopping
                and not (job.state == "running" and job.fraction >= limits.nearly_done)]
        for job in gone:
            LOG.info("cancelling %s of a session gone quiet (%.0f%% done)", job.kind or job.key, 100 * job.fraction)
            job.cancel()
        return gone

    def _active(self) -> list[Job]:
        return [*self._running, *self._queue]

    def _order(self) -> list[Job]:
        """The queue in the order it is served: round-robin over sessions (the session whose last start is the
        oldest, or that never started one, goes next), each session's jobs first come, first served."""
        last = dict(self._started)
        waiting: dict[Hashable, list[Job]] = {}
        for job in self._queue:
            waiting.setdefault(job.owner, []).append(job)
        order: list[Job] = []
        while waiting:
            owner = min(waiting, key=lambda o: (last.get(o, -1), self._queue.index(waiting[o][0])))
            order.append(waiting[owner].pop(0))
            last[owner] = self._starts + len(order)
            if not waiting[owner]:
                del waiting[owner]
        return order

    def _next(self) -> Job | None:
        long_slots = max(1, self.slots - 1)  # with 2 slots or more, one is always left for short jobs
        longs = sum(self._long(job) for job in self._running)
        return next((job for job in self._order() if not self._long(job) or longs < long_slots), None)

    @staticmethod
    def _long(job: Job) -> bool:
        return job.cost_s is None or job.cost_s >= LONG_S

    def _dispatch(self) -> None:
        while len(self._running) < self.slots:
            job = self._next()
            if job is None:
                return
            self._queue.remove(job)
            self._running.append(job)
            self._starts += 1
            self._started[job.owner] = self._starts
            if not job._launch():  # cancelled meanwhile: its _ended already ran
                self._running.remove(job)

    def _ended(self, job: Job) -> None:
        with self._lock:
            for pool in (self._queue, self._running):
                if job in pool:
                    pool.remove(job)
            if self._latest.get((job.owner, job.kind)) is job:
                del self._latest[(job.owner, job.kind)]
            for charge in self._ledger:
                if charge.job is job:  # keep the number, not the job and its result
                    charge.amount, charge.job = charge.seconds(), None
            self._dispatch()

    def _start_janitor(self) -> None:
        if self.janitor_s is None or (self._janitor is not None and self._janitor.is_alive()):
            return
        self._janitor = threading.Thread(target=self._janitor_loop, name="prunescope-janitor", daemon=True)
        self._janitor.start()

    def _janitor_loop(self) -> None:
        """Sweep every ``janitor_s`` while any job is active; the next submit starts a new loop."""
        while True:
            time.sleep(self.janitor_s or 5.0)
            with self._lock:
                if not self._active():
                    self._janitor = None
                    return
                self._sweep(self.clock())
