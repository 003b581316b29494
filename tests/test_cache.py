"""Results cache: content-addressed keys, atomic writes, corruption detected and recomputed."""

from __future__ import annotations

import pytest
import torch

from analysis.cache import CorruptCacheEntry, ResultsCache, stable_hash, task_fingerprint
from analysis.tasks import Task, builtin_tasks


def test_round_trip_and_keys(tmp_path):
    cache = ResultsCache(tmp_path)
    key = cache.key("demo", "v1", {"a": 1, "b": [1, 2]})
    assert key == cache.key("demo", "v1", {"b": [1, 2], "a": 1})  # order-independent
    assert key != cache.key("demo", "v2", {"a": 1, "b": [1, 2]})  # code version is part of the key
    assert key != cache.key("demo", "v1", {"a": 2, "b": [1, 2]})
    value = {"scores": torch.arange(6.0).reshape(2, 3), "name": "x"}
    path = cache.put("demo", key, value)
    loaded = cache.get("demo", key)
    assert torch.equal(loaded["scores"], value["scores"]) and loaded["name"] == "x"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind


def test_get_or_compute_computes_once(tmp_path):
    cache = ResultsCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return [1, 2, 3]

    assert cache.get_or_compute("demo", "v1", {"x": 1}, compute) == ([1, 2, 3], False)
    assert cache.get_or_compute("demo", "v1", {"x": 1}, compute) == ([1, 2, 3], True)
    assert len(calls) == 1


def test_corrupt_entry_is_reported_and_recomputed(tmp_path):
    cache = ResultsCache(tmp_path)
    cache.get_or_compute("demo", "v1", {"x": 1}, lambda: "good")
    path = cache.path("demo", cache.key("demo", "v1", {"x": 1}))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheEntry, match="corrupt"):
        value, hit = cache.get_or_compute("demo", "v1", {"x": 1}, lambda: "recomputed")
    assert (value, hit) == ("recomputed", False)
    assert cache.get("demo", cache.key("demo", "v1", {"x": 1})) == "recomputed"
    path.write_bytes(b"truncated")
    with pytest.warns(CorruptCacheEntry):
        assert cache.get("demo", cache.key("demo", "v1", {"x": 1})) is None


def test_fingerprints():
    task = builtin_tasks()["antonyms"]
    renamed = Task("other-name", task.pairs)
    assert task_fingerprint(task) == task_fingerprint(renamed)
    assert task_fingerprint(task) != task_fingerprint(Task("x", task.pairs[:-1]))
    assert stable_hash({"a": (1, 2)}) == stable_hash({"a": [1, 2]})


def test_repeated_evaluation_comes_from_cache(tiny_loaded, tmp_path, monkeypatch):
    from analysis.evaluation import icl

    loaded = tiny_loaded("llama")
    cache = ResultsCache(tmp_path)
    task = builtin_tasks()["antonyms"]
    first = icl.evaluate_task(loaded, task, 2, 5, seed=1, cache=cache)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(icl, "generate_answers", fail)
    again = icl.evaluate_task(loaded, task, 2, 5, seed=1, cache=cache)
    assert list(again.records.prediction) == list(first.records.prediction)
    with pytest.raises(AssertionError, match="recomputed"):  # a different mask is a different entry
        from analysis.pruning import NeuronMask
        icl.evaluate_task(loaded, task, 2, 5, seed=1, cache=cache, mask=NeuronMask.from_pairs([(0, 1)]))


def test_repeated_attribution_comes_from_cache(tiny_loaded, tmp_path, monkeypatch):
    from analysis.attribution import runs

    loaded = tiny_loaded("gpt2")
    cache = ResultsCache(tmp_path)
    task = builtin_tasks()["vowel-count"]
    first = runs.attribute_task(loaded, task, "copy", n=2, shots=2, steps=3, cache=cache)
    monkeypatch.setattr(runs, "neuron_ig", lambda *a, **k: pytest.fail("recomputed"))
    again = runs.attribute_task(loaded, task, "copy", n=2, shots=2, steps=3, cache=cache)
    assert torch.equal(first.per_prompt, again.per_prompt)


def test_shipped_results_are_read_when_the_user_cache_misses(tmp_path):
    """A read-only fallback folder (assets/precomputed for the demo) answers a miss; results computed later go to
    the user's folder; a corrupt shipped file is reported and skipped, never deleted."""
    shipped = ResultsCache(tmp_path / "shipped", fallbacks=())
    shipped.put("eval", "k1", {"value": 1})
    user = ResultsCache(tmp_path / "user", fallbacks=(tmp_path / "shipped",))
    assert user.get("eval", "k1") == {"value": 1}
    assert user.get_or_compute("eval", "v", {"a": 1}, lambda: 7) == (7, False)
    assert not (tmp_path / "shipped" / "eval" / f"{user.key('eval', 'v', {'a': 1})}.pt").exists()
    bad = shipped.path("eval", "k2")
    bad.write_bytes(b"garbage")
    with pytest.warns(CorruptCacheEntry):
        assert user.get("eval", "k2") is None
    assert bad.exists()
