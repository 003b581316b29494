"""The app with $PRUNESCOPE_RAY set: the pruning page's background job runs its evaluations on the Ray
cluster (here a local instance), the browser session only polls it, and the numbers equal a serial run."""

from __future__ import annotations

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

pytest.importorskip("ray", reason="ray is in requirements.txt")

from analysis import distributed  # noqa: E402 - after the skip
from analysis.demo import PRUNE_TASKS, pruning_tasks  # noqa: E402
from analysis.models import load_model  # noqa: E402
from analysis.pruning import NeuronMask  # noqa: E402
from analysis.pruning.evaluate import prune_eval  # noqa: E402
from tests.app_helpers import MAIN  # noqa: E402


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv(distributed.RAY_ENV, "local")
    yield
    distributed.close_env_pools()
    distributed.shutdown()


def test_the_pruning_job_runs_on_the_cluster_named_in_the_environment(cluster, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    mask = NeuronMask.from_pairs([(layer, i) for layer in range(4) for i in range(0, 300, 7)])
    at = AppTest.from_file(str(MAIN), default_timeout=180)
    at.query_params.update({"page": "pruning", "mask": mask.to_text(), "n": "6", "shots": "2"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["speculative_job"]
    assert job.wait(240) and job.state == "done", job.error
    assert distributed._pools, "the job did not use the cluster"
    loaded = load_model("toy-transformer", device="cpu")
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    serial = prune_eval(loaded, mask, tasks, shots=[2], n=6, random_controls=3)
    pd.testing.assert_frame_equal(job.result.records, serial.records)


def test_attribution_and_faithfulness_jobs_run_on_the_cluster(cluster, monkeypatch, tmp_path):
    """The attribution page's IG and the attention page's faithfulness test: a click starts a job on a worker
    thread whose shards run on the cluster; the numbers equal a serial run."""
    from analysis.attribution.runs import attribute_task
    from analysis.evaluation.faithfulness import faithfulness
    from analysis.tasks import builtin_tasks

    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    monkeypatch.setenv("PRUNESCOPE_CACHE", str(tmp_path))  # nothing cached: the job computes
    at = AppTest.from_file(str(MAIN), default_timeout=240)
    at.query_params.update({"page": "attribution", "task": "antonyms", "shots": "2"})
    at.run()
    at.number_input(key="ig_n").set_value(3)
    at.number_input(key="ig_steps").set_value(4)
    at.button(key="ig_run").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["job_attribution"]
    assert job.state == "done" and distributed._pools, "the attribution did not run as a job on the cluster"
    loaded = load_model("toy-transformer", device="cpu")
    serial = attribute_task(loaded, builtin_tasks()["antonyms"], job.result.target, 3, 2, 0, 4,
                            job.result.quadrature)
    assert (job.result.per_prompt == serial.per_prompt).all() \
        and at.session_state["ig_result"]["value"]["result"] is job.result

    at = AppTest.from_file(str(MAIN), default_timeout=240)  # a new session; the process's pool stays
    at.query_params.update({"page": "attention"})
    at.run()
    at.number_input(key="faith_n").set_value(2)
    at.button(key="faith_run").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["job_faithfulness"].state == "done"
    table = at.session_state["faith_table"]["value"]
    methods = at.multiselect(key="rel_methods").value
    expected = faithfulness(loaded, builtin_tasks()[at.selectbox(key="faith_task").value], methods, 2, shots=2)
    pd.testing.assert_frame_equal(table, expected)
