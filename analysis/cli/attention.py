"""CLI commands ``attention`` (maps -> .npz/.png), ``relevance``, ``faithfulness`` and ``train-toy``."""

from __future__ import annotations

import argparse

import numpy as np

from analysis.cli.common import add_model_args, add_ray_arg, bounded, output_file, progress_bar, ray_pool
from analysis.errors import PrunescopeError


def register(commands) -> None:
    at = commands.add_parser("attention", help="(implicit) attention maps of a text -> .npz, optional .png")
    at.add_argument("--text", required=True)
    at.add_argument("--form", help="s6|unified (Mamba), unified|wkv (RWKV), unified|rglru (Griffin), softmax")
    at.add_argument("--reduce", default="mean", help="mean, absmean or channels:IDX[,IDX...]")
    at.add_argument("--layers", default="all", help="all, or comma-separated layer indices")
    at.add_argument("--out", required=True, type=output_file(".npz"),
                    help="output .npz with attn [layers, T, T], input_ids [T], tokens [T]")
    at.add_argument("--png", type=output_file(".png"), help="also draw the maps into this PNG file")
    add_model_args(at)
    at.set_defaults(run=cmd_attention)

    rel = commands.add_parser("relevance", help="token relevance for the next-token prediction -> JSON")
    rel.add_argument("--text", required=True)
    rel.add_argument("--method", required=True, choices=["raw", "rollout", "gradattn", "ig", "gxi", "lrp"])
    rel.add_argument("--target", help="target token text (default: the model's top prediction)")
    rel.add_argument("--form", help="attention form for raw/rollout/gradattn (see `attention`)")
    rel.add_argument("--out", required=True, type=output_file(), help="output JSON file")
    add_model_args(rel)
    rel.set_defaults(run=cmd_relevance)

    fa = commands.add_parser("faithfulness", help="perturbation AUCs of relevance methods on a task, or "
                                                  "their ground-truth scores (--ground-truth)")
    fa.add_argument("--task", help="the task whose prompts are perturbed (not with --ground-truth)")
    fa.add_argument("--ground-truth", action="store_true",
                    help="score the methods against the known source of synthetic recall, copy and induction "
                         "prompts (top-1 accuracy, rank, AUC; --n prompts per family)")
    fa.add_argument("--families", default="recall,copy,induction", help="with --ground-truth: prompt families")
    fa.add_argument("--style", choices=["toy", "words"], help="with --ground-truth: prompts of the toy corpus or "
                                                              "natural words (default: toy for toy checkpoints)")
    fa.add_argument("--methods", default="raw,rollout,gradattn,ig,gxi", help="comma-separated methods")
    fa.add_argument("--n", type=bounded("faith_n"), default=20)
    fa.add_argument("--shots", type=bounded("shots"), default=2)
    fa.add_argument("--seed", type=bounded("seed"), default=0)
    add_model_args(fa)
    fa.add_argument("--json", action="store_true")
    add_ray_arg(fa)
    fa.set_defaults(run=cmd_faithfulness)

    tt = commands.add_parser("train-toy", help="train a small offline checkpoint (mamba, rwkv, ...)")
    tt.add_argument("--arch", required=True, choices=["transformer", "mamba", "mamba2", "rwkv", "griffin"])
    tt.add_argument("--seed", type=bounded("seed"), default=0)
    tt.add_argument("--minutes", type=bounded("minutes"), help="wall-clock budget for the steps (default 18)")
    tt.add_argument("--max-steps", type=bounded("max_steps"), help="step budget (default 6000)")
    tt.add_argument("--out", help="output directory (default: assets/models/toy-<arch>)")
    tt.set_defaults(run=cmd_train_toy)


def parse_layers(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PrunescopeError(f"--layers must be 'all' or comma-separated integers, got {text!r}") from None


def cmd_attention(args: argparse.Namespace) -> int:
    from analysis.attention import attention_maps
    from analysis.cli.common import load

    loaded = load(args)
    maps = attention_maps(loaded, args.text, form=args.form, reduce=args.reduce, layers=parse_layers(args.layers))
    np.savez_compressed(args.out, attn=maps.attn.numpy(), input_ids=np.array(maps.input_ids, dtype=np.int64),
                        tokens=np.array(maps.tokens), layers=np.array(maps.layers), kinds=np.array(maps.kinds),
                        form=maps.form, reduce=maps.reduce, model=loaded.name)
    if args.png:
        draw_png(maps, args.png, title=f"{loaded.name} — {maps.form}, {maps.reduce}")
    print(f"wrote {args.out}: {len(maps.layers)} layers of {len(maps.tokens)}x{len(maps.tokens)} "
          f"({maps.form}, {maps.reduce})" + (f"; {args.png}" if args.png else ""))
    return 0


def draw_png(maps, path: str, title: str) -> None:
    """A grid of per-layer heatmaps with token labels (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(maps.layers)
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    labels = [t.replace("\n", "\\n") for t in maps.tokens]
    for ax in axes.flat[count:]:
        ax.axis("off")
    for ax, layer, attn, kind in zip(axes.flat, maps.layers, maps.attn, maps.kinds):
        limit = float(attn.abs().max()) or 1.0  # signed maps: a diverging scale centred on zero
        ax.imshow(attn.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"layer {layer} ({kind})", fontsize=9)
        if len(labels) <= 40:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_relevance(args: argparse.Namespace) -> int:
    import json

    from analysis.attribution.tokens import token_relevance
    from analysis.cli.common import load

    loaded = load(args)
    target = None
    if args.target is not None:
        ids = loaded.tokenizer(args.target, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise PrunescopeError(f"--target {args.target!r} is {len(ids)} tokens; give the text of one token")
        target = ids[0]
    rel = token_relevance(loaded, args.text, args.method, target_id=target, form=args.form)
    data = {"model": loaded.name, "text": args.text, "method": args.method, "target_id": rel.target_id,
            "target_token": loaded.tokenizer.decode([rel.target_id]), "tokens": rel.tokens,
            "input_ids": list(rel.input_ids), "scores": [float(x) for x in rel.scores]}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    top = sorted(range(len(rel.tokens)), key=lambda i: -float(rel.scores[i]))[:5]
    print(f"wrote {args.out}: {args.method} relevance for {data['target_token']!r}; most relevant: "
          + ", ".join(f"{rel.tokens[i]!r}" for i in top))
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    import json

    from analysis.cli.common import load
    from analysis.evaluation.faithfulness import faithfulness
    from analysis.tasks import get_task

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.ground_truth:
        return ground_truth_command(args, methods)
    if not args.task:
        raise PrunescopeError("faithfulness needs --task (or --ground-truth)")
    task = get_task(args.task, min_pairs=args.shots + 1)
    loaded = load(args)
    with ray_pool(args) as pool:  # connected before the bar starts: a bad address is one clean line
        with progress_bar(f"faithfulness on {task.name}") as bar:
            table = faithfulness(loaded, task, methods, args.n, shots=args.shots, seed=args.seed, progress=bar,
                                 pool=pool)
    if args.json:
        rows = table.drop(columns=[c for c in table.columns if c == "note"]).to_dict("records")
        print(json.dumps({"model": loaded.name, "task": task.name, "n": args.n, "rows": rows}))
    else:
        print(f"model {loaded.describe()}; task {task.name}; n={args.n}. most_first: lower AUC is more faithful; "
              "least_first: higher is")
        print(table.to_string(index=False, float_format="%.4f"))
    return 0


def ground_truth_command(args: argparse.Namespace, methods: list[str]) -> int:
    """``faithfulness --ground-truth``: the ground-truth table, read from the results cache when stored."""
    import json

    from analysis.cache import ResultsCache
    from analysis.cli.common import load
    from analysis.evaluation.ground_truth import GroundTruth

    if args.task:
        raise PrunescopeError("--ground-truth builds its own prompts: drop --task")
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    request = GroundTruth(tuple(methods), args.n, families, args.seed, args.style)
    loaded = load(args)
    with progress_bar("ground truth") as bar:
        table = request.run(loaded, ResultsCache(), bar)
    if args.json:
        print(json.dumps({"model": loaded.name, "n_per_family": args.n, "rows": table.to_dict("records")}))
    else:
        print(f"model {loaded.describe()}; {args.n} prompts per family, scored where the model answers correctly "
              "(n of attempted). top1/top1_cue: higher is better; rank: lower; auc (most relevant removed "
              "first): lower; _lo/_hi: 95% bootstrap interval")
        print(table.drop(columns=["note"]).to_string(index=False, float_format="%.3f"))
    return 0


def cmd_train_toy(args: argparse.Namespace) -> int:
    from analysis.models.loader import TOY_DIR
    from analysis.models.toy import DEFAULT_MAX_STEPS, train_toy

    out = args.out or str(TOY_DIR / f"toy-{args.arch}")
    with progress_bar(f"train toy-{args.arch}", unit="step") as bar:
        budgets = {k: v for k, v in (("minutes", args.minutes), ("max_steps", args.max_steps)) if v is not None}
        total = args.max_steps or DEFAULT_MAX_STEPS
        report = train_toy(args.arch, out, seed=args.seed, progress=lambda step, loss: bar(step, total), **budgets)
    print(f"wrote {out}: {report.parameters / 1e6:.2f} M parameters, {report.steps} steps in "
          f"{report.seconds / 60:.1f} min, loss {report.final_loss:.3f}, held-out recall {report.recall_accuracy:.3f}")
    return 0
