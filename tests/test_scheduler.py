"""The process-wide job scheduler (analysis/jobs.py): bounded concurrency, one job per session and kind, a slot
left for short jobs, queue positions served round-robin over sessions, public mode's per-job cap and session
budget, and the janitor that cancels a closed session's jobs (nothing of them cached) but lets nearly-done ones
finish. Counted with events and states, on a fake clock where time matters."""

from __future__ import annotations

import threading

import pytest

from analysis.attribution.runs import attribute_task, stored_attribution
from analysis.cache import ResultsCache
from analysis.jobs import LONG_S, WINDOW_S, JobRefused, Limits, Scheduler
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gated(value=None, report: tuple[int, int] = (1, 2)):
    """(work, reached, gate): the work reports ``report``, sets ``reached``, waits for ``gate``, then reports
    again (where a cancel raises) and returns ``value``."""
    reached, gate = threading.Event(), threading.Event()

    def work(progress):
        progress(*report)
        reached.set()
        assert gate.wait(60), "the test never opened the gate"
        progress(*report)
        return value

    return work, reached, gate


def states(jobs) -> list[str]:
    return [job.state for job in jobs]


def test_never_more_than_the_slots_run_and_the_queue_is_first_come_first_served():
    scheduler = Scheduler(slots=2, public=False, janitor_s=None)
    lock, running, peak, started = threading.Lock(), [0], [0], []
    gates = [threading.Event() for _ in range(6)]

    def work(i):
        def run(progress):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                started.append(i)
            gates[i].wait(60)
            with lock:
                running[0] -= 1
            return i
        return run

    jobs = [scheduler.submit(f"session-{i}", "eval", i, work(i), cost_s=10) for i in range(6)]
    assert states(jobs) == ["running"] * 2 + ["queued"] * 4
    assert [scheduler.position(job) for job in jobs] == [0, 0, 1, 2, 3, 4]
    for i in range(6):
        gates[i].set()
        assert jobs[i].wait(30) and jobs[i].result == i
        assert sum(job.state == "running" for job in jobs) == min(2, 5 - i)  # the next one took the slot
    assert peak[0] == 2 and sorted(started[:2]) == [0, 1] and started[2:] == [2, 3, 4, 5]


def test_one_job_per_session_and_kind_a_new_one_replaces_the_old():
    scheduler = Scheduler(slots=4, public=False, janitor_s=None)
    first_work, _, first_gate = gated(value="first")
    first = scheduler.submit("a", "ig", "settings-1", first_work, cost_s=10)
    other_work, _, other_gate = gated(value="other kind")
    other_kind = scheduler.submit("a", "eval", "settings-1", other_work, cost_s=10)
    b_work, _, b_gate = gated(value="b")
    other_session = scheduler.submit("b", "ig", "settings-1", b_work, cost_s=10)
    second = scheduler.submit("a", "ig", "settings-2", lambda progress: "second", cost_s=10)
    assert second.wait(30) and second.result == "second"
    assert first.stopping and not other_kind.stopping and not other_session.stopping
    for gate in (first_gate, other_gate, b_gate):
        gate.set()
    assert first.wait(30) and first.state == "cancelled" and first.result is None
    assert other_kind.wait(30) and other_session.wait(30)
    assert (other_kind.result, other_session.result) == ("other kind", "b")
    # a queued job that is replaced never runs
    single = Scheduler(slots=1, public=False, janitor_s=None)
    busy_work, _, busy_gate = gated()
    busy = single.submit("c", "eval", 0, busy_work, cost_s=10)
    ran = []
    queued = single.submit("a", "ig", 1, lambda progress: ran.append(1), cost_s=10)
    replacement = single.submit("a", "ig", 2, lambda progress: ran.append(2), cost_s=10)
    assert queued.state == "cancelled" and queued.wait(0) and single.position(replacement) == 1
    busy_gate.set()
    assert busy.wait(30) and replacement.wait(30) and ran == [2]


def test_a_short_job_runs_while_another_session_runs_its_maximum_jobs():
    """Two slots: one session's long jobs take one, the other stays for short jobs, so a second visitor's small
    job starts and ends while the first visitor's hour of IG runs (and its second long job waits)."""
    scheduler = Scheduler(slots=2, public=False, janitor_s=None)
    huge_work, _, huge_gate = gated(value="huge")
    huge = scheduler.submit("a", "ig", 1, huge_work, cost_s=3600)
    also_long = scheduler.submit("a", "tv", 2, lambda progress: "also long", cost_s=LONG_S)
    assert (huge.state, also_long.state) == ("running", "queued")
    small = scheduler.submit("b", "ig", 3, lambda progress: "small", cost_s=LONG_S - 1)
    assert small.wait(30) and small.result == "small"
    assert (huge.state, also_long.state) == ("running", "queued")
    huge_gate.set()
    assert huge.wait(30) and also_long.wait(30) and also_long.result == "also long"


def test_queue_positions_go_round_robin_over_sessions_with_a_wait_estimate(monkeypatch):
    from components import speculation

    scheduler = Scheduler(slots=1, public=False, janitor_s=None)
    order: list[str] = []
    a1_work, a1_reached, a1_gate = gated(report=(1, 2))
    a1 = scheduler.submit("a", "k1", 1, lambda progress: order.append("a1") or a1_work(progress), cost_s=60)
    a2 = scheduler.submit("a", "k2", 2, lambda progress: order.append("a2"), cost_s=30)
    a3 = scheduler.submit("a", "k3", 3, lambda progress: order.append("a3"), cost_s=30)
    b1 = scheduler.submit("b", "k1", 4, lambda progress: order.append("b1"), cost_s=10)
    assert [scheduler.position(job) for job in (a1, b1, a2, a3)] == [0, 1, 2, 3]  # b before a's second job
    assert a1_reached.wait(30) and order == ["a1"]  # a1 has reported half its progress
    assert scheduler.wait_s(b1) == pytest.approx(30.0)  # half of a1's 60 s left
    assert scheduler.wait_s(a3) == pytest.approx(30.0 + 10 + 30)
    monkeypatch.setattr(speculation, "SCHEDULER", scheduler)
    assert speculation.describe(b1) == "1st in the queue, about 30 s before it starts"
    assert speculation.describe(a3) == "3rd in the queue, about 70 s before it starts"
    assert speculation.describe(a1, "steps") == "1/2 steps"
    a1_gate.set()
    assert all(job.wait(30) for job in (a1, a2, a3, b1))
    assert order == ["a1", "b1", "a2", "a3"]


def test_public_mode_refuses_a_job_over_the_cap_and_beyond_the_session_budget():
    clock = Clock()
    limits = Limits(job_max_s=600, budget_s=1200, abandon_s=60)
    public = Scheduler(slots=2, limits=limits, public=True, clock=clock, janitor_s=None)
    with pytest.raises(JobRefused) as refused:
        public.submit("a", "ig", 1, lambda progress: "never", cost_s=900)
    assert str(refused.value) == ("this job takes about 15 min on this machine; this demo allows about 10 min per "
                                  "job: use fewer prompts or steps")
    private = Scheduler(slots=2, limits=limits, public=False, clock=clock, janitor_s=None)
    allowed = private.submit("a", "ig", 1, lambda progress: "allowed", cost_s=900)
    assert allowed.wait(30) and allowed.result == "allowed"

    for kind in ("ig", "tv"):
        job = public.submit("a", kind, 1, lambda progress: "done", cost_s=500)
        assert job.wait(30) and job.state == "done"
    assert public.spent("a") == 1000
    with pytest.raises(JobRefused) as spent:
        public.submit("a", "eval", 1, lambda progress: "never", cost_s=500)
    assert str(spent.value) == ("this job takes about 8 min and this session has about 3 min left of the demo's "
                                "about 20 min per hour: come back later or use fewer prompts or steps")
    assert "\n" not in str(spent.value)
    other = public.submit("b", "eval", 1, lambda progress: "b's own budget", cost_s=500)
    assert other.wait(30) and other.result == "b's own budget"
    assert private.submit("a", "x", 1, lambda progress: 1, cost_s=500).wait(30)  # no budget without public mode

    clock.now += WINDOW_S  # an hour later the budget is back; a cancelled job counts the part it reached
    work, reached, gate = gated(report=(1, 4))
    cancelled = public.submit("a", "eval", 1, work, cost_s=600)
    assert reached.wait(30)
    cancelled.cancel()
    gate.set()
    assert cancelled.wait(30) and cancelled.state == "cancelled"
    assert public.spent("a") == 150
    assert public.submit("a", "eval", 2, lambda progress: "fits", cost_s=600).wait(30)
    assert public.submit("a", "ig", 2, lambda progress: "fits exactly", cost_s=450).wait(30)
    assert public.spent("a") == 1200


def test_a_closed_sessions_jobs_are_cancelled_uncached_while_nearly_done_ones_finish(tiny_loaded, tmp_path):
    """Session a stops polling; once the abandon time has passed, the janitor cancels its half-done IG (nothing
    of it reaches the cache) and lets its 90 %-done IG finish and be cached; session b's job, whose tab the app
    still sees (liveness), and every job in private mode are left alone."""
    models = {"ig": tiny_loaded("llama"), "copying": tiny_loaded("gpt2")}  # two: a blocked job may hold its lock
    task = builtin_tasks()["antonyms"]
    caches = {name: ResultsCache(tmp_path / name, fallbacks=()) for name in ("half", "nearly", "private")}

    def ig_job(scheduler, owner, kind, n, at, cache):
        reached, gate = threading.Event(), threading.Event()

        def work(progress):
            def gated_progress(done, total):
                progress(done, total)
                if done == at:
                    reached.set()
                    assert gate.wait(60)
                    progress(done, total)  # raises here once cancelled
            return attribute_task(models[kind], task, "gold", n=n, shots=1, steps=2, cache=cache,
                                  progress=gated_progress)

        job = scheduler.submit(owner, kind, (kind, n), work, n, cost_s=600)
        assert reached.wait(60)
        return job, gate

    for public in (True, False):
        clock = Clock()
        scheduler = Scheduler(slots=4, limits=Limits(abandon_s=60), public=public, clock=clock,
                              liveness=lambda owner: owner == "b" or None, janitor_s=None)
        if public:
            half, half_gate = ig_job(scheduler, "a", "ig", 2, 1, caches["half"])
            nearly, nearly_gate = ig_job(scheduler, "a", "copying", 10, 9, caches["nearly"])
        else:
            half, half_gate = ig_job(scheduler, "a", "ig", 2, 1, caches["private"])
        b_work, _, b_gate = gated(value="b")
        b_job = scheduler.submit("b", "ig", 1, b_work, cost_s=600)
        clock.now += 59
        assert scheduler.sweep() == []
        clock.now += 2
        assert scheduler.sweep() == ([half] if public else [])
        for gate in (half_gate, b_gate, *([nearly_gate] if public else [])):
            gate.set()
        assert half.wait(60) and b_job.wait(60) and b_job.result == "b"
        if public:
            assert half.state == "cancelled" and half.result is None
            assert not list((tmp_path / "half").rglob("*.safetensors"))  # the partial IG was never written
            assert nearly.wait(60) and nearly.state == "done"
            cached = stored_attribution(models["copying"], task, "gold", n=10, shots=1, steps=2,
                                        cache=caches["nearly"])
            assert cached is not None and (cached.per_prompt == nearly.result.per_prompt).all()
        else:
            assert half.state == "done" and len(list((tmp_path / "private").rglob("*.safetensors"))) == 1


def test_the_janitor_thread_cancels_an_abandoned_job_without_any_further_call():
    """No visitor comes back, no one submits: the scheduler's own thread still stops the abandoned job."""
    scheduler = Scheduler(slots=1, limits=Limits(abandon_s=0.05), public=True, janitor_s=0.02)
    reports = []

    def endless(progress):
        while True:
            reports.append(1)
            progress(len(reports), 10**9)
            threading.Event().wait(0.01)

    job = scheduler.submit("gone", "ig", 1, endless, cost_s=60)
    assert job.wait(60) and job.state == "cancelled"
    follower = scheduler.submit("next", "ig", 1, lambda progress: "next", cost_s=60)
    assert follower.wait(30) and follower.result == "next"  # the slot was given back
