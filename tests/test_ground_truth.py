"""Ground-truth attribution benchmark: tie-aware scores against an enumeration of tie-breaks, prompt builders
whose spans hold what they claim, sources mapped through two tokenizers, and a run on the toy transformer."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from analysis.attribution.tokens import token_relevance
from analysis.cache import ResultsCache
from analysis.cli import main
from analysis.errors import PrunescopeError
from analysis.evaluation.faithfulness import auc, perturbation_curve, relevance_order
from analysis.evaluation.ground_truth import (
    COLUMNS,
    GroundTruth,
    candidates,
    ground_truth,
    interval,
    random_scores,
    score_prompt,
    source_scores,
)
from analysis.evaluation.ground_truth_prompts import PROMPT_FAMILIES, STYLES, build_prompts, locate
from analysis.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def enumerated(scores, sources, among):
    """(top1, rank) averaged over every order that sorts ``among`` by score, ties broken all possible ways."""
    tops, ranks = [], []
    for order in itertools.permutations(among):
        values = [scores[i] for i in order]
        if values != sorted(values, reverse=True):
            continue
        first = next(k for k, i in enumerate(order) if i in sources)
        tops.append(first == 0)
        ranks.append(first + 1)
    return float(np.mean(tops)), float(np.mean(ranks))


def test_scores_on_hand_set_vectors():
    assert source_scores([0.1, 0.9, 0.3, 0.2], [1], [0, 1, 2]) == (1.0, 1.0)
    assert source_scores([0.5, 0.9, 0.1, 7.0], [0], [0, 1, 2]) == (0.0, 2.0)  # position 3 is no candidate
    assert source_scores([1, 1, 1, 0], [0], [0, 1, 2, 3]) == (pytest.approx(1 / 3), 2.0)  # a three-way tie
    assert source_scores([1, 1, 1, 0], [0, 1], [0, 1, 2, 3]) == (pytest.approx(2 / 3), pytest.approx(4 / 3))
    assert source_scores([-1, -2, -3], [2], [0, 1, 2]) == (0.0, 3.0)  # signs are kept: most negative is last
    assert random_scores([2], [0, 1, 2, 3]) == (0.25, 2.5)
    with pytest.raises(PrunescopeError, match="no source"):
        source_scores([1, 2, 3], [2], [0, 1])
    with pytest.raises(PrunescopeError, match="not finite"):
        source_scores([1, float("nan"), 3], [0], [0, 1, 2])


def test_scores_match_every_tie_break():
    rng = np.random.default_rng(0)
    for _ in range(40):
        scores = rng.integers(0, 3, size=6).tolist()  # few levels: many ties
        among = sorted(rng.choice(6, size=5, replace=False).tolist())
        sources = rng.choice(among, size=rng.integers(1, 3), replace=False).tolist()
        got = source_scores(scores, sources, among)
        assert got == pytest.approx(enumerated(scores, set(sources), among))


def test_candidates_and_interval():
    assert candidates(5).tolist() == [0, 1, 2, 3]
    assert candidates(5, special=[9], ids=[9, 4, 9, 5, 9]).tolist() == [1, 3]  # specials and the last go
    assert interval([0.5] * 7) == (0.5, 0.5, 0.5)
    mean, low, high = interval([0, 1, 1, 0, 1, 1, 1, 0])
    assert mean == 0.625 and 0.2 < low < mean < high <= 1.0
    assert all(np.isnan(interval([])))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("family", PROMPT_FAMILIES)
def test_builders_place_source_and_cue(family, style):
    prompts = build_prompts(family, 25, seed=3, style=style)
    assert prompts == build_prompts(family, 25, seed=3, style=style)  # deterministic
    for p in prompts:
        source, cue = p.text[slice(*p.source)], p.text[slice(*p.cue)]
        assert source == p.answer.strip()
        assert p.text.count(source) == 1  # the answer has one place to come from
        assert p.cue[1] <= p.source[0]  # the cue comes first
        if family == "recall":
            assert p.text.endswith(f" {cue}:")  # the queried key
        elif family == "induction":
            assert p.text.rstrip(",").endswith(cue)  # A again at the end
        else:
            assert p.text.endswith(cue)  # the copy has reached the item before the source
    with pytest.raises(PrunescopeError, match="prompt family"):
        build_prompts("nope", 1)


class Loaded:
    """What :func:`locate` reads of a model: its tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, so " 2" is " " + "2" (as SmolLM2 splits it), with a BOS token."""
    chars = [chr(c) for c in range(32, 127)]
    tok = Tokenizer(models.WordLevel({c: i + 1 for i, c in enumerate(chars)} | {"<s>": 0}, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


@pytest.mark.parametrize("family", PROMPT_FAMILIES)
def test_locate_maps_sources_through_split_and_merged_digits(family, tiny_loaded):
    chars = Loaded(char_tokenizer())
    for style in STYLES:
        for p in build_prompts(family, 10, seed=1, style=style):
            got = locate(chars, p)
            decode = chars.tokenizer.decode
            assert decode(list(got.input_ids[1:])) == got.prompt.text  # position 0 is BOS
            assert "".join(decode([got.input_ids[i]]) for i in got.sources) == p.answer.strip()
            assert decode([got.target]) == p.answer.strip()[0]  # the blank moved into the prompt
            assert got.prompt.text == p.text + p.answer[:len(p.answer) - len(p.answer.lstrip())]
    bpe = tiny_loaded("llama")  # byte-level BPE: a leading blank stays on the answer's token
    recall = build_prompts("recall", 10, seed=1, style="words")
    for p in recall:
        try:
            got = locate(bpe, p)
        except PrunescopeError:
            continue  # merged into the prompt: refused, never mislocated
        text = bpe.tokenizer.decode([got.input_ids[i] for i in got.sources]).strip()
        assert text == p.answer.strip() and got.prompt.text == p.text


def test_a_run_on_the_toy_transformer_agrees_with_its_parts(tmp_path):
    loaded = load_model("toy-transformer", device="cpu")
    table = ground_truth(loaded, ["raw", "gxi"], n=3, families=["copy"])
    assert list(table.columns) == COLUMNS and list(table.method) == ["raw", "gxi", "random"]
    assert (table.attempted == 3).all() and (table.n == 3).all()  # the toy copies every one of them
    located = locate(loaded, build_prompts("copy", 3, seed=0, style="toy")[0])
    got = score_prompt(loaded, located, ["gxi"])["gxi"]
    scores = token_relevance(loaded, located.prompt.text, "gxi", target_id=located.target).scores
    top = max(range(len(scores) - 1), key=lambda i: float(scores[i]))  # no special tokens in the toy's prompt
    assert got["top1"] == float(top in located.sources)
    curve = perturbation_curve(loaded, located.prompt.text, relevance_order(scores), located.target)
    assert got["auc"] == pytest.approx(auc(curve))
    request = GroundTruth(("raw", "gxi"), 3, ("copy",))
    cache = ResultsCache(tmp_path)
    first = request.run(loaded, cache)
    request_again = GroundTruth(("raw", "gxi"), 3, ("copy",))
    assert request_again.stored(loaded, cache).equals(first) and first.equals(table)


def test_unsupported_methods_and_bad_input(tiny_loaded, capsys, monkeypatch):
    monkeypatch.setattr("analysis.evaluation.faithfulness.LRP_FAMILIES", ("transformer",))  # every family has
    table = ground_truth(tiny_loaded("mamba"), ["lrp", "gxi"], n=2, families=["recall"], style="toy")  # LRP now
    row = table.set_index("method").loc["lrp"]
    assert row.n == 0 and "lrp" in row.note and np.isnan(row.top1)
    for bad in ({"families": ("nope",)}, {"methods": ("nope",)}, {"style": "prose"}, {"n": 0}):
        with pytest.raises(PrunescopeError):
            GroundTruth(**bad)
    assert main(["faithfulness", "--model", "toy-transformer", "--ground-truth", "--task", "antonyms"]) == 2
    assert "drop --task" in capsys.readouterr().err


def test_cli_ground_truth_json(capsys):
    code = main(["faithfulness", "--model", "toy-transformer", "--ground-truth", "--families", "copy",
                 "--methods", "gxi", "--n", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [(r["family"], r["method"], r["n"]) for r in rows] == [("copy", "gxi", 2), ("copy", "random", 2)]


def test_lrp_must_find_the_source_of_a_hand_built_model(tiny_dirs):
    """A tiny llama whose MLPs write nothing and whose prompt tokens embed to zero, all but the source: the
    answer's logit can only come from the source, and with the softmax and norm scales detached the network is
    linear in its inputs (no biases), so LRP gives the source the whole logit and every other token exactly 0:
    top-1 = 1, rank = 1. Gradient x input finds ~0 there (the final RMSNorm makes F scale-invariant in x)."""
    loaded = load_model(tiny_dirs["llama"], device="cpu")  # a private copy: its weights are edited
    located = locate(loaded, build_prompts("recall", 1, seed=4, style="words")[0])
    ids, (source,) = list(located.input_ids), located.sources
    assert ids.count(ids[source]) == 1
    with torch.no_grad():
        for layer in loaded.model.model.layers:
            layer.mlp.down_proj.weight.zero_()
        embedding = loaded.model.get_input_embeddings().weight
        kept = embedding[ids[source]].clone()
        embedding[list(set(ids))] = 0.0
        embedding[ids[source]] = kept
    with loaded.lock:
        logits = loaded.model(torch.tensor([ids])).logits[0, -1]
    target = int(logits.argmax())
    located = dataclasses.replace(located, target=target)
    scores = token_relevance(loaded, located.prompt.text, "lrp", target_id=target).scores.double()
    assert float(scores[source]) == pytest.approx(float(logits[target]), rel=1e-4) and float(logits[target]) > 0
    assert scores[[i for i in range(len(ids)) if i != source]].abs().max() == 0.0
    gxi = token_relevance(loaded, located.prompt.text, "gxi", target_id=target).scores.double()
    assert abs(float(gxi[source])) < 0.02 * float(logits[target])  # measured: -0.06 of a logit of 8.1
    got = score_prompt(loaded, located, ["lrp", "random"])
    assert (got["lrp"]["top1"], got["lrp"]["rank"]) == (1.0, 1.0)
    n = len(candidates(len(ids), loaded.tokenizer.all_special_ids, ids))
    assert got["random"]["top1"] == pytest.approx(1 / n) and got["random"]["rank"] == pytest.approx((n + 1) / 2)
