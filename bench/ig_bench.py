"""All-layer neuron IG on the default model: fast path vs the per-(layer, step) reference, side by side.

    python bench/ig_bench.py [--prompts 2] [--steps 20] [--target copy] [--model default]

Both paths attribute the same prompts of the copying task; prints both times and, as its last line,
``ratio=<reference/fast> max_rel_diff=<y> fast_s_per_prompt=<z>`` (max_rel_diff: the largest per-prompt
relative L2 difference between the two attribution maps).
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis.attribution import neuron_ig, prepare_inputs
from analysis.cli.common import quiet_libraries
from analysis.models import load_model
from analysis.tasks import builtin_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--target", default="copy")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quiet_libraries()

    loaded = load_model(args.model, device=args.device)
    prompts = builtin_tasks()["vowel-count"].sample_prompts(args.shots, args.prompts, seed=0)
    items = prepare_inputs(loaded, prompts, args.target)
    lengths = [len(item.input_ids) for item in items]
    print(f"model {loaded.describe()}, torch threads {torch.get_num_threads()}")
    print(f"{len(items)} prompts of {min(lengths)}-{max(lengths)} tokens, target {args.target}, "
          f"{args.steps} steps, all {loaded.n_layers} layers")
    neuron_ig(loaded, items[:1], steps=2)  # warm-up

    start = time.perf_counter()
    fast = neuron_ig(loaded, items, steps=args.steps)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = neuron_ig(loaded, items, steps=args.steps, method="reference")
    ref_s = time.perf_counter() - start

    diffs = [float((f - r).norm() / r.norm()) for f, r in zip(fast.per_prompt, ref.per_prompt)]
    print(f"fast path: {fast_s:.2f} s ({fast_s / len(items):.2f} s per prompt, "
          f"{len(items) / fast_s:.3f} prompts/s)")
    print(f"reference: {ref_s:.2f} s ({ref_s / len(items):.2f} s per prompt)")
    print(f"ratio={ref_s / fast_s:.1f} max_rel_diff={max(diffs):.2e} fast_s_per_prompt={fast_s / len(items):.2f}")


if __name__ == "__main__":
    main()
