"""Why do task vectors fail on a model? First-token accuracy per patched layer for several vector variants.

    python bench/task_vector_diagnosis.py --model default --task to-upper [--template 'Input: {x}\\nOutput: {y}\\n']
        [--shots 4] [--n 40] [--layers 10-29]

Variants, each patched into the zero-shot prompt's last token at the input of block L (``patched_last_token``):
``dummy2`` the method of ``analysis.evaluation.task_vectors`` (each query's demonstrations + 2 dummy queries,
averaged); ``dummy1`` a single vector prompt, no averaging; ``dummy8`` eight dummies; ``mean32`` the earlier
method (one vector averaged over 32 k-shot prompts with their own queries); ``own`` the query's own k-shot
state, which already holds whatever the k-shot prompt computed at that position: if even ``own`` fails at
layer L, the layers above L need the demonstrations through attention, and no single-position vector can
work there (the model or the format is at fault, not the vector). The input of block L is the output of
block L-1, so "block output" is the same curve shifted by one.

Scored on the first answer token only (one forward per batch instead of greedy decoding; the page and the CLI
score whole answers): the token that follows the prompt when ``prompt + " " + gold`` is tokenized.
Last line: ``best=<variant>@<layer>:<accuracy> own_first=<first layer where own >= ICL/2>``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict

import torch

from analysis.evaluation.task_vectors import last_token_states, patched_last_token, task_vector_prompts
from analysis.models import load_model
from analysis.tasks import get_task


def first_token_hits(loaded, prompts, layer=None, vectors=None) -> list[bool]:
    """Is the greedy first token the gold answer's first token? Batches of equal token length, no padding."""
    tok = loaded.tokenizer
    encoded = [tok(p.text).input_ids for p in prompts]
    gold = [tok(p.text + " " + p.gold).input_ids[len(ids)] for p, ids in zip(prompts, encoded)]
    groups = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    hits = [False] * len(prompts)
    with loaded.lock, torch.no_grad():
        for group in groups.values():
            ids = torch.tensor([encoded[i] for i in group], device=loaded.device)
            if layer is None:
                logits = loaded.model(ids).logits
            else:
                with patched_last_token(loaded, layer, vectors[group]):
                    logits = loaded.model(ids).logits
            for row, i in enumerate(group):
                hits[i] = int(logits[row, -1].argmax()) == gold[i]
    return hits


def variants(loaded, task, shots: int, n: int) -> dict[str, torch.Tensor]:
    """name -> [n, layers, H] vectors for the zero-shot queries of ``task_vector_prompts(task, shots, n, 8)``."""
    icl, _, dummies = task_vector_prompts(task, shots, n, 8)
    flat = [d for ds in dummies for d in ds]
    dummy = last_token_states(loaded, flat).view(n, 8, loaded.n_layers, -1)
    mean32 = last_token_states(loaded, task.sample_prompts(shots, 32, seed=1)).mean(0)
    return {"dummy2": dummy[:, :2].mean(1), "dummy1": dummy[:, 0], "dummy8": dummy.mean(1),
            "mean32": mean32.expand(n, -1, -1), "own": last_token_states(loaded, icl)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="to-upper")
    parser.add_argument("--template")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--layers", help="first-last, e.g. 10-29 (default: all)")
    args = parser.parse_args()
    loaded = load_model(args.model)
    task = get_task(args.task)
    if args.template:
        task = dataclasses.replace(task, template=args.template.replace("\\n", "\n"))
    icl, zero_shot, _ = task_vector_prompts(task, args.shots, args.n, 8)
    icl_acc = sum(first_token_hits(loaded, icl)) / args.n
    print(f"{loaded.name} {task.name} {task.template!r}: ICL {icl_acc:.2f}, zero-shot "
          f"{sum(first_token_hits(loaded, zero_shot)) / args.n:.2f} (first token, n={args.n})", flush=True)
    vectors = variants(loaded, task, args.shots, args.n)
    first, last = map(int, args.layers.split("-")) if args.layers else (0, loaded.n_layers - 1)
    print("layer " + " ".join(f"{name:>7}" for name in vectors), flush=True)
    best, own_first = ("", -1, -1.0), None
    for layer in range(first, last + 1):
        accs = {name: sum(first_token_hits(loaded, zero_shot, layer, v[:, layer])) / args.n
                for name, v in vectors.items()}
        print(f"{layer:5d} " + " ".join(f"{a:7.2f}" for a in accs.values()), flush=True)
        best = max([best, *((name, layer, a) for name, a in accs.items() if name != "own")], key=lambda b: b[2])
        if own_first is None and accs["own"] >= icl_acc / 2:
            own_first = layer
    print(f"best={best[0]}@{best[1]}:{best[2]:.2f} own_first={own_first}")


if __name__ == "__main__":
    main()
