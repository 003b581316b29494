"""Command line: ``python -m analysis <command>``. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from analysis.errors import PrunescopeError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line (exit 2), like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"prunescope: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    ev = commands.add_parser("eval", help="k-shot ICL accuracy and copy-error rate of a model on a task")
    ev.add_argument("--model", default="default", help="default, a toy model name, a local directory or a hub id")
    ev.add_argument("--task", required=True, help="a built-in task name (see `tasks`) or a .csv/.json file")
    ev.add_argument("--shots", type=non_negative_int, default=4)
    ev.add_argument("--n", type=positive_int, default=40, help="number of prompts")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--mask", help="a NeuronMask JSON file to apply while evaluating")
    ev.add_argument("--batch-size", type=positive_int, default=16)
    add_device_args(ev)
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.set_defaults(run=cmd_eval)

    commands.add_parser("tasks", help="list the built-in tasks").set_defaults(run=cmd_tasks)
    commands.add_parser("models", help="list the built-in model choices").set_defaults(run=cmd_models)
    return parser


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, ...")


def quiet_libraries() -> None:
    """Keep stderr for our own progress bar and errors."""
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def tqdm_progress(desc: str):
    """A progress callback ``(done, total)`` drawing a tqdm bar on stderr; call ``.close()`` when done."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="prompt", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    update.close = bar.close
    return update


def cmd_eval(args: argparse.Namespace) -> int:
    from analysis.evaluation import evaluate_task
    from analysis.models import load_model
    from analysis.pruning import NeuronMask
    from analysis.tasks import get_task

    task = get_task(args.task, min_pairs=args.shots + 1)
    mask = NeuronMask.load(args.mask) if args.mask else None
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    progress = tqdm_progress(f"{task.name} {args.shots}-shot")
    try:
        result = evaluate_task(loaded, task, args.shots, args.n, seed=args.seed, mask=mask,
                               batch_size=args.batch_size, progress=progress)
    finally:
        progress.close()
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"model  {loaded.describe()}\ntask   {task.name} ({task.source}), {args.shots}-shot, "
              f"n={result.n}, seed={args.seed}" + (f", mask of {len(mask)} neurons" if mask else ""))
        for key in ("accuracy", "copy_error_rate", "other_error_rate"):
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in ("tasks", "models"):
            quiet_libraries()
        return args.run(args)
    except PrunescopeError as exc:
        print(f"prunescope: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("prunescope: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("prunescope: error: out of memory; use fewer prompts, a smaller batch size or a smaller model",
              file=sys.stderr)
        return EXIT_BAD_INPUT
