"""Sweeps on Ray: the embarrassingly parallel work (evaluations of a prune-eval grid, IG over prompt shards)
spread over actors that each hold a replica of the model.

``connect("local")`` starts a Ray instance on this machine; ``connect("ADDRESS")`` joins an existing cluster
(``ray start --head`` on its head node). A :class:`ModelPool` starts one actor per GPU (``num_gpus=1``) or per
CPU slot, each loading the model once; a shard is one evaluation or a few prompts of IG, so a failed actor costs
little: Ray restarts it and retries its shard (``max_restarts``, ``max_task_retries``). Every shard runs the
same library code as a serial run on the same prompts, and the driver merges the shards in order and stores
the result under the serial run's cache key, so results are bit-identical to a serial run and the app finds
them. The methods never import this module: they call the :class:`analysis.runner.Runner` protocol that
:class:`ModelPool` implements, passed as ``pool=``. Without ``--ray`` nothing here is imported.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from analysis.errors import PrunescopeError
from analysis.runner import Progress, Runner

if TYPE_CHECKING:
    import torch

    from analysis.evaluation.icl import Evaluation

RAY_ENV = "PRUNESCOPE_RAY"  # the app's long jobs run on this cluster (or "local") when it is set
RESTARTS = 3  # an actor that dies is restarted this often, and its shard retried
SHARD_PROMPTS = 2  # prompts per IG shard: small, so a lost actor costs little


def _ray():
    try:
        import ray
    except ImportError:
        raise PrunescopeError("ray is not installed: pip install -r requirements.txt") from None
    return ray


def connect(address: str, num_cpus: int | None = None) -> None:
    """Start a local Ray instance (``local``) or join the cluster at ``address`` (``host:port`` or
    ``ray://host:port``); one line when nothing answers there."""
    ray = _ray()
    if address != "local":  # checked first: a wrong address is one line, whatever else is running
        parts = urlsplit(address if "://" in address else f"ray://{address}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise PrunescopeError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379 or "
                                  "ray://head:10001)")
        try:
            socket.create_connection((parts.hostname, port), timeout=5).close()
        except OSError:
            raise PrunescopeError(f"no Ray cluster answers at {address} (start one with `ray start --head`, or "
                                  "use --ray local)") from None
    if ray.is_initialized():
        return
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == "local":
        ray.init(num_cpus=num_cpus or os.cpu_count(), **options)
    else:
        ray.init(address=address, **options)


def shutdown() -> None:
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


class _Worker:
    """A model replica: what a shard runs, with the library's own functions."""

    def __init__(self, spec: str, device: str, dtype: str, threads: int):
        import torch

        from analysis.models import load_model

        torch.set_num_threads(threads)  # the driver's count: float reductions then add up in the same order
        self.loaded = load_model(spec, device=device, dtype=dtype)

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, task, shots: int, n: int, seed: int, pairs: list | None):
        from analysis.evaluation.icl import evaluate_task
        from analysis.pruning import NeuronMask

        mask = NeuronMask.from_pairs(pairs) if pairs is not None else None
        return evaluate_task(self.loaded, task, shots, n, seed=seed, mask=mask)

    def faithfulness(self, task, methods, n: int, shots: int, seed: int, indices, options: dict):
        from analysis.evaluation.faithfulness import prompt_curves

        return prompt_curves(self.loaded, task, methods, n, shots, seed, indices, **options)

    def neuron_ig(self, inputs, steps: int, quadrature: str):
        from analysis.attribution.neuron_ig import neuron_ig

        result = neuron_ig(self.loaded, inputs, steps=steps, quadrature=quadrature)
        return result.per_prompt, result.f_clean, result.delta


class ModelPool:
    """The :class:`analysis.runner.Runner` on Ray: ``size`` actors holding ``spec`` (default: one per GPU of
    the cluster, else one per CPU slot). Each actor uses ``threads`` intra-op threads (default: the driver's),
    since IG sums are bit-identical to a serial run only with the same thread count (Ray itself would give
    each actor one)."""

    def __init__(self, spec: str, device: str = "auto", dtype: str = "auto", size: int | None = None,
                 threads: int | None = None):
        import torch

        ray = _ray()
        if not ray.is_initialized():
            raise PrunescopeError("connect to Ray first (analysis.distributed.connect)")
        gpus = int(ray.cluster_resources().get("GPU", 0))
        size = size or gpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # OpenMP threads that spin while they wait make actors sharing cores several times slower (2 actors x 2
        # threads on 2 cores: 3.5x); passive waiting costs nothing and changes no result
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, max_restarts=RESTARTS,
                            max_task_retries=RESTARTS,
                            runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})(_Worker)
        threads = threads or torch.get_num_threads()
        self.actors = [remote.remote(spec, device, dtype, threads) for _ in range(size)]
        self._ray = ray

    def map(self, method: str, shards: Sequence[tuple], progress: Callable[[int], None] | None = None) -> list:
        """``method(*shard)`` on the actors, results in the shards' order; ``progress(i)`` after each shard."""
        # Ray object refs and actor handles are untyped (Any)
        ray, results = self._ray, [None] * len(shards)
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(shards))
        idle = list(self.actors)
        while queue or pending:
            while queue and idle:
                index, shard = queue.pop(0)
                actor = idle.pop()
                pending[getattr(actor, method).remote(*shard)] = (index, actor)
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(ready[0])
            results[index] = ray.get(ready[0])
            idle.append(actor)
            if progress:
                progress(index)
        return results

    def evaluate(self, requests: Sequence[Evaluation], progress: Progress | None = None) -> list[Any]:
        """EvalResults for the Evaluation ``requests``, one shard each."""
        shards = [(r.task, r.shots, r.n, r.seed, None if r.mask is None else sorted(r.mask.neurons))
                  for r in requests]
        return self.map("evaluate", shards, _counted(progress, len(shards)))

    def neuron_ig(self, inputs: Sequence, steps: int, quadrature: str, progress: Progress | None = None,
                  shard_size: int = SHARD_PROMPTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per_prompt, f_clean, delta) of neuron IG over ``inputs``, ``shard_size`` prompts per shard, merged in
        order."""
        import torch

        shards = [(list(inputs[i:i + shard_size]), steps, quadrature) for i in range(0, len(inputs), shard_size)]
        parts = self.map("neuron_ig", shards, _counted(progress, len(inputs), shard_size))
        per_prompt, f_clean, delta = (torch.cat([part[i] for part in parts]) for i in range(3))
        return per_prompt, f_clean, delta

    def faithfulness(self, task, methods: Sequence[str], n: int, shots: int, seed: int, count: int,
                     options: Mapping[str, object], progress: Progress | None = None) -> list:
        """Per-prompt (target, curves) of the faithfulness test for its ``count`` prompts, one prompt per
        shard."""
        shards = [(task, list(methods), n, shots, seed, [k], options) for k in range(count)]
        parts = self.map("faithfulness", shards, _counted(progress, count))
        return [prompt for part in parts for prompt in part]

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)


def _counted(progress: Progress | None, total: int, per_shard: int = 1) -> Callable[[int], None]:
    """A per-shard callback that reports ``progress(done, total)``, ``done`` in units of ``per_shard`` each."""
    finished = [0]

    def step(_index: int) -> None:
        finished[0] += 1
        if progress:
            progress(min(finished[0] * per_shard, total), total)
    return step


if TYPE_CHECKING:
    _RUNNER: type[Runner] = ModelPool  # mypy checks that the pool implements the protocol

_pools: dict[tuple, ModelPool] = {}
_pools_lock = threading.Lock()


def env_pool(spec: str, device: str = "auto", dtype: str = "auto") -> ModelPool | None:
    """The process-wide pool for ``spec`` on the cluster named by ``$PRUNESCOPE_RAY`` (None when unset): the
    app's background jobs run their shards there, so a browser session does not hold a long computation. The
    actors load ``spec`` themselves, so on a remote cluster it must be a built-in model or a hub id."""
    address = os.environ.get(RAY_ENV, "").strip()
    if not address:
        return None
    with _pools_lock:
        key = (address, spec, device, dtype)
        if key not in _pools:
            connect(address)
            _pools[key] = ModelPool(spec, device, dtype)
        return _pools[key]


def close_env_pools() -> None:
    """Stop the pools :func:`env_pool` started (tests; a server's shutdown ends them anyway)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()
