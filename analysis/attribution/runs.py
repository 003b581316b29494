"""Task-level neuron attribution: sample prompts, prepare targets, run IG, cache the result on disk."""

from __future__ import annotations

from collections.abc import Callable

from analysis.attribution.neuron_ig import NeuronIGResult, neuron_ig
from analysis.attribution.quadrature import check_quadrature
from analysis.attribution.targets import prepare_inputs
from analysis.bounds import check
from analysis.cache import ResultsCache, task_fingerprint
from analysis.models.loader import LoadedModel
from analysis.runner import Runner
from analysis.tasks.task import Task

IG_VERSION = "neuron-ig/1"


def attribute_task(loaded: LoadedModel, task: Task, target: str, n: int, shots: int, seed: int = 0,
                   steps: int = 4, quadrature: str = "adaptive", cache: ResultsCache | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   compute_missing: bool = True, pool: Runner | None = None) -> NeuronIGResult | None:
    """All-layer neuron IG of ``target`` over ``n`` ``shots``-shot prompts of ``task`` (fast path). With
    ``compute_missing=False`` only a cached result is returned (None when there is none): a page can show
    earlier results without starting a long job. With ``pool`` (:class:`analysis.runner.Runner`) the prompts
    run in shards there, with the same result."""
    n, shots, steps, seed = check("ig_n", n), check("shots", shots), check("steps", steps), check("seed", seed)

    def compute() -> NeuronIGResult:
        items = prepare_inputs(loaded, task.sample_prompts(shots, n, seed), target, task.delimiter)
        if pool is None:
            return neuron_ig(loaded, items, steps=steps, quadrature=quadrature, progress=progress)
        per_prompt, clean, delta = pool.neuron_ig(items, steps, quadrature, progress=progress)
        return NeuronIGResult(per_prompt, list(items), items[0].target.kind, steps, check_quadrature(quadrature), clean,
                              meta={"method": "fast"}, delta=delta)

    if cache is None:
        return compute()
    parts = {"model": loaded.fingerprint(), "task": task_fingerprint(task), "target": target, "n": n,
             "shots": shots, "seed": seed, "steps": steps, "quadrature": quadrature}
    if not compute_missing:
        return cache.get("neuron-ig", cache.key("neuron-ig", IG_VERSION, parts))
    result, hit = cache.get_or_compute("neuron-ig", IG_VERSION, parts, compute)
    if hit and progress:
        progress(n, n)
    return result
