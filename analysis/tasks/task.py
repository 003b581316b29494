"""Tasks as (input, output) pairs and deterministic k-shot prompt sampling.

A prompt is ``shots`` demonstrations rendered with the task's template followed by the query rendered up to
(but not including) the answer, with trailing whitespace removed: ``"apple -> 2\\nsky -> 0\\ntree ->"``.
The model is expected to continue with ``" <answer><delimiter>"``; the delimiter is the template text after
``{y}`` (a newline by default).
"""

from __future__ import annotations

import hashlib
import itertools
import random
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from analysis.errors import TaskError

DEFAULT_TEMPLATE = "{x} -> {y}\n"


@dataclass(frozen=True)
class Prompt:
    """One k-shot prompt: the text fed to the model, its query and gold answer, and the demonstrations."""

    text: str
    query: str
    gold: str
    demos: tuple[tuple[str, str], ...]

    @property
    def demo_outputs(self) -> tuple[str, ...]:
        return tuple(y for _, y in self.demos)


@dataclass(frozen=True)
class Task:
    """A named list of (input, output) pairs and how to turn them into prompts.

    ``kind`` is ``"icl"`` for ordinary mapping tasks, ``"copying"`` for the synthetic copying-bias task,
    whose demonstrations never share the query's answer (so answering with a demonstration's output is a
    copying error by construction), and ``"recall"`` for a task whose query pair is itself one of the
    demonstrations (the right answer is a copy). ``requires_copying`` marks tasks whose right answer is a copy
    of the input or of a demonstration (list-first, list-last, recall): a mask that removes copying should not
    raise accuracy there, so prune-eval reports them as a group of their own. ``case_sensitive`` decides
    answer comparison (to-upper must be); ``fold_accents`` (off by default) also compares answers with
    accents and compatibility forms folded ("Bogotá" = "Bogota", "ﬁ" = "fi"); it is not part of the task's
    fingerprint, since an evaluation's outcomes are derived from its cached answers on every read.
    """

    name: str
    pairs: tuple[tuple[str, str], ...]
    template: str = DEFAULT_TEMPLATE
    kind: str = "icl"
    case_sensitive: bool = False
    fold_accents: bool = False
    requires_copying: bool = False
    instruction: str = ""  # text before the demonstrations (the instruction-prompt baseline); usually empty
    description: str = ""
    source: str = "built-in"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        validate_template(self.template)

    @property
    def delimiter(self) -> str:
        """Text that ends an answer (the template after ``{y}``)."""
        return self.template.split("{y}", 1)[1]

    def render_demo(self, x: str, y: str) -> str:
        return self.template.replace("{x}", x).replace("{y}", y)

    def render_query(self, x: str) -> str:
        return self.template.split("{y}", 1)[0].replace("{x}", x).rstrip()

    def build_prompt(self, query: tuple[str, str], demos: list[tuple[str, str]]) -> Prompt:
        """The prompt that shows ``demos`` as (input, output) pairs in the task's template, then asks for the
        output of ``query``'s input (``query``'s output is the gold answer), after the task's instruction."""
        text = self.instruction + "".join(self.render_demo(x, y) for x, y in demos) + self.render_query(query[0])
        return Prompt(text=text, query=query[0], gold=query[1], demos=tuple(demos))

    def repeats_note(self, n: int) -> str:
        """'' when ``n`` prompts fit the task's distinct queries; else one sentence saying how many there are
        (more prompts cycle through the queries again, with other demonstrations)."""
        distinct = len({x for x, _ in self.pairs})
        if n <= distinct:
            return ""
        return (f"{self.name} has {distinct} distinct queries: {n} prompts ask each up to {-(-n // distinct)} times "
                "with other demonstrations (intervals count repeats of a query as one cluster, not as new evidence)")

    def sample_prompts(self, shots: int, n: int, seed: int = 0) -> list[Prompt]:
        """``n`` deterministic ``shots``-shot prompts from ``seed``: the first ``n`` of :meth:`iter_prompts`."""
        if shots < 0 or n < 1:
            raise TaskError(f"need shots >= 0 and n >= 1 (got shots={shots}, n={n})")
        return list(itertools.islice(self.iter_prompts(shots, seed), n))

    def iter_prompts(self, shots: int, seed: int = 0) -> Iterator[Prompt]:
        """Deterministic ``shots``-shot prompts from ``seed``, one at a time and without end (a consumer that
        streams takes what it needs; nothing is drawn ahead).

        Queries are drawn without replacement (cycling through a fresh shuffle when the pairs run out);
        demonstrations are drawn from the other pairs, never with the query's input, and for the copying task
        never with the query's answer.
        """
        if shots < 0:
            raise TaskError(f"need shots >= 0 (got shots={shots})")
        if len(self.pairs) < shots + 1:
            raise TaskError(
                f"task {self.name!r} ({self.source}) has {len(self.pairs)} pairs; "
                f"{shots}-shot prompts need at least {shots + 1}"
            )
        if self.kind == "recall" and shots < 1:
            raise TaskError(f"task {self.name!r} shows the answer in a demonstration: it needs shots >= 1")
        rng = random.Random(f"{self.name}|{shots}|{seed}")
        order: list[int] = []
        while True:
            if not order:
                order = list(range(len(self.pairs)))
                rng.shuffle(order)
            query = self.pairs[order.pop()]
            pool = [p for p in self.pairs if p[0] != query[0] and not self._conflicts(p, query)]
            if len(pool) < shots:
                raise TaskError(
                    f"task {self.name!r}: query {query[0]!r} leaves only {len(pool)} usable demonstrations "
                    f"for {shots} shots"
                )
            if self.kind == "recall":  # the query's own pair among the demonstrations, at a random place
                demos = rng.sample(pool, shots - 1)
                demos.insert(rng.randrange(shots), query)
                yield self.build_prompt(query, demos)
            else:
                yield self.build_prompt(query, rng.sample(pool, shots))

    def split(self, heldout_fraction: float = 0.3, seed: int = 0) -> tuple[Task, Task]:
        """(fit, held-out) tasks over disjoint pairs, chosen deterministically from ``seed``."""
        order = sorted(self.pairs, key=lambda p: hashlib.sha256(f"{seed}|{p[0]}".encode()).hexdigest())
        cut = max(1, round(len(order) * heldout_fraction))
        return (replace(self, name=f"{self.name}[fit]", pairs=tuple(order[cut:])),
                replace(self, name=f"{self.name}[heldout]", pairs=tuple(order[:cut])))

    def _conflicts(self, demo: tuple[str, str], query: tuple[str, str]) -> bool:
        return self.kind in ("copying", "recall") and normalize_answer(demo[1]) == normalize_answer(query[1])


def validate_template(template: str) -> None:
    """A template needs ``{x}`` before ``{y}`` and a non-empty delimiter after ``{y}``."""
    if template.count("{x}") != 1 or template.count("{y}") != 1 or template.index("{x}") > template.index("{y}"):
        raise TaskError(f"prompt template {template!r} must contain {{x}} once, followed by {{y}} once")
    if not template.split("{y}", 1)[1]:
        raise TaskError(f"prompt template {template!r} needs a delimiter after {{y}}, e.g. a newline")


def normalize_answer(text: str, case_sensitive: bool = False, fold_accents: bool = False) -> str:
    """Trim, collapse inner whitespace, (unless case-sensitive) casefold and (with ``fold_accents``) drop
    accents and compatibility forms (NFKD without combining marks), for answer comparison."""
    text = " ".join(text.split())
    if fold_accents:
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text if case_sensitive else text.casefold()
