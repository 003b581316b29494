"""Long jobs off the script run (analysis/jobs.py): the speculative Prune toggle, and every page's job button.

The speculative Prune toggle: as soon as a mask is chosen, its pruned run and random controls are computed on
a worker thread, so switching Prune on shows numbers read from the cache.

One job per session (a new mask or new settings cancel the old job) and one running job per process (the rest
queue), so the visitors of a hosted demo do not split its CPU between many speculative runs. The job goes
through the same ``prune_eval`` and ResultsCache as the page, so what it finishes is kept even if the visitor
has left. Switching Prune on while the job runs shows the job's own progress instead of starting the work again.

A job button (copying scores, attribution, k-sweep, task vectors, faithfulness: :func:`follow`) starts the same
kind of job, one per page and session: the script run only polls it, so leaving the page or closing the tab does
not stop or lose it (its result lands in the on-disk cache), coming back shows its progress, and with
$PRUNESCOPE_RAY set its shards run on that cluster.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import streamlit as st

from analysis.jobs import Job, Progress
from analysis.models import LoadedModel
from components.widgets import CANCELLED_KEY, measured_speed

JOB_KEY = "speculative_job"
SLOTS = threading.BoundedSemaphore(1)  # process-wide: one speculative run at a time
POLL_S = 1.0  # seconds between progress redraws of a running job


def session_job() -> Job | None:
    return st.session_state.get(JOB_KEY)


def ensure_job(key: Hashable, work: Callable[[Progress], Any], total: int, restart: bool = False) -> Job:
    """The session's job for ``key`` if it has one (a cancelled or failed one too, unless ``restart``: a
    stopped speculation stays stopped until the user asks for the result), else a new one started now; a job
    for another key is cancelled."""
    job = session_job()
    if job is not None and job.key == key and (job.state not in ("cancelled", "failed") or not restart):
        return job
    if job is not None:
        job.cancel()
    job = Job(key, work, total, slots=SLOTS, name="prunescope-speculation").start()
    st.session_state[JOB_KEY] = job
    return job


def cancel_job(label: str, then: Callable[[], None] | None = None) -> None:
    """Cancel button callback: stop the session's job at its next batch, say so on the next run, then ``then``
    (e.g. switch the toggle that asked for the result off, so the next run does not start it again)."""
    job = session_job()
    if job is not None:
        job.cancel()
    st.session_state[CANCELLED_KEY] = label
    if then is not None:
        then()


def describe(job: Job, unit: str = "prompts") -> str:
    if job.state == "queued":
        return "waiting for another session's run to finish"
    return f"{job.done}/{job.total or '?'} {unit}"


def wait_for(job: Job, label: str, unit: str = "prompts", on_cancel: Callable[[], None] | None = None) -> Any:
    """Block the page on a running job with its progress bar and a Cancel button (which also calls
    ``on_cancel``); the job's result, or None when it was cancelled (its error is raised, for ``guarded``)."""
    if job.running:
        box = st.empty()
        with box.container():
            col_bar, col_cancel = st.columns([6, 1])
            bar = col_bar.progress(0.0, text=f"{label}…")
            col_cancel.button("Cancel", key=f"cancel_job_{label}", icon=":material/stop_circle:",
                              on_click=cancel_job, args=(label, on_cancel))
        while not job.wait(0.25):
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
    a failure is raised (for ``guarded``). ``speed`` = (model, kind, units): a run that computed records its
    speed for the cost notes; ``total``: the units of work, when known before the first progress report."""
    job: Job | None = st.session_state.get(slot)
    if start and not (job is not None and job.key == key and job.running):
        if job is not None:
            job.cancel()

        def timed(progress: Progress) -> Any:
            started = time.monotonic()
            result = work(progress)
            elapsed = time.monotonic() - started
            if speed is not None and elapsed > 1.0:  # computed, not read from the cache
                measured_speed(speed[0], speed[2], elapsed, speed[1])
            return result

        job = Job(key, timed, total, name=f"prunescope-{slot}").start()
        st.session_state[slot] = job
    if job is None or job.key != key:
        return None
    return wait_for(job, label, unit)
