"""One way to put temporary forward hooks on a model: :func:`hook_scope` holds the model's lock while the
block runs and removes every hook added inside it on exit, also when registering or the forward pass fails
half-way, so the model afterwards computes exactly what it did before.

The model is shared (several app sessions and background jobs use one :class:`LoadedModel`), so hooks on it
are a rule, not a convention: each model has one re-entrant lock (:func:`model_lock`, the same object as
``LoadedModel.lock``) and a scope only hooks modules of the model whose lock it holds. Code already holding
the lock (``loaded.session()``, ``loaded.lock``) enters a scope at once; another thread waits until it leaves.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

AddHook = Callable[..., None]

# model -> its lock; weak so that a dropped model frees its entry, kept outside the module so that
# copy.deepcopy(model) still works (an RLock cannot be copied) and the copy gets a lock of its own
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module, lock: threading.RLock | None = None) -> threading.RLock:
    """The re-entrant lock guarding ``model``'s hooks, made on first use; ``lock`` adopts a given one for a
    model that has none yet (a model already holding a different lock is refused)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"hook locks belong to a torch model, not {type(model).__name__}")
    with _LOCKS_GUARD:
        existing = _LOCKS.get(model)
        if existing is None:
            existing = _LOCKS[model] = lock if lock is not None else threading.RLock()
        elif lock is not None and lock is not existing:
            raise ValueError("this model already has a different hook lock; share it (model_lock(model))")
        return existing


@contextmanager
def hook_scope(model: nn.Module) -> Iterator[AddHook]:
    """Hold ``model``'s lock and yield ``add(module, fn, *, pre=False, with_kwargs=False)``: a forward hook
    (or, with ``pre``, a forward pre-hook) on ``module``, which must be ``model`` or one of its submodules,
    for the duration of the block."""
    handles = []
    members: set[int] = set()

    def add(module: nn.Module, fn: Callable, *, pre: bool = False, with_kwargs: bool = False) -> None:
        if not members:
            members.update(id(m) for m in model.modules())
        if id(module) not in members:
            raise ValueError(f"hook_scope: {type(module).__name__} is not a module of the scope's model")
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        handles.append(register(fn, with_kwargs=with_kwargs))

    with model_lock(model):
        try:
            yield add
        finally:
            for handle in handles:
                handle.remove()
