"""Live pruning toggle on the default model: seconds from switching pruning on to the pruned numbers.

    python bench/toggle_bench.py [--model default] [--task antonyms] [--n 50] [--shots 4] [--k 20]

What the app's pruning panel runs when the toggle flips (the model is loaded once, as under
``st.cache_resource``; the unpruned numbers are already cached from the panel's first render): the pruned
evaluation of one task (``prune_eval`` with the mask, nothing cached for it), then the random controls (the app
shows it right after the pruned numbers), then the toggle back off and on again (both cached). The mask is the
top-k copying neurons when copying scores are cached, else k neurons spread over the middle layers (the cost
does not depend on which neurons). Last line: ``toggle_s=<seconds to the pruned numbers>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from analysis.cache import ResultsCache
from analysis.demo import PRUNE_CONTROLS
from analysis.models import load_model
from analysis.pruning import NeuronMask
from analysis.pruning.copying import copying_scores, select_top_k
from analysis.pruning.evaluate import prune_eval
from analysis.tasks import builtin_tasks


def _mask(loaded, k: int) -> tuple[NeuronMask, str]:
    scored = copying_scores(loaded, n=32, shots=4, steps=20, cache=ResultsCache(), compute_missing=False)
    if scored is not None:
        return select_top_k(scored.scores, k), "top-k copying neurons"
    middle = loaded.n_layers // 2
    width = loaded.adapter.neuron_counts()[middle]
    return NeuronMask.from_pairs((middle + i % 4, (97 * i) % width) for i in range(k)), "fixed neurons"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--task", default="antonyms")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    loaded = load_model(args.model)
    task = builtin_tasks()[args.task]
    mask, source = _mask(loaded, args.k)
    with tempfile.TemporaryDirectory() as root:
        cache = ResultsCache(root)  # fresh: nothing pruned is cached

        def toggle(pruned: bool, controls: int = 0) -> float:
            start = time.perf_counter()
            prune_eval(loaded, mask if pruned else None, [task], shots=[args.shots], n=args.n,
                       random_controls=controls, cache=cache)
            return time.perf_counter() - start

        first_render = toggle(False)
        on = toggle(True)
        control = toggle(True, controls=PRUNE_CONTROLS)
        off_again, on_again = toggle(False), toggle(True, controls=PRUNE_CONTROLS)
    print(f"model {loaded.describe()}; task {args.task}, {args.n} prompts, {args.shots}-shot; mask {len(mask)} "
          f"{source}")
    print(f"first render (unpruned, uncached) {first_render:.2f} s; toggle on -> pruned numbers {on:.2f} s; "
          f"{PRUNE_CONTROLS} random controls after it {control:.2f} s; toggle off (cached) {off_again:.3f} s; "
          f"on again (cached) {on_again:.3f} s")
    print(f"toggle_s={on:.2f}")


if __name__ == "__main__":
    main()
