"""One way to put temporary forward hooks on a model: :func:`hook_scope` holds the model's lock while the
block runs and removes every hook added inside it on exit, also when registering or the forward pass fails
half-way, so the model afterwards computes exactly what it did before.

The model is shared (several app sessions and background jobs use one :class:`LoadedModel`), so hooks on it
are a rule, not a convention: each model has one re-entrant lock (:func:`model_lock`, the same object as
``LoadedModel.lock``) and a scope only hooks modules of the model whose lock it holds. Code already holding
the lock (``loaded.session()``, ``loaded.lock``) enters a scope at once; another thread waits until it leaves.

Hooks are only half of it: a forward pass that does not hold the lock still runs through another thread's hooks
(a mask, a capture, a patched block list). So the lock is a precondition of every forward, enforced rather than
remembered: :func:`guard` (done for every :class:`~analysis.models.LoadedModel`) makes each module of a model
refuse to run unless the calling thread holds the model's lock, with :class:`UnlockedForwardError`. Long jobs
take the lock per batch or prompt, so other sessions' work interleaves with theirs.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

AddHook = Callable[..., None]

# model -> its lock; weak so that a dropped model frees its entry, kept outside the module so that
# copy.deepcopy(model) still works (an RLock cannot be copied) and the copy gets a lock of its own
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
# every module of a guarded model -> that model (weak both ways round: modules die with their model); a deep copy's
# modules are not in it, so a private copy runs freely
_GUARDED: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_GLOBAL_CHECK: list[object] = []  # the process-wide forward pre-hook's handle, once registered


class UnlockedForwardError(RuntimeError):
    """A forward pass of a shared model ran without its lock: a bug in the calling code, not bad input."""


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


def guard(model: nn.Module) -> None:
    """From now on, every forward pass of ``model`` or of any of its modules raises
    :class:`UnlockedForwardError` unless the calling thread holds ``model_lock(model)``. Idempotent; the check
    is one process-wide forward pre-hook (modules of unguarded models pass it untouched), so the models' own
    hook dictionaries stay empty."""
    model_lock(model)
    with _LOCKS_GUARD:
        for module in model.modules():
            _GUARDED[module] = model
        if not _GLOBAL_CHECK:
            _GLOBAL_CHECK.append(torch.nn.modules.module.register_module_forward_pre_hook(_check_owner))


def guarded(model: nn.Module) -> bool:
    return _GUARDED.get(model) is model


def _check_owner(module: nn.Module, args: object) -> None:
    root = _GUARDED.get(module)
    if root is None:
        return
    lock = _LOCKS.get(root)
    if lock is not None and not lock._is_owned():  # type: ignore[attr-defined]  # RLock's own ownership test
        raise UnlockedForwardError(
            f"a forward pass of {type(root).__name__} ({type(module).__name__}) ran without holding the model's "
            "lock: a shared model runs only under `with loaded.lock:` (or a hook scope / loaded.session())")
