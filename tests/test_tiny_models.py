"""Tiny random models of every family save and reload through the normal Hugging Face path."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from analysis.models import tiny

EXPECTED_CLASS = {
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "opt": "OPTForCausalLM",
    "mamba": "MambaForCausalLM",
    "mamba2": "Mamba2ForCausalLM",
    "rwkv": "RwkvForCausalLM",
    "recurrent_gemma": "RecurrentGemmaForCausalLM",
    "falcon_mamba": "FalconMambaForCausalLM",
    "bamba": "BambaForCausalLM",
    "falcon_h1": "FalconH1ForCausalLM",
    "zamba2": "Zamba2ForCausalLM",
    "zamba": "ZambaForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "lfm2": "Lfm2ForCausalLM",
    "xlstm": "xLSTMForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM",
    "kimi_linear": "KimiLinearForCausalLM",
    "minimax": "MiniMaxForCausalLM",
    "jamba": "JambaForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "nemotron_h": "NemotronHForCausalLM",
}
PROMPT = "apple -> APPLE\nFrance -> Paris\ncat ->"
UNICODE_TEXT = "héllo -> HÉLLO\n 2, 3 çà ñ 日本 🙂\t!"


def test_families_cover_expected_classes():
    assert set(tiny.TINY_FAMILIES) == set(EXPECTED_CLASS)


def _build_capturing(monkeypatch, model_type, out_dir, seed=0):
    """Run build_tiny_model and return (saved dir, the in-memory model it built)."""
    built = []
    real_from_config = AutoModelForCausalLM.from_config

    class _Spy:
        @staticmethod
        def from_config(config, **kwargs):
            model = real_from_config(config, **kwargs)
            built.append(model)
            return model

    monkeypatch.setattr(tiny, "AutoModelForCausalLM", _Spy)
    path = tiny.build_tiny_model(model_type, out_dir, seed=seed)
    monkeypatch.undo()
    assert len(built) == 1
    return path, built[0]


@torch.no_grad()
def _logits(model, input_ids):
    return model(input_ids).logits


@pytest.mark.parametrize("model_type", tiny.TINY_FAMILIES)
def test_build_reload_generate(model_type, tmp_path, monkeypatch):
    path, built = _build_capturing(monkeypatch, model_type, tmp_path / "m0", seed=0)
    assert (path / "model.safetensors").is_file()

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    model.eval()
    assert type(model).__name__ == EXPECTED_CLASS[model_type]
    assert model.dtype == torch.float32

    enc = tok(PROMPT, return_tensors="pt")
    ids = enc["input_ids"]
    reloaded = _logits(model, ids)
    assert torch.equal(reloaded, _logits(built, ids))
    assert torch.isfinite(reloaded).all()
    # Non-trivial random model: logits vary across the vocabulary and across positions.
    assert reloaded[0].std(-1).min() > 0.5
    assert len(set(reloaded[0].argmax(-1).tolist())) > 1

    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 5
    assert torch.equal(out[0, : ids.shape[1]], ids[0])

    other = AutoModelForCausalLM.from_pretrained(tiny.build_tiny_model(model_type, tmp_path / "m1", seed=1))
    assert not torch.allclose(_logits(other.eval(), ids), reloaded)


def test_tokenizer_roundtrip_and_special_tokens(tmp_path):
    tok = tiny.build_tokenizer()
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for t in (tok, reloaded):
        ids = t(UNICODE_TEXT)["input_ids"]
        assert t.decode(ids) == UNICODE_TEXT
        assert ids[0] != t.bos_token_id  # no automatic BOS
        assert t.bos_token == t.eos_token == t.pad_token == t.unk_token == "<|endoftext|>"
        assert t.padding_side == "left"
    assert reloaded.get_vocab() == tok.get_vocab()
    # Common ICL text splits into multi-byte pieces, not single bytes.
    text = "apple -> APPLE\nQ: What is the capital of France?\nA: Paris\n"
    assert len(tok(text)["input_ids"]) <= len(text) // 2


def test_tokenizer_is_deterministic():
    a, b = tiny.build_tokenizer(), tiny.build_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 512
    custom = tiny.build_tokenizer(["abc abc abd\n"] * 3, vocab_size=300)
    assert custom.decode(custom("zzz é")["input_ids"]) == "zzz é"


def test_tiny_config_overrides_and_ids():
    cfg = tiny.tiny_config("llama", 512, num_hidden_layers=1)
    assert cfg.num_hidden_layers == 1 and cfg.vocab_size == 512
    assert cfg.bos_token_id == cfg.eos_token_id == cfg.pad_token_id == tiny.build_tokenizer().eos_token_id
    rg = tiny.tiny_config("recurrent_gemma", 512)
    assert {"recurrent", "attention"} <= set(rg.block_types[: rg.num_hidden_layers])
    with pytest.raises(ValueError):
        tiny.tiny_config("bert", 512)
