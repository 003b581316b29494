"""The pruning toggle as a user waits for it: seconds from switching Prune on to the numbers, on the page's
defaults (its four tasks, 4-shot, 40 prompts each, the mask and its random controls: one ``prune_eval``).

    python bench/toggle_bench.py [--model default] [--controls 3]

(a) ready: the slower of two masks whose pruned runs are cached before the click: the default top-20 copying
mask, whose results ship in assets/precomputed (read through a fresh, empty user cache, as on a new host), and
the top 21, speculated by a background job (analysis/jobs.py, as the page starts one when a mask is chosen);
the page then uses the job's result directly, so re-reading it from the cache, as timed here, is an upper
bound. (b) cold: a mask nothing is cached or speculated for (the top 22), clicked at once: its pruned run and
controls are computed while the unpruned numbers come from the shipped results. Every timing runs the exact
call the page makes. Last line: ``toggle_ready_s=<a> toggle_cold_s=<b>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from analysis.cache import ResultsCache
from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, SCORING, SETTINGS, pruning_tasks
from analysis.errors import PrunescopeError
from analysis.jobs import Job
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

        def toggle(k: int, progress=None) -> float:
            start = time.perf_counter()
            prune_eval(loaded, select_top_k(scored.scores, k), tasks, shots=[shots], n=n,
                       random_controls=args.controls, seed=seed, cache=cache, progress=progress)
            return time.perf_counter() - start

        shipped = toggle(SETTINGS["k"])
        job = Job("speculation", lambda progress: toggle(SETTINGS["k"] + 1, progress)).start()
        job.wait()
        speculated = toggle(SETTINGS["k"] + 1)
        cold = toggle(SETTINGS["k"] + 2)
    conditions = len(tasks) * (2 + args.controls)
    print(f"model {loaded.describe()}; tasks {', '.join(PRUNE_TASKS)}, {n} prompts each, {shots}-shot; "
          f"{args.controls} random controls ({conditions} evaluations, {conditions * n} prompts)")
    print(f"(a) shipped top-{SETTINGS['k']} mask {shipped:.2f} s; top-{SETTINGS['k'] + 1} mask after its "
          f"speculation ({job.result:.1f} s in the background) {speculated:.2f} s; (b) new top-{SETTINGS['k'] + 2} "
          f"mask cold {cold:.1f} s (unpruned numbers shipped, {len(tasks) * (1 + args.controls) * n} prompts "
          "computed)")
    print(f"toggle_ready_s={max(shipped, speculated):.2f} toggle_cold_s={cold:.1f}")


if __name__ == "__main__":
    main()
