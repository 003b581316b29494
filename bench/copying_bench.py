"""Does pruning copying neurons help in-context learning, more than pruning random neurons? Measured per model.

    python bench/copying_bench.py [--models default,gemma3-270m] [--options default,copied,echo] [--score-n 64]
                                  [--sweep-n 80] [--k K] [--n 80] [--shots 1,2] [--controls 5] [--tasks ...]
                                  [--baselines magnitude,instruction,calibration] [--quick]

The README's tables: ``--score-n 32 --k 20``, whose default-options masks are the masks the app ships (each
row names its mask's digest; tests/test_shipped_results.py checks the README's digests against the shipped
masks).

On a shared CPU run it with OMP_NUM_THREADS=1: oversubscribed threads made it 5-7x slower here.

For each built-in real model and each scoring option set (``default``: target copy, all prompts; ``copied``:
target copy, only the prompts the model copies on; with ``--options ...,paper`` also the probability of the
copied answer on those prompts, the paper's target; ``echo``: logit(the query repeated) - logit(gold) on
1-shot english-spanish prompts, whose k-sweep chooses on the echo-heavy dev tasks), the copying scores come
from the copying task's fit split, k is chosen by the held-out auto sweep (analysis/pruning/autok.py), and the
mask is evaluated on ICL tasks *not* used for choosing k, at each shot count, against the unpruned model and
``--controls`` random masks of the same size, paired by prompt with 95 % intervals. When the sweep selects
nothing, the app's default k (20) is evaluated instead and marked so, and the table still shows what pruning
does. Everything is cached on disk; a rerun is fast. With ``--baselines``, the default options' mask is also
compared with magnitude pruning, an instruction prompt and contextual calibration on the same prompts (the
README's "Echo masks and training-free baselines" table: ``--options default,echo --score-n 32 --k 20
--controls 3 --baselines magnitude,instruction,calibration``).

The table: one row per (model, options, shots) with the averages over the tasks; then one last line per model,
for the default options with tasks and shot counts pooled: ``model=<m> d_acc=<..> ci=[..] d_copy=<..> ci=[..]
vs_random_d_acc=<..> ci=[..]`` (changes in points).
"""

from __future__ import annotations

import argparse
import gc
import sys

import pandas as pd
from tqdm import tqdm

from analysis.cache import ResultsCache
from analysis.cli.common import quiet_libraries
from analysis.cli.pruning import methods_text
from analysis.demo import SETTINGS
from analysis.errors import PrunescopeError
from analysis.evaluation.paired import compare, format_p
from analysis.evaluation.verdicts import signed_points
from analysis.models import load_model
from analysis.pruning.autok import DEV_TASKS, default_dev_tasks, k_sweep
from analysis.pruning.baselines import check_baselines, evaluate_baselines, method_table
from analysis.pruning.copying import copying_scores, select_top_k
from analysis.pruning.evaluate import prune_eval
from analysis.tasks import builtin_tasks, icl_task_names

OPTIONS = {"default": {"target": "copy", "prompts": "all"},
           "copied": {"target": "copy", "prompts": "copied"},
           "paper": {"target": "copy-prob", "prompts": "copied"},
           # the echo masks the README compares (shipped as assets/precomputed/echo-mask-<model>-k20.json)
           "echo": {"target": "echo", "prompts": "all", "task": "english-spanish", "shots": 1}}
EVAL_TASKS = ("country-capital", "singular-plural", "english-french", "present-gerund", "to-upper", "list-first")


def points(estimate) -> str:
    low, high = estimate.ci95
    return f"{signed_points(estimate.delta)} [{signed_points(low)}, {signed_points(high)}]"


def pooled(result):
    """The average over every (task, shots) stratum: shots folded into the task name."""
    records = result.records.assign(task=result.records.task + "@" + result.records.shots.astype(str), shots=0)
    return next(c for c in compare(records) if c.task == "average")


def advance(bar: tqdm):
    """A progress callback that moves ``bar`` to ``done`` (bound to this bar, not to whichever the loop holds)."""
    return lambda done, total: bar.update(done - bar.n)


def run_model(name: str, args, cache: ResultsCache) -> list[str]:
    loaded = load_model(name)
    tasks = [builtin_tasks()[t] for t in args.tasks]
    rows, last = [], None
    for label in args.options:
        options = dict(OPTIONS[label])
        score_shots = options.pop("shots", 4)
        bar = tqdm(desc=f"{name} {label}: IG", unit="prompt", leave=False, file=sys.stderr)
        try:
            scored = copying_scores(loaded, n=args.score_n, shots=score_shots, steps=args.steps,
                                    quadrature=args.quadrature, cache=cache,
                                    progress=advance(bar), **options)
        except PrunescopeError as exc:  # e.g. 'copied' on a model that never copies on these prompts
            print(f"\n[{name} / {label}] {exc}", flush=True)
            rows.append(f"| {name} | {label} | — | | | {exc} | | | | | |")
            continue
        finally:
            bar.close()
        bar = tqdm(desc=f"{name} {label}: k-sweep", unit="prompt", leave=False, file=sys.stderr)
        sweep = k_sweep(loaded, scored.scores, n=args.sweep_n, dev_tasks=default_dev_tasks(options["target"]),
                        cache=cache, progress=advance(bar))
        bar.close()
        k = args.k or sweep.chosen or SETTINGS["k"]
        note = " (fixed)" if args.k else "" if sweep.chosen else " (app default; auto-k selects none)"
        print(f"\n[{name} / {label}] scores from {scored.n_used} of {args.score_n} prompts; {sweep.message}",
              flush=True)
        mask = select_top_k(scored.scores, k)
        print(f"[{name} / {label}] mask of {len(mask)} neurons, digest {mask.digest()}", flush=True)
        bar = tqdm(desc=f"{name} {label}: evaluation", unit="prompt", leave=False, file=sys.stderr)
        result = prune_eval(loaded, mask, tasks, args.shots, args.n, args.controls, cache=cache,
                            progress=advance(bar))
        bar.close()
        if args.baselines and label == "default":  # the training-free baselines on the very same prompts
            bar = tqdm(desc=f"{name}: baselines", unit="prompt", leave=False, file=sys.stderr)
            extra = evaluate_baselines(loaded, mask, tasks, args.shots, args.n, 0, args.baselines, cache=cache,
                                       progress=advance(bar))
            bar.close()
            print(f"[{name}] methods on the same prompts, task average, change vs unpruned in points [95 % CI]:")
            print(methods_text(method_table(pd.concat([result.records, extra], ignore_index=True))), flush=True)
        for cell in result.ordered_cells():
            if cell.task != "average":
                continue
            rates = {g: cell.rates[g] for g in ("baseline", "pruned", "random")}
            rows.append(f"| {name} | {label} | {k}{note} | {cell.shots} | {cell.n} | "
                        + " / ".join(f"{rates[g]['accuracy'].value:.3f}" for g in rates) + " | "
                        + " / ".join(f"{rates[g]['copy_error_rate'].value:.3f}" for g in rates) + " | "
                        + " / ".join(f"{rates[g]['echo_rate'].value:.3f}" for g in rates) + " | "
                        + f"{points(cell.vs_baseline['accuracy'])} {format_p(cell.vs_baseline['accuracy'].p)} | "
                        + f"{points(cell.vs_baseline['copy_error_rate'])} | "
                        + f"{points(cell.vs_baseline['echo_rate'])} | "
                        + f"{points(cell.vs_random['accuracy'])} {format_p(cell.vs_random['accuracy'].p)} | "
                        + f"`{mask.digest()}` |")
            for sentence in result.verdicts(shots=cell.shots).values():
                print(f"  {cell.shots}-shot: {sentence}", flush=True)
        if label == "default":
            cell = pooled(result)
            acc, copy = cell.vs_baseline["accuracy"], cell.vs_baseline["copy_error_rate"]
            rand = cell.vs_random["accuracy"]
            last = (f"model={name} k={k}{'' if sweep.chosen else '_fallback'} d_acc={signed_points(acc.delta)} "
                    f"ci=[{signed_points(acc.ci95[0])},{signed_points(acc.ci95[1])}] "
                    f"d_copy={signed_points(copy.delta)} ci=[{signed_points(copy.ci95[0])},"
                    f"{signed_points(copy.ci95[1])}] vs_random_d_acc={signed_points(rand.delta)} "
                    f"ci=[{signed_points(rand.ci95[0])},{signed_points(rand.ci95[1])}]")
    del loaded
    gc.collect()
    return rows + ([f"LAST {last}"] if last else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,gemma3-270m")
    parser.add_argument("--options", default="default,copied", help="scoring option sets: default, copied, paper")
    parser.add_argument("--score-n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="IG nodes (adaptive: of its smooth layers)")
    parser.add_argument("--quadrature", default="adaptive", help="adaptive (default), riemann (the paper's), "
                                                                 "gauss-legendre")
    parser.add_argument("--sweep-n", type=int, default=80)
    parser.add_argument("--k", type=int, default=0, help="evaluate the top k instead of auto-k's choice (the app's "
                                                         "shipped default mask: --score-n 32 --k 20)")
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--shots", default="1,2")
    parser.add_argument("--controls", type=int, default=5)
    parser.add_argument("--tasks", default=",".join(EVAL_TASKS), help="evaluation tasks, or 'all' (every ICL task "
                                                                      "the sweep does not use)")
    parser.add_argument("--baselines", default="", help="also the training-free baselines beside the default "
                                                         "options' mask: magnitude,instruction,calibration")
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    args = parser.parse_args()
    quiet_libraries()
    args.options = [o for o in args.options.split(",") if o]
    args.baselines = check_baselines([b for b in args.baselines.split(",") if b])
    args.shots = [int(s) for s in args.shots.split(",")]
    names = [t for t in icl_task_names() if t not in DEV_TASKS] if args.tasks == "all" else args.tasks.split(",")
    if overlap := set(names) & set(DEV_TASKS):
        parser.error(f"{sorted(overlap)} choose k; evaluate on other tasks")
    args.tasks = names
    if args.quick:
        args.score_n, args.steps, args.sweep_n, args.n, args.controls = 4, 4, 8, 8, 2
    cache = ResultsCache()
    print(f"copying bench: eval tasks {', '.join(args.tasks)}; {args.n} prompts each at {args.shots} shots; "
          f"{args.controls} random controls; sweep on the held-out copying split + {', '.join(DEV_TASKS)} "
          f"({args.sweep_n} prompts, 2-shot); scores from {args.score_n} prompts, IG {args.quadrature} "
          f"({args.steps} steps)")
    header = ("| model | options | k | shots | n | accuracy (unpruned / pruned / random) | copy errors | echoes "
              "| d_acc vs unpruned, points [95 % CI], sign-flip p over queries | d_copy vs unpruned | d_echo vs "
              "unpruned | d_acc vs random, bootstrap p | mask digest |")
    rows, lasts = [], []
    for name in args.models.split(","):
        for line in run_model(name, args, cache):
            (lasts if line.startswith("LAST ") else rows).append(line.removeprefix("LAST "))
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    print("\n".join(rows))
    for line in lasts:
        print(line)


if __name__ == "__main__":
    main()
