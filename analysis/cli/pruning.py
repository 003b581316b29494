"""CLI commands ``attribute``, ``copying-neurons``, ``confidence-neurons``, ``prune-eval``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import numpy as np

from analysis.bounds import check
from analysis.cli.common import (
    add_fold_arg,
    add_model_args,
    add_ray_arg,
    bounded,
    load,
    output_file,
    progress_bar,
    ray_pool,
    results_cache,
    scoring,
    shots_list,
)
from analysis.errors import PrunescopeError
from analysis.evaluation.verdicts import signed_points
from analysis.export import safe_csv

if TYPE_CHECKING:
    import pandas as pd


def register(commands) -> None:
    from analysis.attribution import QUADRATURES, TARGETS
    from analysis.pruning.autok import DEV_TASKS, ECHO_DEV_TASKS

    at = commands.add_parser("attribute", help="all-layer neuron Integrated Gradients -> .npz")
    at.add_argument("--task", required=True)
    at.add_argument("--target", choices=TARGETS, default="gold")
    _ig_args(at, QUADRATURES, n=16)
    at.add_argument("--out", required=True, type=output_file(".npz"), help="output .npz file")
    add_ray_arg(at)
    at.set_defaults(run=cmd_attribute)

    cn = commands.add_parser("copying-neurons", help="copying-bias neurons of a model -> mask.json")
    _ig_args(cn, QUADRATURES, n=64)
    cn.add_argument("--target", choices=("copy", "copy-prob", "echo"), default="copy",
                    help="IG target: logit(copied) - logit(gold), the paper's probability of the copied answer, or "
                         "logit(the query echoed) - logit(gold)")
    cn.add_argument("--score-task", default=None,
                    help="score on this built-in task instead of the copying task's fit split (e.g. an echo-heavy "
                         "task such as singular-plural for --target echo)")
    cn.add_argument("--prompts", choices=("all", "copied"), default="all",
                    help="score on all prompts, or only those where the unpruned model copies")
    cn.add_argument("--top-k", default="auto", help="neurons to select, or 'auto' to choose k by a held-out sweep")
    cn.add_argument("--per-layer", action="store_true", help="take the top k of every layer")
    cn.add_argument("--layers", default="", help="select only in this layer range, e.g. 10-20 (default: all)")
    cn.add_argument("--sweep-n", type=bounded("n"), default=80, help="prompts per task and k in the auto sweep")
    cn.add_argument("--dev-tasks", default=None,
                    help="built-in tasks the auto sweep chooses k on, beside the copying task's held-out split "
                         f"(default: {','.join(DEV_TASKS)}; with --target echo, where the models echo most: "
                         f"{','.join(ECHO_DEV_TASKS)})")
    cn.add_argument("--stable", type=float, default=None, metavar="SHARE",
                    help="keep only the top-k neurons selected in at least this share (0-1] of bootstrap resamples "
                         "of the scoring prompts (stability selection); the stability line is printed either way")
    cn.add_argument("--out", required=True, type=output_file(), help="output mask JSON file")
    add_ray_arg(cn)
    cn.set_defaults(run=cmd_copying_neurons)

    cf = commands.add_parser("confidence-neurons", help="high-confidence neurons of one layer -> mask.json")
    cf.add_argument("--task", required=True)
    cf.add_argument("--layer", type=bounded("layer"), required=True)
    cf.add_argument("--percent", type=float, default=1.0, help="share of the layer's neurons to select")
    cf.add_argument("--min-prob", type=float, default=0.5, help="confidence threshold on the top token")
    _ig_args(cf, QUADRATURES, n=64)
    cf.add_argument("--out", required=True, type=output_file(), help="output mask JSON file")
    cf.set_defaults(run=cmd_confidence_neurons)

    pe = commands.add_parser("prune-eval", help="unpruned vs pruned vs random masks on ICL tasks")
    pe.add_argument("--mask", required=True)
    pe.add_argument("--tasks", default="all", help="comma-separated task names or .csv/.json paths, or 'all'")
    pe.add_argument("--shots", type=shots_list, default=[1, 2, 4])
    pe.add_argument("--n", type=bounded("n"), default=50)
    pe.add_argument("--random-controls", type=bounded("controls"), default=5,
                    help="random masks of the same size and layer distribution (seeds 0..R-1)")
    pe.add_argument("--seed", type=bounded("seed"), default=0)
    add_fold_arg(pe)
    pe.add_argument("--baselines", default="",
                    help="also run training-free baselines on the same prompts, comma-separated: magnitude (prune "
                         "the k most active neurons on the scoring prompts), instruction (a task line before the "
                         "demonstrations), calibration (contextual calibration of the answer's first token, Zhao "
                         "et al. 2021)")
    pe.add_argument("--general-passages", type=int, default=100, metavar="N",
                    help="also compare the next-token loss on N passages of general text (0-300, 0: skip), the "
                         "same conditions, paired by passage")
    pe.add_argument("--separate-conditions", action="store_true",
                    help="one pass per condition, instead of unpruned, pruned and the random masks as rows of one "
                         "batch (the same numbers where the kernels are batch-invariant, as on CPU)")
    pe.add_argument("--flipped", type=output_file(), help="also write the flipped examples to this CSV file")
    pe.add_argument("--records", type=output_file(),
                    help="also write one CSV row per prompt and condition to this file")
    add_model_args(pe)
    pe.add_argument("--json", action="store_true")
    add_ray_arg(pe)
    pe.set_defaults(run=cmd_prune_eval)


def _ig_args(parser, quadratures, n: int) -> None:
    parser.add_argument("--steps", type=bounded("steps"), default=4,
                        help="nodes of the fixed rules; adaptive: the Gauss-Legendre nodes of its smooth layers")
    parser.add_argument("--quadrature", choices=quadratures, default="adaptive",
                        help="adaptive (default: right at every layer), riemann (the paper's), gauss-legendre")
    parser.add_argument("--n", type=bounded("ig_n"), default=n, help="number of prompts")
    parser.add_argument("--shots", type=bounded("shots"), default=4)
    parser.add_argument("--seed", type=bounded("seed"), default=0)
    add_model_args(parser)


def cmd_attribute(args: argparse.Namespace) -> int:
    from analysis.attribution import attribute_task
    from analysis.attribution.targets import COPY_TARGETS
    from analysis.tasks import get_task

    task = get_task(args.task, min_pairs=args.shots + 1)
    loaded = load(args)
    with ray_pool(args) as pool:
        with progress_bar(f"IG {args.target} on {task.name}") as progress:
            result = attribute_task(loaded, task, args.target, args.n, args.shots, args.seed, args.steps,
                                    args.quadrature, cache=results_cache(args), progress=progress, pool=pool)
    assert result is not None  # compute_missing: computed when not cached
    target_ids = np.array([item.target.token_ids if args.target in COPY_TARGETS else item.target.token_ids[0]
                           for item in result.inputs], dtype=np.int64)
    # NaN: a neuron a narrower layer lacks (widths: each layer's count)
    np.savez_compressed(args.out, scores=result.scores.numpy(), per_prompt=result.per_prompt.numpy(),
                        widths=np.array(result.widths, dtype=np.int64),
                        prompts=np.array([item.text for item in result.inputs]), target_ids=target_ids,
                        f_clean=result.f_clean.numpy(), target=args.target, steps=args.steps,
                        quadrature=args.quadrature, model=loaded.name, task=task.name)
    # |IG| summed per layer: Gemma 2/3 normalise each MLP's output, so a layer's signed IG sums to about 0
    layer_mass = result.per_prompt.abs().mean(dim=0).nansum(dim=1)
    print(f"wrote {args.out}: scores {tuple(result.scores.shape)}, {len(result.inputs)} prompts; "
          f"layer with the most attribution (sum of |IG|): {int(layer_mass.argmax())}")
    return 0


def cmd_copying_neurons(args: argparse.Namespace) -> int:
    from analysis.pruning.autok import default_dev_tasks, k_sweep
    from analysis.pruning.copying import copying_scores, parse_layer_range, select_top_k
    from analysis.pruning.stability import STABLE_SHARE, mask_stability, stable_mask
    from analysis.tasks import builtin_tasks

    if args.stable is not None and not 0 < args.stable <= 1:
        raise PrunescopeError(f"--stable {args.stable} is not a share in (0, 1]")
    if args.score_task is not None and args.score_task not in builtin_tasks():
        raise PrunescopeError(f"--score-task {args.score_task!r} is not a built-in task (see `tasks`)")
    dev_tasks = ([name.strip() for name in args.dev_tasks.split(",") if name.strip()] if args.dev_tasks is not None
                 else list(default_dev_tasks(args.target)))
    unknown = [name for name in dev_tasks if name not in builtin_tasks()]
    if not dev_tasks or unknown:
        raise PrunescopeError(f"--dev-tasks: {', '.join(map(repr, unknown)) or 'none given'}: name built-in tasks "
                              "(see `tasks`)")

    auto = args.top_k == "auto"
    k = None if auto else _parse_k(args.top_k)
    loaded = load(args)
    layers = parse_layer_range(args.layers, loaded.n_layers)
    cache = results_cache(args)
    with ray_pool(args) as pool:
        with progress_bar(f"IG {args.target} on {args.score_task or 'vowel-count'}") as progress:
            scored = copying_scores(loaded, n=args.n, shots=args.shots, seed=args.seed, steps=args.steps,
                                    quadrature=args.quadrature, target=args.target, prompts=args.prompts,
                                    cache=cache, progress=progress, pool=pool, task=args.score_task)
        assert scored is not None  # compute_missing: computed when not cached
        print(f"{args.target} scores from {scored.n_used} of {args.n} prompts ({args.prompts}) of "
              f"{args.score_task or 'the copying task'}, target {args.target}", file=sys.stderr)
        if auto:
            with progress_bar("k-sweep", unit="prompt") as progress:
                sweep = k_sweep(loaded, scored.scores, dev_tasks=dev_tasks, per_layer=args.per_layer,
                                layers=layers, n=args.sweep_n, cache=cache, progress=progress, pool=pool)
            print(sweep_text(sweep), file=sys.stderr)
            k = sweep.chosen
    assert k is not None  # parsed from --top-k, or chosen by the sweep
    mask = select_top_k(scored.scores, k, args.per_layer, layers, model=loaded.name, **scored.options)
    if auto and not k:
        mask.save(args.out)
        print(f"wrote {args.out}: an empty mask. {sweep.message}")
        return 0
    if scored.n_used >= 2:
        stability = mask_stability(scored, mask, args.per_layer, layers)
        print(f"mask stability: {stability.describe(mask, args.stable or STABLE_SHARE)}", file=sys.stderr)
        if args.stable is not None:
            mask = stable_mask(mask, stability, args.stable)
    elif args.stable is not None:
        raise PrunescopeError("--stable needs at least 2 scoring prompts")
    mask.save(args.out)
    print(f"wrote {args.out}: {len(mask)} neurons (k={k}{', per layer' if args.per_layer else ''}"
          f"{f', stable in {args.stable:.0%} of resamples' if args.stable is not None else ''}"
          f"{', chosen by the held-out sweep' if auto else ''}) in layers {sorted(mask.by_layer())}"
          + (f". {sweep.message}" if auto else ""))
    return 0


def sweep_text(sweep) -> str:
    """The k-sweep's average row per k: rates and paired changes with 95 % intervals, in points."""
    lines = [f"k-sweep, {sweep.shots}-shot, {sweep.n} prompts per task (held-out copying split and dev tasks); "
             "changes vs k=0 in points [95 % CI]"]
    for row in sweep.averages().itertuples():
        line = f"  k={row.k:<4} acc {row.accuracy:.3f} copy {row.copy_error_rate:.3f} echo {row.echo_rate:.3f}"
        if row.k:
            line += (f"  d_acc {signed_points(row.d_accuracy)} [{signed_points(row.d_accuracy_lo)}, "
                     f"{signed_points(row.d_accuracy_hi)}]  d_copy {signed_points(row.d_copy_error_rate)} "
                     f"[{signed_points(row.d_copy_error_rate_lo)}, {signed_points(row.d_copy_error_rate_hi)}]")
        lines.append(line)
    return "\n".join(lines)


def _parse_k(text: str) -> int:
    try:
        return check("k", int(text))
    except ValueError:
        raise PrunescopeError(f"--top-k must be a whole number or 'auto', got {text!r}") from None


def cmd_confidence_neurons(args: argparse.Namespace) -> int:
    from analysis.pruning.confidence import confidence_neurons
    from analysis.tasks import get_task

    task = get_task(args.task, min_pairs=args.shots + 1)
    loaded = load(args)
    with progress_bar(f"IG confidence on {task.name}") as progress:
        found = confidence_neurons(loaded, task, args.layer, args.percent, n=args.n, shots=args.shots,
                                   seed=args.seed, steps=args.steps, quadrature=args.quadrature,
                                   min_prob=args.min_prob, cache=results_cache(args), progress=progress)
    found.mask.save(args.out)
    print(f"wrote {args.out}: {len(found.mask)} neurons of layer {args.layer} "
          f"({found.n_confident} of {args.n} prompts answered with p >= {args.min_prob})")
    return 0


def cmd_prune_eval(args: argparse.Namespace) -> int:
    import dataclasses

    import pandas as pd

    from analysis.pruning import NeuronMask
    from analysis.pruning.evaluate import prune_eval
    from analysis.tasks import get_task, icl_task_names

    if not args.shots:
        raise PrunescopeError("--shots needs at least one shot count, e.g. 1,2,4")
    from analysis.pruning.baselines import check_baselines, method_table

    baselines = check_baselines([name.strip() for name in args.baselines.split(",") if name.strip()])
    if not 0 <= args.general_passages <= 300:
        raise PrunescopeError(f"--general-passages {args.general_passages} is not from 0 to 300 (the passages shipped)")
    names = icl_task_names() if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = [scoring(get_task(name, min_pairs=max(args.shots) + 1), args) for name in names]
    mask = NeuronMask.load(args.mask)
    if not len(mask):
        raise PrunescopeError(f"mask file {args.mask} holds no neurons: nothing to prune (the auto k-sweep writes "
                              "an empty mask when no k beats the unpruned model)")
    loaded = load(args)
    with ray_pool(args) as pool:  # connected before the bar starts: a bad address is one clean line
        with progress_bar("prune-eval", unit="prompt") as progress:
            result = prune_eval(loaded, mask, tasks, args.shots, args.n, args.random_controls, args.seed,
                                cache=results_cache(args), progress=progress, pool=pool,
                                one_batch=not args.separate_conditions)
    if baselines:
        from analysis.pruning.baselines import evaluate_baselines

        with progress_bar("baselines", unit="prompt") as progress:
            extra = evaluate_baselines(loaded, mask, tasks, args.shots, args.n, args.seed, baselines,
                                       cache=results_cache(args), progress=progress)
        result = dataclasses.replace(result, records=pd.concat([result.records, extra], ignore_index=True),
                                     _cells=None)
    general = None
    if args.general_passages:
        from analysis.evaluation.general import general_capability, shipped_passages
        from analysis.pruning.evaluate import control_masks

        with progress_bar("general text", unit="passage") as progress:
            general = general_capability(loaded, mask, control_masks(loaded, mask, args.random_controls),
                                         shipped_passages()[:args.general_passages], cache=results_cache(args),
                                         progress=progress)
    if args.flipped:
        with open(args.flipped, "w", newline="", encoding="utf-8") as handle:
            handle.write(safe_csv(result.flipped))
    if args.records:
        with open(args.records, "w", newline="", encoding="utf-8") as handle:
            handle.write(result.records_csv())
    if args.json:
        data = result.to_json()
        if baselines:
            data["methods"] = method_table(result.records, result.resamples).to_dict(orient="records")
        if general is not None:
            data["general_text"] = general.to_json()
        print(json.dumps(data))
        return 0
    summary = result.summary()
    print(f"model {loaded.describe()}, mask of {len(mask)} neurons, {args.random_controls} random controls; "
          "changes in points with 95 % intervals and p-values whose unit is the query (bootstrap over queries; "
          "p: sign-flip test over queries vs unpruned, bootstrap vs random; a task's Holm-adjusted p across "
          "tasks in brackets)")
    repeated = summary[(summary.task != "average") & (summary.queries < summary.n)]
    if len(repeated):
        print("queries repeat (each query's prompts count as one unit): " + ", ".join(
            f"{row.task} {row.n} prompts over {row.queries} queries" for row in repeated.drop_duplicates("task")
            .itertuples()))
    print(change_table(summary).to_string(index=False))
    for shots in args.shots:
        for sentence in result.verdicts(shots=shots).values():
            print(f"{shots}-shot, all tasks: {sentence}")
    if baselines:
        print("methods on the same prompts, task average, change vs unpruned in points [95 % CI] p:")
        print(methods_text(method_table(result.records, result.resamples)))
    if general is not None:
        print(general.sentence())
    return 0


def methods_text(table) -> str:
    """The method table as text: one line per method and shot count."""
    from analysis.evaluation.paired import format_p

    lines = []
    for row in table.itertuples():
        parts = [f"{short} {signed_points(getattr(row, f'd_{m}'))} [{signed_points(getattr(row, f'd_{m}_lo'))}, "
                 f"{signed_points(getattr(row, f'd_{m}_hi'))}] {format_p(getattr(row, f'd_{m}_p'))}"
                 for m, short in (("accuracy", "acc"), ("copy_error_rate", "copy"), ("echo_rate", "echo"))]
        lines.append(f"  {row.method}, {row.shots}-shot: " + "; ".join(parts))
    return "\n".join(lines)


def change_table(summary) -> pd.DataFrame:
    """The prune-eval text table: per task and shots, the rates and the paired changes with intervals."""
    import pandas as pd

    from analysis.evaluation.paired import format_p

    def points(row, column: str) -> str:
        if column not in row or pd.isna(row[column]):
            return ""
        low, high = row[f"{column}_lo"], row[f"{column}_hi"]
        holm = row.get(f"{column}_p_holm")
        adjusted = "" if holm is None or pd.isna(holm) else f" (Holm {format_p(holm).removeprefix('p ')})"
        return (f"{signed_points(row[column])} [{signed_points(low)}, {signed_points(high)}] "
                f"{format_p(row[f'{column}_p'])}{adjusted}")

    rows = []
    for _, row in summary.iterrows():
        out = {"task": row.task, "shots": row.shots, "n (queries)": f"{row.n} ({row.queries})"}
        for metric, short in (("accuracy", "acc"), ("copy_error_rate", "copy"), ("echo_rate", "echo")):
            rates = [row.get(f"{group}_{metric}") for group in ("baseline", "pruned", "random")]
            out[short] = " / ".join("" if r is None or pd.isna(r) else f"{r:.3f}" for r in rates)
            out[f"d_{short} vs unpruned"] = points(row, f"d_{metric}_vs_baseline")
            out[f"d_{short} vs random"] = points(row, f"d_{metric}_vs_random")
        rows.append(out)
    return pd.DataFrame(rows).rename(columns={"acc": "acc (unpr/pruned/random)"})
