"""Request objects: a request is its settings (equal and hashable by them, not by how it runs), it knows its
cache key and whether it is stored, running it once stores it and reads it back, and its key separates models
and dtypes; the pruning request's plan is what prune_eval runs."""

from __future__ import annotations

import pytest

from analysis.attribution.runs import Attribution, attribute_task, stored_attribution
from analysis.cache import ResultsCache
from analysis.errors import PrunescopeError
from analysis.evaluation.icl import Evaluation, evaluate_task, is_evaluated
from analysis.evaluation.task_vectors import TaskVectors
from analysis.pruning.evaluate import PruneEval, prune_eval
from analysis.pruning.mask import NeuronMask
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = builtin_tasks()["antonyms"]


def test_a_request_is_its_settings():
    first, again = Evaluation(TASK, 2, 5, seed=1), Evaluation(TASK, 2, 5, seed=1, batch_size=3)
    assert first == again and hash(first) == hash(again)  # the batch size is how, not what
    assert first != Evaluation(TASK, 2, 5, seed=2) != Evaluation(TASK, 2, 5, 1, NeuronMask.from_pairs([(0, 1)]))
    assert len({first, again, Evaluation(TASK, 2, 6, seed=1)}) == 2
    with pytest.raises(PrunescopeError, match="n must be an integer from 1"):
        Evaluation(TASK, 2, 0)
    with pytest.raises(PrunescopeError, match="task vectors need shots >= 1"):
        TaskVectors(TASK, shots=0)


def test_running_stores_and_the_stored_result_is_the_run(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    cache = ResultsCache(tmp_path, fallbacks=())
    request = Attribution(TASK, "gold", n=2, shots=2, steps=3)
    assert request.stored(loaded, cache) is None and not request.is_stored(loaded, cache)
    reports = []
    result = request.run(loaded, cache, lambda done, total: reports.append((done, total)))
    assert request.is_stored(loaded, cache) and reports[-1] == (2, 2) == (request.work(loaded),) * 2
    assert (request.stored(loaded, cache).per_prompt == result.per_prompt).all()
    # the entry points are the same requests: same key, same stored result
    again = attribute_task(loaded, TASK, "gold", 2, 2, steps=3, cache=cache)
    assert (again.per_prompt == result.per_prompt).all()
    assert (stored_attribution(loaded, TASK, "gold", 2, 2, steps=3, cache=cache).per_prompt == result.per_prompt).all()
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_a_stored_evaluation_is_read_back_with_its_outcomes_derived(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    cache = ResultsCache(tmp_path, fallbacks=())
    plain = evaluate_task(loaded, TASK, 2, 4, cache=cache)
    request = Evaluation(TASK, 2, 4)
    assert is_evaluated(loaded, TASK, 2, 4, 0, None, cache) and request.is_stored(loaded, cache)
    stored = request.stored(loaded, cache)
    assert stored.task == TASK.name and list(stored.records.outcome) == list(plain.records.outcome)


def test_keys_tell_models_and_dtypes_apart(tiny_loaded):
    llama, gpt2 = tiny_loaded("llama"), tiny_loaded("gpt2")
    request = Evaluation(TASK, 2, 4)
    assert request.key(llama) == request.key(llama) != request.key(gpt2)
    assert request.key(llama)[:3] == ("eval", llama.fingerprint(), "float32") and request.key(llama)[3] is request


def test_the_pruning_request_plans_what_prune_eval_runs(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    cache = ResultsCache(tmp_path, fallbacks=())
    mask = NeuronMask.from_pairs([(0, 1), (1, 2)])
    request = PruneEval(mask, (TASK,), (2,), 3, 2)
    assert request.work(loaded) == 4 * 3 and request.uncached(loaded, cache) == dict.fromkeys(
        ["baseline", "pruned", "random-0", "random-1"], 3)
    result = request.run(loaded, cache)
    direct = prune_eval(loaded, mask, [TASK], shots=[2], n=3, random_controls=2, cache=cache)
    assert request.uncached(loaded, cache) == {}
    assert result.records.equals(direct.records)
    assert request.key(loaded) == PruneEval(mask, (TASK,), (2,), 3, 2).key(loaded) != PruneEval(
        mask, (TASK,), (2,), 3, 1).key(loaded)
