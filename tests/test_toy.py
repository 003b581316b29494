"""Toy-model training: the parallel training paths equal transformers' loops; corpus and recall data."""

from __future__ import annotations

import pytest
import torch

from analysis.models.hooks import model_lock
from analysis.models.toy import corpus_lines, recall_examples, recall_line
from analysis.models.train_paths import parallel_training


@pytest.mark.parametrize("model_type", ["rwkv", "recurrent_gemma", "mamba"])
def test_parallel_training_paths_match_the_loops(tiny_loaded, model_type):
    model = tiny_loaded(model_type).model
    ids = tiny_loaded(model_type).tokenizer("a:3 b:5 c:1 | b:5 a:3 c:", return_tensors="pt").input_ids
    model.train()
    try:
        results = []
        for parallel in (False, True):
            model.zero_grad()
            with model_lock(model), torch.enable_grad(), \
                    (parallel_training(model) if parallel else torch.enable_grad()):  # a shared model: locked
                for p in model.parameters():
                    p.requires_grad_(True)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results.append((float(loss.detach()), grads))
    finally:
        model.eval().requires_grad_(False)
        model.zero_grad(set_to_none=True)
    (loss_loop, grad_loop), (loss_par, grad_par) = results
    assert loss_par == pytest.approx(loss_loop, rel=1e-5)
    assert float((grad_par - grad_loop).norm() / grad_loop.norm()) < 1e-4


def test_parallel_training_restores_the_model(tiny_loaded):
    from transformers.models.rwkv import modeling_rwkv

    original = modeling_rwkv.rwkv_linear_attention
    with parallel_training(tiny_loaded("rwkv").model):
        assert modeling_rwkv.rwkv_linear_attention is not original
    assert modeling_rwkv.rwkv_linear_attention is original
    griffin = tiny_loaded("recurrent_gemma").model
    with parallel_training(griffin):
        pass
    assert all("_rnn_scan" not in vars(m) for m in griffin.modules())


def test_recall_data():
    import random

    line, asked = recall_line(random.Random(0))
    context = line.split("|")[0]
    for prompt, answer in asked:
        key = prompt.rstrip(":").split()[-1]
        assert f"{key}:{answer}" in context and prompt.endswith(f" {key}:")
    assert recall_examples(1, 50) == recall_examples(1, 50) and len(recall_examples(1, 50)) == 50
    lines = corpus_lines(0, 200)
    assert lines == corpus_lines(0, 200) and all(text.endswith("\n") for text in lines)
    assert any("|" in text for text in lines) and any(text.startswith("copy:") for text in lines)


@pytest.mark.parametrize("length,key_scale,decay_shift", [(5, 3.0, -3.0), (37, 1.0, 0.0), (64, 30.0, 4.0)])
def test_chunked_wkv_equals_the_transformers_loop(length, key_scale, decay_shift):
    """Values and all four gradients of the chunked WKV equal transformers' CPU loop, for lengths that are not a
    multiple of the chunk, keys spread over +-90 and decays up to w = e^7 (where a plain cumsum overflows)."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

    from analysis.models.train_paths import rwkv_wkv_parallel

    gen = torch.Generator().manual_seed(length)
    inputs = [(torch.randn(16, generator=gen) + decay_shift), torch.randn(16, generator=gen),
              torch.randn(3, length, 16, generator=gen) * key_scale, torch.randn(3, length, 16, generator=gen)]
    inputs = [t.requires_grad_() for t in inputs]
    upstream = torch.randn(3, length, 16, generator=gen)
    results = []
    for fn in (rwkv_linear_attention_cpu, rwkv_wkv_parallel):
        out = fn(*inputs)[0]
        results.append((out.detach(), torch.autograd.grad((out * upstream).sum(), inputs)))
    (ref, ref_grads), (got, got_grads) = results
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    for g, r in zip(got_grads, ref_grads):
        assert float((g - r).norm() / r.norm()) < 1e-5


@pytest.mark.parametrize("length", [5, 16, 45])
def test_chunked_rglru_scan_equals_the_transformers_loop(tiny_loaded, length):
    """Outputs, final state and gradients of the chunked RG-LRU scan equal RecurrentGemma's own loop, for
    lengths below, at and past the chunk size, with gates down to 1e-3 (fast decay)."""
    from analysis.models.train_paths import rglru_scan_parallel

    module = next(m for m in tiny_loaded("recurrent_gemma").model.modules() if hasattr(m, "_rnn_scan"))
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(2, length, 8, generator=gen).requires_grad_()
    gate = (torch.rand(2, length, 8, generator=gen) * 0.999 + 1e-3).requires_grad_()
    reset = torch.zeros(2, length, dtype=torch.bool)
    reset[:, 0] = True
    upstream = torch.randn(2, length, 8, generator=gen)
    results = []
    for fn in (lambda *a: module.__class__._rnn_scan(module, *a), lambda *a: rglru_scan_parallel(module, *a)):
        out, last = fn(x, gate, reset[..., None], None)
        results.append((out.detach(), last.detach(), torch.autograd.grad((out * upstream).sum(), (x, gate))))
    (ref, ref_last, ref_grads), (got, got_last, got_grads) = results
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_last, ref_last, rtol=1e-5, atol=1e-6)
    for g, r in zip(got_grads, ref_grads):  # d/da goes through log a: compare as a whole, not 1/a-amplified entries
        assert float((g - r).norm() / r.norm()) < 1e-5
