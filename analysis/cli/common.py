"""Shared CLI pieces: one-line argparse errors, argument types, device options, progress bars."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from analysis.bounds import BOUNDS
from analysis.runner import Runner

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line (exit 2), like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"prunescope: error: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # also a number of more than 4300 digits
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return value


def bounded(name: str):
    """An argparse type for the numeric setting ``name``, in the range analysis/bounds.py gives it (a whole
    number unless the bound admits any number)."""
    bound = BOUNDS[name]

    def parse(text: str) -> float:
        value = _int(text) if bound.integer else _number(text)
        if not bound.low <= value <= bound.high:
            raise argparse.ArgumentTypeError(f"must be from {bound.low} to {bound.high} ({bound.what}), got {value}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def output_file(suffix: str = ""):
    """An argparse type for a file a command writes: refused (one line, exit 2, before any work) when it is a
    directory or its folder does not exist. With ``suffix``, a name without it gets it, as numpy's savez and
    matplotlib's savefig do on their own, so the command names the file it really wrote."""

    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text[:200]} is a directory; give a file name"
                                             + (f" ending in {suffix}" if suffix else ""))
        if suffix and path.suffix != suffix:
            path = path.with_name(path.name + suffix)
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"the folder of {text[:200]} does not exist")
        return str(path)

    parse.__name__ = "output file"
    return parse


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


def shots_list(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4], each a shot count within its bounds."""
    parse = bounded("shots")
    return [parse(part) for part in text.split(",") if part.strip()]


def device_map_arg(text: str) -> str | dict:
    """--device-map: a strategy name, or a JSON object of module -> device."""
    text = text.strip()
    if not text.startswith("{"):
        return text  # checked by load_model, with the list of names
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object ({exc.msg})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, (str, int)) for v in mapping.values()):
        raise argparse.ArgumentTypeError("expected a JSON object of module name -> device")
    return mapping


def max_memory_arg(text: str) -> dict:
    """--max-memory: 'device=size,...' (a GPU by its index), e.g. 0=20GiB,cpu=64GiB."""
    limits = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        device, sep, size = part.partition("=")
        if not sep or not size.strip():
            raise argparse.ArgumentTypeError(f"expected device=size pairs like 0=20GiB,cpu=64GiB, got {part!r}")
        device = device.strip()
        limits[int(device) if device.isdigit() else device] = size.strip()
    return limits


def add_fold_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fold-accents", action="store_true",
                        help="compare answers with accents and compatibility forms folded ('Bogotá' = 'Bogota'); "
                             "off by default: an accent is part of the answer")


def scoring(task, args: argparse.Namespace):
    """``task`` as the command's scoring options ask (``--fold-accents``)."""
    import dataclasses

    return dataclasses.replace(task, fold_accents=True) if getattr(args, "fold_accents", False) else task


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="default, a toy model name, a local directory or a hub id")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA), float32, ...")
    parser.add_argument("--no-cache", action="store_true", help="recompute instead of reading the results cache")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="also load pickled weights (pytorch_model.bin): only for a model you trust")
    parser.add_argument("--device-map", type=device_map_arg, default=None,
                        help="place layers with accelerate: auto, balanced, sequential, or a JSON object "
                             '{"module": "cuda:0" | "cpu" | "disk", ...} (a model larger than one device)')
    parser.add_argument("--max-memory", type=max_memory_arg, default=None,
                        help="with --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB")


def load(args: argparse.Namespace):
    from analysis.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype,
                      allow_pickle_weights=getattr(args, "allow_pickle_weights", False),
                      device_map=getattr(args, "device_map", None), max_memory=getattr(args, "max_memory", None))


def results_cache(args: argparse.Namespace):
    from analysis.cache import ResultsCache

    return None if getattr(args, "no_cache", False) else ResultsCache()


def quiet_libraries() -> None:
    """Keep stderr for our own progress bar and errors."""
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextmanager
def progress_bar(desc: str, unit: str = "prompt") -> Iterator[Callable[[int, int], None]]:
    """A progress callback ``(done, total)`` drawing a tqdm bar on stderr, closed when the block exits (also
    when the work fails, so the error line is not glued to a half-drawn bar)."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def add_ray_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", metavar="local|ADDRESS", default=None,
                        help="run the shards on Ray: a local instance, or an existing cluster (ray start --head)")


@contextmanager
def ray_pool(args: argparse.Namespace) -> Iterator[Runner | None]:
    """With ``--ray``: connect, start one model replica per GPU or CPU slot, and stop them after the command;
    without it, None (and Ray is never imported)."""
    address = getattr(args, "ray", None)
    if not address:
        yield None
        return
    from analysis import distributed

    distributed.connect(address)
    pool = distributed.ModelPool(args.model, args.device, args.dtype)
    try:
        yield pool
    finally:
        pool.close()
        distributed.shutdown()
