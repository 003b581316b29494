"""Results as safetensors plus JSON, never pickle: what the results cache writes and reads.

A cached result (an :class:`EvalResult`, a :class:`NeuronIGResult`, ...) becomes one JSON document, kept in the
metadata of a safetensors blob that holds its tensors. Reading it back runs no code from the file: the JSON
names a dataclass only from the allow-list :data:`DATACLASSES` (imported from this package by a fixed path),
and everything else is plain values, tuples, maps, tensors and pandas frames. A value of any other type is
refused when written, so a new result type must be added here first.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

META_KEY = "prunescope"
# the result dataclasses a cache entry may hold: name -> "module:attribute" in this package
DATACLASSES = {
    "EvalResult": "analysis.evaluation.icl:EvalResult",
    "NeuronIGResult": "analysis.attribution.neuron_ig:NeuronIGResult",
    "AttributionInput": "analysis.attribution.targets:AttributionInput",
    "TargetSpec": "analysis.attribution.targets:TargetSpec",
    "Prompt": "analysis.tasks.task:Prompt",
    "TaskVectorResult": "analysis.evaluation.task_vectors:TaskVectorResult",
}
_NAMES = {path.split(":")[1]: name for name, path in DATACLASSES.items()}


class CodecError(ValueError):
    """A value the codec cannot write, or a document it will not read."""


def _dataclass(name: str) -> type:
    if name not in DATACLASSES:
        raise CodecError(f"cache entry names an unknown result type {name!r}")
    module, attribute = DATACLASSES[name].split(":")
    return getattr(importlib.import_module(module), attribute)


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def __call__(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, tuple):
            return {"__tuple__": [self(v) for v in value]}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: self(v) for k, v in value.items()}
            return {"__map__": [[self(k), self(v)] for k, v in value.items()]}
        if isinstance(value, torch.Tensor):
            name = f"t{len(self.tensors)}"
            self.tensors[name] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": name}
        if isinstance(value, pd.DataFrame):
            default_index = isinstance(value.index, pd.RangeIndex) and value.index.equals(pd.RangeIndex(len(value)))
            return {"__frame__": {"columns": [self(c) for c in value.columns],
                                  "values": [self(value[c].tolist()) for c in value.columns],
                                  "dtypes": [str(t) for t in value.dtypes],
                                  "index": None if default_index else self(value.index.tolist()),
                                  "attrs": self(dict(value.attrs))}}
        if dataclasses.is_dataclass(value) and type(value).__name__ in _NAMES \
                and _dataclass(_NAMES[type(value).__name__]) is type(value):
            return {"__dataclass__": _NAMES[type(value).__name__],
                    "fields": {f.name: self(getattr(value, f.name)) for f in dataclasses.fields(value)}}
        raise CodecError(f"cannot store a {type(value).__name__} in the results cache (see analysis/codec.py)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__map__" in value:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["__map__"]}
    if "__tensor__" in value:
        if value["__tensor__"] not in tensors:
            raise CodecError(f"cache entry refers to a missing tensor {value['__tensor__']!r}")
        return tensors[value["__tensor__"]]
    if "__frame__" in value:
        spec = value["__frame__"]
        columns = [_hashable(_decode(c, tensors)) for c in spec["columns"]]
        frame = pd.DataFrame({c: _decode(v, tensors) for c, v in zip(columns, spec["values"])}, columns=columns)
        for column, dtype in zip(columns, spec["dtypes"]):
            if dtype != "object" and str(frame[column].dtype) != dtype and len(frame):
                frame[column] = frame[column].astype(dtype)
        if spec.get("index") is not None:
            frame.index = _decode(spec["index"], tensors)
        frame.attrs = _decode(spec.get("attrs") or {}, tensors)
        return frame
    if "__dataclass__" in value:
        cls = _dataclass(value["__dataclass__"])
        fields = {k: _decode(v, tensors) for k, v in value["fields"].items()}
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        if not set(fields) <= known:
            raise CodecError(f"cache entry gives {value['__dataclass__']} unknown fields {sorted(set(fields) - known)}")
        return cls(**fields)
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def dumps(value: Any) -> bytes:
    """One safetensors blob: the value's tensors, and the value as JSON in the metadata."""
    encode = _Encoder()
    document = json.dumps(encode(value), separators=(",", ":"), allow_nan=True)
    return save_tensors(encode.tensors, metadata={META_KEY: document})


def loads(blob: bytes) -> Any:
    """The value :func:`dumps` wrote (nothing in the blob is executed)."""
    if len(blob) < 8:
        raise CodecError("cache entry too short")
    header_length = int.from_bytes(blob[:8], "little")
    try:
        header = json.loads(blob[8:8 + header_length])
        document = json.loads(header["__metadata__"][META_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"cache entry is not a prunescope result ({type(exc).__name__})") from None
    return _decode(document, load_tensors(blob))
