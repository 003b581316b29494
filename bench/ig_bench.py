"""Neuron IG's default rule (adaptive) vs Riemann-20, side by side on the same prompts, checked against a
dense reference on a few layers.

    python bench/ig_bench.py [--model default] [--prompts 8] [--tasks antonyms,country-capital]
                             [--reference-layers 4 | all] [--threads auto|1|2]

Per prompt, the two rules run one after the other (interleaved, so a noisy machine slows both alike), with the
same fast engine. Errors:

* completeness, per prompt and layer, ``|sum_i IG_i - (F(a) - F(0))| / |F(a) - F(0)|``: its median, and the
  worst layer's ``sum_p |delta| / sum_p |gap|`` (as ``completeness_summary``);
* per neuron, on the reference layers (layer 0, each rule's worst layer and evenly spaced others): the relative
  L2 error against a composite reference, 32 Gauss-Legendre nodes on each of the adaptive rule's 8 intervals
  (256 nodes; 16 and 32 per interval agree to 3e-7 on tiny Gemma 3; 8 left 3 % at SmolLM2's oscillating
  layer 0, and plain GL-64's first node, 3.4e-4, lies past Gemma 3's jump at alpha ~ 1e-5), and the top-20
  Jaccard of the neurons by |IG| on those layers.

``--threads auto`` times the default rule with 1 and with all threads first and runs with the faster (the
machine line says which). Last line: ``speedup_vs_riemann20=X worst_layer_error=Y median_layer_error=Z``
(the default rule's completeness errors).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from analysis.attribution import adaptive, neuron_ig, prepare_inputs
from analysis.attribution.neuron_ig import completeness_summary
from analysis.attribution.passes import clean_pass, gradient_pass
from analysis.cli.common import quiet_libraries
from analysis.models import load_model
from analysis.tasks import builtin_tasks
from attn_bench import cpu_model  # bench/ is on the path when a bench runs as a script

REFERENCE_NODES = 32  # per interval of adaptive.CUTS
BUDGET = 320


def reference_ig(loaded, item, layers: list[int]) -> torch.Tensor:
    """[len(layers), neurons]: composite Gauss-Legendre IG of the given layers, one gradient pass."""
    pieces = [adaptive.gauss_legendre(REFERENCE_NODES, adaptive.CUTS[i], adaptive.CUTS[i + 1])
              for i in range(len(adaptive.CUTS) - 1)]
    nodes, weights = torch.cat([n for n, _ in pieces]), torch.cat([w for _, w in pieces])
    with loaded.lock:
        prompt, _ = clean_pass(loaded, item, {}, BUDGET)
        grads = gradient_pass(loaded, prompt, {layer: nodes for layer in layers}, BUDGET)
    w = weights.float().to(loaded.device)[:, None]
    return torch.stack([(prompt.acts[layer].float() * (w * grads[layer][0]).sum(dim=0)).cpu() for layer in layers])


def timed(loaded, items, **rule) -> tuple[float, object]:
    start = time.perf_counter()
    result = neuron_ig(loaded, items, **rule)
    return time.perf_counter() - start, result


def pick_threads(loaded, item, choice: str) -> str:
    """Set torch's thread count by ``choice``; with ``auto``, the faster of 1 and all cores on one prompt."""
    cores = os.cpu_count() or 1
    if choice != "auto":
        torch.set_num_threads(int(choice))
        return f"threads {choice} (given)"
    times = {}
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        timed(loaded, [item])  # warm-up at this count
        times[threads] = min(timed(loaded, [item])[0] for _ in range(2))
    best = min(times, key=times.__getitem__)
    torch.set_num_threads(best)
    return f"threads {best} (picked: " + ", ".join(f"{t} -> {s:.2f} s/prompt" for t, s in times.items()) + ")"


def neuron_errors(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Relative L2 error over the given layers and the top-20 Jaccard by |IG|."""
    error = float((ours - reference).norm() / reference.norm())
    top = [set(x.abs().flatten().topk(20).indices.tolist()) for x in (ours, reference)]
    return error, len(top[0] & top[1]) / len(top[0] | top[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=8, help="per task")
    parser.add_argument("--tasks", default="antonyms,country-capital")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--target", default="copy")
    parser.add_argument("--reference-layers", default="4", help="how many layers to check per neuron, or 'all'")
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    quiet_libraries()

    loaded = load_model(args.model, device=args.device)
    tasks = builtin_tasks()
    items = [item for name in args.tasks.split(",") for item in
             prepare_inputs(loaded, tasks[name].sample_prompts(args.shots, args.prompts, seed=0), args.target)]
    threads = pick_threads(loaded, items[0], args.threads)
    lengths = [len(item.input_ids) for item in items]
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{threads}")
    print(f"model {loaded.describe()}; tasks {args.tasks}, {len(items)} prompts of {min(lengths)}-{max(lengths)} "
          f"tokens, {args.shots}-shot, target {args.target}, all {loaded.n_layers} layers")

    default_s = riemann_s = 0.0
    ours, riemann = [], []
    for item in items:
        seconds, result = timed(loaded, [item])
        default_s, ours = default_s + seconds, ours + [result]
        seconds, result = timed(loaded, [item], steps=20, quadrature="riemann")
        riemann_s, riemann = riemann_s + seconds, riemann + [result]

    def joined(results):
        first = results[0]
        first.per_prompt = torch.cat([r.per_prompt for r in results])
        first.delta = torch.cat([r.delta for r in results])
        first.meta["evaluations_per_layer"] = sum(r.meta["evaluations_per_layer"] for r in results) / len(results)
        return first

    ours_all, riemann_all = joined(ours), joined(riemann)
    summaries = {"adaptive (default)": completeness_summary(ours_all), "riemann-20": completeness_summary(riemann_all)}
    n = len(items)
    for (name, summary), seconds, result in zip(summaries.items(), (default_s, riemann_s), (ours_all, riemann_all)):
        print(f"{name:>19}: {seconds / n:.2f} s/prompt, {result.meta['evaluations_per_layer']:.1f} gradient "
              f"evaluations per layer; completeness median {summary['median']:.1e}, worst layer "
              f"{summary['worst']:.1e} (layer {summary['worst_layer']})")

    if args.reference_layers == "all":
        layers = list(range(loaded.n_layers))
    else:
        spread = torch.linspace(0, loaded.n_layers - 1, int(args.reference_layers)).round().long().tolist()
        layers = sorted({0, *spread, *(s["worst_layer"] for s in summaries.values())})
    errors: dict[str, list[tuple[float, float]]] = {name: [] for name in summaries}
    for p, item in enumerate(items):
        reference = reference_ig(loaded, item, layers)
        for name, result in zip(summaries, (ours_all, riemann_all)):
            errors[name].append(neuron_errors(result.per_prompt[p, layers], reference))
    print(f"per neuron vs the composite 256-node reference on layers {layers} (median over prompts):")
    for name, pairs in errors.items():
        err, jac = torch.tensor(pairs).median(dim=0).values.tolist()
        print(f"{name:>19}: relative L2 error {err:.1e} (worst prompt {max(e for e, _ in pairs):.1e}), "
              f"top-20 Jaccard {jac:.2f}")
    ours_summary = summaries["adaptive (default)"]
    print(f"speedup_vs_riemann20={riemann_s / default_s:.2f} worst_layer_error={ours_summary['worst']:.2e} "
          f"median_layer_error={ours_summary['median']:.2e}")


if __name__ == "__main__":
    main()
