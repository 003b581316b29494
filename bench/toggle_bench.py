"""The pruning toggle as a user waits for it: seconds from switching Prune on to the numbers, on the page's
defaults (its four tasks, 4-shot, 40 prompts each, the mask and its random controls: one ``prune_eval``).

(a) ready: the slower of two masks whose pruned runs are cached before the click: the default top-20 copying
mask, whose results ship in assets/precomputed (read through a fresh, empty user cache, as on a new host), and
the top 21, speculated by a background job (analysis/jobs.py, as the page starts one when a mask is chosen);
the page then uses the job's result directly, so re-reading it from the cache, as timed here, is an upper
bound. (b) cold: a mask nothing is cached or speculated for (the top 22), clicked at once: its pruned run and
controls are computed while the unpruned numbers come from the shipped results. Every timing runs the exact
call the page makes. (c) the same cold click with one pass per condition (``one_batch=False``, the way before
all conditions shared a batch); (b) and (c) each start from a fresh user cache, and their records must be
equal exactly. With
``--rounds R`` (b) and (c) run R times each, alternating which goes first, each in fresh caches, and the
fastest of each counts (on a shared machine a slow spell then falls on both); ``--threads`` sets torch's
intra-op threads (OpenMP threads spin badly when another job shares the cores).

    python bench/toggle_bench.py [--model default] [--controls 3] [--rounds 1] [--threads T]

The first line describes the machine. Last line:
``toggle_ready_s=<a> toggle_cold_s=<b> toggle_cold_separate_s=<c> one_batch_speedup=<c/b>``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd
import torch

from analysis.cache import ResultsCache
from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, SCORING, SETTINGS, pruning_tasks
from analysis.errors import PrunescopeError
from analysis.jobs import Job
from analysis.models import load_model
from analysis.pruning.copying import select_top_k, stored_copying_scores
from analysis.pruning.evaluate import prune_eval
from attn_bench import cpu_model  # bench/ is on the path when a bench runs as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--controls", type=int, default=PRUNE_CONTROLS)
    parser.add_argument("--rounds", type=int, default=1, help="cold runs of each kind (the fastest counts)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    shots, n, seed = SETTINGS["shots"], SETTINGS["n"], SETTINGS["seed"]
    with tempfile.TemporaryDirectory() as root:
        cache = ResultsCache(root)  # empty, with the shipped results as its fallback

        scored = stored_copying_scores(loaded, **SCORING, cache=cache)
        if scored is None:
            raise PrunescopeError(f"no shipped copying scores for {loaded.name}: run `python -m analysis "
                                  "precompute-demo` first")

        runs: dict[str, pd.DataFrame] = {}

        def toggle(k: int, progress=None, one_batch: bool = True, into: ResultsCache = cache) -> float:
            start = time.perf_counter()
            result = prune_eval(loaded, select_top_k(scored.scores, k), tasks, shots=[shots], n=n,
                                random_controls=args.controls, seed=seed, cache=into, progress=progress,
                                one_batch=one_batch)
            runs[f"{k}-{one_batch}"] = result.records
            return time.perf_counter() - start

        shipped = toggle(SETTINGS["k"])
        job = Job("speculation", lambda progress: toggle(SETTINGS["k"] + 1, progress)).start()
        job.wait()
        speculated = toggle(SETTINGS["k"] + 1)
        times: dict[bool, list[float]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for one_batch in (True, False) if round_ % 2 == 0 else (False, True):
                with tempfile.TemporaryDirectory() as fresh:
                    times[one_batch].append(toggle(SETTINGS["k"] + 2, one_batch=one_batch, into=ResultsCache(fresh)))
        cold, separate = min(times[True]), min(times[False])
    identical = runs[f"{SETTINGS['k'] + 2}-True"].equals(runs[f"{SETTINGS['k'] + 2}-False"])
    conditions = len(tasks) * (2 + args.controls)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; {loaded.placement}")
    print(f"model {loaded.describe()}; tasks {', '.join(PRUNE_TASKS)}, {n} prompts each, {shots}-shot; "
          f"{args.controls} random controls ({conditions} evaluations, {conditions * n} prompts)")
    print(f"(a) shipped top-{SETTINGS['k']} mask {shipped:.2f} s; top-{SETTINGS['k'] + 1} mask after its "
          f"speculation ({job.result:.1f} s in the background) {speculated:.2f} s; (b) new top-{SETTINGS['k'] + 2} "
          f"mask cold {cold:.1f} s (unpruned numbers shipped, {len(tasks) * (1 + args.controls) * n} prompts "
          "computed)")
    print(f"(c) the same cold click with one pass per condition {separate:.1f} s; records identical to (b): "
          f"{identical}; all cold runs (s): one batch {', '.join(f'{t:.1f}' for t in times[True])}, separate "
          f"{', '.join(f'{t:.1f}' for t in times[False])}")
    print(f"toggle_ready_s={max(shipped, speculated):.2f} toggle_cold_s={cold:.1f} toggle_cold_separate_s="
          f"{separate:.1f} one_batch_speedup={separate / cold:.2f}")


if __name__ == "__main__":
    main()
