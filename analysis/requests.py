"""Request objects: one computation's settings as a frozen (hashable) value that knows everything around it.

A request says what it computes (:meth:`Request.run`), under which key the results cache stores it (its
``kind``, the method's ``version`` and :meth:`Request.parts`), whether the cache holds it (:meth:`stored`,
:meth:`is_stored`), how much work it is (:meth:`work`, in its ``unit``), and the key a page or a job knows it
by (:meth:`key`: the request itself with the model's fingerprint and dtype). The library's entry points build
one and run it; the pages, the jobs and the Ray shards use the same object, so nobody rebuilds a key.

Concrete requests live beside their methods: :class:`analysis.evaluation.icl.Evaluation`,
:class:`analysis.attribution.runs.Attribution`, :class:`analysis.evaluation.task_vectors.TaskVectors`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from analysis.cache import ResultsCache
from analysis.device import dtype_name

if TYPE_CHECKING:
    from analysis.models.loader import LoadedModel
    from analysis.runner import Runner

R = TypeVar("R")
Progress = Callable[[int, int], None]


def model_key(loaded: LoadedModel, kind: str, what: Hashable) -> tuple:
    """The key of ``what`` (a request, or any hashable settings) computed on ``loaded``: the weights, not the
    name, decide (two names for the same weights share results), and the dtype (bfloat16 is not float32)."""
    return (kind, loaded.fingerprint(), dtype_name(loaded.dtype), what)


@dataclass(frozen=True)
class Request(Generic[R]):
    """A computation stored in the results cache (subclasses: a frozen dataclass of its settings)."""

    kind: ClassVar[str]  # the cache's kind (a folder) and the first part of :meth:`key`
    version: ClassVar[str]  # the method's version: bump it when the numbers change
    unit: ClassVar[str] = "prompts"

    def parts(self, loaded: LoadedModel) -> dict:
        """Everything that decides the result, for the cache key (the model's fingerprint included)."""
        raise NotImplementedError

    def compute(self, loaded: LoadedModel, progress: Progress | None, pool: Runner | None) -> R:
        """The result, computed now (``progress(done, total)`` in :attr:`unit`; ``pool``: shards elsewhere)."""
        raise NotImplementedError

    def work(self, loaded: LoadedModel) -> int:
        """How much :meth:`compute` does, in :attr:`unit` (what a progress bar counts to)."""
        raise NotImplementedError

    def received(self, loaded: LoadedModel, result: R) -> R:
        """``result`` as this request returns it (a stored result may need names or derived columns)."""
        return result

    def key(self, loaded: LoadedModel) -> tuple:
        """The key a page or job knows this computation by (:func:`model_key`)."""
        return model_key(loaded, self.kind, self)

    def cache_key(self, loaded: LoadedModel, cache: ResultsCache) -> str:
        return cache.key(self.kind, self.version, self.parts(loaded))

    def is_stored(self, loaded: LoadedModel, cache: ResultsCache) -> bool:
        return cache.has(self.kind, self.version, self.parts(loaded))

    def stored(self, loaded: LoadedModel, cache: ResultsCache | None = None) -> R | None:
        """The result when ``cache`` (default: the user's cache, then the results shipped with the project)
        holds it, else None; nothing is computed."""
        cache = cache if cache is not None else ResultsCache()
        found = cache.get(self.kind, self.cache_key(loaded, cache))
        return None if found is None else self.received(loaded, found)

    def store(self, loaded: LoadedModel, cache: ResultsCache, result: R) -> None:
        """Put a result computed elsewhere (a Ray actor, a batch of several conditions) under this key."""
        cache.put(self.kind, self.cache_key(loaded, cache), result)

    def run(self, loaded: LoadedModel, cache: ResultsCache | None = None, progress: Progress | None = None,
            pool: Runner | None = None) -> R:
        """The result: read from ``cache`` when stored there, else computed (and stored)."""
        if cache is None:
            return self.received(loaded, self.compute(loaded, progress, pool))
        result, hit = cache.get_or_compute(self.kind, self.version, self.parts(loaded),
                                           lambda: self.compute(loaded, progress, pool))
        if hit and progress:
            total = self.work(loaded)
            progress(total, total)
        return self.received(loaded, result)


__all__ = ["Request", "model_key"]
