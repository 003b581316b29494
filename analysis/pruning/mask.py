"""NeuronMask: a set of (layer, neuron) pairs zeroed by forward hooks, never by editing weights.

Zero-ablation at every position, as in the copying-bias pruning of arXiv 2410.01288. Leaving
:meth:`NeuronMask.applied` removes the hooks, so the model's outputs are bit-identical to before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from analysis.errors import PrunescopeError, parse_json

if TYPE_CHECKING:
    from analysis.models.loader import LoadedModel

MASK_FORMAT = "prunescope-mask/1"
# what a mask's meta may record (how it was made); anything else in a mask file is refused
MAX_INDEX = 2**31 - 1  # a layer or neuron index beyond any model; bigger numbers are refused before use
LINK_PAIR = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")  # ASCII digits only: int() also reads '²' and '٣'
META_KEYS = frozenset({"method", "k", "per_layer", "layers", "model", "scoring", "seed", "task", "layer", "percent",
                       "n", "shots", "steps", "quadrature", "target", "prompts", "stable_share",
                       "stability_resamples"})


@dataclass(frozen=True)
class NeuronMask:
    """A set of (layer, neuron) pairs to zero, with ``meta`` saying how it was made (not part of equality).

    Neurons are indices into each layer's neuron site (the MLP's intermediate activation; README, "Models").
    :meth:`applied` zeroes them in every forward pass while open; :meth:`save` / :meth:`load` write and read
    the JSON format ``prunescope-mask/1``; :meth:`digest` names the set in a few characters.

    Example::

        >>> from analysis import NeuronMask
        >>> mask = NeuronMask.from_pairs([(0, 5), (2, 17)], method="hand-picked")
        >>> len(mask), mask.by_layer()
        (2, {0: [5], 2: [17]})
    """

    neurons: frozenset[tuple[int, int]]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], **meta) -> NeuronMask:
        return cls(frozenset((int(layer), int(index)) for layer, index in pairs), meta)

    def __len__(self) -> int:
        return len(self.neurons)

    def by_layer(self) -> dict[int, list[int]]:
        """Sorted neuron indices per layer."""
        layers: dict[int, list[int]] = {}
        for layer, index in sorted(self.neurons):
            layers.setdefault(layer, []).append(index)
        return layers

    def validate(self, neuron_counts: list[int], what: str = "mask") -> None:
        """Raise a one-line error if a neuron lies outside the model's layers or widths."""
        for layer, index in sorted(self.neurons):
            if not 0 <= layer < len(neuron_counts):
                raise PrunescopeError(f"{what}: layer {layer} does not exist (the model has {len(neuron_counts)})")
            if not 0 <= index < neuron_counts[layer]:
                raise PrunescopeError(f"{what}: neuron {index} of layer {layer} does not exist "
                                      f"(the layer has {neuron_counts[layer]})")

    @contextmanager
    def applied(self, loaded: LoadedModel) -> Iterator[None]:
        """Zero this mask's neurons in ``loaded``'s forward passes while the context is open, holding the model's
        lock (through :meth:`ModelAdapter.hook_sites`), so no other thread runs or hooks it meanwhile."""
        adapter = loaded.adapter
        self.validate(adapter.neuron_counts())
        index = {layer: torch.tensor(ids, device=loaded.device) for layer, ids in self.by_layer().items()}

        def zero(layer: int, activation: torch.Tensor) -> torch.Tensor:
            return activation.index_fill(-1, index[layer], 0.0)

        with adapter.hook_sites(zero, layers=sorted(index)):
            yield

    def to_json(self) -> dict:
        return {"format": MASK_FORMAT, "size": len(self), "neurons": [list(p) for p in sorted(self.neurons)],
                "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, data: dict, what: str = "mask") -> NeuronMask:
        if not isinstance(data, dict) or data.get("format") != MASK_FORMAT or not isinstance(data.get("neurons"), list):
            raise PrunescopeError(f"{what}: not a prunescope mask (expected format {MASK_FORMAT!r} and a neurons list)")
        pairs = []
        for item in data["neurons"]:
            # integers only: 1.7 or true would silently become neuron 1
            if not (isinstance(item, list) and len(item) == 2
                    and all(type(v) is int and v >= 0 for v in item)):  # noqa: E721 - bool is an int subclass
                raise PrunescopeError(f"{what}: neurons must be [layer, index] pairs of non-negative integers "
                                      f"(got {json.dumps(item)[:40]})")
            if max(item) > MAX_INDEX:  # e.g. a 4000-digit index: no model has it, and no message should show it
                raise PrunescopeError(f"{what}: [layer, index] pairs must be at most {MAX_INDEX} "
                                      f"(got {json.dumps(item)[:40]}…)")
            pairs.append((item[0], item[1]))
        meta = data.get("meta") or {}
        if not isinstance(meta, dict) or not set(meta) <= META_KEYS:
            unknown = sorted(set(meta) - META_KEYS) if isinstance(meta, dict) else type(meta).__name__
            raise PrunescopeError(f"{what}: meta must be an object with keys among {', '.join(sorted(META_KEYS))} "
                                  f"(got {str(unknown)[:60]})")
        return cls(frozenset(pairs), dict(meta))

    def to_text(self) -> str:
        """Compact ``layer.index`` list for links: ``3.17,5.200``."""
        return ",".join(f"{layer}.{index}" for layer, index in sorted(self.neurons))

    def digest(self) -> str:
        """12 hex digits naming the neuron set (not how it was made): tables cite the mask they measured."""
        return hashlib.sha256(self.to_text().encode()).hexdigest()[:12]

    @classmethod
    def from_text(cls, text: str, what: str = "mask") -> NeuronMask:
        """Parse :meth:`to_text` output (an empty string is the empty mask)."""
        pairs = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            match = LINK_PAIR.fullmatch(item)
            if match is None:
                shown = item if len(item) <= 40 else item[:40] + "…"
                raise PrunescopeError(f"{what}: {shown!r} is not a layer.index pair (two whole numbers of at most 9 "
                                      "digits, e.g. 3.17)")
            pairs.append((int(match[1]), int(match[2])))
        return cls.from_pairs(pairs, method="link")

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "mask") -> NeuronMask:
        """A mask from uploaded JSON bytes, with a one-line error for anything else."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PrunescopeError(f"{what}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
        return cls.from_json(parse_json(text, what), what)

    @classmethod
    def load(cls, path: str | Path) -> NeuronMask:
        """A mask from a JSON file; a missing file, a directory or an unreadable one is a one-line error too."""
        path = Path(path)
        what = f"mask file {path}"
        if path.is_dir():
            raise PrunescopeError(f"{what}: a directory, not a mask file (a .json written by copying-neurons)")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PrunescopeError(f"{what}: no such file") from None
        except OSError as exc:
            raise PrunescopeError(f"{what}: cannot be read ({exc.strerror or type(exc).__name__})") from None
        return cls.from_bytes(data, what)


@contextmanager
def applied_per_row(loaded: LoadedModel, masks: Sequence[NeuronMask | None], rows_each: int) -> Iterator[None]:
    """Apply ``masks[i]`` to batch rows ``i * rows_each`` to ``(i + 1) * rows_each - 1`` of ``loaded``'s forward
    passes while open (None or an empty mask: those rows run unpruned), holding the model's lock.

    Several conditions then run as rows of one batch. Each hooked layer gets a [rows, neurons] drop table and
    every row's activation is zeroed where its own row says so: ``masked_fill`` of exact zeros, the values
    :meth:`NeuronMask.applied` writes (a multiply by a 0/1 keep-vector would give -0.0 and NaN for negative
    and infinite activations); rows not dropping a neuron keep their values bit for bit."""
    adapter = loaded.adapter
    counts = adapter.neuron_counts()
    drop: dict[int, torch.Tensor] = {}
    for row, mask in enumerate(masks):
        if mask is None:
            continue
        mask.validate(counts)
        for layer, ids in mask.by_layer().items():
            if layer not in drop:
                drop[layer] = torch.zeros(len(masks), counts[layer], dtype=torch.bool)
            drop[layer][row, ids] = True
    rows = len(masks) * rows_each
    table = {layer: t.repeat_interleave(rows_each, dim=0).to(loaded.device) for layer, t in drop.items()}

    def zero(layer: int, activation: torch.Tensor) -> torch.Tensor:
        # [rows, tokens, neurons], or [rows * tokens, neurons] where a family flattens the batch first (OPT)
        if activation.shape[0] % rows or activation.dim() > 2 and activation.shape[0] != rows:
            raise ValueError(f"per-row masks for {rows} rows, but layer {layer} ran a batch of "
                             f"{activation.shape[0]}")
        grouped = activation.reshape(rows, -1, activation.shape[-1])
        return grouped.masked_fill(table[layer][:, None, :], 0.0).view(activation.shape)

    with loaded.lock, adapter.hook_sites(zero, layers=sorted(table)):
        yield
