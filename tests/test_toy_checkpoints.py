"""The shipped toy checkpoints: load by name, have learned in-context recall, and their implicit attention is
exact (the matrices reproduce each layer's real output)."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.models import load_model, model_choices
from analysis.models.loader import TOY_DIR
from analysis.models.toy import recall_accuracy, recall_examples

TOYS = {"toy-transformer": "transformer", "toy-mamba": "mamba", "toy-mamba2": "mamba2", "toy-rwkv": "rwkv",
        "toy-griffin": "griffin"}


def test_every_toy_is_listed_with_a_card():
    assert set(TOYS) <= set(model_choices())
    for name in TOYS:
        card = (TOY_DIR / name / "README.md").read_text()
        assert "Held-out recall accuracy" in card and "M-parameter" in card
        assert json.loads((TOY_DIR / name / "training.json").read_text())["parameters"] <= 5_000_000


@pytest.mark.parametrize("name", list(TOYS))
def test_toys_load_by_name_and_recall_well_above_chance(name):
    loaded = load_model(name, device="cpu")
    assert loaded.family == TOYS[name]
    accuracy = recall_accuracy(loaded.model, loaded.tokenizer, recall_examples(7, 200))  # not the card's seed
    card = json.loads((TOY_DIR / name / "training.json").read_text())
    # chance is 0.1 (ten digits); with 200 queries its standard error is 0.021: 0.4 is four times chance
    assert accuracy >= 0.4, f"{name}: held-out recall {accuracy:.2f} (chance 0.1)"
    assert abs(accuracy - card["recall_accuracy"]) < 0.1


@pytest.mark.parametrize("name,capture,reconstruct,forms", [
    ("toy-mamba", "capture_mamba", "mamba_reconstruct", ("s6", "unified")),
    ("toy-mamba2", "capture_mamba", "mamba_reconstruct", ("s6", "unified")),
    ("toy-rwkv", "capture_rwkv", "rwkv_reconstruct", ("unified", "wkv")),
    ("toy-griffin", "capture_griffin", "griffin_reconstruct", ("unified", "rglru")),
])
def test_toy_implicit_attention_is_exact(name, capture, reconstruct, forms):
    import importlib

    module = importlib.import_module(f"analysis.implicit_attention.{capture.split('_')[1]}")
    loaded = load_model(name, device="cpu")
    ids = torch.tensor(loaded.tokenizer("q:7 b:2 m:5 x:1 k:9 | b:2 x:1 k:").input_ids)
    for layer, internals in getattr(module, capture)(loaded, ids).items():
        for form in forms:
            rebuilt, observed = getattr(module, reconstruct)(internals, form)
            assert float((rebuilt - observed).norm() / observed.norm()) < 1e-4, (layer, form)
