"""CLI commands ``attention`` (attention maps -> .npz/.png) and ``train-toy``."""

from __future__ import annotations

import argparse

import numpy as np

from analysis.cli.common import add_model_args
from analysis.errors import PrunescopeError


def register(commands) -> None:
    at = commands.add_parser("attention", help="(implicit) attention maps of a text -> .npz, optional .png")
    at.add_argument("--text", required=True)
    at.add_argument("--form", help="s6|unified (Mamba), unified|wkv (RWKV), unified|rglru (Griffin), softmax")
    at.add_argument("--reduce", default="mean", help="mean, absmean or channels:IDX[,IDX...]")
    at.add_argument("--layers", default="all", help="all, or comma-separated layer indices")
    at.add_argument("--out", required=True, help="output .npz with attn [layers, T, T], input_ids [T], tokens [T]")
    at.add_argument("--png", help="also draw the maps into this PNG file")
    add_model_args(at)
    at.set_defaults(run=cmd_attention)

    tt = commands.add_parser("train-toy", help="train a small offline checkpoint (mamba, rwkv, ...)")
    tt.add_argument("--arch", required=True, choices=["transformer", "mamba", "mamba2", "rwkv", "griffin"])
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget")
    tt.add_argument("--max-steps", type=int, default=4000)
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
    from analysis.cli.common import load
    from analysis.implicit_attention import attention_maps

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
        ax.imshow(attn.numpy(), cmap="viridis")
        ax.set_title(f"layer {layer} ({kind})", fontsize=9)
        if len(labels) <= 40:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_train_toy(args: argparse.Namespace) -> int:
    from analysis.models.loader import TOY_DIR
    from analysis.models.toy import train_toy
    from analysis.cli.common import tqdm_progress

    out = args.out or str(TOY_DIR / f"toy-{args.arch}")
    bar = tqdm_progress(f"train toy-{args.arch}", unit="step")
    try:
        report = train_toy(args.arch, out, seed=args.seed, minutes=args.minutes, max_steps=args.max_steps,
                           progress=lambda step, loss: bar(step, args.max_steps))
    finally:
        bar.close()
    print(f"wrote {out}: {report.parameters / 1e6:.2f} M parameters, {report.steps} steps in "
          f"{report.seconds / 60:.1f} min, loss {report.final_loss:.3f}, held-out recall {report.recall_accuracy:.3f}")
    return 0
