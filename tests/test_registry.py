"""The family registry: complete entries (each naming its family module's typed ops), every tiny model resolves
to its family, FORMS / LRP_FAMILIES come from it, Griffin's implicit layers have one definition, and unknown
names are one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from analysis.attention import FORMS, attention_maps, default_form
from analysis.attribution.propagation import LRP_FAMILIES
from analysis.errors import PrunescopeError, UnsupportedArchitectureError
from analysis.families import FAMILIES, Family, FamilyOps, RelevanceTarget, family, family_for, family_of, forms
from analysis.implicit_attention.griffin import griffin_recurrent_layers
from analysis.models.adapters import adapter_class_for, registered_adapters
from analysis.models.tiny import TINY_FAMILIES

FAMILY_OF = {"llama": "transformer", "gpt2": "transformer", "gpt_neox": "transformer", "opt": "transformer",
             "mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv", "recurrent_gemma": "griffin",
             "gemma3_text": "transformer", "falcon_mamba": "mamba", "bamba": "mamba2_hybrid",
             "falcon_h1": "mamba2_hybrid", "zamba2": "zamba2", "zamba": "zamba2", "lfm2": "lfm2",
             "xlstm": "xlstm", "qwen3_next": "gated_deltanet", "kimi_linear": "kimi_delta", "minimax": "minimax",
             "jamba": "jamba", "granitemoehybrid": "granitemoehybrid", "nemotron_h": "nemotron_h"}
HYBRIDS = ("jamba", "granitemoehybrid", "nemotron_h")
IMPLICIT_FNS = ("capture", "reduced", "matrices", "relevance_target")
TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"


def test_registry_names_every_adapter_once():
    assert list(FAMILIES) == ["transformer", "mamba", "mamba2", "rwkv", "griffin", "mamba2_hybrid", "zamba2", "lfm2",
                              "xlstm", "gated_deltanet", "kimi_delta", "minimax", *HYBRIDS]
    assert tuple(f.adapter for f in FAMILIES.values()) == registered_adapters()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_has_every_field(name):
    entry = FAMILIES[name]
    assert dataclasses.is_dataclass(entry) and type(entry).__dataclass_params__.frozen
    assert entry.name == name == entry.adapter.family
    assert entry.model_types and all(adapter_class_for(t) is entry.adapter for t in entry.model_types)
    assert entry.forms and all(isinstance(f, str) for f in entry.forms) and entry.default_form == entry.forms[0]
    assert callable(entry.implicit_layers) and isinstance(entry.supports_lrp, bool)
    implicit = name != "transformer"
    assert entry.has_implicit_layers is implicit
    assert isinstance(entry.ops, FamilyOps) and type(entry.ops).__dataclass_params__.frozen
    for field in IMPLICIT_FNS:  # implicit families: every function set; others: none
        function = getattr(entry.ops, field)
        assert callable(function) if implicit else function is None, field
    assert entry.has_softmax_layers is (name in ("transformer", "griffin", "mamba2_hybrid", "zamba2", "lfm2",
                                                "gated_deltanet", "kimi_delta", "minimax", *HYBRIDS))
    if entry.has_softmax_layers:
        assert callable(entry.ops.softmax_maps)
    assert entry.supports_lrp and entry.lrp is not None  # MambaLRP rules for the recurrent families
    assert bool(entry.lrp) is (name != "transformer")  # transformers: softmax and norms only, no mixer rules


def test_transformer_layouts_include_gemma3_text():
    assert "gemma3_text" in FAMILIES["transformer"].model_types
    assert family_for("gemma3_text") is FAMILIES["transformer"]


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_every_tiny_model_resolves_to_its_family(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    entry = FAMILIES[FAMILY_OF[model_type]]
    assert family_of(loaded) is entry and family_for(model_type) is entry
    assert type(loaded.adapter) is entry.adapter
    layers = entry.implicit_layers(loaded.adapter)
    want = {"transformer": [], "griffin": [0, 2], "lfm2": [0, 2], "gated_deltanet": [0, 2],
            "kimi_delta": [0, 2], "minimax": [0], "jamba": [0], "granitemoehybrid": [0],
            "nemotron_h": [0]}.get(entry.name, list(range(loaded.n_layers)))
    want = [0, 2] if model_type == "bamba" else want  # its layer 1 is attention
    assert layers == want


def test_forms_and_lrp_families_come_from_the_registry():
    assert FORMS == forms() == {n: f.forms for n, f in FAMILIES.items()}
    assert FORMS == {"transformer": ("softmax",), "mamba": ("s6", "unified"), "mamba2": ("s6", "unified"),
                     "rwkv": ("unified", "wkv"), "griffin": ("unified", "rglru"),
                     "mamba2_hybrid": ("s6", "unified", "softmax"), "zamba2": ("s6", "unified", "softmax"),
                     "lfm2": ("unified", "conv"), "xlstm": ("mlstm", "unified"),
                     "gated_deltanet": ("delta", "unified"), "kimi_delta": ("kda", "unified"),
                     "minimax": ("lightning", "unified"), **dict.fromkeys(HYBRIDS, ("s6", "unified"))}
    assert {n: default_form(n) for n in FAMILIES} == {"transformer": "softmax", "mamba": "s6", "mamba2": "s6",
                                                      "rwkv": "unified", "griffin": "unified", "mamba2_hybrid": "s6",
                                                      "zamba2": "s6", "lfm2": "unified", "xlstm": "mlstm",
                                                      "gated_deltanet": "delta", "kimi_delta": "kda",
                                                      "minimax": "lightning",
                                                      **dict.fromkeys(HYBRIDS, "s6")}
    assert LRP_FAMILIES == tuple(FAMILIES)  # every family has conservative rules


def test_griffin_recurrent_layers_have_one_definition(tiny_loaded):
    loaded = tiny_loaded("recurrent_gemma")
    assert griffin_recurrent_layers(loaded) == FAMILIES["griffin"].implicit_layers(loaded.adapter) == [0, 2]
    blocks = [loaded.adapter.block(i).temporal_block for i in (0, 2)]
    assert loaded.adapter._recurrent_blocks() == blocks


def test_check_form_is_a_one_line_error():
    assert FAMILIES["rwkv"].check_form(None) == "unified" and FAMILIES["rwkv"].check_form("wkv") == "wkv"
    with pytest.raises(PrunescopeError, match=r"^rwkv models have no 's6' attention form; use unified or wkv$"):
        FAMILIES["rwkv"].check_form("s6")


@pytest.mark.parametrize("call", [lambda: family("bert"), lambda: default_form("bert")])
def test_unknown_family_is_a_one_line_error(call):
    with pytest.raises(UnsupportedArchitectureError, match=r"^unknown architecture family 'bert'; supported: "
                                                           r"transformer \(llama.*griffin \(recurrent_gemma\); "
                                                           r"mamba2_hybrid \(bamba, falcon_h1\); "
                                                           r"zamba2 \(zamba, zamba2\); "
                                                           r"lfm2 \(lfm2\); xlstm \(xlstm\); gated_deltanet "
                                                           r"\(qwen3_next\); kimi_delta \(kimi_linear\); "
                                                           r"minimax \(minimax\); "
                                                           r"jamba \(jamba\); "
                                                           r"granitemoehybrid \(granitemoehybrid\); "
                                                           r"nemotron_h \(nemotron_h\)$"):
        call()


def test_unknown_model_type_gives_the_loaders_error():
    with pytest.raises(UnsupportedArchitectureError) as registry_error:
        family_for("bert")
    with pytest.raises(UnsupportedArchitectureError) as loader_error:
        adapter_class_for("bert")
    assert str(registry_error.value) == str(loader_error.value)
    assert str(registry_error.value).startswith("model has architecture 'bert', which prunescope does not support")
    assert "\n" not in str(registry_error.value)


@pytest.mark.parametrize("model_type,form,module,gated,group", [
    ("mamba", "s6", "mixer.out_proj", True, 1), ("mamba", "unified", "mixer.out_proj", False, 1),
    ("mamba2", "s6", "mixer.norm", False, "head_dim"), ("mamba2", "unified", "mixer.norm", False, 1),
    ("falcon_mamba", "s6", "mixer.out_proj", True, 1), ("bamba", "s6", "mamba.norm", False, "head_dim"),
    ("bamba", "unified", "mamba.norm", False, 1), ("falcon_h1", "s6", "mamba.out_proj", True, "head_dim"),
    ("falcon_h1", "unified", "mamba.out_proj", False, 1),
    ("zamba2", "s6", "mamba_decoder.mamba.norm", False, "head_dim"),
    ("zamba", "s6", "mamba.out_proj", True, 1), ("zamba", "unified", "mamba.out_proj", False, 1),
    ("rwkv", "unified", "attention.output", False, 1), ("rwkv", "wkv", "attention.output", True, 1),
    ("recurrent_gemma", "rglru", "temporal_block.rg_lru", False, 1),
    ("recurrent_gemma", "unified", "temporal_block.linear_out", False, 1),
    ("lfm2", "unified", "conv.out_proj", False, 1), ("lfm2", "conv", "conv.out_proj", False, 1),
    ("xlstm", "mlstm", "mlstm_layer.multihead_norm", False, "head_dim"),
    ("xlstm", "unified", "mlstm_layer.out_proj", False, 1),
    ("jamba", "s6", "mamba.out_proj", True, 1), ("granitemoehybrid", "s6", "mamba.norm", False, "head_dim"),
    ("nemotron_h", "unified", "mixer.norm", False, 1),
])
def test_relevance_targets(tiny_loaded, model_type, form, module, gated, group):
    """Each form's target: the hooked module, its source u [T, C] and the gate that turns the hooked gradient
    into dF/dy (SiLU(z) for Mamba s6, sigmoid(r) for RWKV wkv)."""
    loaded = tiny_loaded(model_type)
    entry, layer = family_of(loaded), 0
    inn = entry.ops.capture(loaded, torch.tensor([loaded.tokenizer(TEXT).input_ids]), [layer])[layer]
    block = loaded.adapter.block(layer)
    spot = entry.ops.relevance_target(block, inn, form)
    assert isinstance(spot, RelevanceTarget) and spot.module is block.get_submodule(module)
    gated_norm = ("mamba2", "bamba", "granitemoehybrid", "nemotron_h")
    assert spot.how == ("gated" if form == "unified" and model_type in gated_norm else
                        "output" if form == "rglru" else "input")
    assert spot.source.shape[0] == len(loaded.tokenizer(TEXT).input_ids)
    assert spot.group == (inn.head_dim if group == "head_dim" else group)
    if group == "head_dim":
        assert spot.group > 1
    if not gated:
        assert spot.gate is None
    elif model_type in ("mamba", "falcon_mamba", "falcon_h1", "jamba", "zamba"):
        torch.testing.assert_close(spot.gate, torch.nn.functional.silu(inn.z))
    else:
        torch.testing.assert_close(spot.gate, torch.sigmoid(inn.receptance))


def test_family_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["mamba"].forms = ("s6",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FAMILIES["mamba"].ops.forms = ("s6",)
    assert isinstance(FAMILIES["mamba"], Family)


def test_a_missing_function_is_a_one_line_error():
    with pytest.raises(PrunescopeError, match=r"^transformer models have no capture$"):
        FAMILIES["transformer"].require("capture")
    assert FAMILIES["griffin"].require("softmax_maps") is FAMILIES["griffin"].ops.softmax_maps


def _stub_reduced(internals, form, reduction, budget_bytes):
    length = internals.length
    return torch.full((length, length), 10.0 + internals.layer).tril()


def _stub_softmax(loaded, input_ids, layers, reduction):
    length = input_ids.shape[1]
    return {i: torch.eye(length) * (20 + i) for i in layers}


def test_attention_maps_loop_over_the_registry_entry(tiny_loaded, monkeypatch):
    """The dispatcher is generic: a changed entry (implicit layer 0 only, stub reduced and softmax maps) is
    exactly what attention_maps returns."""
    loaded = tiny_loaded("mamba")
    ops = dataclasses.replace(FAMILIES["mamba"].ops, implicit_layers=lambda adapter: [0], reduced=_stub_reduced,
                              softmax_maps=_stub_softmax)
    stub = dataclasses.replace(FAMILIES["mamba"], ops=ops)
    monkeypatch.setitem(FAMILIES, "mamba", stub)
    maps = attention_maps(loaded, TEXT, layers=[0, 1])
    length = len(loaded.tokenizer(TEXT).input_ids)
    assert maps.kinds == ["implicit", "softmax"]
    torch.testing.assert_close(maps.attn[0], torch.full((length, length), 10.0).tril())
    torch.testing.assert_close(maps.attn[1], torch.eye(length) * 21)
