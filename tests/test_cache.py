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
    assert not (tmp_path / "shipped" / "eval" / f"{user.key('eval', 'v', {'a': 1})}.safetensors").exists()
    bad = shipped.path("eval", "k2")
    bad.write_bytes(b"garbage")
    with pytest.warns(CorruptCacheEntry):
        assert user.get("eval", "k2") is None
    assert bad.exists()


def test_a_crafted_entry_never_runs_code(tmp_path):
    """The old format unpickled entries: a file whose payload is a pickle calling os.system ran a shell
    command. Now every payload is safetensors + JSON; a pickle (with a correct digest) is a corrupt entry."""
    import hashlib
    import pickle

    from analysis.cache import MAGIC

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    cache = ResultsCache(tmp_path / "cache", fallbacks=())
    path = cache.path("eval", "k")
    path.parent.mkdir(parents=True)
    payload = pickle.dumps(Exploit())
    path.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.warns(CorruptCacheEntry, match="does not decode"):
        assert cache.get("eval", "k") is None
    assert not marker.exists() and not path.exists()


def test_a_document_may_name_only_allow_listed_result_types(tmp_path):
    import json

    from safetensors.torch import save

    from analysis import codec

    for name in ("Popen", "subprocess:Popen", "os:system"):
        blob = save({}, metadata={codec.META_KEY: json.dumps({"__dataclass__": name, "fields": {"args": "ls"}})})
        with pytest.raises(codec.CodecError, match="unknown result type"):
            codec.loads(blob)
    with pytest.raises(codec.CodecError, match="cannot store a set"):
        codec.dumps({"a": {1, 2}})


def test_results_round_trip_exactly_through_safetensors_and_json(tiny_loaded, tmp_path):
    import pandas as pd

    from analysis import codec
    from analysis.attribution.runs import attribute_task
    from analysis.evaluation import evaluate_task
    from analysis.evaluation.task_vectors import task_vectors

    loaded = tiny_loaded("gpt2")
    task = builtin_tasks()["to-upper"]
    ig = attribute_task(loaded, task, "copy", n=2, shots=2, steps=3)
    back = codec.loads(codec.dumps(ig))
    assert torch.equal(back.per_prompt, ig.per_prompt) and back.per_prompt.dtype == ig.per_prompt.dtype
    assert back.inputs == ig.inputs and back.inputs[0].target.token_ids == ig.inputs[0].target.token_ids
    evaluation = evaluate_task(loaded, task, 2, 4)
    again = codec.loads(codec.dumps(evaluation))
    pd.testing.assert_frame_equal(again.records, evaluation.records)
    assert again.records.demo_outputs[0] == evaluation.records.demo_outputs[0]  # lists in cells stay lists
    vectors = task_vectors(loaded, task, shots=2, n=3, dummy_queries=1)
    restored = codec.loads(codec.dumps(vectors))
    pd.testing.assert_frame_equal(restored.table, vectors.table)
    assert (restored.icl_accuracy, restored.masked) == (vectors.icl_accuracy, vectors.masked)
    odd = {"nan": float("nan"), "pairs": {(0, 1): [1.5, None]}, "tuple": (1, "a"), "half": torch.ones(2).bfloat16()}
    got = codec.loads(codec.dumps(odd))
    assert got["nan"] != got["nan"] and got["pairs"] == {(0, 1): [1.5, None]} and got["tuple"] == (1, "a")
    assert got["half"].dtype == torch.bfloat16


def test_stale_temporary_files_are_removed_once_at_start(tmp_path):
    import os
    import time

    from analysis import cache as cache_module

    folder = tmp_path / "eval"
    folder.mkdir()
    old, new = folder / ".tmp-old", folder / ".tmp-new"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    hours_ago = time.time() - 2 * cache_module.STALE_TMP_S
    os.utime(old, (hours_ago, hours_ago))
    ResultsCache(tmp_path)
    assert not old.exists() and new.exists()  # a write that may still be running is left alone
