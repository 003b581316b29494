"""Sweeps on a local Ray instance (2 CPUs, tiny models): the distributed prune-eval grid, k-sweep and IG equal
the serial run exactly and land in the same cache entries; an actor killed mid-sweep is replaced and the result
is unchanged; an address where no cluster answers is one line (exit 2 from the CLI)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import torch

pytest.importorskip("ray", reason="ray is in requirements.txt")

from analysis import distributed  # noqa: E402 - after the skip
from analysis.attribution.runs import attribute_task  # noqa: E402
from analysis.cache import ResultsCache  # noqa: E402
from analysis.errors import PrunescopeError  # noqa: E402
from analysis.pruning import NeuronMask  # noqa: E402
from analysis.pruning.autok import k_sweep  # noqa: E402
from analysis.pruning.evaluate import prune_eval  # noqa: E402
from analysis.tasks import builtin_tasks  # noqa: E402

TASKS = ["antonyms", "to-upper"]


@pytest.fixture(scope="module")
def pool(tiny_dirs):
    distributed.connect("local", num_cpus=2)
    workers = distributed.ModelPool(tiny_dirs["llama"], device="cpu", size=2)
    yield workers
    workers.close()
    distributed.shutdown()


def grid(loaded, pool=None, cache=None, progress=None):
    mask = NeuronMask.from_pairs([(0, i) for i in range(0, 60, 2)])
    return prune_eval(loaded, mask, [builtin_tasks()[t] for t in TASKS], shots=(1, 2), n=6, random_controls=2,
                      cache=cache, pool=pool, resamples=300, progress=progress)


def test_a_distributed_grid_equals_the_serial_run_and_fills_the_same_cache(pool, tiny_loaded, tmp_path,
                                                                          monkeypatch):
    loaded = tiny_loaded("llama")
    serial = grid(loaded)
    reports = []
    cache = ResultsCache(tmp_path, fallbacks=())
    spread = grid(loaded, pool, cache, progress=lambda done, total: reports.append((done, total)))
    pd.testing.assert_frame_equal(spread.records, serial.records)
    pd.testing.assert_frame_equal(spread.summary(), serial.summary())
    assert reports[-1] == (2 * 2 * 4 * 6, 96) and [d for d, _ in reports] == sorted(d for d, _ in reports)
    monkeypatch.setattr("analysis.evaluation.icl.generate_answers",
                        lambda *a, **k: pytest.fail("a serial run recomputed what the actors stored"))
    pd.testing.assert_frame_equal(grid(loaded, cache=cache).records, serial.records)


def test_distributed_ig_and_k_sweep_equal_the_serial_run(pool, tiny_loaded):
    loaded = tiny_loaded("llama")
    task = builtin_tasks()["vowel-count"]
    serial = attribute_task(loaded, task, "copy", n=5, shots=2, steps=4)
    spread = attribute_task(loaded, task, "copy", n=5, shots=2, steps=4, pool=pool)
    assert torch.equal(spread.per_prompt, serial.per_prompt) and torch.equal(spread.f_clean, serial.f_clean)
    assert spread.delta.shape == (5, loaded.n_layers) and torch.equal(spread.delta, serial.delta)
    assert spread.inputs == serial.inputs
    scores = torch.randn(loaded.n_layers, loaded.adapter.neuron_counts()[0], generator=torch.Generator().manual_seed(1))
    kwargs = {"ks": (4, 16), "dev_tasks": ("antonyms",), "n": 6, "resamples": 300}
    pd.testing.assert_frame_equal(k_sweep(loaded, scores, pool=pool, **kwargs).table,
                                  k_sweep(loaded, scores, **kwargs).table)


def test_distributed_faithfulness_equals_the_serial_run(pool, tiny_loaded):
    """One prompt per shard; the table, the mean curves and the targets equal the serial run's."""
    from analysis.evaluation.faithfulness import faithfulness

    loaded = tiny_loaded("llama")
    task = builtin_tasks()["antonyms"]
    reports = []
    serial = faithfulness(loaded, task, ["raw", "gxi"], 4, steps=4)
    spread = faithfulness(loaded, task, ["raw", "gxi"], 4, steps=4, pool=pool,
                          progress=lambda done, total: reports.append((done, total)))
    pd.testing.assert_frame_equal(spread, serial)
    assert spread.attrs["targets"] == serial.attrs["targets"] and reports[-1] == (4, 4)
    for key, curve in serial.attrs["curves"].items():
        assert (spread.attrs["curves"][key] == curve).all()


def test_precompute_demo_on_ray_fills_the_cache_a_serial_run_reads(pool, tiny_loaded, tiny_dirs, tmp_path,
                                                                   monkeypatch):
    """The hosted demo's results computed on the actors are the entries the app reads: a serial run afterwards
    finds every one of them (nothing is computed again)."""
    from analysis import demo

    loaded = tiny_loaded("llama")
    small = {"n": 4, "shots": 2, "steps": 2, "target": "copy", "prompts": "all"}
    monkeypatch.setattr(demo, "SCORING", small)
    monkeypatch.setattr(demo, "SETTINGS", {**demo.SETTINGS, "n": 4, "k": 6})
    monkeypatch.setattr(demo, "ATTRIBUTION", {**demo.ATTRIBUTION, "n": 3, "steps": 2})
    monkeypatch.setattr(demo, "TASK_VECTORS", {**demo.TASK_VECTORS, "n": 4})
    demo.precompute_demo(loaded, tmp_path, sweep=False, pool=pool)
    entries = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    monkeypatch.setattr("analysis.evaluation.icl.generate_answers",
                        lambda *a, **k: pytest.fail("the serial run recomputed an evaluation"))
    monkeypatch.setattr("analysis.attribution.runs.neuron_ig",
                        lambda *a, **k: pytest.fail("the serial run recomputed IG"))
    demo.precompute_demo(loaded, tmp_path, sweep=False)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == entries


def test_an_actor_killed_mid_sweep_is_replaced_and_the_result_is_unchanged(pool, tiny_loaded):
    import ray

    loaded = tiny_loaded("llama")
    serial = grid(loaded)
    first_shard = threading.Event()
    killed = []

    def progress(done, total):
        if done and not killed:
            ray.kill(pool.actors[0], no_restart=False)  # as if its node went away: Ray restarts it
            killed.append(done)
        first_shard.set()

    spread = grid(loaded, pool, progress=progress)
    assert killed and killed[0] < 96  # killed while shards were still running
    pd.testing.assert_frame_equal(spread.records, serial.records)
    assert ray.get(pool.actors[0].pid.remote())  # the replacement answers


def test_a_cluster_that_does_not_answer_is_one_line(capsys, tiny_dirs, tmp_path):
    from analysis.cli import main

    with pytest.raises(PrunescopeError, match="no Ray cluster answers at 127.0.0.1:1"):
        distributed.connect("127.0.0.1:1")
    with pytest.raises(PrunescopeError, match="is not host:port"):
        distributed.connect("nowhere")
    mask = tmp_path / "mask.json"
    NeuronMask.from_pairs([(0, 1)]).save(mask)
    code = main(["prune-eval", "--model", tiny_dirs["llama"], "--mask", str(mask), "--tasks", "antonyms",
                 "--shots", "1", "--n", "2", "--random-controls", "1", "--ray", "127.0.0.1:1", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and "no Ray cluster answers at 127.0.0.1:1" in err and len(err.strip().splitlines()) == 1
