"""Batched ICL evaluation: batched == one at a time for every family; copy-error classification."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.errors import PromptTooLongError
from analysis.evaluation import classify, evaluate_task, plan_batches
from analysis.evaluation.icl import classify_records
from analysis.models.tiny import TINY_FAMILIES
from analysis.pruning import NeuronMask
from analysis.tasks import Task, builtin_tasks


@pytest.mark.parametrize("prediction,gold,demos,case_sensitive,expected", [
    ("2", "2", ["1", "3"], False, "correct"),
    (" Paris ", "paris", ["Rome"], False, "correct"),
    ("3", "2", ["1", "3"], False, "copy"),
    ("ROME", "Paris", ["Rome", "Oslo"], False, "copy"),
    ("4", "2", ["1", "3"], False, "other"),
    ("", "2", ["1", "3"], False, "other"),
    ("a", "A", ["B"], True, "other"),  # case-sensitive: lower case is wrong, and not a demo output
    ("b", "A", ["b", "C"], True, "copy"),
    ("B", "A", ["b", "C"], True, "other"),
])
def test_classify(prediction, gold, demos, case_sensitive, expected):
    assert classify(prediction, gold, demos, case_sensitive) == expected


@pytest.mark.parametrize("prediction,gold,demos,query,case_sensitive,expected", [
    ("Pakistan", "Islamabad", ["Paris", "Rome"], "Pakistan", False, "echo"),
    (" pakistan ", "Islamabad", ["Paris"], "Pakistan", False, "echo"),  # same normalisation as the gold
    ("Paris", "Islamabad", ["Paris"], "Paris", False, "copy"),  # a demo output first, even if it is the query
    ("level", "level", ["noon"], "level", False, "correct"),  # gold first, even if it is the query
    ("a", "A", ["B"], "a", True, "echo"),  # to-upper: the lower-case input repeated
    ("A", "a", ["b"], "a", True, "other"),  # case-sensitive: "A" is not the query "a"
    ("Lahore", "Islamabad", ["Paris"], "Pakistan", False, "other"),
])
def test_classify_echo(prediction, gold, demos, query, case_sensitive, expected):
    assert classify(prediction, gold, demos, case_sensitive, query=query) == expected


def test_plan_batches():
    lengths = [5, 3, 5, 4, 3, 5]
    assert plan_batches(lengths, 2, allow_padding=True) == [[1, 4], [3, 0], [2, 5]]
    assert plan_batches(lengths, 2, allow_padding=False) == [[1, 4], [3], [0, 2], [5]]
    assert plan_batches(lengths, 10, allow_padding=False) == [[1, 4], [3], [0, 2, 5]]


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_batched_equals_one_at_a_time(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    task = builtin_tasks()["antonyms"]
    mask = NeuronMask.from_pairs([(0, i) for i in range(0, 64, 3)])
    for m in (None, mask):
        batched = evaluate_task(loaded, task, shots=2, n=12, seed=3, mask=m, batch_size=6)
        single = evaluate_task(loaded, task, shots=2, n=12, seed=3, mask=m, batch_size=1)
        assert list(batched.records.prediction) == list(single.records.prediction)
        assert list(batched.records.prompt) == list(single.records.prompt)
    assert batched.records.prediction.str.len().sum() > 0  # the tiny model does answer something


def test_padded_batches_mix_lengths(tiny_loaded):
    """The padded path is really exercised: one batch holds prompts of different token lengths."""
    loaded = tiny_loaded("llama")
    prompts = builtin_tasks()["antonyms"].sample_prompts(2, 12, seed=3)
    lengths = [len(loaded.tokenizer(p.text).input_ids) for p in prompts]
    assert len(set(lengths)) > 2
    assert any(len({lengths[i] for i in b}) > 1 for b in plan_batches(lengths, 6, allow_padding=True))


def test_mask_changes_predictions(tiny_loaded):
    loaded = tiny_loaded("llama")
    task = builtin_tasks()["antonyms"]
    everything = NeuronMask.from_pairs([(layer, i) for layer in range(2) for i in range(64)])
    base = evaluate_task(loaded, task, shots=2, n=12, seed=0)
    pruned = evaluate_task(loaded, task, shots=2, n=12, seed=0, mask=everything)
    assert list(base.records.prediction) != list(pruned.records.prediction)
    assert pruned.masked and pruned.meta["mask_size"] == 128


def test_rates_and_records(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    result = evaluate_task(loaded, builtin_tasks()["vowel-count"], shots=3, n=10, seed=0)
    records = result.records
    assert result.n == 10 and list(records.columns[:6]) == ["prompt_index", "prompt", "query", "gold", "prediction",
                                                            "outcome"]
    assert list(records.prompt_index) == list(range(10))
    rates = result.accuracy + result.copy_error_rate + result.echo_rate + result.other_error_rate
    assert rates == pytest.approx(1.0)
    assert result.copy_error_rate == pytest.approx(records.is_copy.mean())
    for row in records.itertuples():
        assert row.outcome == classify(row.prediction, row.gold, row.demo_outputs, query=row.query)
    summary = result.summary()
    assert set(summary) == {"model", "task", "shots", "n", "accuracy", "copy_error_rate", "echo_rate",
                            "other_error_rate"}


def test_outcomes_are_rederived_from_cached_predictions(tiny_loaded, tmp_path):
    """A cached run stores predictions; the outcome columns are recomputed on every read, so entries written
    before the echo class existed (here: every outcome overwritten with 'other') read back classified."""
    from analysis.cache import ResultsCache

    loaded, cache = tiny_loaded("gpt2"), ResultsCache(tmp_path, fallbacks=())
    task = builtin_tasks()["to-upper"]
    first = evaluate_task(loaded, task, shots=1, n=6, cache=cache)
    [path] = (tmp_path / "eval").glob("*.safetensors")
    stale = cache.get("eval", path.stem)
    stale.records["outcome"] = "other"
    cache.put("eval", path.stem, stale)
    again = evaluate_task(loaded, task, shots=1, n=6, cache=cache)
    assert list(again.records.outcome) == list(first.records.outcome)


def test_progress_is_reported(tiny_loaded):
    calls = []
    evaluate_task(tiny_loaded("gpt2"), builtin_tasks()["to-upper"], shots=1, n=7, batch_size=3,
                  progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (7, 7) and len(calls) == 3


def test_prompt_longer_than_context(tiny_loaded):
    long_words = tuple((" ".join(["word"] * 60) + str(i), str(i)) for i in range(6))
    task = Task("long", long_words)
    with pytest.raises(PromptTooLongError, match=r"exceeds the model's context of 256"):
        evaluate_task(tiny_loaded("llama"), task, shots=4, n=1)


def test_accent_folding_changes_outcomes_only_when_asked():
    assert classify("Bogota", "Bogotá", ["Lima"]) == "other"
    assert classify("Bogota", "Bogotá", ["Lima"], fold_accents=True) == "correct"
    assert classify("Lima", "Bogotá", ["Líma"], fold_accents=True) == "copy"
    records = pd.DataFrame({"prompt": ["p"], "query": ["Colombia"], "gold": ["Bogotá"], "prediction": ["Bogota"],
                            "demo_outputs": [["Lima"]]})
    assert classify_records(records, False).outcome.tolist() == ["other"]
    assert classify_records(records, False, fold_accents=True).outcome.tolist() == ["correct"]
