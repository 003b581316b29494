"""CLI commands ``eval``, ``tasks``, ``models``, ``precompute-demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.cli.common import (
    add_fold_arg,
    add_model_args,
    add_ray_arg,
    bounded,
    load,
    positive_int,
    progress_bar,
    ray_pool,
    results_cache,
    scoring,
)


def register(commands) -> None:
    ev = commands.add_parser("eval", help="k-shot ICL accuracy and copy-error rate of a model on a task")
    ev.add_argument("--task", required=True, help="a built-in task name (see `tasks`) or a .csv/.json file")
    ev.add_argument("--shots", type=bounded("shots"), default=4)
    ev.add_argument("--n", type=bounded("n"), default=40, help="number of prompts")
    ev.add_argument("--seed", type=bounded("seed"), default=0)
    ev.add_argument("--mask", help="a NeuronMask JSON file to apply while evaluating")
    ev.add_argument("--batch-size", type=positive_int, default=16)
    add_fold_arg(ev)
    add_model_args(ev)
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.set_defaults(run=cmd_eval)
    commands.add_parser("tasks", help="list the built-in tasks").set_defaults(run=cmd_tasks, quiet=False)
    commands.add_parser("models", help="list the built-in model choices").set_defaults(run=cmd_models, quiet=False)
    pd_ = commands.add_parser("precompute-demo", help="compute the app's default results for a hosted demo")
    pd_.add_argument("--out", default=None, help="cache folder to fill (default: assets/precomputed)")
    pd_.add_argument("--no-sweep", action="store_true", help="skip the k-sweep (the slowest part)")
    add_model_args(pd_)
    add_ray_arg(pd_)
    pd_.set_defaults(run=cmd_precompute_demo)


def cmd_eval(args: argparse.Namespace) -> int:
    from analysis.evaluation import evaluate_task
    from analysis.evaluation.icl import RATE_METRICS
    from analysis.pruning import NeuronMask
    from analysis.tasks import get_task

    task = scoring(get_task(args.task, min_pairs=args.shots + 1), args)
    mask = NeuronMask.load(args.mask) if args.mask else None
    loaded = load(args)
    with progress_bar(f"{task.name} {args.shots}-shot") as progress:
        result = evaluate_task(loaded, task, args.shots, args.n, seed=args.seed, mask=mask,
                               batch_size=args.batch_size, progress=progress, cache=results_cache(args))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"model  {loaded.describe()}\ntask   {task.name} ({task.source}), {args.shots}-shot, "
              f"n={result.n}, seed={args.seed}" + (f", mask of {len(mask)} neurons" if mask else ""))
        for key in RATE_METRICS:
            print(f"{key:<17}{summary[key]:7.3f}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from analysis.tasks import builtin_tasks

    print(f"{'task':<18} {'kind':<8} {'pairs':>5}  description")
    for name, task in builtin_tasks().items():
        print(f"{name:<18} {task.kind:<8} {len(task.pairs):>5}  {task.description}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from analysis.models import model_choices, supported_architectures
    from analysis.models.loader import describe_choice

    for name in model_choices():
        print(f"{name:<16} {describe_choice(name)}")
    print("\nAlso: any local Hugging Face directory or hub id of a supported architecture:\n  "
          + supported_architectures().replace("; ", "\n  "))
    return 0


def cmd_precompute_demo(args: argparse.Namespace) -> int:
    from analysis.cache import SUFFIX
    from analysis.demo import precompute_demo
    from analysis.paths import PRECOMPUTED_DIR

    out = args.out or PRECOMPUTED_DIR
    loaded = load(args)
    with ray_pool(args) as pool:
        precompute_demo(loaded, out, sweep=not args.no_sweep, progress=lambda step: print(f"computing {step}…"),
                        pool=pool)
    files = list(Path(out).rglob(f"*{SUFFIX}"))
    print(f"wrote {len(files)} cache entries ({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB) to {out}")
    return 0
