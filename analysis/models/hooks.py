"""One way to put temporary forward hooks on modules: every hook added inside a :func:`hook_scope` is removed
when the block exits, also when registering or the forward pass fails half-way, so the model afterwards
computes exactly what it did before."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

AddHook = Callable[..., None]


@contextmanager
def hook_scope() -> Iterator[AddHook]:
    """Yield ``add(module, fn, *, pre=False, with_kwargs=False)``: a forward hook (or, with ``pre``, a forward
    pre-hook) on ``module`` for the duration of the block."""
    handles = []

    def add(module: nn.Module, fn: Callable, *, pre: bool = False, with_kwargs: bool = False) -> None:
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        handles.append(register(fn, with_kwargs=with_kwargs))

    try:
        yield add
    finally:
        for handle in handles:
            handle.remove()
