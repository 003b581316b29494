"""Synthetic prompts whose answer's source is known by construction, and their sources as token positions.

Three families (``PROMPT_FAMILIES``), each in two styles: ``toy`` (the toy checkpoints' training corpus,
:mod:`analysis.models.toy`: letters and digits) and ``words`` (natural words, for the real models):

* ``recall``: key -> value recall, ``"q:7 b:2 m:5 | b:"`` -> ``2``; source: the queried key's value in the
  context, cue: the key there.
* ``copy``: ``"copy: kqzm -> kq"`` -> ``z``; source: that character in the first copy, cue: the one before it.
* ``induction``: ``"... A B ... A"`` -> ``B`` (a stretch of a sequence of distinct items repeated, ending on
  A); source: the B after the first A, cue: that A.

A prompt names its source and cue as character spans; :func:`locate` maps them to token positions through
the tokenizer's offsets (a token is a source when it overlaps the span's non-blank characters, so SmolLM2's
``" " + "2"`` gives "2" and a toy's ``" 2"`` gives ``" 2"``), and the target is the first token of the
answer as it is tokenised after the prompt. An answer whose first token would be blank (SmolLM2's " 2")
moves its leading blank into the prompt, so the target is the digit itself.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from analysis.errors import PrunescopeError
from analysis.models.loader import LoadedModel

PROMPT_FAMILIES = ("recall", "copy", "induction")
STYLES = ("toy", "words")
Span = tuple[int, int]
NOUNS = ("apple", "chair", "river", "table", "stone", "cloud", "horse", "glass", "bread", "paper", "water",
         "house", "train", "money", "music", "light", "field", "plant", "heart", "night", "sugar", "dream",
         "phone", "board", "truck", "metal", "smile", "shirt", "ocean", "forest", "garden", "window", "bottle",
         "pencil", "rabbit", "silver", "winter", "doctor", "castle", "island")
COPY_LETTERS = "".join(c for c in string.ascii_lowercase if c not in "copy")  # never ambiguous with "copy:"


@dataclass(frozen=True)
class GroundTruthPrompt:
    """A prompt, its expected answer, and where in ``text`` the answer comes from (``source``) and what
    identifies it (``cue``), as character spans."""

    family: str
    text: str
    answer: str
    source: Span
    cue: Span


@dataclass(frozen=True)
class Located:
    """A prompt as tokens: the ids, the target id (the answer's first token) and the token positions of the
    source and the cue."""

    prompt: GroundTruthPrompt
    input_ids: tuple[int, ...]
    target: int
    sources: tuple[int, ...]
    cues: tuple[int, ...]


class _Builder:
    """Concatenates pieces, remembering the span of the ones that matter."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: dict[str, Span] = {}

    def add(self, piece: str, name: str | None = None) -> _Builder:
        if name is not None:
            self.spans[name] = (len(self.text), len(self.text) + len(piece))
        self.text += piece
        return self

    def done(self, family: str, answer: str) -> GroundTruthPrompt:
        return GroundTruthPrompt(family, self.text, answer, self.spans["source"], self.spans["cue"])


def _recall(rng: random.Random, style: str) -> GroundTruthPrompt:
    keys = rng.sample(string.ascii_lowercase if style == "toy" else NOUNS, rng.randint(4, 6))
    values = dict(zip(keys, map(str, rng.sample(range(10), len(keys)))))  # distinct: one source
    query = rng.choice(keys)
    out = _Builder()
    for i, key in enumerate(keys):  # toy: "q:7 b:2 |" (the training format); words: "apple: 7, chair: 2."
        sep = (" " if i else "") if style == "toy" else (", " if i else "")
        out.add(sep).add(key, "cue" if key == query else None).add(":" if style == "toy" else ": ")
        out.add(values[key], "source" if key == query else None)
    if style == "toy":  # like training: some other keys already queried after the bar, then the query
        answered = rng.sample([k for k in keys if k != query], rng.randint(0, 3))
        return out.add(" |" + "".join(f" {k}:{values[k]}" for k in answered) + f" {query}:").done("recall",
                                                                                                 values[query])
    out.add(f". {query}:")
    return out.done("recall", " " + values[query])


def _copy(rng: random.Random, style: str) -> GroundTruthPrompt:
    if style == "toy":  # "copy: kqzm -> kq" -> "z"
        letters = rng.sample(COPY_LETTERS, rng.randint(4, 6))
        cut = rng.randint(1, len(letters) - 1)
        out = _Builder().add("copy: ")
        for i, letter in enumerate(letters):
            out.add(letter, "source" if i == cut else "cue" if i == cut - 1 else None)
        return out.add(" -> " + "".join(letters[:cut])).done("copy", letters[cut])
    words = rng.sample(NOUNS, rng.randint(4, 6))
    cut = rng.randint(1, len(words) - 1)
    out = _Builder().add("Copy:")
    for i, word in enumerate(words):
        out.add(" ").add(word, "source" if i == cut else "cue" if i == cut - 1 else None)
    return out.add(" -> " + " ".join(words[:cut])).done("copy", " " + words[cut])


def _induction(rng: random.Random, style: str) -> GroundTruthPrompt:
    """A sequence of distinct items, then a stretch of it again (2 or 3 items, ending on A): answer the item
    that followed A the first time. Toy: letters, ``"lqikrpfv qi"`` -> ``k``; words: a comma-separated list
    (without commas Gemma 3 answers a special token)."""
    sequence = rng.sample(COPY_LETTERS if style == "toy" else NOUNS, rng.randint(6, 9))
    end = rng.randint(2, len(sequence) - 1)  # the answer is sequence[end]; A is sequence[end - 1]
    start = end - rng.randint(2, min(3, end))
    sep = "" if style == "toy" else ", "
    out = _Builder()
    for i, item in enumerate(sequence):
        out.add(sep if i else "").add(item, "cue" if i == end - 1 else "source" if i == end else None)
    if style == "toy":
        return out.add(" " + "".join(sequence[start:end])).done("induction", sequence[end])
    return out.add(", " + ", ".join(sequence[start:end]) + ",").done("induction", " " + sequence[end])


BUILDERS = {"recall": _recall, "copy": _copy, "induction": _induction}


def build_prompts(family: str, n: int, seed: int = 0, style: str = "toy") -> list[GroundTruthPrompt]:
    """``n`` prompts of ``family`` in ``style``, deterministic from ``seed``."""
    if family not in BUILDERS:
        raise PrunescopeError(f"unknown prompt family {family!r}: use {', '.join(PROMPT_FAMILIES)}")
    if style not in STYLES:
        raise PrunescopeError(f"unknown prompt style {style!r}: use {' or '.join(STYLES)}")
    rng = random.Random(f"ground-truth|{family}|{style}|{seed}")
    return [BUILDERS[family](rng, style) for _ in range(int(n))]


def _positions(offsets: list[tuple[int, int]], span: Span, text: str) -> tuple[int, ...]:
    """Token positions whose character offsets overlap the non-blank part of ``span``."""
    piece = text[span[0]:span[1]]
    start = span[0] + len(piece) - len(piece.lstrip())
    end = span[1] - (len(piece) - len(piece.rstrip()))
    return tuple(i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start)


def _tokens(loaded: LoadedModel, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoded = loaded.tokenizer(text, return_offsets_mapping=True)
    return list(encoded.input_ids), [tuple(o) for o in encoded.offset_mapping]


def locate(loaded: LoadedModel, prompt: GroundTruthPrompt) -> Located:
    """``prompt`` as the model's tokens (module docstring); a prompt whose answer does not tokenise as a
    continuation of it, or whose source covers no token, is a PrunescopeError."""
    text, answer = prompt.text, prompt.answer
    ids, offsets = _tokens(loaded, text)
    full, _ = _tokens(loaded, text + answer)
    blank = full[len(ids):len(ids) + 1] and not str(loaded.tokenizer.decode(full[len(ids):len(ids) + 1])).strip()
    if blank and answer != answer.lstrip():  # the answer's blank is a token of its own: it belongs to the prompt
        lead = answer[:len(answer) - len(answer.lstrip())]
        text, answer = text + lead, answer.lstrip()
        ids, offsets = _tokens(loaded, text)
        full, _ = _tokens(loaded, text + answer)
    if full[:len(ids)] != ids or len(full) <= len(ids):
        raise PrunescopeError(f"the answer {prompt.answer!r} does not tokenise as a continuation of "
                              f"{prompt.text[-30:]!r}")
    sources, cues = _positions(offsets, prompt.source, text), _positions(offsets, prompt.cue, text)
    if not sources or not cues or len(ids) - 1 in sources:
        raise PrunescopeError(f"the source of {prompt.text[-30:]!r} covers no token before the last")
    if text != prompt.text:
        prompt = GroundTruthPrompt(prompt.family, text, answer, prompt.source, prompt.cue)
    return Located(prompt, tuple(ids), int(full[len(ids)]), sources, cues)
