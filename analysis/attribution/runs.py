"""Task-level neuron attribution: sample prompts, prepare targets, run IG, cache the result on disk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from analysis.attribution.neuron_ig import NeuronIGResult, neuron_ig
from analysis.attribution.normalised import rule_parts
from analysis.attribution.quadrature import Quadrature, check_quadrature
from analysis.attribution.ragged import ragged_meta
from analysis.attribution.targets import TargetKind, prepare_inputs
from analysis.bounds import check
from analysis.cache import ResultsCache, task_fingerprint
from analysis.models.loader import LoadedModel
from analysis.requests import Request
from analysis.runner import Runner
from analysis.tasks.task import Task

IG_VERSION = "neuron-ig/1"


@dataclass(frozen=True)
class Attribution(Request[NeuronIGResult]):
    """One all-layer neuron IG run over a task's prompts (:func:`attribute_task`) as a request."""

    task: Task
    target: TargetKind
    n: int
    shots: int
    seed: int = 0
    steps: int = 4
    quadrature: Quadrature = "adaptive"

    kind: ClassVar[str] = "neuron-ig"
    version: ClassVar[str] = IG_VERSION

    def __post_init__(self) -> None:
        for name, bound in (("n", "ig_n"), ("shots", "shots"), ("steps", "steps"), ("seed", "seed")):
            object.__setattr__(self, name, check(bound, getattr(self, name)))

    def parts(self, loaded: LoadedModel) -> dict:
        return {"model": loaded.fingerprint(), "task": task_fingerprint(self.task), "target": self.target,
                "n": self.n, "shots": self.shots, "seed": self.seed, "steps": self.steps,
                "quadrature": self.quadrature, **rule_parts(loaded.adapter, self.quadrature)}

    def compute(self, loaded: LoadedModel, progress: Callable[[int, int], None] | None,
                pool: Runner | None) -> NeuronIGResult:
        items = prepare_inputs(loaded, self.task.sample_prompts(self.shots, self.n, self.seed), self.target,
                               self.task.delimiter)
        if pool is None:
            return neuron_ig(loaded, items, steps=self.steps, quadrature=self.quadrature, progress=progress)
        per_prompt, clean, delta = pool.neuron_ig(items, self.steps, self.quadrature, progress=progress)
        return NeuronIGResult(per_prompt, list(items), items[0].target.kind, self.steps,
                              check_quadrature(self.quadrature), clean, meta={"method": "fast", **ragged_meta(loaded)},
                              delta=delta)

    def work(self, loaded: LoadedModel) -> int:
        return self.n


def attribute_task(loaded: LoadedModel, task: Task, target: TargetKind, n: int, shots: int, seed: int = 0,
                   steps: int = 4, quadrature: Quadrature = "adaptive", cache: ResultsCache | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   pool: Runner | None = None) -> NeuronIGResult:
    """All-layer neuron IG of ``target`` over ``n`` prompts of ``task`` (the fast path of
    :func:`analysis.neuron_ig`), read from ``cache`` when it was run before.

    Args:
        loaded: the model.
        task: the task whose ``shots``-shot prompts (``task.sample_prompts(shots, n, seed)``) are attributed.
        target: what F is: ``gold`` (the gold answer's logit), ``copy`` (logit(copied demonstration answer) -
            logit(gold)), ``copy-prob`` (the copied answer's probability, the paper's), ``echo``
            (logit(the query repeated) - logit(gold)) or ``confidence`` (the top answer's log-probability).
        n, shots, seed: which prompts (the same on every model).
        steps, quadrature: the rule (:func:`analysis.neuron_ig`).
        cache: a :class:`ResultsCache` to read a stored run from and store a new one in
            (:func:`stored_attribution` only reads).
        progress: ``progress(done, total)`` in prompts; it may raise to stop the run.
        pool: a :class:`analysis.runner.Runner` (Ray actors) that runs the prompts in shards, same result.

    Returns:
        A :class:`NeuronIGResult`.

    Raises:
        PrunescopeError: out-of-range settings, an unknown target or rule, a prompt where the target cannot
            apply (e.g. ``copy`` when the gold answer is a demonstration's).

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> ig = ps.attribute_task(model, ps.get_task("vowel-count"), "copy", n=2, shots=2)
        >>> ig.per_prompt.shape, ig.quadrature
        (torch.Size([2, 4, 384]), 'adaptive')
    """
    return Attribution(task, target, n, shots, seed, steps, quadrature).run(loaded, cache, progress, pool)


def stored_attribution(loaded: LoadedModel, task: Task, target: TargetKind, n: int, shots: int, seed: int = 0,
                       steps: int = 4, quadrature: Quadrature = "adaptive",
                       cache: ResultsCache | None = None) -> NeuronIGResult | None:
    """What :func:`attribute_task` with these settings would return, when ``cache`` (default: the user's
    cache, then the results shipped with the project) holds it; None otherwise. Nothing is computed: a page
    shows earlier results at once without starting a long job."""
    return Attribution(task, target, n, shots, seed, steps, quadrature).stored(loaded, cache)
