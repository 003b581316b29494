"""CLI command ``task-vectors``: patched zero-shot accuracy per layer (Hendel et al. 2023)."""

from __future__ import annotations

import argparse
import json

from analysis.cli.common import add_model_args, load, non_negative_int, positive_int, tqdm_progress


def register(commands) -> None:
    tv = commands.add_parser("task-vectors", help="task-vector patching accuracy per layer")
    tv.add_argument("--task", required=True)
    tv.add_argument("--shots", type=non_negative_int, default=4)
    tv.add_argument("--n", type=positive_int, default=40)
    tv.add_argument("--seed", type=int, default=0)
    tv.add_argument("--mask", help="also evaluate with this mask applied")
    add_model_args(tv)
    tv.add_argument("--json", action="store_true")
    tv.set_defaults(run=cmd_task_vectors)


def cmd_task_vectors(args: argparse.Namespace) -> int:
    from analysis.evaluation.task_vectors import task_vectors
    from analysis.pruning import NeuronMask
    from analysis.tasks import get_task

    task = get_task(args.task, min_pairs=args.shots + 1)
    mask = NeuronMask.load(args.mask) if args.mask else None
    loaded = load(args)
    runs = {}
    for label, m in [("unpruned", None)] + ([("pruned", mask)] if mask else []):
        progress = tqdm_progress(f"task vectors {label}", unit="layer")
        try:
            runs[label] = task_vectors(loaded, task, args.shots, args.n, seed=args.seed, mask=m, progress=progress)
        finally:
            progress.close()
    out = {"model": loaded.name, "task": task.name, "shots": args.shots, "n": args.n,
           "mask_size": len(mask) if mask else 0}
    for label, r in runs.items():
        out[label] = {"icl_accuracy": r.icl_accuracy, "zero_shot_accuracy": r.zero_shot_accuracy,
                      "best_layer": r.best_layer, "best_accuracy": r.best_accuracy,
                      "accuracy_per_layer": [float(a) for a in r.table.accuracy]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"model {loaded.describe()}; task {task.name}, {args.shots}-shot, n={args.n}")
    for label, r in runs.items():
        print(f"{label}: ICL {r.icl_accuracy:.3f}, zero-shot {r.zero_shot_accuracy:.3f}, best layer {r.best_layer} "
              f"({r.best_accuracy:.3f})")
        print("  " + " ".join(f"{layer}:{acc:.2f}" for layer, acc in zip(r.table.layer, r.table.accuracy)))
    return 0
