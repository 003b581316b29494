"""Shared fixtures: tiny random-weight models of every family, saved once per session and loaded through
the same loader users use. And the test tiers: every module's tests carry its tier's marker."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.models import load_model
from analysis.models.tiny import TINY_FAMILIES, build_tiny_model

FAMILY_OF = {"llama": "transformer", "gpt2": "transformer", "gpt_neox": "transformer", "opt": "transformer",
             "mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv", "recurrent_gemma": "griffin",
             "gemma3_text": "transformer", "falcon_mamba": "mamba", "bamba": "mamba2_hybrid",
             "falcon_h1": "mamba2_hybrid", "zamba2": "zamba2", "zamba": "zamba2", "lfm2": "lfm2",
             "xlstm": "xlstm", "qwen3_next": "gated_deltanet", "kimi_linear": "kimi_delta", "minimax": "minimax",
             "jamba": "jamba", "granitemoehybrid": "granitemoehybrid", "nemotron_h": "nemotron_h"}


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker process takes its share of the cores for torch's intra-op threads (two
    workers of two threads each on two cores spin against each other)."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()


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


# Test tiers (markers registered in pytest.ini), one per module, by what its heaviest test needs: slow over ui
# over integration over unit. `make test-fast` runs the unit tier (`pytest -m unit`), `make test` all of them.
# A test marked slow on its own (test_browser.py's) keeps that marker beside its module's tier.
TIERS = {
    # pure functions and files: no model, no app
    "unit": ["test_figures.py", "test_hosting_files.py", "test_import_graph.py", "test_paired.py", "test_report.py",
             "test_settings.py",
             "test_significance.py", "test_stability.py", "test_task_files.py", "test_tasks.py", "test_wording.py"],
    # tiny random-weight models (the fixtures above) or the shipped toy checkpoints, end to end
    "integration": [
        "test_adaptive_ig.py",
        "test_answer_tokens.py",
        "test_api.py",
        "test_attention_maps.py",
        "test_baselines.py",
        "test_cache.py",
        "test_calibration.py",
        "test_cli.py",
        "test_concurrency.py",
        "test_continuation.py",
        "test_copying_options.py",
        "test_demo.py",
        "test_evaluation.py",
        "test_faithfulness.py",
        "test_gemma3.py",
        "test_general.py",
        "test_ground_truth.py",
        "test_head_grid.py",
        "test_hook_scope.py",
        "test_hybrids.py",
        "test_ragged_ig.py",
        "test_implicit_delta_rule.py",
        "test_implicit_lfm2_xlstm.py",
        "test_implicit_mamba.py",
        "test_implicit_rwkv_griffin.py",
        "test_jobs.py",
        "test_joined.py",
        "test_lrp_delta.py",
        "test_lrp_lx.py",
        "test_lrp_m2h.py",
        "test_lrp_recurrent.py",
        "test_lrp_zj.py",
        "test_mask.py",
        "test_minimax.py",
        "test_models.py",
        "test_multiuser.py",
        "test_neuron_ig.py",
        "test_neuron_view.py",
        "test_offload.py",
        "test_one_batch.py",
        "test_pruning.py",
        "test_queries.py",
        "test_registry.py",
        "test_requests.py",
        "test_scheduler.py",
        "test_task_vectors.py",
        "test_tiny_models.py",
        "test_token_relevance.py",
        "test_toy.py",
        "test_toy_checkpoints.py",
    ],
    # the app's pages through Streamlit's AppTest, or a real browser
    "ui": ["test_app.py", "test_app_hosting.py", "test_app_links.py", "test_app_pages.py", "test_app_scheduler.py",
           "test_app_pages_links.py", "test_attention_page.py",
           "test_browser.py", "test_builtin_models.py", "test_export.py", "test_ig_delta.py", "test_markup.py",
           "test_page_settings.py", "test_pruning_page.py"],
    # the real built-in models (SmolLM2-135M, Gemma 3 270M), a Ray cluster or a notebook kernel
    "slow": ["test_default_model.py", "test_gemma3_model.py", "test_notebook.py", "test_ray.py", "test_ray_app.py",
             "test_shipped_results.py"],
}
TIER_OF = {module: tier for tier, modules in TIERS.items() for module in modules}
TESTS = Path(__file__).resolve().parent


# `make test` hands whole modules to its two workers in collection order (--no-loadscope-reorder), one as a worker
# runs out: these longest ones first, so none of them starts last and runs alone. The two real models' modules
# lead, each dequantizing its model beside the other; the shipped-results check, which needs both, follows.
LONGEST_FIRST = ("test_gemma3_model.py", "test_default_model.py", "test_shipped_results.py", "test_browser.py",
                 "test_ray_app.py", "test_ray.py")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its module's tier (a module in no tier is an error, so none runs untiered), and
    order modules longest first: ``LONGEST_FIRST``, then by test count (xdist's own order)."""
    ours = [item for item in items if item.path.parent == TESTS]
    missing = sorted({item.path.name for item in ours} - TIER_OF.keys())
    if missing:
        raise pytest.UsageError(f"tests/conftest.py: give {', '.join(missing)} a tier in TIERS")
    for item in ours:
        item.add_marker(getattr(pytest.mark, TIER_OF[item.path.name]))
    counts: dict[Path, int] = {}
    for item in items:
        counts[item.path] = counts.get(item.path, 0) + 1
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -counts[item.path]))  # stable: a module's
    # tests keep their order
