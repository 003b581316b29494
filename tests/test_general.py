"""General-text loss after pruning: per-passage losses against the model's own loss (labels=), batched and
padded equal to one at a time on every family, a mask changes them and leaves no hook, the cache, and the
paired comparison by hand."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch

from analysis.cache import ResultsCache
from analysis.evaluation.general import (
    cached_losses,
    compare_losses,
    general_capability,
    passage_losses,
    shipped_passages,
    stored_general_capability,
)
from analysis.pruning import NeuronMask
from analysis.pruning.copying import random_mask_like
from tests.conftest import FAMILY_OF

pytestmark = pytest.mark.usefixtures("one_thread")
PASSAGES = shipped_passages()[:6]


def test_shipped_passages_are_prose_with_a_license():
    import json

    from analysis.evaluation.general import PASSAGES_FILE

    data = json.loads(PASSAGES_FILE.read_text())
    assert len(data["passages"]) == 300 and "public domain" in data["license"]
    assert all(40 <= len(p.split()) <= 110 for p in data["passages"])


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "mamba", "rwkv", "recurrent_gemma"])
def test_losses_equal_the_models_own_loss_and_padding_changes_nothing(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    batched = passage_losses(loaded, PASSAGES, batch_size=4)
    for text, loss in zip(PASSAGES[:3], batched[:3]):
        ids = torch.tensor([loaded.tokenizer(text).input_ids[:128]])
        with loaded.lock, torch.no_grad():
            reference = loaded.model(input_ids=ids, labels=ids).loss
        assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    alone = passage_losses(loaded, PASSAGES, batch_size=1)
    assert torch.allclose(batched, alone, rtol=1e-5, atol=1e-6), FAMILY_OF[model_type]


def test_a_mask_changes_the_loss_and_leaves_no_hook(tiny_loaded):
    loaded = tiny_loaded("llama")
    counts = loaded.adapter.neuron_counts()
    mask = NeuronMask.from_pairs([(0, i) for i in range(counts[0])])
    before = passage_losses(loaded, PASSAGES)
    pruned = passage_losses(loaded, PASSAGES, mask)
    assert not torch.allclose(before, pruned)
    assert torch.equal(passage_losses(loaded, PASSAGES), before)


def test_the_cache_returns_what_was_computed(tiny_loaded, tmp_path):
    loaded = tiny_loaded("gpt2")
    cache = ResultsCache(tmp_path, fallbacks=())
    assert cached_losses(loaded, PASSAGES, None, cache, compute_missing=False) is None
    first = cached_losses(loaded, PASSAGES, None, cache)
    assert torch.equal(cached_losses(loaded, PASSAGES, None, cache, compute_missing=False), first)


def plain_sign_flip(differences):
    observed = abs(sum(differences))
    hits = sum(abs(sum(s * d for s, d in zip(signs, differences))) >= observed
               for signs in itertools.product((1, -1), repeat=len(differences)))
    return Fraction(hits, 2 ** len(differences))


def test_paired_comparison_by_hand():
    base = torch.tensor([3.0, 3.5, 4.0, 2.5, 3.0, 4.5], dtype=torch.float64)
    pruned = base + torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    controls = {"random-0": base + 0.25, "random-1": base - 0.25}
    result = compare_losses({"baseline": base, "pruned": pruned, **controls}, resamples=4000)
    assert result.vs_baseline.delta == pytest.approx(7 / 6)
    assert result.vs_baseline.p == pytest.approx(float(plain_sign_flip([1, 1, 1, 1, 2, 1]))) == pytest.approx(2 / 64)
    low, high = result.vs_baseline.ci95
    assert 1 <= low < 7 / 6 < high <= 2
    assert result.vs_random.delta == pytest.approx(7 / 6) and result.random_vs_baseline.delta == pytest.approx(0)
    assert result.loss["random"] == pytest.approx(float(base.mean()))
    assert result.sentence().startswith("On general text (6 passages), pruning raises the loss by 1.167 nats/token")
    assert "random masks of the same size change the loss by" in result.sentence()


def test_general_capability_runs_every_condition_on_the_same_passages(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    mask = NeuronMask.from_pairs([(0, i) for i in range(8)])
    controls = [random_mask_like(mask, loaded.adapter.neuron_counts(), s) for s in range(2)]
    cache = ResultsCache(tmp_path, fallbacks=())
    assert stored_general_capability(loaded, mask, controls, PASSAGES, cache) is None
    reports = []
    result = general_capability(loaded, mask, controls, PASSAGES, cache, progress=lambda d, t: reports.append((d, t)))
    assert result.passages == 6 and reports[-1] == (24, 24)
    assert result.loss["pruned"] == pytest.approx(float(passage_losses(loaded, PASSAGES, mask).mean()))
    again = stored_general_capability(loaded, mask, controls, PASSAGES, cache)
    assert again.vs_baseline == result.vs_baseline
