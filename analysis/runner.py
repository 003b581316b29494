"""Where a method's independent pieces may run instead of here: the :class:`Runner` protocol.

The methods (neuron IG runs, prune-eval grids and k-sweeps, the faithfulness test) take a runner as ``pool=``
and call it for the work that splits into shards; :class:`analysis.distributed.ModelPool` implements it on
Ray actors. The methods depend on this protocol only, never on :mod:`analysis.distributed`, so Ray's module
sits above them and nothing imports it back. Every call returns what the serial code computes, in the same
order, and reports ``progress(done, total)`` in the call's own units as pieces finish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from analysis.evaluation.icl import EvalResult, Evaluation
    from analysis.tasks.task import Task

Progress = Callable[[int, int], None]


class Runner(Protocol):
    """A pool of model replicas (each holding the caller's model) that runs shards of a method."""

    def evaluate(self, requests: Sequence[Evaluation], progress: Progress | None = None) -> list[EvalResult]:
        """One EvalResult per request, in order (``progress`` in requests)."""
        ...

    def neuron_ig(self, inputs: Sequence[Any], steps: int, quadrature: str,
                  progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per_prompt, f_clean, delta) of neuron IG over ``inputs`` (prepared AttributionInputs; not
        imported here, where the attribution package would import this module back), merged in order
        (``progress`` in prompts)."""
        ...

    def faithfulness(self, task: Task, methods: Sequence[str], n: int, shots: int, seed: int, count: int,
                     options: Mapping[str, object], progress: Progress | None = None) -> list:
        """Per-prompt (target, curves) of the faithfulness test for its ``count`` prompts, in order
        (``progress`` in prompts)."""
        ...
