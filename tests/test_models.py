"""Loader and adapters on tiny random models of every family, loaded through the users' loader."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.errors import ModelLoadError, UnsupportedArchitectureError
from analysis.models import load_model
from analysis.models.tiny import TINY_FAMILIES
from tests.conftest import FAMILY_OF

EXPECTED_WIDTH = 64  # every tiny config has 64 neurons per layer


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_adapter_layers_and_neuron_sites(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    config = loaded.model.config
    assert loaded.family == FAMILY_OF[model_type]
    assert loaded.n_layers == config.num_hidden_layers
    assert loaded.adapter.neuron_counts() == [EXPECTED_WIDTH] * loaded.n_layers
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_hooks_see_every_site_with_its_width(tiny_loaded, model_type):
    loaded = tiny_loaded(model_type)
    ids = loaded.tokenizer("apple -> APPLE\ncat ->", return_tensors="pt").input_ids
    seen = {}

    def capture(layer, activation):
        seen[layer] = activation.detach().clone()

    with loaded.adapter.hook_sites(capture):
        loaded.model(ids)
    assert sorted(seen) == list(range(loaded.n_layers))
    for activation in seen.values():
        assert activation.shape[-1] == EXPECTED_WIDTH
        assert activation.reshape(-1, EXPECTED_WIDTH).shape[0] == ids.shape[1]  # one row per token
        assert activation.abs().sum() > 0


def test_hooks_can_replace_the_activation_and_are_removed(tiny_loaded):
    loaded = tiny_loaded("gpt2")
    ids = loaded.tokenizer("cat -> dog\n", return_tensors="pt").input_ids
    with loaded.lock:
        before = loaded.model(ids).logits
        with loaded.adapter.hook_sites(lambda layer, a: a * 0.5, layers=[1]):
            halved = loaded.model(ids).logits
        after = loaded.model(ids).logits
    assert not torch.allclose(before, halved)
    assert torch.equal(after, before)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(UnsupportedArchitectureError, match=r"architecture 'bert'.*supported: transformer \(llama"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("spec,message", [
    ("/no/such/dir", r"unknown model '/no/such/dir'"),
    ("", r"no model given"),
    ("not a valid id!", r"unknown model"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec, device="cpu")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_offline_hub_id_fails_fast_with_the_id(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ModelLoadError, match=r"could not load model 'someone/some-model'.*cannot be reached"):
        load_model("someone/some-model", device="cpu")


def test_bad_device_and_dtype(tiny_dirs):
    from analysis.errors import PrunescopeError

    with pytest.raises(PrunescopeError, match="unknown dtype 'float8'"):
        load_model(tiny_dirs["llama"], device="cpu", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(PrunescopeError, match="CUDA is not available"):
            load_model(tiny_dirs["llama"], device="cuda")


def test_fingerprint_depends_on_weights(tiny_dirs, tmp_path):
    from analysis.models.tiny import build_tiny_model

    a = load_model(tiny_dirs["llama"], device="cpu")
    b = load_model(tiny_dirs["llama"], device="cpu")
    c = load_model(str(build_tiny_model("llama", tmp_path / "other", seed=1)), device="cpu")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_fingerprint_ignores_where_the_model_lives(tiny_dirs, tmp_path):
    """The same weights copied elsewhere and loaded by another process under another cache and home keep their
    fingerprint (so shipped and shared results are found); config provenance never reaches the hash."""
    import os
    import shutil
    import subprocess
    import sys

    from analysis.models.loader import architecture_json

    copy = shutil.copytree(tiny_dirs["llama"], tmp_path / "elsewhere" / "model")
    here = load_model(tiny_dirs["llama"], device="cpu")
    code = ("import sys; from analysis.models import load_model; "
            "print(load_model(sys.argv[1], device='cpu').fingerprint())")
    env = dict(os.environ, HOME=str(tmp_path / "home"), PRUNESCOPE_CACHE=str(tmp_path / "cache"))
    there = subprocess.run([sys.executable, "-c", code, str(copy)], env=env, capture_output=True, text=True, check=True)
    assert there.stdout.strip().splitlines()[-1] == here.fingerprint()
    assert str(tiny_dirs["llama"]) in here.model.config.to_json_string(use_diff=False)  # the path is in it...
    assert str(tiny_dirs["llama"]) not in architecture_json(here.model.config)  # ...but not in what is hashed
    assert '"hidden_size"' in architecture_json(here.model.config)


def test_pickled_weights_are_refused_unless_allowed(tiny_dirs, tmp_path, capsys):
    """A directory whose weights are a pickle (pytorch_model.bin) once loaded (or died with an UnpicklingError
    traceback); now it is refused with one line, and loads only with an explicit opt-in."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from analysis.cli import main

    directory = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["llama"], directory)
    weights = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(weights, directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"only pickled weights \(pytorch_model.bin\), which can run code"):
        load_model(str(directory), device="cpu")
    code = main(["eval", "--model", str(directory), "--task", "to-upper", "--n", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--allow-pickle-weights" in err and len(err.strip().splitlines()) == 1
    allowed = load_model(str(directory), device="cpu", allow_pickle_weights=True)
    reference = load_model(tiny_dirs["llama"], device="cpu")
    assert allowed.fingerprint() == reference.fingerprint()
