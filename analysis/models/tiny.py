"""Tiny random-weight causal LMs of every supported family, saved in Hugging Face format.

Used by tests (and toy-model training) to exercise the normal ``from_pretrained`` path offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerFast
from transformers.pytorch_utils import Conv1D

TINY_FAMILIES: tuple[str, ...] = (
    "llama",
    "gpt2",
    "gpt_neox",
    "opt",
    "mamba",
    "mamba2",
    "rwkv",
    "recurrent_gemma",
    "gemma3_text",
    "falcon_mamba",
    "bamba",
    "falcon_h1",
    "zamba2",
    "zamba",
    "lfm2",
    "xlstm",
    "qwen3_next",
    "kimi_linear",
    "minimax",
    "jamba",
    "granitemoehybrid",
    "nemotron_h",
)

SPECIAL_TOKEN = "<|endoftext|>"
SPECIAL_ID = 0  # the special token is added to the trainer first, so it always gets id 0
MAX_POSITIONS = 256
# Weights are re-drawn as N(0, (INIT_GAIN / sqrt(fan_in))^2): HF's default std 0.02 gives nearly flat
# logits, and tied-embedding models (gpt2, opt, mamba, recurrent_gemma) then just echo the input token.
INIT_GAIN = 2.5


def _default_corpus() -> list[str]:
    words = [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum",
        "cat", "dog", "horse", "mouse", "bird", "fish", "lion", "tiger", "bear", "wolf",
        "red", "green", "blue", "yellow", "black", "white", "big", "small", "hot", "cold",
        "happy", "sad", "good", "bad", "fast", "slow", "up", "down", "yes", "no",
        "the", "a", "an", "is", "of", "and", "to", "in", "on", "with",
        "Input", "Output", "Answer", "Question", "Q", "A", "word", "label", "positive", "negative",
    ]  # fmt: skip
    capitals = {
        "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
        "Japan": "Tokyo", "China": "Beijing", "Egypt": "Cairo", "Canada": "Ottawa",
        "Russia": "Moscow", "Greece": "Athens", "Peru": "Lima", "Kenya": "Nairobi",
    }  # fmt: skip
    antonyms = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "good": "bad", "happy": "sad"}
    lines: list[str] = []
    lines += [f"{w} -> {w.upper()}\n" for w in words]
    lines += [f"{w}: {w[0]}\n" for w in words]
    lines += [f"{w} -> {len(w)}\n" for w in words]
    lines += [f"Input: {w}\nOutput: {w.upper()}\n" for w in words]
    lines += [f"The {w} is {a}.\n" for w, a in zip(words[10:20], words[20:30])]
    lines += [f"{c} -> {p}\n" for c, p in capitals.items()]
    lines += [f"Q: What is the capital of {c}?\nA: {p}\n" for c, p in capitals.items()]
    lines += [f"{a} -> {b}\n{b} -> {a}\n" for a, b in antonyms.items()]
    lines += [f"{i} + {j} = {i + j}\n" for i in range(10) for j in range(0, 10, 3)]
    lines += [f"{i}, {i + 1}, {i + 2}\n" for i in range(20)]
    lines += [" ".join(words[i : i + 6]) + "\n" for i in range(0, len(words), 6)]
    lines += [", ".join(words[i : i + 5]) + ".\n" for i in range(0, len(words), 5)]
    lines.append("".join(chr(c) for c in range(ord("a"), ord("z") + 1)) + "\n")
    lines.append(" ".join(chr(c) for c in range(ord("A"), ord("Z") + 1)) + "\n")
    lines.append("0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000\n")
    lines.append("! ? . , ; : ' \" ( ) [ ] { } - + * / = < > _ # @ & % $\n")
    accented = ["café", "crème", "à", "niño", "garçon", "élève", "déjà", "mañana", "français", "où"]
    lines += [f"{w} -> {w.upper()}\n" for w in accented]
    lines += ["é è à ù ñ ç ö ü É È À Ñ Ç\n"] * 4
    return lines


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a deterministic GPT-2-style byte-level BPE tokenizer in memory (no automatic BOS)."""
    lines = list(_default_corpus() if corpus is None else corpus)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=MAX_POSITIONS,
    )
    return fast


def tiny_config(model_type: str, vocab_size: int, **overrides) -> PretrainedConfig:
    """A tiny float32 config of ``model_type`` (one of ``TINY_FAMILIES``); ``overrides`` win."""
    ids = {"bos_token_id": SPECIAL_ID, "eos_token_id": SPECIAL_ID, "pad_token_id": SPECIAL_ID}
    per_family: dict[str, dict] = {
        "llama": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "gpt2": dict(
            n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=MAX_POSITIONS,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        ),
        "gpt_neox": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "opt": dict(
            hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS, word_embed_proj_dim=32, dropout=0.0,
            tie_word_embeddings=True,
        ),
        "mamba": dict(
            hidden_size=32, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=4,
            tie_word_embeddings=True,
        ),
        "mamba2": dict(
            hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, n_groups=1, state_size=8,
            expand=2, conv_kernel=4, chunk_size=16, tie_word_embeddings=False,
        ),
        "rwkv": dict(
            hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64,
            context_length=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "recurrent_gemma": dict(  # its MLP width is intermediate_size // 2, i.e. 64 neurons
            hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=1, lru_width=32, attention_window_size=64,
            block_types=["recurrent", "attention", "recurrent"], tie_word_embeddings=True,
        ),
        "gemma3_text": dict(  # a 4-token sliding window, so every ICL prompt outgrows it; embeddings scaled
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        ),
        "falcon_mamba": dict(  # Mamba-1 with RMS-normalised dt, B and C
            hidden_size=32, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=4, tie_word_embeddings=True,
        ),
        "bamba": dict(  # Mamba-2, attention, Mamba-2; a gated MLP in every layer
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_expand=2, mamba_d_conv=4,
            mamba_chunk_size=16, attn_layer_indices=[1], max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=False,
        ),
        "falcon_h1": dict(  # Mamba-2 and attention side by side in both layers; muP multipliers other than 1
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_expand=2,
            mamba_d_ssm=None, mamba_d_conv=4, mamba_chunk_size=16, max_position_embeddings=MAX_POSITIONS,
            embedding_multiplier=1.5, lm_head_multiplier=0.8, key_multiplier=0.9, attention_in_multiplier=1.1,
            attention_out_multiplier=0.7, ssm_in_multiplier=1.2, ssm_out_multiplier=0.6,
            ssm_multipliers=[0.9, 1.1, 1.2, 0.8, 1.3], mlp_multipliers=[1.1, 0.9], tie_word_embeddings=False,
        ),
        "zamba2": dict(  # hybrid (the shared transformer block, then Mamba-2), Mamba-2, Mamba-2
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
            n_mamba_heads=4, mamba_headdim=16, mamba_ngroups=1, mamba_d_state=8, mamba_expand=2, mamba_d_conv=4,
            chunk_size=16, layers_block_type=["hybrid", "mamba", "mamba"], num_mem_blocks=1,
            use_shared_attention_adapter=False, use_mem_rope=True, max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True,  # transformers ties the hybrid layers' shared blocks only with this
        ),
        "zamba": dict(  # Mamba (2 mamba heads), then hybrid (the shared transformer block, then Mamba); untied:
            # transformers 5.23 ties the hybrid layers' shared blocks only with tie_word_embeddings, and cannot
            # build a tied Zamba with one hybrid layer (its tie pattern finds nothing to tie)
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            n_mamba_heads=2, mamba_d_state=8, mamba_expand=2, mamba_d_conv=4, layers_block_type=["mamba", "hybrid"],
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "lfm2": dict(  # conv, attention, conv; the MLP width as given (no auto-adjust to a multiple of 256)
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, conv_L_cache=3, layer_types=["conv", "full_attention", "conv"],
            block_auto_adjust_ff_dim=False, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        ),
        "xlstm": dict(  # q/k and v widths 2 x hidden = 64, a multiple of 64 as xLSTMCache's state shapes assume;
            # chunks of 8 tokens, so a prompt runs through the chunkwise kernel and the recurrent one for its tail
            hidden_size=32, num_hidden_layers=2, num_heads=4, qk_dim_factor=2.0, v_dim_factor=2.0,
            ffn_proj_factor=2.0, ffn_round_up_to_multiple_of=64, chunk_size=8, tie_word_embeddings=False,
        ),
        "qwen3_next": dict(  # dense MLPs (no experts); 4 value heads on 2 key heads, as the real model groups them
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=0,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "kimi_linear": dict(  # dense MLPs in every layer; MLA (multi-head latent attention) in the middle one
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=8,
            v_head_dim=8, linear_num_heads=2, linear_head_dim=8, linear_conv_kernel_dim=4,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            mlp_layer_types=["dense"] * 3, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "minimax": dict(  # lightning attention then softmax attention, each with a MoE of 4 x 16 channels;
            # blocks of 4 tokens, so a prompt spans several of transformers' lightning blocks
            hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, block_size=4,
            layer_types=["linear_attention", "full_attention"],
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        # hybrids: every layer 64 neurons (neuron IG needs equal widths): 4 experts x 16 channels per MoE layer
        "jamba": dict(  # Mamba-1 / attention, each followed by a MoE layer (expert_layer_period 1)
            hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            num_experts=4, num_experts_per_tok=2, expert_layer_period=1, expert_layer_offset=0,
            attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2,
            mamba_dt_rank=4, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "granitemoehybrid": dict(  # Mamba-2 / attention, each with a MoE layer and a shared MLP
            hidden_size=32, intermediate_size=16, shared_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
            layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
            mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16, position_embedding_type="rope",
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
        "nemotron_h": dict(  # one module per block: Mamba-2, MoE, attention, MLP
            hidden_size=32, layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=64, mamba_num_heads=4,
            mamba_head_dim=16, n_groups=1, ssm_state_size=8, conv_kernel=4, chunk_size=16, n_routed_experts=4,
            moe_intermediate_size=16, moe_shared_expert_intermediate_size=16, num_experts_per_tok=2,
            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        ),
    }  # fmt: skip
    if model_type not in per_family:
        raise ValueError(f"unknown tiny model type {model_type!r}; expected one of {TINY_FAMILIES}")
    kwargs = {**ids, **per_family[model_type], "vocab_size": vocab_size, "dtype": "float32", **overrides}
    return AutoConfig.for_model(model_type, **kwargs)


@torch.no_grad()
def _reinit(model: torch.nn.Module, gain: float = INIT_GAIN) -> None:
    """Fan-in-scaled normal init of Linear/Conv1D/Embedding weights (biases and other params kept)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.weight.normal_(0.0, gain / module.embedding_dim**0.5)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, gain / module.in_features**0.5)
        elif isinstance(module, Conv1D):  # gpt2's transposed linear: weight is (in, out)
            module.weight.normal_(0.0, gain / module.weight.shape[0] ** 0.5)
        # MoE experts' 3D weights [experts, out, in]; Zamba's per-mamba-head x_proj / dt_proj [heads, out, in]
        for name in ("gate_up_proj", "up_proj", "down_proj", "x_proj_weight", "dt_proj_weight"):
            weight = getattr(module, name, None)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() == 3:
                weight.normal_(0.0, gain / weight.shape[-1] ** 0.5)
        router = getattr(module, "weight", None)  # MoE routers keep a bare [experts, hidden] weight
        if hasattr(module, "top_k") and not isinstance(module, torch.nn.Linear) and \
                isinstance(router, torch.nn.Parameter) and router.dim() == 2:
            router.normal_(0.0, gain / router.shape[-1] ** 0.5)


def build_tiny_model(model_type: str, out_dir: str | Path, seed: int = 0, **config_overrides) -> Path:
    """Build a tiny random ``model_type`` LM plus tokenizer and save both to ``out_dir``."""
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = tiny_config(model_type, len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    _reinit(model)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
