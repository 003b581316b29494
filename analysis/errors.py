"""User-facing errors: one line that names the problem (the CLI exits 2, the app shows st.error)."""

from __future__ import annotations

import json
import sys
from typing import Any, TypeVar

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


def parse_json(text: str, what: str, error: type[PrunescopeError] = PrunescopeError) -> Any:
    """``json.loads(text)``, every way it fails as one ``error`` line naming ``what``: bad syntax (with its line),
    nesting thousands deep (a RecursionError) and an integer longer than Python converts (a ValueError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise error(f"{what}: nested too deeply") from None
    except ValueError:  # int() of a number with more than sys.get_int_max_str_digits() digits
        raise error(f"{what}: a number longer than {sys.get_int_max_str_digits()} digits") from None
