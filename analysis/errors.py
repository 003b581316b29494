"""User-facing errors: one line that names the problem (the CLI exits 2, the app shows st.error)."""

from __future__ import annotations

from typing import TypeVar

Choice = TypeVar("Choice", bound=str)


class PrunescopeError(Exception):
    """Bad input or an unusable environment, explained in one line; never a bug in prunescope."""


class ModelLoadError(PrunescopeError):
    """A model spec that cannot be loaded: unknown id, offline hub, broken directory, missing package."""


class UnsupportedArchitectureError(PrunescopeError):
    """A model whose architecture has no adapter."""


class TaskError(PrunescopeError):
    """A malformed task file or a task that cannot produce the requested prompts."""


class PromptTooLongError(PrunescopeError):
    """A prompt longer than the model's context."""


def check_choice(value: str, choices: tuple[Choice, ...], what: str, joiner: str = ", ") -> Choice:
    """``value`` as one of ``choices`` (a Literal's values: the result has the Literal's type), else one line
    "unknown <what> 'value': use a, b"."""
    for choice in choices:
        if choice == value:
            return choice
    raise PrunescopeError(f"unknown {what} {value!r}: use {joiner.join(choices)}")
