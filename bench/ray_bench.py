"""The same prune-eval grid serially and on Ray, side by side in one run.

    python bench/ray_bench.py [--model toy-transformer] [--n 20] [--ray local|ADDRESS] [--workers N]

Both runs compute everything (no results cache) and must give identical records. ``pool_start_s`` is the time
to start the actors and load a model replica in each (paid once per sweep); ``overhead_per_shard_s`` is what
each shard costs beyond an even split of the serial time over the workers. Last line:
``serial_s=<a> ray_s=<b> workers=<w> shards=<s> overhead_per_shard_s=<o>``.
"""

from __future__ import annotations

import argparse
import platform
import time

import pandas as pd
import ray
import torch

from analysis import distributed
from analysis.demo import PRUNE_TASKS, pruning_tasks
from analysis.models import load_model
from analysis.pruning.copying import random_mask_like
from analysis.pruning.evaluate import prune_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-transformer")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--ray", default="local")
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU slot (or GPU)")
    args = parser.parse_args()
    loaded = load_model(args.model, device="cpu")
    counts = loaded.adapter.neuron_counts()
    mask = random_mask_like(_seed_mask(counts), counts, 7)  # a random mask, 1 in 16 neurons of each layer
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    grid = {"shots": [1, 2], "n": args.n, "random_controls": 3, "seed": 0, "resamples": 500}
    shards = len(tasks) * len(grid["shots"]) * (2 + grid["random_controls"])

    start = time.perf_counter()
    serial = prune_eval(loaded, mask, tasks, **grid)
    serial_s = time.perf_counter() - start

    start = time.perf_counter()
    distributed.connect(args.ray)
    pool = distributed.ModelPool(args.model, device="cpu", size=args.workers)
    ray.get([actor.pid.remote() for actor in pool.actors])  # every replica loaded
    pool_start_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        spread = prune_eval(loaded, mask, tasks, pool=pool, **grid)
        ray_s = time.perf_counter() - start
    finally:
        pool.close()
        distributed.shutdown()
    pd.testing.assert_frame_equal(spread.records, serial.records)  # the same numbers, or the bench fails
    workers = len(pool.actors)
    overhead = (ray_s - serial_s / workers) / max(1, shards / workers)
    print(f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; model "
          f"{loaded.describe()}; grid: {len(tasks)} tasks x shots 1,2 x (unpruned, pruned, 3 controls) x "
          f"{args.n} prompts = {shards} shards; records identical")
    print(f"serial {serial_s:.1f} s; Ray ({args.ray}, {workers} workers) {ray_s:.1f} s after {pool_start_s:.1f} s "
          f"to start the actors and load their replicas")
    print(f"serial_s={serial_s:.1f} ray_s={ray_s:.1f} workers={workers} shards={shards} "
          f"overhead_per_shard_s={overhead:.2f}")


def _seed_mask(counts: list[int]):
    from analysis.pruning import NeuronMask

    return NeuronMask.from_pairs((layer, i) for layer in range(len(counts)) for i in range(0, counts[0], 16))


if __name__ == "__main__":
    main()
