"""The loaded-model interface the library reads (:class:`Loaded`), for functions that take any object shaped
like :class:`analysis.models.loader.LoadedModel` (tests' and benchmarks' stand-ins too).

Typing only: nothing here is imported at run time by its users (``if TYPE_CHECKING``), so this module adds
no arrow to the import graph.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase

    from analysis.models.adapters.base import ModelAdapter
    from analysis.pruning.mask import NeuronMask

    class CausalLM(PreTrainedModel, GenerationMixin):
        """What ``AutoModelForCausalLM`` loads: a transformers model that can ``generate`` (typing only)."""


class Loaded(Protocol):
    """A model ready for analysis: its weights, tokenizer and family adapter, where inputs go, and the lock
    that every hooked run holds."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    device: torch.device
    dtype: torch.dtype
    lock: threading.RLock

    @property
    def family(self) -> str: ...

    @property
    def n_layers(self) -> int: ...

    def fingerprint(self) -> str: ...

    def session(self, mask: NeuronMask | None = None) -> AbstractContextManager[None]: ...
