"""The pruning toggle as a user waits for it: seconds from switching Prune on to the numbers, on the page's
defaults (its four tasks, 4-shot, 40 prompts each, the mask and its random controls: one ``prune_eval``).

    python bench/toggle_bench.py [--model default] [--controls 3]

(a) ready: the default top-20 copying mask, whose results ship in assets/precomputed (read through a fresh,
empty user cache, as on a new host; a speculated mask would be read the same way); (b) cold: a mask nothing is
cached for (the top 21: one neuron more), in the same fresh cache, so its pruned run and its controls are
computed while the unpruned numbers come from the shipped results, as on the page. Both run the exact call the
page makes. Last line: ``toggle_ready_s=<a> toggle_cold_s=<b>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from analysis.cache import ResultsCache
from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, SCORING, SETTINGS, pruning_tasks
from analysis.errors import PrunescopeError
from analysis.models import load_model
from analysis.pruning.copying import copying_scores, select_top_k
from analysis.pruning.evaluate import prune_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--controls", type=int, default=PRUNE_CONTROLS)
    args = parser.parse_args()
    loaded = load_model(args.model)
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    shots, n, seed = SETTINGS["shots"], SETTINGS["n"], SETTINGS["seed"]
    with tempfile.TemporaryDirectory() as root:
        cache = ResultsCache(root)  # empty, with the shipped results as its fallback

        scored = copying_scores(loaded, **SCORING, cache=cache, compute_missing=False)
        if scored is None:
            raise PrunescopeError(f"no shipped copying scores for {loaded.name}: run `python -m analysis "
                                  "precompute-demo` first")

        def toggle(k: int) -> float:
            start = time.perf_counter()
            prune_eval(loaded, select_top_k(scored.scores, k), tasks, shots=[shots], n=n,
                       random_controls=args.controls, seed=seed, cache=cache)
            return time.perf_counter() - start

        ready = toggle(SETTINGS["k"])
        cold = toggle(SETTINGS["k"] + 1)
        again = toggle(SETTINGS["k"] + 1)
    conditions = len(tasks) * (2 + args.controls)
    print(f"model {loaded.describe()}; tasks {', '.join(PRUNE_TASKS)}, {n} prompts each, {shots}-shot; "
          f"{args.controls} random controls ({conditions} evaluations, {conditions * n} prompts)")
    print(f"(a) shipped top-{SETTINGS['k']} mask {ready:.2f} s; (b) new top-{SETTINGS['k'] + 1} mask cold "
          f"{cold:.1f} s (unpruned numbers shipped, {len(tasks) * (1 + args.controls) * n} prompts computed); "
          f"the same mask again {again:.2f} s")
    print(f"toggle_ready_s={ready:.2f} toggle_cold_s={cold:.1f}")


if __name__ == "__main__":
    main()
