"""Two sessions sharing one cached model, each with its own mask, evaluated at the same time in two threads,
get exactly the results they get alone (masks and hooks apply per request, under the model's lock)."""

from __future__ import annotations

import threading

from analysis.evaluation import evaluate_task
from analysis.pruning import NeuronMask
from analysis.tasks import builtin_tasks
from components.widgets import cached_model


def test_two_sessions_with_different_masks_at_the_same_time(one_thread):
    model_a = cached_model("toy-transformer", "cpu", "auto")
    model_b = cached_model("toy-transformer", "cpu", "auto")
    assert model_a is model_b  # one model object shared by the sessions
    task = builtin_tasks()["to-upper"]
    masks = {"a": NeuronMask.from_pairs((layer, i) for layer in range(4) for i in range(0, 384, 2)),
             "b": None}
    alone = {name: evaluate_task(model_a, task, 2, 12, seed=3, mask=mask).records["prediction"].tolist()
             for name, mask in masks.items()}
    assert alone["a"] != alone["b"]  # the mask matters, so a leak between sessions would show
    results: dict[str, list] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def session(name: str) -> None:
        barrier.wait()
        for _ in range(3):
            result = evaluate_task(model_a, task, 2, 12, seed=3, mask=masks[name])
            results[name].append(result.records["prediction"].tolist())

    threads = [threading.Thread(target=session, args=(name,)) for name in masks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for name in masks:
        assert results[name] == [alone[name]] * 3
    for module in model_a.model.modules():  # no hook left behind
        assert not module._forward_hooks and not module._forward_pre_hooks
