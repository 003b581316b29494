"""The real gemma3-270m built-in (Gemma 3 270M base, from the chunked GGUF packages), on CPU. The first run
dequantizes it (about 2.5 min); later runs load the cached safetensors in seconds."""

from __future__ import annotations

import pytest
import torch

from analysis.evaluation.icl import generate_answers
from analysis.models import load_model
from analysis.tasks import builtin_tasks

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu")


def test_shape_and_attention_layout(gemma):
    config = gemma.model.config
    assert gemma.family == "transformer" and config.model_type == "gemma3_text"
    assert gemma.n_layers == 18 and gemma.adapter.neuron_counts() == [2048] * 18
    assert gemma.adapter.site(17).path == "model.layers.17.mlp.down_proj"
    assert sum(p.numel() for p in gemma.model.parameters()) == 268_098_176
    assert config.sliding_window == 512 and config.final_logit_softcapping is None
    assert [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"] == [5, 11, 17]
    assert gemma.adapter.max_context() == 32768 and gemma.tokenizer.tokenize(" 2") == ["▁", "2"]


def test_one_sane_answer(gemma):
    task = builtin_tasks()["country-capital"]
    prompt = task.build_prompt(("Japan", "Tokyo"), [("France", "Paris"), ("Italy", "Rome")])
    assert generate_answers(gemma, [prompt], task) == ["Tokyo"]


@torch.no_grad()
def test_padded_batch_beyond_the_sliding_window_equals_one_at_a_time(gemma):
    """Two prompts of about 520 and 560 tokens (window 512) in one left-padded batch: the last-position logits
    equal each prompt run alone."""
    words = "apple banana cherry grape lemon mango orange peach pear plum ".split()
    texts = [" ".join(words[i % 10] for i in range(count)) + " ->" for count in (515, 550)]
    encoded = [gemma.tokenizer(t).input_ids for t in texts]
    assert 512 < len(encoded[0]) < len(encoded[1])
    batch = gemma.tokenizer(texts, return_tensors="pt", padding=True)
    assert batch.attention_mask[0, 0] == 0  # left padding
    with gemma.lock:
        padded = gemma.model(**batch, logits_to_keep=1).logits[:, -1]
    for row, ids in enumerate(encoded):
        with gemma.lock:
            alone = gemma.model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
        torch.testing.assert_close(padded[row], alone, rtol=1e-4, atol=1e-4)
        assert padded[row].argmax() == alone.argmax()
