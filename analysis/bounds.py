"""The range of every numeric quantity the library checks, defined once and keyed by quantity.

The library's entry points refuse anything outside them with one line and the CLI's argument types check them;
the app's linked settings (components/settings.py) name the quantity whose range they keep to, so its widgets
and links use the same ranges. A hosted demo relies on this: ``?n=1000000000000`` in a link must not reach a
loop.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from analysis.errors import PrunescopeError


@dataclass(frozen=True)
class Bound:
    """An inclusive range; ``integer=False`` admits any finite number in it (a time budget)."""

    low: float
    high: float
    what: str
    integer: bool = True

    def clamp(self, value: int) -> int:
        return int(min(max(int(value), self.low), self.high))

    def check(self, value: object, name: str) -> int:
        """``value`` when it is an integer within the range, else a one-line error naming ``name``."""
        if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                or not self.low <= int(value) <= self.high):
            raise PrunescopeError(f"{name} must be an integer from {self.low} to {self.high} ({self.what}); "
                                  f"got {str(value)[:20]}")
        return int(value)

    def check_number(self, value: object, name: str) -> float:
        """``value`` when it is a finite number within the range (a bound with ``integer=False``)."""
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not self.low <= value <= self.high):
            raise PrunescopeError(f"{name} must be a number from {self.low} to {self.high} ({self.what}); "
                                  f"got {str(value)[:20]}")
        return float(value)


MAX_SEED = 2**31 - 1
BOUNDS: dict[str, Bound] = {
    "n": Bound(1, 1000, "prompts per task"),
    "shots": Bound(0, 32, "demonstrations per prompt"),
    "seed": Bound(0, MAX_SEED, "the prompt-sampling seed"),
    "layer": Bound(0, 1023, "a layer index; the model's own layer count is checked where the model is known"),
    "k": Bound(0, 10_000_000, "neurons to prune; the model's own neuron count is checked too"),
    "ig_n": Bound(1, 256, "attribution prompts"),
    "steps": Bound(1, 256, "IG steps"),
    "controls": Bound(0, 50, "random-mask controls"),
    "tv_n": Bound(1, 500, "task-vector queries"),
    "dummies": Bound(1, 8, "dummy queries per task vector"),
    "faith_n": Bound(1, 200, "faithfulness prompts"),
    "minutes": Bound(0.1, 24 * 60, "minutes of toy training", integer=False),
    "max_steps": Bound(1, 1_000_000, "toy training steps"),
}


def clamp(name: str, value: int) -> int:
    return BOUNDS[name].clamp(value)


def check(name: str, value: object) -> int:
    return BOUNDS[name].check(value, name)


def check_number(name: str, value: object) -> float:
    return BOUNDS[name].check_number(value, name)
