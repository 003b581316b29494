"""Batched vs one-at-a-time ICL evaluation throughput of a model, measured side by side in one run.

    python bench/eval_bench.py [--model default] [--task antonyms] [--shots 4] [--n 48] [--batch-size 16]

Last line: ``ratio=<batched/single speed-up> batched_prompts_per_s=<y>``. Both runs must give the same
predictions (checked); the first prompts are run once beforehand to warm up.
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis.cli.common import quiet_libraries
from analysis.evaluation import evaluate_task
from analysis.models import load_model
from analysis.tasks import get_task


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="antonyms")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quiet_libraries()

    loaded = load_model(args.model, device=args.device)
    task = get_task(args.task)
    print(f"model {loaded.describe()}, torch threads {torch.get_num_threads()}")
    print(f"task {task.name}, {args.shots}-shot, n={args.n}")
    evaluate_task(loaded, task, args.shots, min(args.n, 4), seed=99, batch_size=4)  # warm-up

    def run(batch_size):
        return evaluate_task(loaded, task, args.shots, args.n, seed=0, batch_size=batch_size)

    single, single_s = timed(lambda: run(1))
    batched, batched_s = timed(lambda: run(args.batch_size))
    assert list(single.records.prediction) == list(batched.records.prediction), "batched != one at a time"
    print(f"one at a time: {single_s:.2f} s ({args.n / single_s:.1f} prompts/s), accuracy {single.accuracy:.3f}")
    print(f"batch of {args.batch_size}: {batched_s:.2f} s ({args.n / batched_s:.1f} prompts/s), "
          f"accuracy {batched.accuracy:.3f}")
    print(f"ratio={single_s / batched_s:.2f} batched_prompts_per_s={args.n / batched_s:.2f}")


if __name__ == "__main__":
    main()
