"""Mamba implicit attention, vectorised vs a position-by-position loop, on a Mamba-130m-shaped random model.

    python bench/attn_bench.py [--lengths 64,128,256] [--long 512] [--layers 24] [--repeats 3]
                               [--model-type mamba|falcon_mamba]

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
``--model-type falcon_mamba``: the same shape with Falcon-Mamba's RMS-normalised dt, B and C (its capture reads
them from the norms; the matrices then go through the same paths).
Last line: ``ratio_T256=<paths ratio> peak_mem_T512_gb=<y>``.

Before it, one line per newer recurrence kind (``--kinds``, default all; ``--kinds none`` skips them) at the
first of ``--lengths``' longest length: LFM2's gated short convolution (hidden 1024, 3 taps, as LFM2-350M;
unified form), xLSTM's mLSTM (hidden 512, 4 heads, q/k 256, v 512, chunks of 64; mlstm form) and Zamba's
multi-head Mamba (hidden 768, d_inner 1536 in 2 mamba heads with their own B and C, state 16; s6), each on a
random two-layer model, mean map of layer 0 from the vectorised path against its float64 loop reference;
and the delta-rule / linear-attention recurrences (``delta``, ``kda``, ``lightning``): one layer at the published
head shapes (random weights, decay ~0.05 a step), core form, mean over heads, through the vectorised path
(:func:`linear_reduced`: one triangular solve per head) and the fp64 position loop of the tests.
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


def build(layers: int, model_type: str = "mamba"):
    from transformers import AutoConfig, AutoModelForCausalLM

    from analysis.models.adapters import make_adapter
    from analysis.models.loader import LoadedModel
    from analysis.models.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=layers,
                                  state_size=16, expand=2, conv_kernel=4)
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    return LoadedModel(f"{model_type}-130m-shaped", "random", model, tokenizer, make_adapter(model),
                       torch.device("cpu"), torch.float32)


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


def _long_child(layers: int, length: int, model_type: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    loaded = build(layers, model_type)
    ids = torch.randint(0, len(loaded.tokenizer), (length,))
    start = time.perf_counter()
    vectorised(capture_mamba(loaded, ids))
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30))


def _run_long(layers: int, length: int, model_type: str) -> tuple[float, float]:
    """Seconds and peak resident GB of capture + vectorised path at ``length``, in a fresh child process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_long_child, args=(layers, length, model_type, queue))
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


def _lfm2_kind():
    from transformers import Lfm2Config, Lfm2ForCausalLM

    from analysis.implicit_attention import lfm2

    config = Lfm2Config(vocab_size=512, hidden_size=1024, intermediate_size=2048, num_hidden_layers=2,
                        num_attention_heads=16, num_key_value_heads=8, layer_types=["conv", "full_attention"],
                        block_auto_adjust_ff_dim=False)
    model = Lfm2ForCausalLM(config)
    return model, "lfm2 gated conv (hidden 1024, 3 taps, unified)", lfm2.capture_lfm2, \
        lambda it: lfm2.lfm2_reduced(it, "unified", Reduction("mean")), \
        lambda it, idx: lfm2.lfm2_loop_matrices(it, "unified", idx), lambda it: it.n_channels


def _xlstm_kind():
    from transformers import xLSTMConfig, xLSTMForCausalLM

    from analysis.implicit_attention import xlstm

    config = xLSTMConfig(vocab_size=512, hidden_size=512, num_hidden_layers=2, num_heads=4, chunk_size=64)
    model = xLSTMForCausalLM(config)
    return model, "xlstm mLSTM (hidden 512, 4 heads, chunks of 64, mlstm)", xlstm.capture_xlstm, \
        lambda it: xlstm.xlstm_reduced(it, "mlstm", Reduction("mean")), \
        lambda it, idx: xlstm.xlstm_loop_matrices(it, "mlstm", idx), lambda it: it.n_heads


def _zamba_kind():
    from transformers import ZambaConfig, ZambaForCausalLM

    config = ZambaConfig(vocab_size=512, hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=12, n_mamba_heads=2, mamba_d_state=16,
                         layers_block_type=["mamba", "mamba"])
    model = ZambaForCausalLM(config)
    return model, "zamba multi-head Mamba (hidden 768, d_inner 1536, 2 mamba heads, state 16, s6)", capture_mamba, \
        lambda it: mamba_reduced(it, "s6", Reduction("mean")), \
        lambda it, idx: mamba_loop_matrices(it, "s6", idx), lambda it: it.n_heads


KINDS = {"lfm2": _lfm2_kind, "xlstm": _xlstm_kind, "zamba": _zamba_kind}
# one recurrent layer of each delta-rule / linear-attention kind at its published head shapes (hidden sizes cut
# to keep the MLPs small): bench name -> (title, model type, config overrides)
RECURRENCES = {
    "delta": ("delta rule (Qwen3-Next: 16 key / 32 value heads, d_k = d_v = 128)", "qwen3_next", dict(
        hidden_size=1024, intermediate_size=1024, linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128, num_experts=0)),
    "kda": ("KDA (Kimi Linear: 32 heads, d = 128, channel-wise decay)", "kimi_linear", dict(
        hidden_size=1024, intermediate_size=1024, linear_num_heads=32, linear_head_dim=128,
        mlp_layer_types=["dense"])),
    "lightning": ("lightning (MiniMax: 64 heads, d = 128)", "minimax", dict(
        hidden_size=1024, intermediate_size=256, num_attention_heads=64, head_dim=128, num_local_experts=1,
        num_experts_per_tok=1, block_size=256)),
}


def kind_line(name: str, length: int, repeats: int, chunk: int = 128) -> str:
    """One recurrence kind: capture layer 0 once, then its mean map by the vectorised path and by the loop."""
    from analysis.models.adapters import make_adapter
    from analysis.models.loader import LoadedModel
    from analysis.models.tiny import build_tokenizer

    torch.manual_seed(0)
    model, title, capture, fast, slow_matrices, count = KINDS[name]()
    model = model.eval().requires_grad_(False)
    loaded = LoadedModel(name, "random", model, build_tokenizer(), make_adapter(model), torch.device("cpu"),
                         torch.float32)
    ids = torch.randint(0, 512, (length,), generator=torch.Generator().manual_seed(length))
    internals, capture_s = _timed(capture, loaded, ids, [0])
    it, width = internals[0], count(internals[0])

    def slow(it):
        return sum(slow_matrices(it, torch.arange(s, min(s + chunk, width))).sum(0)
                   for s in range(0, width, chunk)) / width

    (a, b), (fast_s, slow_s) = _alternating((fast, slow), it, repeats=repeats)
    diff = float((a - b).abs().max() / b.abs().max())
    return (f"{title}, T={length}: capture {capture_s:.2f} s, vectorised {fast_s:.3f} s, loop {slow_s:.2f} s, "
            f"ratio {slow_s / fast_s:.0f}, max rel diff {diff:.1e}")


def recurrence_line(name: str, length: int, repeats: int) -> str:
    """Vectorised vs loop seconds of one delta-rule / lightning layer's core-form mean map at ``length`` (a bare
    one-layer transformers model)."""
    from transformers import AutoModelForCausalLM

    from analysis.models.tiny import tiny_config

    title, model_type, overrides = RECURRENCES[name]
    torch.manual_seed(0)
    config = tiny_config(model_type, 512, **{**overrides, "num_hidden_layers": 1, "layer_types": ["linear_attention"]})
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    for param_name, param in model.named_parameters():  # transformers' init decays by up to e^-20 a step
        if param_name.endswith("A_log"):
            param.data.fill_(-3.0)
    ids = torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(length))
    inn, capture_s = _timed(lambda: bare_model_internals(model, ids)[0])
    fast_path = lambda i: linear_reduced(i, i.kind, Reduction("mean"))  # noqa: E731
    slow_path = lambda i: linear_loop_matrices(i, i.kind).mean(0)  # noqa: E731
    (fast, slow), (fast_s, slow_s) = _alternating((fast_path, slow_path), inn, repeats=repeats)
    diff = float((fast - slow).abs().max() / slow.abs().max())
    return (f"{title}, T={length}: capture {capture_s:.2f} s, vectorised {fast_s:.3f} s, loop {slow_s:.2f} s, "
            f"ratio {slow_s / fast_s:.0f}, max rel diff {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,128,256")
    parser.add_argument("--long", type=int, default=512)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path and length (best is kept)")
    parser.add_argument("--model-type", default="mamba", choices=("mamba", "falcon_mamba"))
    parser.add_argument("--kinds", default=",".join([*KINDS, *RECURRENCES]),
                        help="newer recurrence kinds to time, or none")
    args = parser.parse_args()
    loaded = build(args.layers, args.model_type)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, "
          f"last-level cache {last_level_cache_bytes() >> 20} MiB (chunks of {CACHE_BYTES >> 20} MiB), "
          f"subnormal results {subnormal_penalty():.1f}x slower")
    print(f"model: {args.model_type}, {args.layers} layers, hidden 768, d_inner 1536, state 16")
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
        long_s, peak_gb = _run_long(args.layers, args.long, args.model_type)
        print(f"T={args.long}: capture + vectorised {long_s:.2f} s, peak resident memory {peak_gb:.2f} GB "
              "(model included)")
    longest = max(int(t) for t in args.lengths.split(","))
    for name in args.kinds.split(","):
        if name in KINDS:
            print(kind_line(name, longest, args.repeats))
        elif name in RECURRENCES:
            print(recurrence_line(name, longest, args.repeats))
    print(f"ratio_T256={ratios.get(256, float('nan')):.1f} peak_mem_T{args.long}_gb={peak_gb:.2f}")


if __name__ == "__main__":
    main()
