"""Attention maps of every family as [layers, T, T] for one text: the exact implicit attention of Mamba,
Mamba-2, RWKV-4 and Griffin (2403.01590, 2405.16504), computed from each layer's own intermediates, and the
real softmax attention of transformers (and of Griffin's local-attention layers).

Forms: Mamba/Mamba-2 ``s6`` (the selective-scan matrix) or ``unified`` (conv1d, its SiLU and the SiLU(z)
gate folded in); RWKV ``unified`` (with the sigmoid(r) gate) or ``wkv``; Griffin ``unified`` (conv and
y-branch gate folded in) or ``rglru``; transformers ``softmax``.

The dispatch is generic: it asks the family registry (:mod:`analysis.families`) for the family's forms,
implicit layers and functions, and the family modules (:mod:`analysis.implicit_attention`) compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from analysis.errors import PrunescopeError
from analysis.families import Family, Form, family, family_of, forms
from analysis.implicit_attention.common import DEFAULT_BUDGET_BYTES, Reduction, check_layers
from analysis.models.loader import LoadedModel, decode_text
from analysis.models.protocols import Loaded

LayerKind = Literal["implicit", "softmax", "position-wise"]  # where a layer's map comes from
IMPLICIT: LayerKind = "implicit"
SOFTMAX: LayerKind = "softmax"
POSITION_WISE: LayerKind = "position-wise"  # a block that mixes no tokens (Nemotron-H's MLP and MoE blocks)
FORMS = forms()  # family -> its forms, the default first (from the registry, analysis/families.py)
MAX_TOKENS = 4096


@dataclass
class AttentionMaps:
    """``attn[k]`` is the [T, T] map of layer ``layers[k]`` (rows: output positions, columns: sources)."""

    attn: torch.Tensor
    layers: list[int]
    input_ids: list[int]
    tokens: list[str]
    form: Form
    reduce: str
    kinds: list[LayerKind]  # per layer


def default_form(name: str) -> Form:
    return family(name).default_form


def attention_maps(loaded: LoadedModel, text: str, form: Form | None = None, reduce: str = "mean",
                   layers: list[int] | None = None, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> AttentionMaps:
    """Token-to-token attention maps of ``text``: the exact implicit attention of an attention-free layer
    (computed from its own parameters and activations: 2403.01590, 2405.16504) or a transformer's softmax.

    Args:
        loaded: the model.
        text: the input text (at most ``MAX_TOKENS`` tokens).
        form: the family's map form (``s6`` or ``unified`` for Mamba and Mamba-2, ``unified`` or ``wkv`` for
            RWKV, ``unified`` or ``rglru`` for Griffin, ``softmax`` for transformers; None: the family's
            default, :data:`FORMS`).
        reduce: over channels or heads: ``mean``, ``max``, ``absmean`` or ``channel:<i>`` / ``head:<i>``.
        layers: which layers (default: all).
        budget_bytes: the memory the per-channel matrices may take; a longer text raises instead.

    Returns:
        :class:`AttentionMaps`: ``attn`` [layers, T, T] (rows: output positions, columns: sources), the
        tokens, the form and each layer's kind (implicit or softmax).

    Raises:
        PrunescopeError: empty or too long text, an unknown form or reduction, layers outside the model.

    Example::

        >>> import analysis as ps
        >>> maps = ps.attention_maps(ps.load_model("toy-mamba", device="cpu"), "a:3 b:5 | a:")
        >>> maps.form, maps.attn.shape[1] == maps.attn.shape[2] == len(maps.tokens)
        ('s6', True)
    """
    entry = family_of(loaded)
    form = entry.check_form(form)
    reduction = Reduction.parse(reduce)
    if not text.strip():
        raise PrunescopeError("the text is empty")
    ids = loaded.tokenizer(text).input_ids
    layers = sorted(set(check_layers(loaded, layers)))
    _check_budget(len(ids), len(layers), budget_bytes)
    input_ids = torch.tensor([ids], device=loaded.device)
    maps, kinds = _compute(loaded, entry, input_ids, form, reduction, layers, budget_bytes)
    tokens = [decode_text(loaded.tokenizer, [i]) for i in ids]
    return AttentionMaps(torch.stack([maps[i].float().cpu() for i in layers]), layers, ids, tokens, form, reduce,
                         [kinds[i] for i in layers])


def _check_budget(length: int, n_layers: int, budget_bytes: int) -> None:
    """The maps themselves and one channel's working set must fit the budget."""
    needed = length * length * (4 * n_layers + 64)
    if length > MAX_TOKENS or needed > budget_bytes:
        raise PrunescopeError(f"text of {length} tokens needs about {needed / 2**30:.1f} GiB for its attention maps; "
                              f"the memory budget is {budget_bytes / 2**30:.1f} GiB (shorten the text or pick layers)")


def _compute(loaded: Loaded, entry: Family, input_ids: torch.Tensor, form: Form, reduction: Reduction,
             layers: list[int], budget: int) -> tuple[dict[int, torch.Tensor], dict[int, LayerKind]]:
    """Maps and kinds of ``layers``: the family's implicit layers from its capture and reduced maps, the rest
    from its softmax attention; a block with neither (an MLP or MoE block of its own) mixes no tokens, so its
    map is the identity."""
    implicit = set(entry.implicit_layers_for(loaded.adapter, form))
    chosen = [i for i in layers if i in implicit]
    maps: dict[int, torch.Tensor] = {}
    kinds: dict[int, LayerKind] = {}
    if chosen:
        internals, reduced = entry.require("capture")(loaded, input_ids, chosen), entry.require("reduced")
        maps = {i: reduced(internals[i], entry.implicit_form(form), reduction, budget) for i in chosen}
        kinds = dict.fromkeys(maps, IMPLICIT)
    position_wise = set(loaded.adapter.position_wise_layers())
    rest = [i for i in layers if i not in maps and i not in position_wise]
    if rest:
        softmax = entry.require("softmax_maps")(loaded, input_ids, rest, reduction)
        maps.update(softmax)
        kinds.update(dict.fromkeys(softmax, SOFTMAX))
    for i in position_wise.intersection(layers):
        maps[i], kinds[i] = torch.eye(input_ids.shape[1]), POSITION_WISE
    return maps, kinds
