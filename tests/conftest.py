"""Shared fixtures: tiny random-weight models of every family, saved once per session and loaded through
the same loader users use."""

from __future__ import annotations

import pytest

from analysis.models import load_model
from analysis.models.tiny import TINY_FAMILIES, build_tiny_model

FAMILY_OF = {"llama": "transformer", "gpt2": "transformer", "gpt_neox": "transformer", "opt": "transformer",
             "mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv", "recurrent_gemma": "griffin",
             "gemma3_text": "transformer"}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """model_type -> directory of a saved tiny random model (built once per test session)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {t: str(build_tiny_model(t, root / t, seed=0)) for t in TINY_FAMILIES}


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dirs):
    """model_type -> LoadedModel on CPU (loaded lazily, shared by the session)."""
    cache = {}

    def get(model_type: str):
        if model_type not in cache:
            cache[model_type] = load_model(tiny_dirs[model_type], device="cpu")
        return cache[model_type]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run far faster on one intra-op thread when the machine is busy (OpenMP spin contention);
    modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep test results out of the user's cache, except the dequantized default model (slow to rebuild)."""
    import os

    from analysis.paths import cache_dir

    models = cache_dir() / "models"  # resolved before redirecting: the default model stays shared
    models.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("prunescope-cache")
    (root / "models").symlink_to(models, target_is_directory=True)
    old = os.environ.get("PRUNESCOPE_CACHE")
    os.environ["PRUNESCOPE_CACHE"] = str(root)
    yield
    if old is None:
        os.environ.pop("PRUNESCOPE_CACHE", None)
    else:
        os.environ["PRUNESCOPE_CACHE"] = old
