"""Implicit attention of Mamba / Mamba-2 on tiny random models: exact against the real forward, equal to a
position-loop reference, causal, and reduced/chunked consistently."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from analysis.errors import PrunescopeError
from analysis.implicit_attention import block_tree, mamba_tree
from analysis.implicit_attention import mamba as mamba_mod
from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.mamba import (
    capture_mamba,
    mamba_loop_matrices,
    mamba_matrices,
    mamba_reconstruct,
    mamba_reduced,
    n_channels,
)
from analysis.models import load_model
from analysis.models.tiny import build_tiny_model

PROMPT = "The cat is big. Q: What is the capital of France?\nA: Paris"
MODEL_TYPES = ("mamba", "mamba2")
# every model type with Mamba / Mamba-2 mixers: Falcon-Mamba's normalised dt/B/C, Bamba's, Falcon-H1's and
# Zamba2's hybrid layers (Falcon-H1: muP multipliers, gated at out_proj; Zamba2: mixers in two places), and
# Zamba's Mamba-1 mixers split into mamba heads (B and C per head, x and z interleaved in in_proj)
MIXER_TYPES = (*MODEL_TYPES, "falcon_mamba", "bamba", "falcon_h1", "zamba2", "zamba")
FORMS = ("s6", "unified")


def _ids(loaded) -> torch.Tensor:
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    assert 20 <= len(ids) <= 30
    return ids


@pytest.fixture(scope="module")
def captured(tiny_loaded):
    cache = {}

    def get(model_type):
        if model_type not in cache:
            loaded = tiny_loaded(model_type)
            cache[model_type] = capture_mamba(loaded, _ids(loaded))
        return cache[model_type]

    return get


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("model_type", MIXER_TYPES)
def test_reconstruction_equals_real_forward(tiny_loaded, captured, model_type, form):
    layers = captured(model_type)
    want = {"bamba": [0, 2]}.get(model_type, list(range(tiny_loaded(model_type).n_layers)))  # attention skipped
    assert sorted(layers) == want
    for inn in layers.values():
        rebuilt, observed = mamba_reconstruct(inn, form)
        assert rebuilt.shape == observed.shape == (inn.length, inn.x.shape[1])
        assert _rel(rebuilt, observed) < 1e-4


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("model_type", MIXER_TYPES)
def test_vectorised_equals_loop_reference_and_is_causal(captured, model_type, form):
    for inn in captured(model_type).values():
        full = mamba_matrices(inn, form)
        assert full.shape == (n_channels(inn, form), inn.length, inn.length)
        idx = torch.arange(full.shape[0])
        torch.testing.assert_close(full, mamba_loop_matrices(inn, form, idx), rtol=1e-4, atol=1e-6)
        assert (full.triu(1) == 0).all() and (full.diagonal(dim1=1, dim2=2) != 0).any()
        some = torch.tensor([full.shape[0] - 1, 0, 3])
        torch.testing.assert_close(mamba_matrices(inn, form, some), full[some], rtol=1e-5, atol=1e-7)


def test_s6_is_per_channel_for_mamba_per_head_for_mamba2(captured):
    assert n_channels(captured("mamba")[0], "s6") == n_channels(captured("mamba")[0], "unified") == 64
    inn2 = captured("mamba2")[0]
    assert n_channels(inn2, "s6") == n_channels(inn2, "ssm") == 4 and n_channels(inn2, "unified") == 64


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("model_type", MIXER_TYPES)
def test_reductions_match_full_tensor(captured, model_type, form):
    inn = list(captured(model_type).values())[-1]
    full = mamba_matrices(inn, form)
    budget = 1 << 30
    expected = {"mean": full.mean(0), "absmean": full.abs().mean(0), "channels:1,3": full[[1, 3]].mean(0),
                "channels:2": full[2]}
    for text, want in expected.items():
        got = mamba_reduced(inn, form, Reduction.parse(text), budget)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tiny_budget_chunks_agree_with_one_chunk(captured, monkeypatch, model_type, form):
    inn = captured(model_type)[0]
    one = mamba_reduced(inn, form, Reduction("absmean"), 1 << 30)
    calls = []
    real = mamba_mod.mamba_matrices
    monkeypatch.setattr(mamba_mod, "mamba_matrices", lambda i, f, c: calls.append(len(c)) or real(i, f, c))
    many = mamba_reduced(inn, form, Reduction("absmean"), 1)
    if model_type == "mamba" and form == "s6":  # absolute values summed block by block: no matrices at all
        assert calls == []
    else:
        assert len(calls) == n_channels(inn, form) and set(calls) == {1}
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bad_channels_and_forms_raise(captured, model_type):
    inn = captured(model_type)[0]
    for form in FORMS:
        with pytest.raises(PrunescopeError):
            mamba_reduced(inn, form, Reduction("channels", (n_channels(inn, form),)), 1 << 20)
        with pytest.raises(PrunescopeError):
            mamba_matrices(inn, form, torch.tensor([-1]))
    with pytest.raises(PrunescopeError):
        mamba_matrices(inn, "softmax")


def test_variants_read_what_their_mixers_compute(captured):
    """Falcon-Mamba's B and C are the RMS-normalised ones (unit mean square per position); Falcon-H1 (muP
    multipliers other than 1: the reconstruction fails without them) gates before out_proj, with no norm;
    Bamba gates in the norm like Mamba-2."""
    falcon = captured("falcon_mamba")[0]
    torch.testing.assert_close(falcon.B.pow(2).mean(-1), torch.ones(falcon.length), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(falcon.C.pow(2).mean(-1), torch.ones(falcon.length), rtol=1e-4, atol=1e-4)
    assert captured("mamba")[0].B.pow(2).mean(-1).sub(1).abs().max() > 0.1  # plain Mamba's are not
    h1 = captured("falcon_h1")[0]
    assert h1.gated_at == "out_proj" and "ssm_out" not in h1.observed and h1.mixer_path == "mamba"
    assert captured("bamba")[2].gated_at == "norm" == captured("mamba2")[0].gated_at
    assert [inn.mixer_path for inn in captured("zamba2").values()] == ["mamba_decoder.mamba", "mamba", "mamba"]


def test_zamba_channels_use_their_mamba_heads_b_and_c(captured):
    """Zamba: Mamba-1 channels (one s6 matrix each, gated at out_proj) whose B and C are their mamba head's;
    giving each channel the other head's B and C moves the reconstruction far past its 1e-4 tolerance."""
    layers = captured("zamba")
    assert [inn.mixer_path for inn in layers.values()] == ["mamba", "mamba_decoder.mamba"]
    for inn in layers.values():
        assert inn.model_type == "mamba" and inn.gated_at == "out_proj" and inn.B.shape == (inn.length, 2, 8)
        assert n_channels(inn, "s6") == n_channels(inn, "unified") == inn.x.shape[1] == 64
        swapped = dataclasses.replace(inn, B=inn.B.flip(1), C=inn.C.flip(1))
        rebuilt, observed = mamba_reconstruct(swapped, "s6")
        assert _rel(rebuilt, observed) > 1e-3


def test_capture_rejects_bad_input_and_removes_hooks(tiny_loaded):
    loaded = tiny_loaded("mamba")
    ids = _ids(loaded)
    with pytest.raises(PrunescopeError):
        capture_mamba(loaded, ids, layers=[loaded.n_layers])
    with pytest.raises(PrunescopeError):
        capture_mamba(loaded, torch.stack([ids, ids]))
    with pytest.raises(PrunescopeError):
        capture_mamba(tiny_loaded("llama"), ids)
    only = capture_mamba(loaded, ids[None], layers=[1])
    assert list(only) == [1]
    for module in loaded.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_mamba2_groups_and_time_step_limit(tmp_path):
    """n_groups > 1 (heads share their group's B/C) and a clamping time_step_limit stay exact."""
    path = build_tiny_model("mamba2", tmp_path / "m2", seed=1, n_groups=2, time_step_limit=(0.05, 0.9))
    loaded = load_model(str(path), device="cpu")
    layers = capture_mamba(loaded, _ids(loaded))
    clamped = torch.cat([inn.delta.flatten() for inn in layers.values()])
    assert ((clamped == 0.05) | (clamped == 0.9)).any()  # the limit is active in this model
    for inn in layers.values():
        assert inn.B.shape[1] == 2
        for form in FORMS:
            rebuilt, observed = mamba_reconstruct(inn, form)
            assert _rel(rebuilt, observed) < 1e-4
            idx = torch.arange(0, n_channels(inn, form), 3)
            torch.testing.assert_close(mamba_matrices(inn, form, idx), mamba_loop_matrices(inn, form, idx),
                                       rtol=1e-4, atol=1e-6)


def _long_ids(loaded) -> torch.Tensor:
    text = " ".join(f"{k}:{v}" for k, v in zip("abcdefghijklmnopqrstuvwxyz" * 3, range(78)))
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0]
    assert len(ids) > 130 and len(ids) & (len(ids) - 1)  # several levels and a padded, non-power-of-two length
    return ids


def test_long_prompt_uses_blocked_factorisation_exactly(tiny_loaded):
    """T > 64 exercises the off-diagonal blocks of Mamba's factorised s6 matrices."""
    loaded = tiny_loaded("mamba")
    inn = capture_mamba(loaded, _long_ids(loaded), [0, 1])
    for internals in inn.values():
        channels = torch.tensor([0, 7, 33, 63])
        fast = mamba_matrices(internals, "s6", channels)
        torch.testing.assert_close(fast, mamba_loop_matrices(internals, "s6", channels), rtol=1e-4, atol=1e-6)
        rebuilt, observed = mamba_reconstruct(internals, "unified")
        assert float((rebuilt - observed).norm() / observed.norm()) < 1e-4


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_channel_means_without_matrices_equal_the_mean_of_the_matrices(tiny_loaded, monkeypatch, model_type):
    """The block-tree path (mamba_mean) equals averaging the per-channel matrices, on a long prompt, for
    every length up to it (padding), for chosen channels and under a budget that forces one channel per chunk;
    it never builds the per-channel matrices."""
    loaded = tiny_loaded(model_type)
    internals = capture_mamba(loaded, _long_ids(loaded), [1])[1]
    for form in FORMS:
        full = mamba_matrices(internals, form)
        monkeypatch.setattr(mamba_mod, "mamba_matrices", None)
        chosen = Reduction("channels", (0, 2, 3))
        torch.testing.assert_close(mamba_reduced(internals, form, Reduction("mean")), full.mean(0),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mamba_reduced(internals, form, chosen, budget_bytes=1), full[[0, 2, 3]].mean(0),
                                   rtol=1e-5, atol=1e-6)
        pairs = next(b for b in range(1000, 10**7, 1000) if mamba_tree.channel_chunk(internals, form, 3, b) == 2)
        torch.testing.assert_close(mamba_reduced(internals, form, chosen, budget_bytes=pairs),  # chunks of 2 and 1
                                   full[[0, 2, 3]].mean(0), rtol=1e-5, atol=1e-6)
        monkeypatch.undo()
        torch.testing.assert_close(mamba_reduced(internals, form, Reduction("absmean")), full.abs().mean(0),
                                   rtol=1e-5, atol=1e-6)
    for length in (1, 2, 5, 64, 65):
        short = capture_mamba(loaded, _long_ids(loaded)[:length], [0])[0]
        torch.testing.assert_close(mamba_reduced(short, "unified", Reduction("mean")),
                                   mamba_matrices(short, "unified").mean(0), rtol=1e-5, atol=1e-6)


def _scratch_bytes_of(compute) -> int:
    """Bytes of the scratch buffer ``compute()`` leaves in a fresh thread (none kept before it)."""
    with ThreadPoolExecutor(1) as pool:
        buf = pool.submit(lambda: (compute(), block_tree._Scratch._local.buf)).result()[1]
    return buf.numel() * buf.element_size()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_chunk_scratch_stays_within_the_budget(tiny_loaded, model_type):
    """The scratch buffer a channel mean (and Mamba's s6 absmean) really allocates stays within the budget and
    CACHE_BYTES whenever one channel fits, from one channel's worth to many, and the maps are unchanged."""
    loaded = tiny_loaded(model_type)
    internals = capture_mamba(loaded, _long_ids(loaded), [1])[1]
    for form in FORMS:
        full = mamba_matrices(internals, form)
        size, states, taps = mamba_tree._sizes(internals, form)
        one = block_tree.mean_chunk_bytes(size, states, taps, 1)
        assert mamba_tree.channel_chunk(internals, form, len(full), one) == 1
        reductions = {"mean": full.mean(0)}
        if model_type == "mamba" and form == "s6":
            reductions["absmean"] = full.abs().mean(0)
        for budget in (one, one + one // 3, 2 * one + 1, 5 * one + 7, 17 * one):
            for kind, want in reductions.items():
                got = []
                used = _scratch_bytes_of(lambda got=got, form=form, kind=kind, budget=budget: got.append(
                    mamba_reduced(internals, form, Reduction(kind), budget)))
                assert used <= min(budget, block_tree.CACHE_BYTES), (form, kind, budget, used)
                torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_channel_means_stay_exact_when_decays_underflow(tiny_loaded, model_type):
    """Time steps x300 (per-step exponents below -200, running products far below fp32's range): the
    running-product path still equals the fp64 loop, with no inf/NaN."""
    loaded = tiny_loaded(model_type)
    internals = dataclasses.replace(capture_mamba(loaded, _long_ids(loaded), [0])[0])
    internals.delta = internals.delta * 300
    assert float((internals.delta.max(0).values[:, None] * internals.A.reshape(len(internals.A), -1)).min()) < -200
    everything = torch.arange(internals.delta.shape[1])
    reference = mamba_loop_matrices(internals, "s6", everything).mean(0)
    fast = mamba_reduced(internals, "s6", Reduction("mean"))
    assert torch.isfinite(fast).all()
    # entries reach 1e4 and channels cancel, so fp32's error is relative to the largest entry (the per-channel
    # matrices' mean is off by as much)
    assert float((fast - reference).abs().max() / reference.abs().max()) < 1e-6


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_block_tree_never_computes_with_subnormal_floats(tiny_loaded, monkeypatch, model_type):
    """Running products that fall through fp32's subnormal range cost Intel cores a microcode assist per value
    (a 5x slower attention map on one VM): every matrix product of the tree, over every level, form and the
    per-channel path, sees no subnormal operand or result, and the maps still equal the fp64 loop. Without
    the flushing the same prompt does put subnormals there (so this test can fail)."""
    loaded = tiny_loaded(model_type)
    internals = dataclasses.replace(capture_mamba(loaded, _long_ids(loaded), [0])[0])
    internals.delta = internals.delta * 30  # per-step decays down to ~exp(-30): products reach 2^-126 quickly
    tiny, real_bmm, seen = torch.finfo(torch.float32).tiny, torch.bmm, []

    def counting_bmm(a, b, out=None):
        result = real_bmm(a, b, out=out)
        seen.extend(int(((t != 0) & (t.abs() < tiny)).sum()) for t in (a, b, result))
        return result

    monkeypatch.setattr(block_tree.torch, "bmm", counting_bmm)

    def subnormals() -> int:
        seen.clear()
        for form in FORMS:
            mamba_reduced(internals, form, Reduction("mean"))
        if model_type == "mamba":
            mamba_reduced(internals, "s6", Reduction("absmean"))
        return sum(seen)

    assert subnormals() == 0 and len(seen) > 0
    for form in FORMS:
        reference = mamba_loop_matrices(internals, form, torch.arange(n_channels(internals, form))).mean(0)
        fast = mamba_reduced(internals, form, Reduction("mean"))
        assert float((fast - reference).abs().max() / reference.abs().max()) < 1e-6
    monkeypatch.setattr(block_tree, "FLUSH_BELOW", 0.0)
    assert subnormals() > 0


def test_concurrent_channel_means_use_separate_buffers(tiny_loaded):
    """Two threads at once (the app serves several sessions) get exactly what each gets alone: the reused
    scratch buffers are per thread."""
    loaded = tiny_loaded("mamba")
    long_one = capture_mamba(loaded, _long_ids(loaded), [0])[0]
    short_one = capture_mamba(loaded, _long_ids(loaded)[:70], [0])[0]
    alone = [mamba_reduced(inn, "unified", Reduction("mean")) for inn in (long_one, short_one)]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(lambda inn: mamba_reduced(inn, "unified", Reduction("mean")),
                                     (long_one, short_one)))
            for got, want in zip(together, alone):
                assert torch.equal(got, want)


def test_scratch_is_kept_only_when_small(tiny_loaded, monkeypatch):
    """The per-thread scratch buffer is reused across calls, but one larger than RETAIN_BYTES (a very long
    prompt) is dropped after the call instead of staying allocated."""
    internals = capture_mamba(tiny_loaded("mamba"), _long_ids(tiny_loaded("mamba")), [0])[0]

    def kept_after_call(retain_bytes: int):
        monkeypatch.setattr(block_tree._Scratch, "RETAIN_BYTES", retain_bytes)
        with ThreadPoolExecutor(1) as pool:  # a fresh thread: nothing kept from earlier calls
            return pool.submit(lambda: (mamba_reduced(internals, "s6", Reduction("mean")),
                                        getattr(block_tree._Scratch._local, "buf", None))).result()[1]

    assert kept_after_call(1 << 30) is not None
    assert kept_after_call(1000) is None


def test_capture_forces_the_unfused_path_and_restores_the_mode(tiny_loaded, monkeypatch):
    """On CUDA with mamba_ssm installed, a Mamba mixer in training mode runs the fused mamba_inner_fn, which
    never calls the projections the capture reads. Simulated on the CPU with a fake fused kernel: the capture
    still sees every submodule (it runs the mixers unfused) and gives the eval-mode internals, and the model is
    left in training mode as it was."""
    import transformers.models.mamba.modeling_mamba as modeling_mamba

    from analysis.implicit_attention.mamba import capture_mamba

    loaded = tiny_loaded("mamba")
    ids = torch.tensor([loaded.tokenizer("a:1 b:2 | a:").input_ids])
    expected = capture_mamba(loaded, ids)
    calls = []

    def fused_kernel(projected_states, *args, **kwargs):  # what mamba_ssm's kernel returns: the mixer output
        calls.append(1)
        return torch.zeros(projected_states.shape[0], projected_states.shape[2], loaded.model.config.hidden_size)

    monkeypatch.setattr(modeling_mamba, "mamba_inner_fn", fused_kernel)
    loaded.model.train()
    try:
        with loaded.lock, torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)
        assert calls  # in training mode the fake fused path really is taken
        got = capture_mamba(loaded, ids)
        assert loaded.model.training and all(m.training for m in loaded.model.modules())
    finally:
        loaded.model.eval()
    for layer, internals in expected.items():
        assert torch.equal(got[layer].delta, internals.delta) and torch.equal(got[layer].B, internals.B)
