"""Background jobs (analysis/jobs.py): a cancel ends the library's CPU work within one batch or prompt, in every
long loop the app runs (evaluation, task vectors, neuron IG), and a finished job's result equals a direct call."""

from __future__ import annotations

import threading

import pytest

from analysis.attribution.runs import attribute_task
from analysis.cache import ResultsCache
from analysis.evaluation import evaluate_task
from analysis.evaluation.task_vectors import task_vector_work, task_vectors
from analysis.jobs import Cancelled, Job, Scheduler
from analysis.pruning import NeuronMask
from analysis.pruning.evaluate import prune_eval
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def counting_forwards(loaded):
    """Calls of the last block (the IG fast path runs blocks from a cached prefix, not the whole model)."""
    forwards = []
    return forwards, loaded.adapter.block(loaded.n_layers - 1).register_forward_hook(lambda *_: forwards.append(1))


def cancelled_at_first_report(loaded, work) -> tuple[int, int, Job]:
    """Run ``work(progress)`` as a job that is cancelled at its first progress report; (forwards until that
    report, forwards in all, the job)."""
    forwards, hook = counting_forwards(loaded)
    at_cancel = []

    def first_report_cancels(job_progress):
        def progress(done, total):
            if not at_cancel:
                at_cancel.append(len(forwards))
                job.cancel()
            job_progress(done, total)
        return work(progress)

    job = Job("test", first_report_cancels)
    try:
        job.start()
        assert job.wait(120)
    finally:
        hook.remove()
    return at_cancel[0], len(forwards), job


def test_a_job_returns_what_the_direct_call_returns_and_records_progress(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    task = builtin_tasks()["antonyms"]
    direct = evaluate_task(loaded, task, 1, 10, seed=3)
    job = Job("eval", lambda progress: evaluate_task(loaded, task, 1, 10, seed=3, progress=progress,
                                                     cache=ResultsCache(tmp_path))).start()
    assert job.wait(120) and job.state == "done" and job.error is None
    assert job.result.records.prediction.tolist() == direct.records.prediction.tolist()
    assert (job.done, job.total) == (10, 10)


def test_cancelling_a_prune_eval_job_stops_within_one_batch(tiny_loaded):
    loaded = tiny_loaded("llama")
    mask = NeuronMask.from_pairs([(0, i) for i in range(8)])
    task = builtin_tasks()["country-capital"]
    until, total, job = cancelled_at_first_report(loaded, lambda progress: prune_eval(
        loaded, mask, [task], shots=(1,), n=40, random_controls=2, progress=progress))
    assert job.state == "cancelled" and job.result is None
    assert total == until  # not one forward after the report that saw the flag
    forwards, hook = counting_forwards(loaded)
    try:
        evaluate_task(loaded, task, 1, 40, seed=0)
    finally:
        hook.remove()
    assert 0 < until < len(forwards) / 2  # the first report comes after one batch (of 3), not one evaluation


def test_task_vectors_report_every_batch_rising_and_a_cancel_stops_there(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    task = builtin_tasks()["to-upper"]
    reports = []
    task_vectors(loaded, task, shots=2, n=20, dummy_queries=2, progress=lambda d, t: reports.append((d, t)))
    total = task_vector_work(loaded, 20, 2)
    assert {t for _, t in reports} == {total} and reports[-1][0] == total
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert len(reports) > 3 + loaded.n_layers  # within the stages, not once per layer
    until, forwards, job = cancelled_at_first_report(loaded, lambda progress: task_vectors(
        loaded, task, shots=2, n=20, dummy_queries=2, progress=progress))
    assert job.state == "cancelled" and forwards == until
    assert until <= 3  # the dummy prompts' first batch (one forward per batch of 16) before the first report


def test_neuron_ig_stops_after_one_prompt(tiny_loaded):
    loaded = tiny_loaded("llama")
    until, forwards, job = cancelled_at_first_report(loaded, lambda progress: attribute_task(
        loaded, builtin_tasks()["antonyms"], "gold", n=6, shots=1, steps=4, progress=progress))
    assert job.state == "cancelled" and forwards == until > 0
    forwards_all, hook = counting_forwards(loaded)
    try:
        attribute_task(loaded, builtin_tasks()["antonyms"], "gold", n=6, shots=1, steps=4)
    finally:
        hook.remove()
    assert until < len(forwards_all) / 2


def test_a_queued_job_waits_for_the_slot_and_a_cancelled_queued_job_never_runs():
    scheduler = Scheduler(slots=1, public=False, janitor_s=None)
    release = threading.Event()
    first = scheduler.submit("a", "x", 1, lambda progress: release.wait(10) and "first", cost_s=1)
    ran = []
    second = scheduler.submit("b", "x", 2, lambda progress: ran.append(1) or "second", cost_s=1)
    third = scheduler.submit("c", "x", 3, lambda progress: ran.append(3), cost_s=1)
    assert (first.state, second.state, third.state) == ("running", "queued", "queued")
    third.cancel()
    assert third.wait(5) and third.state == "cancelled"  # at once: it never started
    release.set()
    assert first.wait(5) and second.wait(5)
    assert (first.result, second.result, ran) == ("first", "second", [1])


def test_a_failing_job_keeps_its_error_and_cancelled_is_a_one_line_error():
    job = Job("x", lambda progress: 1 / 0).start()
    assert job.wait(5) and job.state == "failed" and isinstance(job.error, ZeroDivisionError)
    assert issubclass(Cancelled, Exception) and str(Cancelled("job cancelled")) == "job cancelled"
