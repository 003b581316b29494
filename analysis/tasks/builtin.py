"""Built-in tasks: the synthetic copying task and ICL tasks in the style of Hendel et al. (2023).

Fact tasks read ``assets/tasks/<file>.json``; generated tasks (letters, case, lists, vowel counts) derive
deterministically from ``assets/tasks/words.json``.
"""

from __future__ import annotations

import json
import random
import string
from functools import lru_cache
from pathlib import Path

from analysis.errors import TaskError
from analysis.paths import TASKS_DIR
from analysis.tasks.files import load_task_file
from analysis.tasks.task import Task

VOWELS = set("aeiou")

# name -> (data file stem, description); case_sensitive where a casefolded match would be wrong.
FACT_TASKS = {
    "antonyms": ("antonyms", "word -> its antonym"),
    "country-capital": ("country_capital", "country -> capital city"),
    "country-continent": ("country_continent", "country -> continent"),
    "singular-plural": ("singular_plural", "noun -> plural"),
    "present-past": ("present_past", "verb -> simple past"),
    "present-gerund": ("present_gerund", "verb -> -ing form"),
    "english-french": ("english_french", "English word -> French"),
    "english-spanish": ("english_spanish", "English word -> Spanish"),
}


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    return tuple(json.loads((TASKS_DIR / "words.json").read_text(encoding="utf-8")))


def _generated() -> dict[str, Task]:
    ws = words()
    letters = [(a, b) for alphabet in (string.ascii_lowercase, string.ascii_uppercase)
               for a, b in zip(alphabet, alphabet[1:])]
    rng = random.Random(1234)
    lists = [rng.sample(ws, rng.randint(2, 4)) for _ in range(300)]  # lengths 2-4 as in Hendel et al.
    lists = list({", ".join(ls): ls for ls in lists}.values())  # drop repeated inputs
    return {
        "vowel-count": Task(
            "vowel-count", tuple((w, str(sum(c in VOWELS for c in w))) for w in ws), kind="copying",
            description="word -> number of vowels (copying task: the answer never occurs in the demonstrations)"),
        # Letter case as in Hendel et al. (a -> A); the word-level version is much harder for small models.
        "to-upper": Task("to-upper", tuple((c, c.upper()) for c in string.ascii_lowercase), case_sensitive=True,
                         description="letter -> upper case"),
        "to-lower": Task("to-lower", tuple((c, c.lower()) for c in string.ascii_uppercase), case_sensitive=True,
                         description="letter -> lower case"),
        "next-letter": Task("next-letter", tuple(letters), case_sensitive=True, description="letter -> next letter"),
        "prev-letter": Task("prev-letter", tuple((b, a) for a, b in letters), case_sensitive=True,
                            description="letter -> previous letter"),
        "list-first": Task("list-first", tuple((", ".join(ls), ls[0]) for ls in lists), requires_copying=True,
                           description="list of words -> first word (the answer is copied from the input)"),
        "list-last": Task("list-last", tuple((", ".join(ls), ls[-1]) for ls in lists), requires_copying=True,
                          description="list of words -> last word (the answer is copied from the input)"),
        "recall": Task("recall", _recall_pairs(ws), kind="recall", requires_copying=True,
                       description="word -> the word it was paired with in a demonstration (arbitrary pairs: "
                                   "the answer must be copied)"),
    }


def _recall_pairs(ws: tuple[str, ...], count: int = 120) -> tuple[tuple[str, str], ...]:
    """Arbitrary word pairs, no output repeated and no word paired with itself (deterministic)."""
    rng = random.Random(4321)
    chosen = rng.sample(sorted(set(ws)), 2 * count)
    return tuple(zip(chosen[:count], chosen[count:]))


@lru_cache(maxsize=1)
def builtin_tasks() -> dict[str, Task]:
    """All built-in tasks by name (the copying task first)."""
    tasks = _generated()
    for name, (stem, description) in FACT_TASKS.items():
        loaded = load_task_file(TASKS_DIR / f"{stem}.json", name=name)
        tasks[name] = Task(name, loaded.pairs, description=description, source=f"assets/tasks/{stem}.json")
    return tasks


def icl_task_names() -> list[str]:
    """Names of the built-in ICL tasks (everything but the copying task)."""
    return [name for name, task in builtin_tasks().items() if task.kind != "copying"]


def get_task(spec: str, **file_options) -> Task:
    """A task by name or file.

    Args:
        spec: a built-in task's name (:func:`builtin_tasks`) or the path of a ``.csv``/``.json`` task file
            (columns or keys ``input``/``output``; README, "Tasks").
        file_options: for a file: ``min_pairs``, ``template`` and the like (:func:`load_task_file`).

    Returns:
        The :class:`Task`: its (input, output) pairs and how to turn them into k-shot prompts.

    Raises:
        TaskError: an unknown name, or a malformed file (one line naming the file and the problem).

    Example::

        >>> import analysis as ps
        >>> task = ps.get_task("antonyms")
        >>> print(task.sample_prompts(shots=2, n=1)[0].text)
        possible -> impossible
        safe -> dangerous
        remember ->
    """
    tasks = builtin_tasks()
    if spec in tasks:
        return tasks[spec]
    if spec.lower().endswith((".csv", ".json")) or Path(spec).exists():
        return load_task_file(spec, **file_options)
    raise TaskError(f"unknown task {spec!r}: use one of {', '.join(tasks)} or a .csv/.json file")
