"""Task-level neuron attribution: sample prompts, prepare targets, run IG, cache the result on disk."""

from __future__ import annotations

from collections.abc import Callable

from analysis.attribution.neuron_ig import NeuronIGResult, neuron_ig
from analysis.attribution.quadrature import Quadrature, check_quadrature
from analysis.attribution.targets import TargetKind, prepare_inputs
from analysis.bounds import check
from analysis.cache import ResultsCache, task_fingerprint
from analysis.models.loader import LoadedModel
from analysis.runner import Runner
from analysis.tasks.task import Task

IG_VERSION = "neuron-ig/1"


def _parts(loaded: LoadedModel, task: Task, target: str, n: int, shots: int, seed: int, steps: int,
           quadrature: str) -> dict:
    """What an attribution's cache key is made of."""
    return {"model": loaded.fingerprint(), "task": task_fingerprint(task), "target": target, "n": n,
            "shots": shots, "seed": seed, "steps": steps, "quadrature": quadrature}


def _checked(n: int, shots: int, steps: int, seed: int) -> tuple[int, int, int, int]:
    return check("ig_n", n), check("shots", shots), check("steps", steps), check("seed", seed)


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
    n, shots, steps, seed = _checked(n, shots, steps, seed)

    def compute() -> NeuronIGResult:
        items = prepare_inputs(loaded, task.sample_prompts(shots, n, seed), target, task.delimiter)
        if pool is None:
            return neuron_ig(loaded, items, steps=steps, quadrature=quadrature, progress=progress)
        per_prompt, clean, delta = pool.neuron_ig(items, steps, quadrature, progress=progress)
        return NeuronIGResult(per_prompt, list(items), items[0].target.kind, steps, check_quadrature(quadrature), clean,
                              meta={"method": "fast"}, delta=delta)

    if cache is None:
        return compute()
    result, hit = cache.get_or_compute("neuron-ig", IG_VERSION, _parts(loaded, task, target, n, shots, seed, steps,
                                                                        quadrature), compute)
    if hit and progress:
        progress(n, n)
    return result


def stored_attribution(loaded: LoadedModel, task: Task, target: TargetKind, n: int, shots: int, seed: int = 0,
                       steps: int = 4, quadrature: Quadrature = "adaptive",
                       cache: ResultsCache | None = None) -> NeuronIGResult | None:
    """What :func:`attribute_task` with these settings would return, when ``cache`` (default: the user's
    cache, then the results shipped with the project) holds it; None otherwise. Nothing is computed: a page
    shows earlier results at once without starting a long job."""
    n, shots, steps, seed = _checked(n, shots, steps, seed)
    cache = cache if cache is not None else ResultsCache()
    return cache.get("neuron-ig", cache.key("neuron-ig", IG_VERSION, _parts(loaded, task, target, n, shots, seed,
                                                                            steps, quadrature)))
