"""Perturbation curves and the faithfulness table: shapes, hand-checked curves, documented columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import analysis.evaluation.faithfulness as faithfulness_module
from analysis.attribution.tokens import top_prediction
from analysis.errors import PrunescopeError
from analysis.evaluation.faithfulness import (
    COLUMNS,
    DEFAULT_FRACTIONS,
    ORDERS,
    auc,
    faithfulness,
    perturbation_curve,
    relevance_order,
)
from analysis.tasks import Task

TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"


pytestmark = pytest.mark.usefixtures("one_thread")


def _prob(loaded, ids, target):
    with loaded.lock, torch.no_grad():
        logits = loaded.model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()
    return float(torch.softmax(logits, -1)[target])


def _setup(loaded):
    ids = loaded.tokenizer(TEXT).input_ids
    return ids, top_prediction(loaded, torch.tensor([ids]))


@pytest.mark.parametrize("model_type", ["llama", "mamba"])
def test_curve_starts_at_the_clean_probability(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    ids, target = _setup(loaded)
    curve = perturbation_curve(loaded, TEXT, list(range(len(ids))), target)
    assert curve.shape == (len(DEFAULT_FRACTIONS),) and np.isfinite(curve).all()
    assert curve[0] == pytest.approx(_prob(loaded, ids, target), rel=1e-4, abs=1e-6)
    everything = [loaded.tokenizer.pad_token_id] * (len(ids) - 1) + ids[-1:]  # the last token is kept
    assert curve[-1] == pytest.approx(_prob(loaded, everything, target), rel=1e-4, abs=1e-6)
    flat = perturbation_curve(loaded, TEXT, [], target, fractions=(0, 0.3, 1))
    np.testing.assert_allclose(flat, np.full(3, curve[0]), rtol=1e-5)


def test_hand_made_order_matches_manual_replacement(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids, target = _setup(loaded)
    order, fractions = [4, 0, 9, 2, 7], (0.0, 0.1, 0.2, 0.5, 1.0)
    curve = perturbation_curve(loaded, TEXT, order, target, fractions=fractions, replacement="eos")
    eos = loaded.tokenizer.eos_token_id
    for point, fraction in zip(curve, fractions):
        k = min(len(order), round(fraction * (len(ids) - 1)))
        masked = [eos if i in order[:k] else t for i, t in enumerate(ids)]
        assert point == pytest.approx(_prob(loaded, masked, target), rel=1e-4, abs=1e-6)
    with_last = perturbation_curve(loaded, TEXT, [len(ids) - 1, *order], target, fractions=fractions,
                                   replacement=eos)  # the tracked position is never replaced
    np.testing.assert_allclose(with_last, curve, rtol=1e-6)


def test_orders_and_auc():
    assert relevance_order(torch.tensor([0.1, 3.0, -1.0, 3.0, 99.0])) == [1, 3, 0, 2]  # last excluded, stable
    assert auc(np.array([1.0, 1.0, 0.0]), (0, 0.5, 1)) == pytest.approx(0.75)


def test_faithfulness_table(tiny_loaded):
    loaded = tiny_loaded("llama")
    pairs = tuple((w, w.upper()) for w in ("cat", "dog", "sun", "red", "big", "hot"))
    task = Task(name="upper", pairs=pairs)
    seen = []
    frame = faithfulness(loaded, task, ["gxi", "raw"], n=3, progress=lambda done, total: seen.append((done, total)))
    assert list(frame.columns) == COLUMNS
    assert [tuple(r) for r in frame[["method", "order"]].values] == [
        (m, o) for m in ("gxi", "raw", "random") for o in ORDERS]
    assert (frame["n"] == 3).all() and (frame["note"] == "").all()
    assert frame["auc_mean"].between(0, 1).all() and (frame["auc_std"] >= 0).all()
    assert seen[-1] == (3, 3) and len(frame.attrs["targets"]) == 3
    assert frame.attrs["curves"][("gxi", "most_first")].shape == (len(DEFAULT_FRACTIONS),)
    again = faithfulness(loaded, task, ["raw", "gxi"], n=3)  # deterministic (seeded prompts and random orders)
    assert again.set_index(["method", "order"]).loc[frame.set_index(["method", "order"]).index].equals(
        frame.set_index(["method", "order"]))


def test_lrp_on_a_recurrent_family_and_an_unsupported_method_as_a_note(tiny_loaded, monkeypatch):
    loaded = tiny_loaded("mamba")
    task = Task(name="upper", pairs=tuple((w, w.upper()) for w in ("cat", "dog", "sun", "red")))
    frame = faithfulness(loaded, task, ["lrp"], n=1)  # Mamba has LRP rules (MambaLRP)
    lrp = frame[frame["method"] == "lrp"]
    assert len(lrp) == 2 and (lrp["n"] == 1).all() and lrp["auc_mean"].between(0, 1).all()
    assert (lrp["note"] == "").all()
    monkeypatch.setattr(faithfulness_module, "LRP_FAMILIES", ("transformer",))  # a family without LRP
    frame = faithfulness(loaded, task, ["lrp"], n=1)
    lrp = frame[frame["method"] == "lrp"]
    assert len(lrp) == 2 and (lrp["n"] == 0).all() and lrp["auc_mean"].isna().all()
    assert "transformer" in lrp["note"].iloc[0] and (frame[frame["method"] == "random"]["n"] == 1).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(order=[0, 0]), "repeats"),
    (dict(order=[99]), "outside the prompt"),
    (dict(order=[0], fractions=(0, 1.5)), "fractions"),
    (dict(order=[0], replacement="mask"), "unknown replacement"),
    (dict(order=[0], text=" "), "empty"),
])
def test_bad_input(tiny_loaded, kwargs, message):
    loaded = tiny_loaded("llama")
    with pytest.raises(PrunescopeError, match=message):
        perturbation_curve(loaded, **{"text": TEXT, "target_id": 1, **kwargs})
    if message == "repeats":
        with pytest.raises(PrunescopeError, match="unknown relevance method"):
            faithfulness(loaded, Task(name="t", pairs=(("a", "b"), ("c", "d"))), ["nope"], n=1)
