"""Long jobs off the script run, all through one process-wide scheduler (analysis/jobs.py): the speculative Prune
toggle, and every page's job button.

The speculative Prune toggle: as soon as a mask is chosen, its pruned run and random controls are computed on
a worker thread, so switching Prune on shows numbers read from the cache. The job goes through the same
``prune_eval`` and ResultsCache as the page; switching Prune on while it runs shows its progress instead of
starting the work again.

A job button (copying scores, attribution, k-sweep, task vectors, faithfulness: :func:`follow`) starts the same
kind of job: the script run only polls it, so leaving the page does not stop or lose it (its result lands in the
on-disk cache), coming back shows its progress, and with $PRUNESCOPE_RAY set its shards run on that cluster.

Every job belongs to its session (:func:`owner`) and kind (the session-state slot it is kept in): one per session
and kind, a bounded number running per process, the rest queued (the page says its place and wait). Each job
comes with an estimate (:func:`estimate_s`: the model's measured seconds per unit of work, else a prior scaled by
its parameters); in public mode the page states it with the demo's limits before the button, a job above the cap
or the session's budget is refused with one line, and a closed tab's jobs are cancelled (:data:`SCHEDULER`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from analysis.jobs import Job, JobRefused, Progress, Scheduler, duration
from analysis.models import LoadedModel
from components.widgets import CANCELLED_KEY, COST_NOTE_S, measured_speed, progress_row, seconds_per_unit
from components.widgets import cost_note as measured_cost_note

JOB_KEY = "speculative_job"
OWNER_KEY = "_job_owner"
POLL_S = 1.0  # seconds between progress redraws of a running job
# seconds per unit of work before this model's speed is measured here: (fixed, per 1e8 parameters), from a 2-core
# VM (SmolLM2-135M: 0.05 s per generated answer, 0.11 s per IG prompt-step; the toys: 0.004 and 0.002)
PRIOR_S: dict[str, tuple[float, float]] = {"eval": (0.004, 0.035), "ig": (0.002, 0.08), "faith": (0.04, 0.35)}


def session_alive(owner: Hashable) -> bool | None:
    """True while the browser tab of ``owner`` (see :func:`owner`) is connected to this server; None where no
    server runs (a test)."""
    if not (isinstance(owner, tuple) and owner[0] and Runtime.exists()):
        return None
    return Runtime.instance().is_active_session(owner[0]) is True  # (AppTest's stand-in runtime answers a mock)


SCHEDULER = Scheduler(liveness=session_alive)  # process-wide: every session's background jobs


def owner() -> tuple[str, str]:
    """This session's id for the scheduler: (Streamlit's session id, for :func:`session_alive`; a uuid kept in the
    session, unique also where every session shares one Streamlit id, as AppTest's do)."""
    if OWNER_KEY not in st.session_state:
        ctx = get_script_run_ctx()
        st.session_state[OWNER_KEY] = (ctx.session_id if ctx is not None else "", uuid.uuid4().hex)
    return st.session_state[OWNER_KEY]


def estimate_s(loaded: LoadedModel, units: int, kind: str) -> float:
    """Seconds ``units`` of ``kind`` work ("eval", "ig", "faith") take: measured on this model and machine, else
    :data:`PRIOR_S`."""
    rate = seconds_per_unit(loaded, kind)
    if rate is None:
        fixed, per_1e8 = PRIOR_S[kind]
        rate = fixed + per_1e8 * sum(p.numel() for p in loaded.model.parameters()) / 1e8
    return rate * units


def cost_note(loaded: LoadedModel, units: int, kind: str, what: str) -> None:
    """A caption before a job's button: its measured cost when over half a minute; in public mode, the estimate
    beside the demo's per-job cap and what is left of this session's budget (and that it will be refused)."""
    if not SCHEDULER.public:
        measured_cost_note(loaded, units, kind, what)
        return
    seconds, limits = estimate_s(loaded, units, kind), SCHEDULER.limits
    left = max(limits.budget_s - SCHEDULER.spent(owner()), 0.0)
    allows = f"this demo allows {duration(limits.job_max_s)} per job, {duration(left)} left to this session this hour"
    if seconds > min(limits.job_max_s, left):
        st.caption(f":material/block: {what}: {duration(seconds)} on this machine; {allows}: use fewer prompts or "
                   "steps")
    elif seconds >= COST_NOTE_S:
        st.caption(f":material/hourglass_top: {what}: {duration(seconds)} on this machine (unless cached); {allows}")


def submit(kind: str, key: Hashable, work: Callable[[Progress], Any], total: int, cost_s: float | None) -> Job:
    """This session's job of ``kind`` (kept in ``st.session_state[kind]``), replacing the one there; raises
    :class:`JobRefused` (one line) in public mode above the demo's limits, leaving no job of ``kind``."""
    st.session_state.pop(kind, None)
    job = SCHEDULER.submit(owner(), kind, key, work, total, cost_s, name=f"prunescope-{kind}")
    st.session_state[kind] = job
    return job


def session_job() -> Job | None:
    return st.session_state.get(JOB_KEY)


def ensure_job(key: Hashable, work: Callable[[Progress], Any], total: int, restart: bool = False,
               cost_s: float | None = None) -> Job | None:
    """The session's pruned-runs job for ``key`` if it has one (a cancelled or failed one too, unless ``restart``:
    a stopped speculation stays stopped until the user asks for the result), else a new one queued now, replacing
    a job for another key. Beyond the demo's limits: refused with one line when asked for (``restart``), else
    (an unasked speculation) None."""
    job = session_job()
    if job is not None and job.key == key and (job.state not in ("cancelled", "failed") or not restart):
        return job
    try:
        return submit(JOB_KEY, key, work, total, cost_s)
    except JobRefused:
        if restart:
            raise
        return None


def cancel_job(label: str, then: Callable[[], None] | None = None, slot: str = JOB_KEY) -> None:
    """Cancel button callback: stop the session's job in ``slot`` (the page's own job: never another page's or
    the speculative pruned runs unless that is the slot) at its next batch, say so on the next run, then ``then``
    (e.g. switch the toggle that asked for the result off, so the next run does not start it again)."""
    job = st.session_state.get(slot)
    if isinstance(job, Job):
        job.cancel()
    st.session_state[CANCELLED_KEY] = label
    if then is not None:
        then()


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def describe(job: Job, unit: str = "prompts") -> str:
    """Where a job stands: '2nd in the queue, about 3 min' while it waits, else '12/40 prompts'."""
    place = SCHEDULER.position(job)
    if place:
        wait = SCHEDULER.wait_s(job)
        return f"{ordinal(place)} in the queue" + ("" if wait is None else f", {duration(wait)} before it starts")
    return f"{job.done}/{job.total or '?'} {unit}"


def wait_for(job: Job, label: str, unit: str = "prompts", on_cancel: Callable[[], None] | None = None,
             slot: str = JOB_KEY) -> Any:
    """Block the page on a running job (kept in ``st.session_state[slot]``) with its progress bar and a Cancel
    button that stops that job (and calls ``on_cancel``); the job's result, or None when it was cancelled (its
    error is raised, for ``guarded``)."""
    if job.running:
        box = st.empty()
        with box.container():
            bar = progress_row(label, f"cancel_job_{label}", cancel_job, (label, on_cancel, slot))
        while not job.wait(0.25):
            SCHEDULER.poll(job)  # the session is still here: the janitor leaves the job alone
            bar.progress(min(job.done / job.total, 1.0) if job.total else 0.0,
                         text=f"{label}: {describe(job, unit)}")
        box.empty()
    if job.error is not None:
        raise job.error
    return job.result if job.state == "done" else None


def status_line(job: Job | None, ready_text: str, label: str) -> None:
    """Below the unpruned numbers: where the speculative run stands. While it runs, this line redraws itself
    every second (a fragment); when it ends, the app reruns once so the page can use the result."""
    if job is None:
        return

    def draw() -> None:
        SCHEDULER.poll(job)
        if job.state == "done":
            st.caption(f":material/bolt: {ready_text}")
        elif job.state == "failed":
            st.caption(f"{label} failed in the background; switching Prune on shows why")
        elif job.state == "cancelled":
            st.caption(f"{label} stopped; switching Prune on computes them")
        elif job.running:
            with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                st.caption(f":material/hourglass_top: {label} in the background: {describe(job)}", width="content")
                st.button("Stop", key="speculation_stop", on_click=cancel_job, args=(label,), type="tertiary",
                          icon=":material/stop_circle:")

    if not job.running:
        draw()
        return

    @st.fragment(run_every=POLL_S)
    def poll() -> None:
        if not job.running:
            st.rerun(scope="app")  # once: the next run draws the final line without polling
        draw()

    poll()


def follow(slot: str, key: Hashable, label: str, work: Callable[[Progress], Any], start: bool, unit: str = "prompts",
           speed: tuple[LoadedModel, str, int] | None = None, total: int = 0) -> Any:
    """A job the user asked for: started on a worker thread when ``start`` (a click) and none runs for ``key``
    in this ``slot`` (one per page and session; a job for other settings there is cancelled), then followed
    with its progress bar and Cancel on every script run while it lasts, including runs after the visitor left
    the page and came back. Returns its result once done, None while nothing for ``key`` ran or after a Cancel;
    a failure is raised (for ``guarded``), and so is a refusal of the demo's limits. ``speed`` = (model, kind,
    units): the job's estimate (:func:`estimate_s`), and a run that computed records its speed for the cost
    notes; ``total``: the units of work, when known before the first progress report."""
    job: Job | None = st.session_state.get(slot)
    if start and not (job is not None and job.key == key and job.running):

        def timed(progress: Progress) -> Any:
            started = time.monotonic()
            result = work(progress)
            elapsed = time.monotonic() - started
            if speed is not None and elapsed > 1.0:  # computed, not read from the cache
                measured_speed(speed[0], speed[2], elapsed, speed[1])
            return result

        job = submit(slot, key, timed, total, None if speed is None else estimate_s(speed[0], speed[2], speed[1]))
    if job is None or job.key != key:
        return None
    return wait_for(job, label, unit, slot=slot)
