"""Device and dtype choice: CUDA when available, else CPU; float32 on CPU, bfloat16 on CUDA."""

from __future__ import annotations

import torch

from analysis.errors import PrunescopeError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """Map 'auto' (or None) to CUDA when present, else CPU; validate explicit names."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PrunescopeError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunescopeError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise PrunescopeError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """Map 'auto' to float32 on CPU (exact attributions) and bfloat16 on accelerators."""
    if name in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise PrunescopeError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
