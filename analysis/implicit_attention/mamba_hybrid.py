"""The Mamba-2 hybrids (Bamba, Falcon-H1, Zamba2): implicit attention of their Mamba-2 mixers (the capture
and forms of :mod:`analysis.implicit_attention.mamba`) and softmax maps of their attention.

Bamba's layers have a mixer or attention; every Falcon-H1 layer has both side by side (their outputs are
added); Zamba2's hybrid layers run a shared transformer block, then their mixer. A layer shows the kind the
chosen form asks for when it has it, else the kind it has: ``s6`` and ``unified`` show each Mamba-2 mixer
(and Bamba's attention layers as softmax maps), ``softmax`` shows each attention module (and the layers
without attention in the ``s6`` form); each map is labelled with its kind.

:data:`HYBRID_MAMBA2_OPS` is the entry of both families (mamba2_hybrid, zamba2) for the registry
(analysis/families.py names it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch

from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.mamba import MAMBA2_OPS
from analysis.implicit_attention.softmax import attention_module_maps
from analysis.models.adapters import HybridMamba2Adapter

if TYPE_CHECKING:
    from analysis.models.protocols import Loaded


def hybrid_softmax_maps(loaded: Loaded, input_ids: torch.Tensor, layers: list[int], reduction: Reduction
                        ) -> dict[int, torch.Tensor]:
    """[T, T] softmax maps, reduced over heads, of the attention modules among ``layers``."""
    adapter = cast(HybridMamba2Adapter, loaded.adapter)
    paths = {i: adapter.attention_path(i) for i in layers}
    return attention_module_maps(loaded, input_ids, {i: path for i, path in paths.items() if path}, reduction)


HYBRID_MAMBA2_OPS = replace(MAMBA2_OPS, forms=("s6", "unified", "softmax"),
                            implicit_layers=HybridMamba2Adapter.ssm_layers,
                            softmax_layers=HybridMamba2Adapter.attention_layers, softmax_maps=hybrid_softmax_maps)
