"""AppTest of the pruning page's background runs and k-sweep settings: switching Prune on follows the job that
already computes its prompts, and the k-sweep's dev tasks follow the scoring target and a link."""

from __future__ import annotations

import json

from tests.app_helpers import TIMEOUT, no_exception, open_app


def test_switching_prune_on_follows_the_background_run_instead_of_asking(monkeypatch):
    """At a new mask the pruned runs (640 uncached prompts, above what runs unasked) are already being computed
    in the background: switching Prune on follows that job to its numbers instead of asking to run them."""
    import threading

    from analysis.evaluation import conditions

    release, original = threading.Event(), conditions._run

    def held(loaded, task, shots, n, seed, masks, *args):
        if any(m is not None for m in masks):  # the pruned runs wait until the test lets them go
            release.wait(TIMEOUT)
        return original(loaded, task, shots, n, seed, masks, *args)

    monkeypatch.setattr(conditions, "_run", held)
    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", mask=",".join(f"1.{i}" for i in range(40)))
    job = at.session_state["speculative_job"]
    assert job.running and job.key[3].mask.neurons == {(1, i) for i in range(40)}
    at.toggle(key="prune_on").set_value(True)
    threading.Timer(2.0, release.set).start()
    no_exception(at.run())
    assert not [i.value for i in at.info if i.value.startswith("This runs")]
    assert job.state == "done"
    assert "Pruned" in json.dumps([c.proto.spec for c in at.get("plotly_chart") if c.key == "prune_bars"])


def test_the_k_sweeps_dev_tasks_default_to_echo_heavy_tasks_for_the_echo_target(monkeypatch):
    from analysis.pruning.autok import ECHO_DEV_TASKS

    at = open_app("toy-transformer", monkeypatch, "views/pruning.py", score_n=2, score_steps=2, score_shots=2,
                score_target="echo", sweep_tasks="bogus,to-lower")
    at.button(key="score_run").click()
    no_exception(at.run())
    assert any(e.value.startswith("sweep_tasks: `bogus` not among the built-in tasks") for e in at.error)
    assert at.multiselect(key="sweep_tasks_pick").value == ["to-lower"]
    assert at.query_params["sweep_tasks"] in ("to-lower", ["to-lower"])
    at.multiselect(key="sweep_tasks_pick").set_value([])  # none picked: the echo target's default again
    no_exception(at.run())
    assert not at.error and at.multiselect(key="sweep_tasks_pick").value == list(ECHO_DEV_TASKS)
    assert "sweep_tasks" not in at.query_params  # a link carries only a choice that differs from the default
