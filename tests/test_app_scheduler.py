"""AppTest of the job scheduler in the app (components/speculation.py): public mode states a job's estimate with
the demo's limits and refuses, with one line, a job above the cap or beyond the session's budget (private mode
runs it); a second session's page is answered while another session runs its maximum jobs; a waiting job says
its place in the queue."""

from __future__ import annotations

import threading

import pytest

from analysis.jobs import Scheduler
from analysis.pruning import NeuronMask
from components import speculation
from components.widgets import CANCELLED_KEY
from tests.app_helpers import TIMEOUT, no_exception, open_app


@pytest.fixture
def scheduler(monkeypatch):
    """A fresh process-wide scheduler per test (2 slots, limits and public mode read from the environment)."""
    fresh = Scheduler(slots=2, janitor_s=None)
    monkeypatch.setattr(speculation, "SCHEDULER", fresh)
    return fresh


def attribution_page(monkeypatch):
    return open_app("toy-transformer", monkeypatch, "views/attribution.py")


def captions(at) -> list[str]:
    return [c.value for c in at.caption]


def attribute(at, n: int, steps: int):
    at.number_input(key="ig_n").set_value(n)
    at.number_input(key="ig_steps").set_value(steps)
    at.selectbox(key="ig_rule").set_value("riemann")  # a fixed rule: cost in prompts x steps
    no_exception(at.run())
    at.button(key="ig_run").click()
    return no_exception(at.run())


def test_public_mode_states_the_cap_and_refuses_a_job_above_it_private_mode_runs_it(scheduler, monkeypatch):
    monkeypatch.setattr(speculation, "estimate_s", lambda loaded, units, kind: 100.0 * units)  # 12 units: 20 min
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    at = attribution_page(monkeypatch)
    at = attribute(at, 3, 4)
    assert (":material/block: 3 prompts x 4 steps: about 20 min on this machine; this demo allows about 10 min per "
            "job, about 30 min left to this session this hour: use fewer prompts or steps") in captions(at)
    assert [e.value for e in at.error] == ["this job takes about 20 min on this machine; this demo allows about 10 "
                                           "min per job: use fewer prompts or steps"]
    assert "job_attribution" not in at.session_state and "ig_result" not in at.session_state
    monkeypatch.delenv("PRUNESCOPE_PUBLIC")
    at = attribute(at, 3, 4)
    assert not at.error, [e.value for e in at.error]
    assert not any("this demo allows" in c for c in captions(at))
    assert at.session_state["job_attribution"].state == "done"
    assert len(at.session_state["ig_result"]["value"]["result"].inputs) == 3


def test_public_mode_refuses_a_job_beyond_the_sessions_budget_another_session_has_its_own(scheduler, monkeypatch):
    monkeypatch.setattr(speculation, "estimate_s", lambda loaded, units, kind: 6.0 * units)
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    monkeypatch.setenv("PRUNESCOPE_SESSION_BUDGET_MIN", "2")
    at = attribute(attribution_page(monkeypatch), 2, 6)  # 72 s of 120 (settings no other test computes: cached
    assert not at.error and at.session_state["job_attribution"].state == "done"  # results start no job)
    at = attribute(at, 3, 6)  # 108 s more
    assert [e.value for e in at.error] == ["this job takes about 2 min and this session has about 48 s left of the "
                                           "demo's about 2 min per hour: come back later or use fewer prompts or "
                                           "steps"]
    other = attribute(attribution_page(monkeypatch), 3, 6)
    assert not other.error and other.session_state["job_attribution"].state == "done"


def test_a_second_sessions_page_is_answered_while_another_runs_its_maximum_jobs(scheduler, monkeypatch):
    """Session a holds a job at the demo's cap and a second long one; session b's attribution (its estimate from
    the prior: well under a minute on the toy) takes the slot kept for short jobs and its page shows the result."""
    monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    gate = threading.Event()
    huge = scheduler.submit(("", "a"), "job_attribution", 1, lambda progress: gate.wait(TIMEOUT), cost_s=600)
    queued = scheduler.submit(("", "a"), "job_task_vectors", 2, lambda progress: "later", cost_s=600)
    try:
        at = attribute(attribution_page(monkeypatch), 3, 3)
        assert not at.error
        assert at.session_state["job_attribution"].state == "done"
        assert len(at.session_state["ig_result"]["value"]["result"].inputs) == 3
        assert (huge.state, queued.state) == ("running", "queued")
    finally:
        gate.set()
    assert huge.wait(TIMEOUT) and queued.wait(TIMEOUT) and queued.result == "later"


def test_a_waiting_speculation_says_its_place_in_the_queue(monkeypatch):
    """One slot, taken by another session's job: the pruning page's speculative run waits, and the line under
    the unpruned numbers says where it stands and for about how long."""
    single = Scheduler(slots=1, janitor_s=None)
    monkeypatch.setattr(speculation, "SCHEDULER", single)
    gate = threading.Event()
    blocker = single.submit(("", "other"), "job_k_sweep", 1, lambda progress: gate.wait(TIMEOUT), cost_s=40)
    try:
        mask = NeuronMask.from_pairs([(0, i) for i in range(10)]).to_text()
        at = open_app("toy-transformer", monkeypatch, "views/pruning.py", n=12, mask=mask)
        assert not at.error, [e.value for e in at.error]
        job = at.session_state["speculative_job"]
        assert job.state == "queued" and single.position(job) == 1
        assert any("Pruned runs in the background: 1st in the queue, about 40 s before it starts" in c
                   for c in captions(at)), captions(at)
    finally:
        gate.set()
    assert blocker.wait(TIMEOUT) and job.wait(TIMEOUT) and job.state == "done", job.error


def test_cancel_stops_the_pages_own_job_within_a_batch_and_leaves_the_pruning_job_alone(monkeypatch):
    """A job button's Cancel (``wait_for`` of ``follow``) names its slot: the page's job stops at its next
    progress report, the session's speculative pruned runs go on (Cancel used to stop those instead)."""
    fresh = Scheduler(slots=2, janitor_s=None)
    session: dict = {}
    monkeypatch.setattr(speculation.st, "session_state", session)
    gate = threading.Event()

    def batches(progress):
        for done in range(1, 1001):
            gate.wait(0.01)
            progress(done, 1000)

    me = ("", "me")
    pruning = fresh.submit(me, speculation.JOB_KEY, "prune", batches, 1000, cost_s=10)
    attribution = fresh.submit(me, "job_attribution", "ig", batches, 1000, cost_s=10)
    session.update({speculation.JOB_KEY: pruning, "job_attribution": attribution})
    try:
        while attribution.done < 3:
            attribution.wait(0.01)
        speculation.cancel_job("IG copy on antonyms", None, "job_attribution")
        assert attribution.wait(5) and attribution.state == "cancelled"
        stopped_at = attribution.done
        pruning.wait(0.3)
        assert attribution.done == stopped_at and pruning.running and pruning.done > 3
        assert session[CANCELLED_KEY] == "IG copy on antonyms"
    finally:
        gate.set()
        pruning.cancel()


def test_a_copy_target_that_cannot_apply_is_said_before_attribute_is_clicked(monkeypatch):
    """to-upper's demonstrations never start with a token other than the gold one's for some queries: the page
    says so under the settings and disables Attribute (it used to fail only after the click)."""
    at = open_app("toy-transformer", monkeypatch, "views/attribution.py", task="to-upper", ig_n=64)
    at.selectbox(key="ig_target").set_value("copy")
    no_exception(at.run())
    assert any("copy target: no demonstration answer of the prompt for" in w.value for w in at.warning)
    assert at.button(key="ig_run").disabled and not at.error
    at.selectbox(key="ig_target").set_value("gold")
    no_exception(at.run())
    assert not at.button(key="ig_run").disabled and not at.warning
