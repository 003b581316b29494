"""CLI command ``task-vectors``: patched zero-shot accuracy per layer (Hendel et al. 2023), each layer tested
against the unpatched zero-shot answers; a best layer is named only when one beats zero-shot."""

from __future__ import annotations

import argparse
import dataclasses
import json

from analysis.cli.common import add_model_args, bounded, load, positive_int, progress_bar, results_cache


def register(commands) -> None:
    tv = commands.add_parser("task-vectors", help="task-vector patching accuracy per layer")
    tv.add_argument("--task", required=True)
    tv.add_argument("--shots", type=bounded("shots"), default=4)
    tv.add_argument("--n", type=bounded("tv_n"), default=40)
    tv.add_argument("--dummy-queries", type=bounded("dummies"), default=2,
                    help="dummy queries whose last-token states are averaged into each task vector")
    tv.add_argument("--template", help=r"prompt template instead of the task's, e.g. 'Input: {x}\nOutput: {y}\n'"
                                       r" (\n is a newline)")
    tv.add_argument("--seed", type=bounded("seed"), default=0)
    tv.add_argument("--batch-size", type=positive_int, default=16)
    tv.add_argument("--mask", help="also evaluate with this mask applied")
    add_model_args(tv)
    tv.add_argument("--json", action="store_true")
    tv.set_defaults(run=cmd_task_vectors)


def cmd_task_vectors(args: argparse.Namespace) -> int:
    from analysis.evaluation.task_vectors import task_vectors
    from analysis.pruning import NeuronMask
    from analysis.tasks import get_task

    task = get_task(args.task, min_pairs=args.shots + 2)
    if args.template:
        task = dataclasses.replace(task, template=args.template.replace("\\n", "\n"))
    mask = NeuronMask.load(args.mask) if args.mask else None
    loaded = load(args)
    runs = {}
    for label, m in [("unpruned", None)] + ([("pruned", mask)] if mask else []):
        with progress_bar(f"task vectors {label}", unit="prompt") as progress:
            run = task_vectors(loaded, task, args.shots, args.n, args.dummy_queries, seed=args.seed, mask=m,
                               batch_size=args.batch_size, progress=progress, cache=results_cache(args))
        assert run is not None  # compute_missing: computed when not cached
        runs[label] = run
    out = {"model": loaded.name, "task": task.name, "template": task.template, "shots": args.shots, "n": args.n,
           "dummy_queries": args.dummy_queries, "mask_size": len(mask) if mask else 0}
    for label, r in runs.items():
        out[label] = {"icl_accuracy": r.icl_accuracy, "zero_shot_accuracy": r.zero_shot_accuracy,
                      "best_layer": r.best_layer, "best_accuracy": r.best_accuracy, "top_layer": r.top_layer,
                      "verdict": r.verdict(), "accuracy_per_layer": [float(a) for a in r.table.accuracy],
                      "p_adjusted_per_layer": [float(p) for p in r.table.p_adjusted],
                      "copy_rate_per_layer": [float(c) for c in r.table.copy_rate]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"model {loaded.describe()}; task {task.name}, {args.shots}-shot, n={args.n}, template {task.template!r}")
    for label, r in runs.items():
        print(f"{label}: ICL {r.icl_accuracy:.3f}, zero-shot {r.zero_shot_accuracy:.3f}; {r.verdict()}")
        print("  " + " ".join(f"{layer}:{acc:.2f}" + ("*" if beats else "")
                              for layer, acc, beats in zip(r.table.layer, r.table.accuracy, r.table.beats_zero_shot)))
    print("  (* beats zero-shot: exact McNemar on the same queries, Bonferroni over layers, p < 0.05)")
    return 0
