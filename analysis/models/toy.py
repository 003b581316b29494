"""Small trained checkpoints (<= 5 M parameters) for the attention-free views, trained on CPU offline.

No Mamba, RWKV or Griffin weights can be downloaded here, so the project trains its own on a synthetic
corpus it generates, deterministic from a seed:

- **recall** (in-context key->value retrieval): ``"q:7 b:2 m:5 x:1 | b:2 x:1\\n"``: after the bar each
  queried key must be answered with the digit it was given before (chance: 1 in 10);
- **copy**: ``"copy: kqzm -> kqzm\\n"``;
- **ICL mappings** from the built-in tasks (letters, case, lists, antonyms, vowel counts), a few shots each.

The held-out recall accuracy (fresh keys and values, a seed never used in training) is measured by greedy
answers to every query and written to the checkpoint's card, so the attention maps of a toy model show
real retrieval rather than noise.
"""

from __future__ import annotations

import json
import math
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from analysis.bounds import check, check_number
from analysis.models.hooks import model_lock
from analysis.models.tiny import build_tokenizer, tiny_config
from analysis.models.train_paths import parallel_training
from analysis.paths import ASSETS_DIR

ARCHS = {"transformer": "llama", "mamba": "mamba", "mamba2": "mamba2", "rwkv": "rwkv", "griffin": "recurrent_gemma"}
WIDTH = 128
TOY_CONFIGS: dict[str, dict[str, Any]] = {  # about 0.5-1.5 M parameters each
    "llama": dict(hidden_size=WIDTH, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4),
    "mamba": dict(hidden_size=WIDTH, num_hidden_layers=4, state_size=16, expand=2, conv_kernel=4),
    "mamba2": dict(hidden_size=WIDTH, num_hidden_layers=4, num_heads=8, head_dim=32, n_groups=1, state_size=16,
                   expand=2, conv_kernel=4, chunk_size=32),
    "rwkv": dict(hidden_size=WIDTH, num_hidden_layers=4, attention_hidden_size=WIDTH, intermediate_size=384,
                 rescale_every=0),
    "recurrent_gemma": dict(hidden_size=WIDTH, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=1, lru_width=WIDTH,
                            block_types=["recurrent", "recurrent", "attention"]),
}
KEYS = string.ascii_lowercase
RECALL_PAIRS = (4, 8)
DEFAULT_MINUTES = 18.0  # the budget is 20 minutes on 2 CPU cores; the recall evaluation follows training
DEFAULT_MAX_STEPS = 6000


def recall_line(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A recall line (context and queries) and its (query prefix, answer) pairs, for scoring."""
    keys = rng.sample(KEYS, rng.randint(*RECALL_PAIRS))
    values = {k: str(rng.randrange(10)) for k in keys}
    queries = rng.sample(keys, len(keys))  # every key once, in a new order: many supervised recalls per line
    context = " ".join(f"{k}:{values[k]}" for k in keys) + " |"
    asked, line = [], context
    for q in queries:
        asked.append((line + f" {q}:", values[q]))
        line += f" {q}:{values[q]}"
    return line + "\n", asked


# built-in tasks whose few-shot lines are in every toy's training corpus: evaluating a toy on them measures
# what it memorised, not in-context learning (the Compare page says so)
TRAINING_TASKS = ("to-upper", "to-lower", "next-letter", "prev-letter", "list-first", "list-last", "antonyms",
                  "vowel-count")


# what every toy learnt from, in words (the corpus of :func:`corpus_lines`)
TRAINING_DATA = ("a synthetic corpus of key:value recall lines (like 'q:7 b:2 | b:2 q:7'), copying lines and "
                 "few-shot lines of the built-in tasks")


def is_toy(model_name: str) -> bool:
    """Whether ``model_name`` is one of the shipped toy checkpoints (assets/models/<name>/training.json)."""
    toy = ASSETS_DIR / "models" / model_name
    return toy.parent.name == "models" and (toy / "training.json").is_file()


def trained_on(model_name: str, task_name: str) -> bool:
    """Whether ``model_name`` is a toy checkpoint whose training corpus holds prompts of the built-in task
    ``task_name`` (a split such as ``vowel-count[heldout]`` counts as its task)."""
    return is_toy(model_name) and task_name.split("[")[0] in TRAINING_TASKS


def synthetic_note(model_names: list[str]) -> str | None:
    """One sentence for the toys among ``model_names``: what they were trained on, so their attention on
    natural text is read as such; None when none is a toy."""
    toys = [name for name in dict.fromkeys(model_names) if is_toy(name)]
    if not toys:
        return None
    subject = " and ".join(toys) + (" were" if len(toys) > 1 else " was")
    return (f"{subject} trained only on {TRAINING_DATA} (analysis/models/toy.py): on natural text the maps show "
            "what that corpus taught, not how a language model reads.")


def corpus_lines(seed: int, n_lines: int) -> list[str]:
    """The training corpus: recall, copy and ICL-mapping lines in a seeded mix."""
    from analysis.tasks.builtin import builtin_tasks

    rng = random.Random(f"toy-corpus|{seed}")
    tasks = [t for name, t in builtin_tasks().items() if name in TRAINING_TASKS]
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.6:
            lines.append(recall_line(rng)[0])
        elif kind < 0.7:
            word = "".join(rng.choice(KEYS) for _ in range(rng.randint(2, 6)))
            lines.append(f"copy: {word} -> {word}\n")
        else:
            task = rng.choice(tasks)
            prompt = task.sample_prompts(rng.randint(1, 4), 1, seed=rng.randrange(1 << 30))[0]
            lines.append(f"{prompt.text} {prompt.gold}\n")
    return lines


def recall_examples(seed: int, n: int) -> list[tuple[str, str]]:
    """``n`` held-out (prompt, answer digit) recall queries."""
    rng = random.Random(f"toy-recall-heldout|{seed}")
    examples: list[tuple[str, str]] = []
    while len(examples) < n:
        examples += recall_line(rng)[1]
    return examples[:n]


@torch.no_grad()
def recall_accuracy(model, tokenizer, examples: list[tuple[str, str]]) -> float:
    """Share of recall queries whose greedy next token is the right digit."""
    model.eval()
    correct = 0
    for prompt, answer in examples:
        ids = torch.tensor([tokenizer(prompt).input_ids])
        with model_lock(model):  # the model may be a shared, guarded one
            predicted = tokenizer.decode([int(model(ids, use_cache=False).logits[0, -1].argmax())])
        correct += predicted.strip() == answer
    return correct / len(examples)


@dataclass
class ToyReport:
    arch: str
    model_type: str
    parameters: int
    steps: int
    seconds: float
    final_loss: float
    recall_accuracy: float
    seed: int
    minutes: float = DEFAULT_MINUTES
    max_steps: int = DEFAULT_MAX_STEPS
    threads: int = 1


def train_toy(arch: str, out_dir: str | Path, seed: int = 0, minutes: float = DEFAULT_MINUTES,
              max_steps: int = DEFAULT_MAX_STEPS,
              batch: int = 16, seq_len: int = 96, lr: float = 2e-3,
              progress: Callable[[int, float], None] | None = None) -> ToyReport:
    """Train a toy ``arch`` model for at most ``minutes`` or ``max_steps`` and save it with its card."""
    from transformers import AutoModelForCausalLM

    minutes, max_steps = check_number("minutes", minutes), check("max_steps", max_steps)  # -1 trained nothing
    model_type = ARCHS[arch]
    torch.manual_seed(seed)
    corpus = corpus_lines(seed, 60000)
    tokenizer = build_tokenizer(corpus[:20000], vocab_size=384)
    config = tiny_config(model_type, len(tokenizer), **TOY_CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(config)
    stream = torch.tensor(tokenizer("".join(corpus)).input_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    model.train()
    with parallel_training(model):
        step, loss_value = _train_loop(model, stream, optimizer, rng, start, minutes, max_steps, batch, seq_len, lr,
                                       progress)
    seconds = time.monotonic() - start
    model.eval()
    accuracy = recall_accuracy(model, tokenizer, recall_examples(seed + 1, 300))
    report = ToyReport(arch, model_type, sum(p.numel() for p in model.parameters()), step, seconds, loss_value,
                       accuracy, seed, minutes, max_steps, torch.get_num_threads())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(report))
    (out / "training.json").write_text(json.dumps(report.__dict__, indent=1))
    return report


def _train_loop(model, stream, optimizer, rng, start, minutes, max_steps, batch, seq_len, lr, progress):
    """AdamW with warm-up and cosine decay on random windows of the token stream, until time or steps run out;
    the decay follows whichever budget (steps or minutes) is closer to its end, so it completes either way."""
    step, loss_value = 0, float("nan")
    while step < max_steps and time.monotonic() - start < minutes * 60:
        done = max(step / max_steps, (time.monotonic() - start) / (minutes * 60))
        scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        offsets = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=rng)
        ids = torch.stack([stream[o:o + seq_len] for o in offsets])
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step, loss_value = step + 1, float(loss.detach())
        if progress:
            progress(step, loss_value)
    return step, loss_value


def model_card(report: ToyReport) -> str:
    size = f"{report.parameters / 1e6:.2f}"
    return f"""# toy-{report.arch}: a {size} M-parameter {report.model_type} trained by prunescope

Trained from scratch with `python -m analysis train-toy --arch {report.arch} --seed {report.seed} --minutes
{report.minutes:g} --max-steps {report.max_steps}` on CPU ({report.threads} thread{"s" * (report.threads > 1)}).

- **Data**: a synthetic corpus generated from seed {report.seed} (analysis/models/toy.py): 60 % in-context
  key->value recall lines (`q:7 b:2 m:5 | b:2 m:5 q:7`, every key queried once), 10 % copying
  (`copy: kqzm -> kqzm`) and 30 % few-shot lines of the built-in ICL tasks (letters, case, lists, antonyms,
  vowel counts).
- **Training**: {report.steps} AdamW steps of 16 x 96 tokens, {report.seconds / 60:.1f} min; final loss
  {report.final_loss:.3f}.
- **Held-out recall accuracy**: {report.recall_accuracy:.3f} on 300 queries with fresh keys and values
  (chance 0.1).
- Use: implicit-attention and attribution demos offline. Not a language model for anything else.
"""
