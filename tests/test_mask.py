"""NeuronMask: zeroing by hooks equals zeroing the weights that read the neuron; outputs restore exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from analysis.errors import PrunescopeError
from analysis.models.experts import ExpertNeurons
from analysis.models.tiny import TINY_FAMILIES
from analysis.pruning import NeuronMask

TEXT = "apple -> APPLE\nFrance -> Paris\ncat ->"
MASK = NeuronMask.from_pairs([(0, 3), (0, 17), (1, 5), (1, 40), (1, 63)])


def logits(loaded, ids):
    with loaded.lock, torch.no_grad():
        return loaded.model(ids).logits


def weight_edited_reference(loaded):
    """An independent reference: a copy of the model whose reading weights of the masked neurons are zero."""
    model = copy.deepcopy(loaded.model)
    for layer, indices in MASK.by_layer().items():
        site = loaded.adapter.site(layer)
        # an input site is its own reader (Zamba2's path differs per layer); an output site is read by width_from
        reader = model.get_submodule(site.path if site.io == "input" else
                                     f"{loaded.adapter.layout.layers}.{layer}.{loaded.adapter.layout.width_from}")
        with torch.no_grad():
            if isinstance(reader, ExpertNeurons):  # MoE: neuron e * I + c is column c of expert e's down_proj
                experts = model.get_submodule(site.path.rpartition(".")[0])
                for index in indices:
                    experts.down_proj[index // experts.intermediate_dim][:, index % experts.intermediate_dim] = 0
            elif hasattr(reader, "in_features"):
                reader.weight[:, indices] = 0  # nn.Linear: weight is [out, in]
            else:
                reader.weight[indices, :] = 0  # GPT-2 Conv1D: weight is [in, out]
        assert site.width == loaded.adapter.neuron_counts()[layer]
    return model


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_mask_matches_weight_edit_and_restores_exactly(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    before = logits(loaded, ids)
    with loaded.session(MASK):
        masked = logits(loaded, ids)
    after = logits(loaded, ids)
    with torch.no_grad():
        reference = weight_edited_reference(loaded)(ids).logits
    assert torch.equal(before, after)  # bit-identical once the context is left
    assert (masked - before).abs().max() > 1e-3  # the mask does something
    torch.testing.assert_close(masked, reference, rtol=1e-5, atol=1e-5)


def test_masked_sites_read_zero(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    seen = {}
    with loaded.session(MASK), loaded.adapter.hook_sites(lambda layer, a: seen.__setitem__(layer, a.clone())):
        loaded.model(ids)
    assert seen[0][..., [3, 17]].abs().max() == 0 and seen[0][..., 4].abs().max() > 0
    assert seen[1][..., [5, 40, 63]].abs().max() == 0


def test_json_round_trip(tmp_path):
    path = MASK.save(tmp_path / "mask.json")
    loaded = NeuronMask.load(path)
    assert loaded == MASK and len(loaded) == 5
    assert loaded.by_layer() == {0: [3, 17], 1: [5, 40, 63]}


def test_mask_outside_the_model_is_rejected(tiny_loaded):
    loaded = tiny_loaded("llama")
    with pytest.raises(PrunescopeError, match="neuron 64 of layer 1 does not exist"):
        with loaded.session(NeuronMask.from_pairs([(1, 64)])):
            pass
    with pytest.raises(PrunescopeError, match="layer 9 does not exist"):
        with loaded.session(NeuronMask.from_pairs([(9, 0)])):
            pass


@pytest.mark.parametrize("content,message", [
    ("{", "line 1: invalid JSON"),
    ('{"neurons": [[0, 1]]}', "not a prunescope mask"),
    ('{"format": "prunescope-mask/1", "neurons": [[0]]}', "pairs of non-negative integers"),
    ('{"format": "prunescope-mask/1", "neurons": [[1.7, 2.9]]}', r"integers \(got \[1.7, 2.9\]\)"),  # not 1, 2
    ('{"format": "prunescope-mask/1", "neurons": [[true, 3]]}', "non-negative integers"),
    ('{"format": "prunescope-mask/1", "neurons": [[-1, 3]]}', "non-negative integers"),
    ('{"format": "prunescope-mask/1", "neurons": [[0, 1]], "meta": [1, 2]}', "meta must be an object"),
    ('{"format": "prunescope-mask/1", "neurons": [[0, 1]], "meta": {"pairs": 1}}', r"\(got \['pairs'\]\)"),
    ('{"format": "prunescope-mask/1", "neurons": [[0, 1' + "0" * 5000 + ']]}', "a number longer than 4300 digits"),
    ('{"format": "prunescope-mask/1", "neurons": [[0, 1' + "0" * 4000 + ']]}', "must be at most 2147483647"),
])
def test_bad_mask_files(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(PrunescopeError, match=message) as info:
        NeuronMask.load(path)
    assert str(info.value).startswith(f"mask file {path}: ") and len(str(info.value)) < 300


def test_a_directory_or_unreadable_mask_file_is_one_line(tmp_path):
    with pytest.raises(PrunescopeError, match=f"mask file {tmp_path}: a directory, not a mask file"):
        NeuronMask.load(tmp_path)
    with pytest.raises(PrunescopeError, match=r"m\.json: not UTF-8 text \(byte 0xff\)"):
        NeuronMask.from_bytes(b"\xff{}", "m.json")


@pytest.mark.parametrize("text,shown", [
    ("1.²", "'1.²'"),  # '²'.isdigit() is True, but int('²') is a ValueError
    ("3.٣", "'3.٣'"),  # an Arabic-Indic digit: int() would quietly read it as 3
    ("1." + "9" * 5000, "'1." + "9" * 38 + "…'"),  # int() refuses more than 4300 digits
    ("0.1,1.2x", "'1.2x'"),
])
def test_a_links_mask_is_ascii_layer_dot_index_pairs(text, shown):
    with pytest.raises(PrunescopeError) as info:
        NeuronMask.from_text(text, "mask in the link")
    assert str(info.value) == (f"mask in the link: {shown} is not a layer.index pair (two whole numbers of at "
                               "most 9 digits, e.g. 3.17)")
    assert NeuronMask.from_text(" 3.17, 0.999999999 ").neurons == {(3, 17), (0, 999_999_999)}


def test_a_mask_file_keeps_its_known_meta():
    mask = NeuronMask.from_bytes(b'{"format": "prunescope-mask/1", "neurons": [[0, 1], [2, 3]], '
                                 b'"meta": {"method": "copying-ig", "k": 2, "model": "default"}}')
    assert mask.neurons == {(0, 1), (2, 3)} and mask.meta == {"method": "copying-ig", "k": 2, "model": "default"}
