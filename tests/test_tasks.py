"""Built-in tasks, prompt building and deterministic k-shot sampling."""

from __future__ import annotations

import pytest

from analysis.errors import TaskError
from analysis.tasks import Task, builtin_tasks, get_task, icl_task_names
from analysis.tasks.builtin import FACT_TASKS
from analysis.tasks.task import normalize_answer

REQUIRED_ICL = {"to-upper", "to-lower", "next-letter", "prev-letter", "list-first", "list-last", "antonyms",
                "country-capital", "country-continent", "singular-plural", "present-past", "present-gerund",
                "english-french", "english-spanish"}


def test_builtin_task_set():
    assert REQUIRED_ICL <= set(icl_task_names())
    assert builtin_tasks()["vowel-count"].kind == "copying"


@pytest.mark.parametrize("name", list(FACT_TASKS))
def test_fact_tasks_have_enough_distinct_pairs(name):
    task = builtin_tasks()[name]
    inputs = [x for x, _ in task.pairs]
    assert len(inputs) >= 60 and len(set(inputs)) == len(inputs)
    assert all(x.strip() == x and y.strip() == y and x and y for x, y in task.pairs)


def test_generated_tasks_are_correct():
    tasks = builtin_tasks()
    assert ("a", "A") in tasks["to-upper"].pairs and ("Q", "q") in tasks["to-lower"].pairs
    assert ("y", "z") in tasks["next-letter"].pairs and ("z", "a") not in tasks["next-letter"].pairs
    assert ("b", "a") in tasks["prev-letter"].pairs
    for x, y in tasks["list-first"].pairs[:50]:
        assert x.split(", ")[0] == y and 2 <= len(x.split(", ")) <= 4
    for x, y in tasks["list-last"].pairs[:50]:
        assert x.split(", ")[-1] == y
    counts = dict(tasks["vowel-count"].pairs)
    assert (counts["apple"], counts["banana"], counts["tree"]) == ("2", "3", "2")
    for word, count in tasks["vowel-count"].pairs:
        assert int(count) == sum(word.count(v) for v in "aeiou")
    assert len({y for _, y in tasks["vowel-count"].pairs}) >= 4


def test_prompt_format_is_exact():
    task = Task("t", (("a", "1"), ("b", "2"), ("c", "3")))
    prompt = task.build_prompt(("c", "3"), [("a", "1"), ("b", "2")])
    assert prompt.text == "a -> 1\nb -> 2\nc ->"
    assert prompt.gold == "3" and prompt.demo_outputs == ("1", "2")
    custom = Task("t", task.pairs, template="Q: {x}\nA: {y}\n\n")
    assert custom.build_prompt(("c", "3"), [("a", "1")]).text == "Q: a\nA: 1\n\nQ: c\nA:"
    assert custom.delimiter == "\n\n"


@pytest.mark.parametrize("template", ["{x} {x} -> {y}\n", "{y} <- {x}\n", "{x} -> {y}", "{x} ->\n"])
def test_bad_templates_are_rejected(template):
    with pytest.raises(TaskError, match="template"):
        Task("t", (("a", "b"),), template=template)


def test_sampling_is_deterministic_and_never_shows_the_query():
    task = builtin_tasks()["antonyms"]
    a = task.sample_prompts(4, 30, seed=7)
    assert [p.text for p in a] == [p.text for p in task.sample_prompts(4, 30, seed=7)]
    assert [p.text for p in a] != [p.text for p in task.sample_prompts(4, 30, seed=8)]
    for p in a:
        assert len(p.demos) == 4 and p.query not in [x for x, _ in p.demos]
        assert p.text.endswith(f"{p.query} ->")
    assert len({p.query for p in a}) == 30  # queries drawn without replacement


def test_copying_task_demos_never_share_the_answer():
    task = builtin_tasks()["vowel-count"]
    for p in task.sample_prompts(4, 200, seed=1):
        assert p.gold not in p.demo_outputs


def test_more_prompts_than_pairs_cycles_through_all_queries():
    task = builtin_tasks()["to-upper"]
    prompts = task.sample_prompts(2, 52, seed=0)
    assert sorted(p.query for p in prompts) == sorted([chr(c) for c in range(97, 123)] * 2)


def test_too_few_pairs_and_bad_counts():
    task = Task("small", (("a", "1"), ("b", "2")), source="small.csv")
    with pytest.raises(TaskError, match=r"small\.csv.*2 pairs.*4-shot.*at least 5"):
        task.sample_prompts(4, 3)
    with pytest.raises(TaskError, match="n >= 1"):
        task.sample_prompts(1, 0)


def test_get_task_unknown_name():
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")


def test_normalize_answer():
    assert normalize_answer("  Paris \n") == "paris"
    assert normalize_answer("New  York") == "new york"
    assert normalize_answer(" PARIS ", case_sensitive=True) == "PARIS"


def test_accent_folding_is_an_option_off_by_default():
    assert normalize_answer("Bogotá") != normalize_answer("Bogota")
    assert normalize_answer("Bogotá", fold_accents=True) == normalize_answer("Bogota", fold_accents=True) == "bogota"
    assert normalize_answer("ﬁn Ü", fold_accents=True) == "fin u"  # compatibility forms and umlauts
    assert normalize_answer("Ça", case_sensitive=True, fold_accents=True) == "Ca"


def test_repeats_note_names_the_distinct_queries():
    task = Task("letters", [("a", "A"), ("b", "B"), ("a", "A"), ("c", "C")])  # 3 distinct inputs in 4 pairs
    assert task.repeats_note(3) == ""
    assert task.repeats_note(7) == ("letters has 3 distinct queries: 7 prompts ask each up to 3 times with other "
                                    "demonstrations (intervals count repeats of a query as one cluster, not as new "
                                    "evidence)")


def test_prompts_stream_without_drawing_ahead():
    """iter_prompts yields the same prompts as sample_prompts, one at a time: a consumer that needs few of a
    huge n draws only those."""
    import itertools

    task = builtin_tasks()["antonyms"]
    stream = task.iter_prompts(2, seed=5)
    assert list(itertools.islice(stream, 300)) == task.sample_prompts(2, 300, seed=5)
    assert next(stream) == task.sample_prompts(2, 301, seed=5)[-1]  # and it goes on past every pair


def test_recall_shows_the_answer_in_a_demonstration_and_tasks_that_require_copying_are_marked():
    tasks = builtin_tasks()
    recall = tasks["recall"]
    for prompt in recall.sample_prompts(3, 40):
        assert prompt.demo_outputs.count(prompt.gold) == 1  # the query's own pair, once; no other copy source
        assert (prompt.query, prompt.gold) in prompt.demos
    assert {name for name, task in tasks.items() if task.requires_copying} == {"list-first", "list-last", "recall"}
    assert "recall" in icl_task_names() and "vowel-count" not in icl_task_names()
    with pytest.raises(TaskError, match="needs shots >= 1"):
        recall.sample_prompts(0, 1)
