"""Mamba implicit attention, vectorised vs a position-by-position loop, on a Mamba-130m-shaped random model.

    python bench/attn_bench.py [--lengths 64,128,256] [--long 512] [--layers 24] [--repeats 3]

24 layers, hidden 768, d_inner 1536, state 16 (random weights: the cost does not depend on them); all
layers, s6 form, mean over channels. For each length the layers' internals are captured once (one forward
pass with hooks, timed and shared), then the same internals go through the vectorised path
(:func:`mamba_reduced`: the block tree of ``mamba_tree.mamba_mean``) and through the loop reference (the fp64
recurrence of the tests, one position at a time, vectorised over channels), and the two maps are compared.
Both paths are warmed up once on a short prompt and timed as the best of ``--repeats`` runs each, the runs
of the two paths alternating so that a slow spell of a shared machine falls on both (the minimum is the least
noisy estimate of each path's cost). Printed per length: capture
seconds, both paths' seconds, the ratio of the two paths and the end-to-end ratio with the shared capture
added to both. The long length runs capture + vectorised path alone in a child
process whose peak resident memory (model included) is reported.
The first line describes the machine: CPU model, torch threads, cache size and what subnormal floats cost
there (the vectorised path avoids them; on Intel cores they cost a microcode assist each).
Then one line per delta-rule / linear-attention recurrence (``--recurrences``; 0 skips them): one layer of
real head shapes (random weights, decay ~0.05 a step), its core form, mean over heads, through the vectorised path
(:func:`linear_reduced`: one triangular solve per head) and the fp64 position loop of the tests, at the
longest of ``--lengths``.
Last line: ``ratio_T256=<paths ratio> peak_mem_T512_gb=<y>``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue as queues
import resource
import time

import torch

from analysis.implicit_attention.block_tree import CACHE_BYTES, last_level_cache_bytes
from analysis.implicit_attention.common import Reduction
from analysis.implicit_attention.delta_families import bare_model_internals
from analysis.implicit_attention.delta_rule import linear_loop_matrices, linear_reduced
from analysis.implicit_attention.mamba import capture_mamba, mamba_loop_matrices, mamba_reduced

# one recurrent layer of each new kind at its published head shapes (hidden sizes cut to keep the MLPs small)
RECURRENCES = {
    "delta rule (Qwen3-Next: 16 key / 32 value heads, d_k = d_v = 128)": ("qwen3_next", dict(
        hidden_size=1024, intermediate_size=1024, linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128, num_experts=0)),
    "KDA (Kimi Linear: 32 heads, d = 128, channel-wise decay)": ("kimi_linear", dict(
        hidden_size=1024, intermediate_size=1024, linear_num_heads=32, linear_head_dim=128,
        mlp_layer_types=["dense"])),
    "lightning (MiniMax: 64 heads, d = 128)": ("minimax", dict(
        hidden_size=1024, intermediate_size=256, num_attention_heads=64, head_dim=128, num_local_experts=1,
        block_size=256)),
}


def build(layers: int):
    from transformers import MambaConfig, MambaForCausalLM

    from analysis.models.adapters import make_adapter
    from analysis.models.loader import LoadedModel
    from analysis.models.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = MambaConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=layers, state_size=16,
                         expand=2, conv_kernel=4)
    model = MambaForCausalLM(config).eval().requires_grad_(False)
    return LoadedModel("mamba-130m-shaped", "random", model, tokenizer, make_adapter(model), torch.device("cpu"),
                       torch.float32)


def vectorised(internals):
    return torch.stack([mamba_reduced(internals[i], "s6", Reduction("mean")) for i in sorted(internals)])


def loop(internals, chunk: int = 256):
    maps = []
    for i in sorted(internals):
        width = internals[i].delta.shape[1]
        total = sum(mamba_loop_matrices(internals[i], "s6", torch.arange(s, min(s + chunk, width))).sum(0)
                    for s in range(0, width, chunk))
        maps.append(total / width)
    return torch.stack(maps)


def recurrence_line(name: str, model_type: str, overrides: dict, length: int, repeats: int) -> str:
    """Vectorised vs loop seconds of one recurrent layer's core-form mean map at ``length``."""
    from transformers import AutoModelForCausalLM

    from analysis.models.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config(model_type, 512, **{**overrides, "num_hidden_layers": 1, "layer_types": ["linear_attention"]})
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    for name_, param in model.named_parameters():  # transformers' init decays by up to e^-20 a step: ~0.05 here
        if name_.endswith("A_log"):
            param.data.fill_(-3.0)
    ids = torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(length))
    inn, capture_s = _timed(lambda: bare_model_internals(model, ids)[0])
    fast_path = lambda i: linear_reduced(i, i.kind, Reduction("mean"))  # noqa: E731
    slow_path = lambda i: linear_loop_matrices(i, i.kind).mean(0)  # noqa: E731
    (fast, slow), (fast_s, slow_s) = _alternating((fast_path, slow_path), inn, repeats=repeats)
    diff = float((fast - slow).abs().max() / slow.abs().max())
    return (f"{name} T={length}: capture {capture_s:.2f} s, vectorised {fast_s:.3f} s, loop {slow_s:.3f} s, "
            f"ratio {slow_s / fast_s:.1f}, max rel diff {diff:.1e}")


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _alternating(paths, *args, repeats: int):
    """Each path's result and best wall time over ``repeats`` rounds, the paths alternating in every round."""
    results, best = [None] * len(paths), [float("inf")] * len(paths)
    for _ in range(repeats):
        for k, path in enumerate(paths):
            results[k], seconds = _timed(path, *args)
            best[k] = min(best[k], seconds)
    return results, best


def _long_child(layers: int, length: int, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    loaded = build(layers)
    ids = torch.randint(0, len(loaded.tokenizer), (length,))
    start = time.perf_counter()
    vectorised(capture_mamba(loaded, ids))
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30))


def _run_long(layers: int, length: int) -> tuple[float, float]:
    """Seconds and peak resident GB of capture + vectorised path at ``length``, in a fresh child process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_long_child, args=(layers, length, queue))
    child.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queues.Empty:  # keep waiting while the child lives
            if not child.is_alive():
                raise SystemExit(f"the T={length} child process failed (exit code {child.exitcode})") from None
    child.join()
    return result


def cpu_model() -> str:
    """The CPU's model name (its cache sizes and memory behaviour decide the vectorised path's speed)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def subnormal_penalty(numel: int = 1 << 22, repeats: int = 10) -> float:
    """How much slower a float32 multiplication runs when 10 % of its results are subnormal (Intel cores:
    many times, through microcode assists; AMD's: ~1). The vectorised path keeps its factors out of that range
    (block_tree's FLUSH_BELOW), so its speed should not depend on this; the figure says what it would cost."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(numel, generator=generator) + 0.5, torch.rand(numel, generator=generator) + 0.5
    tiny_a, tiny_b = a.clone(), b.clone()
    hit = torch.rand(numel, generator=generator) < 0.1
    tiny_a[hit], tiny_b[hit] = 1e-20, 1e-20  # products ~1e-40: subnormal
    out = torch.empty(numel)
    times = [float("inf")] * 2
    for _ in range(repeats):
        for k, (x, y) in enumerate(((a, b), (tiny_a, tiny_b))):
            start = time.perf_counter()
            torch.mul(x, y, out=out)
            times[k] = min(times[k], time.perf_counter() - start)
    return times[1] / times[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,128,256")
    parser.add_argument("--long", type=int, default=512)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path and length (best is kept)")
    parser.add_argument("--recurrences", type=int, default=1, help="0: skip the delta-rule / lightning lines")
    args = parser.parse_args()
    loaded = build(args.layers)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, "
          f"last-level cache {last_level_cache_bytes() >> 20} MiB (chunks of {CACHE_BYTES >> 20} MiB), "
          f"subnormal results {subnormal_penalty():.1f}x slower")
    print(f"model: {args.layers} layers, hidden 768, d_inner 1536, state 16")
    warm = capture_mamba(loaded, torch.arange(8))  # first calls pay one-off costs (thread pools, BLAS setup)
    vectorised(warm), loop(warm)
    ratios = {}
    for length in (int(t) for t in args.lengths.split(",")):
        ids = torch.randint(0, len(loaded.tokenizer), (length,), generator=torch.Generator().manual_seed(length))
        internals, capture_s = _timed(capture_mamba, loaded, ids)
        (fast, slow), (fast_s, slow_s) = _alternating((vectorised, loop), internals, repeats=args.repeats)
        diff = float((fast - slow).abs().max() / slow.abs().max())
        ratios[length] = slow_s / fast_s
        print(f"T={length}: capture {capture_s:.2f} s (shared), vectorised {fast_s:.2f} s, loop {slow_s:.2f} s, "
              f"ratio {ratios[length]:.1f} (end to end {(capture_s + slow_s) / (capture_s + fast_s):.1f}), "
              f"max rel diff {diff:.1e}")
    peak_gb = float("nan")
    if args.long > 0:
        long_s, peak_gb = _run_long(args.layers, args.long)
        print(f"T={args.long}: capture + vectorised {long_s:.2f} s, peak resident memory {peak_gb:.2f} GB "
              "(model included)")
    if args.recurrences:
        longest = max(int(t) for t in args.lengths.split(","))
        for name, (model_type, overrides) in RECURRENCES.items():
            print(recurrence_line(name, model_type, overrides, longest, args.repeats))
    print(f"ratio_T256={ratios.get(256, float('nan')):.1f} peak_mem_T{args.long}_gb={peak_gb:.2f}")


if __name__ == "__main__":
    main()
