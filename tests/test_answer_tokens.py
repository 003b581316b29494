"""Per-answer-token attribution: the greedy answer is the model's own generation, each row equals a bare
gradient x input on the full model, LRP rows sum to the answer token's logit, and bad requests are one line."""

from __future__ import annotations

import pytest
import torch

from analysis.attribution.answer_tokens import attribute_answer, greedy_answer
from analysis.attribution.propagation import LRP_FAMILIES
from analysis.attribution.targets import answer_tokens
from analysis.attribution.tokens import token_relevance
from analysis.errors import PrunescopeError
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = builtin_tasks()["antonyms"].sample_prompts(2, 1, seed=3)[0]


def bare_gxi(loaded, ids, target):
    """dF/de . e per token with F the full model's own logit (LM head included), not the library's path."""
    with loaded.lock, torch.enable_grad():
        embeds = loaded.model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
        logit = loaded.model(inputs_embeds=embeds).logits[0, -1, target]
        (grad,) = torch.autograd.grad(logit, embeds)
    return (grad * embeds)[0].sum(-1).detach(), float(logit.detach())


@pytest.mark.parametrize("model_type", ["llama", "mamba"])
def test_rows_equal_a_bare_gradient_x_input_and_the_answer_is_the_models(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    result = attribute_answer(loaded, PROMPT.text, "gxi", delimiter="\n")
    ids = list(loaded.tokenizer(PROMPT.text).input_ids)
    with loaded.lock, torch.no_grad():
        generated = loaded.model.generate(torch.tensor([ids]), max_new_tokens=len(result.answer_ids),
                                          do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    assert generated == result.answer_ids  # the greedy answer is generate()'s
    assert result.prompt_length == len(ids) and len(result.tokens) == len(ids) + len(result.answer_ids)
    for s, target in enumerate(result.answer_ids):
        expected, logit = bare_gxi(loaded, ids + result.answer_ids[:s], target)
        row = result.scores[s]
        torch.testing.assert_close(row[:len(ids) + s], expected, rtol=1e-4, atol=1e-5)
        assert torch.isnan(row[len(ids) + s:]).all()  # nothing after the position that predicts it
        assert result.logits[s] == pytest.approx(logit, rel=1e-4, abs=1e-5)


def test_lrp_rows_follow_token_relevance_and_gold_is_forced(tiny_loaded):
    loaded = tiny_loaded("llama")
    result = attribute_answer(loaded, PROMPT.text, "lrp", source="gold", gold=PROMPT.gold)
    base, cont, _ = answer_tokens(loaded, PROMPT.text, PROMPT.gold)
    assert result.answer_ids == cont and result.prompt_length == len(base) and len(cont) >= 2
    checked = 0
    for s in range(len(cont)):
        text = loaded.tokenizer.decode(base + cont[:s])
        if list(loaded.tokenizer(text).input_ids) != base + cont[:s]:
            continue  # the partial text tokenises differently: only the ids path can explain this token
        alone = token_relevance(loaded, text, "lrp", target_id=cont[s])
        torch.testing.assert_close(result.scores[s, :len(base) + s], alone.scores, rtol=1e-4, atol=1e-5)
        checked = s + 1
    assert checked >= 1  # at least the first answer token (its context is the prompt's own ids)
    gxi = attribute_answer(loaded, PROMPT.text, "gxi", source="gold", gold=PROMPT.gold)
    assert not torch.allclose(gxi.scores.nan_to_num(), result.scores.nan_to_num(), atol=1e-3)


def test_ig_rows_report_completeness_and_greedy_stops_at_the_delimiter(tiny_loaded):
    loaded = tiny_loaded("gpt2")  # position embeddings: IG's path is smooth, the error small
    result = attribute_answer(loaded, PROMPT.text, "ig", steps=48)
    assert result.deltas is not None and len(result.deltas) == len(result.answer_ids)
    ids = list(loaded.tokenizer(PROMPT.text).input_ids)
    for s, delta in enumerate(result.deltas):  # delta = sum of the row - (F(x) - F(zero embeddings))
        context = ids + result.answer_ids[:s]
        with loaded.lock, torch.no_grad():
            zero = loaded.model(inputs_embeds=torch.zeros(1, len(context), 32)).logits[0, -1, result.answer_ids[s]]
        total = float(result.scores[s, :len(context)].sum())
        assert delta == pytest.approx(total - (result.logits[s] - float(zero)), abs=1e-3)
    answer = greedy_answer(loaded, ids, "\n", limit=12)
    assert "\n" not in loaded.tokenizer.decode(answer).strip(" ") or not answer


def test_bad_requests_are_one_line(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(PrunescopeError, match="not 'raw'"):
        attribute_answer(loaded, PROMPT.text, "raw")
    with pytest.raises(PrunescopeError, match="gold answer is empty"):
        attribute_answer(loaded, PROMPT.text, "gxi", source="gold", gold=" ")
    with pytest.raises(PrunescopeError, match="unknown answer source"):
        attribute_answer(loaded, PROMPT.text, "gxi", source="sampled")  # type: ignore[arg-type]
    outside = [t for t, f in [("mamba", "mamba"), ("rwkv", "rwkv"), ("recurrent_gemma", "griffin")]
               if f not in LRP_FAMILIES]
    if outside:
        with pytest.raises(PrunescopeError, match="conservative propagation"):
            attribute_answer(tiny_loaded(outside[0]), PROMPT.text, "lrp")
