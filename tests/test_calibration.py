"""Contextual calibration: the first-token rule on probabilities set by hand, the answers against a plain
token-by-token loop on a tiny model, its own cache key, and its row in the baselines' method table."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analysis.attribution.targets import clean_logits
from analysis.cache import ResultsCache
from analysis.evaluation import calibration
from analysis.evaluation.calibration import calibrated_choice, content_free_texts, evaluate_calibrated
from analysis.evaluation.icl import answer_text, answer_token_budget, evaluate_task, generate_answers
from analysis.pruning.baselines import evaluate_baselines, method_table
from analysis.pruning.evaluate import condition_records
from analysis.pruning.mask import NeuronMask
from analysis.tasks import builtin_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def probs(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_the_first_token_maximises_p_minus_the_content_free_p_over_the_top_tokens():
    p = probs(0.5, 0.3, 0.2, 0.0)
    assert calibrated_choice(p, probs(0, 0, 0, 0)) == 0  # nothing to subtract: greedy
    assert calibrated_choice(p, probs(0.6, 0.1, 0.3, 0)) == 1  # 0.5-0.6, 0.3-0.1, 0.2-0.3
    # p_cf renormalised over the candidates: raw differences (0.30, 0.28, 0.12) would keep token 0, but p_cf
    # over tokens 0-2 is (0.667, 0.067, 0.267), so token 1 wins (-0.17, +0.23, -0.07)
    assert calibrated_choice(p, probs(0.2, 0.02, 0.08, 0.7), top=3) == 1
    # only the top tokens are candidates: token 3 would win (0.1 - 0) if it were one
    p, free = probs(0.4, 0.3, 0.2, 0.1), probs(0.4, 0.3, 0.2, 0.0)
    assert calibrated_choice(p, free, top=3) == 0
    assert calibrated_choice(p, free, top=4) == 3


def test_content_free_prompts_keep_the_demonstrations_and_replace_the_query():
    task = builtin_tasks()["antonyms"]
    prompt = task.sample_prompts(3, 1)[0]
    texts = content_free_texts(task, prompt)
    stem = prompt.text[:-len(task.render_query(prompt.query))]
    assert texts == [stem + task.render_query(x) for x in ("N/A", "[MASK]", "BLANK")]
    assert all(f"{x} -> {y}\n" in texts[0] for x, y in prompt.demos)


def loop_answer(loaded, ids: list[int], task, budget: int, second_best: bool) -> str:
    """A plain loop: leading whitespace tokens, then (with ``second_best``) the runner-up token, then greedy
    one token at a time until the delimiter or the budget."""
    tok, out = loaded.tokenizer, []
    while True:
        logits = clean_logits(loaded, ids + out)
        best = int(logits.argmax())
        text = tok.decode([best])
        if len(out) == 3 or text.strip() or not text or task.delimiter in text:
            break
        out.append(best)
    out.append(int(logits.topk(2).indices[1]) if second_best else best)
    while len(out) < budget and task.delimiter not in tok.decode(out[-1:]):
        out.append(int(clean_logits(loaded, ids + out).argmax()))
    return answer_text(tok.decode(out, skip_special_tokens=True), task.delimiter)


def test_answers_follow_the_calibrated_first_token_then_greedy(tiny_loaded, monkeypatch):
    loaded = tiny_loaded("llama")
    task = builtin_tasks()["antonyms"]
    prompts = task.sample_prompts(2, 4)
    budget = answer_token_budget(loaded, task)

    def zero(loaded, texts, after):
        return torch.zeros(loaded.model.get_output_embeddings().weight.shape[0], dtype=torch.float64)

    monkeypatch.setattr(calibration, "content_free_probs", zero)
    assert calibration.calibrated_answers(loaded, prompts, task) == generate_answers(loaded, prompts, task)

    def on_the_greedy_token(loaded, texts, after):  # a content-free query predicting the greedy token surely
        ids = loaded.tokenizer(current[0]).input_ids + list(after)
        logits = clean_logits(loaded, ids)
        return torch.nn.functional.one_hot(logits.argmax(), logits.shape[-1]).double()

    monkeypatch.setattr(calibration, "content_free_probs", on_the_greedy_token)
    answers = []
    for prompt in prompts:
        current = [prompt.text]
        answers += calibration.calibrated_answers(loaded, [prompt], task)
    expected = [loop_answer(loaded, loaded.tokenizer(p.text).input_ids, task, budget, True) for p in prompts]
    assert answers == expected
    greedy = [loop_answer(loaded, loaded.tokenizer(p.text).input_ids, task, budget, False) for p in prompts]
    assert greedy == generate_answers(loaded, prompts, task) and answers != greedy


def test_calibration_has_its_own_cache_entry_and_a_row_among_the_baselines(tiny_loaded, tmp_path):
    loaded = tiny_loaded("llama")
    task = builtin_tasks()["antonyms"]
    cache = ResultsCache(tmp_path, fallbacks=())
    calibrated = evaluate_calibrated(loaded, task, 2, 6, cache=cache)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    plain = evaluate_task(loaded, task, 2, 6, cache=cache)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2  # not read from the calibrated entry
    assert list(calibrated.records.prompt) == list(plain.records.prompt)  # the same prompts
    again = evaluate_calibrated(loaded, task, 2, 6, cache=cache)
    assert list(again.records.prediction) == list(calibrated.records.prediction)
    mask = NeuronMask.from_pairs([(0, 1)])
    records = evaluate_baselines(loaded, mask, [task], [2], 6, 0, ["calibration"], cache=cache)
    assert set(records.condition) == {"calibration"}
    assert list(records.answer) == list(calibrated.records.prediction)
    table = method_table(pd.concat([condition_records(plain, task.name, 2, "baseline"), records]), resamples=200)
    [row] = table.itertuples()
    assert row.method == "contextual calibration"
    assert row.d_accuracy == pytest.approx(calibrated.accuracy - plain.accuracy)
