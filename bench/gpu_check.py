"""The GPU path, checked against the CPU: one script to run when a GPU is lent (the CUDA path has no CI).

    python bench/gpu_check.py [--device cuda] [--models default,gemma3-270m,toy-...] [--quick]

For every model, in float32 and bfloat16 on ``--device``, against the CPU: evaluation answers and answers
under a neuron mask (identical to the CPU in float32; in bfloat16 >= 90 % the same as the CPU in bfloat16, the
device's own difference, and the share equal to float32 printed beside it: bfloat16 itself flips close calls,
on the CPU as much as on a GPU, e.g. 14/16 on SmolLM2), the IG fast path against the reference loop on the
device, implicit or softmax attention maps, and task vectors; then timings of the pruning toggle, IG per prompt
and attention per layer. One line per check; the last line is
``gpu_checks_passed=<p>/<t>``. Without a CUDA device it says so and checks nothing (``--device cpu`` runs the
same checks CPU against CPU, to test the script itself).
"""

from __future__ import annotations

import argparse
import time
import traceback
import weakref
from collections.abc import Callable

import torch

from analysis.attention import attention_maps
from analysis.attribution.neuron_ig import neuron_ig
from analysis.attribution.targets import prepare_inputs
from analysis.evaluation import evaluate_task
from analysis.evaluation.task_vectors import task_vectors
from analysis.models import hooks as model_hooks
from analysis.models import load_model, model_choices
from analysis.pruning import NeuronMask
from analysis.pruning.copying import random_mask_like
from analysis.tasks import Task, builtin_tasks

TEXT = "a:3 b:5 c:1 d:7 | b:5 a:"
RESULTS: list[bool] = []


def check(name: str, passed: bool, detail: str) -> None:
    RESULTS.append(bool(passed))
    print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)


def guarded(name: str, run) -> None:
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - one failed check must not hide the others
        check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        traceback.print_exc(limit=2)


def agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def model_checks(spec: str, device: str, n: int) -> None:
    task = builtin_tasks()["antonyms"]
    cpu = load_model(spec, device="cpu", dtype="float32")
    counts = cpu.adapter.neuron_counts()
    mask = random_mask_like(NeuronMask.from_pairs((layer, 0) for layer in range(cpu.n_layers)), counts, 3)

    def cpu_answers(dtype: str) -> dict[str, list[str]]:
        model = cpu if dtype == "float32" else load_model(spec, device="cpu", dtype=dtype)
        return {kind: evaluate_task(model, task, 2, n, seed=0, mask=m).records.prediction.tolist()
                for kind, m in (("answers", None), ("masked answers", mask))}

    float32 = cpu_answers("float32")
    maps_reference = attention_maps(cpu, TEXT, layers=[cpu.n_layers - 1]).attn
    for dtype in ("float32", "bfloat16"):
        dtype_checks(spec, device, dtype, n, task, mask, cpu_answers, float32, maps_reference)
        if device.startswith("cuda"):  # the device's model went with dtype_checks' frame
            torch.cuda.empty_cache()

    def vectors():
        ours = task_vectors(load_model(spec, device=device), builtin_tasks()["to-upper"], shots=2, n=8,
                            dummy_queries=1).table.accuracy.tolist()
        theirs = task_vectors(cpu, builtin_tasks()["to-upper"], shots=2, n=8, dummy_queries=1).table.accuracy.tolist()
        worst = max(abs(a - b) for a, b in zip(ours, theirs))
        check(f"{spec} task vectors", worst <= 0.125, f"largest per-layer accuracy difference {worst:.3f} (8 queries)")

    guarded(f"{spec} task vectors", vectors)
    guarded(f"{spec} threads", lambda: threads_check(spec, device, n))


def dtype_checks(spec: str, device: str, dtype: str, n: int, task: Task, mask: NeuronMask,
                 cpu_answers: Callable[[str], dict[str, list[str]]], float32: dict[str, list[str]],
                 maps_reference: torch.Tensor) -> None:
    """The model in ``dtype`` on ``device`` against the CPU: answers, masked answers, IG, attention maps. The
    device's model lives as long as this call (the checks below close over this frame, not over a loop's)."""
    label = f"{spec} {dtype}"
    loaded = load_model(spec, device=device, dtype=dtype)
    need = 1.0 if dtype == "float32" else 0.9
    reference = float32 if dtype == "float32" else cpu_answers(dtype)

    def compare(kind: str, m: NeuronMask | None) -> None:
        ours = evaluate_task(loaded, task, 2, n, seed=0, mask=m).records.prediction.tolist()
        share = agreement(ours, reference[kind])
        extra = "" if dtype == "float32" else f"; {agreement(ours, float32[kind]):.1%} equal to CPU float32 " \
            f"(CPU {dtype}: {agreement(reference[kind], float32[kind]):.1%})"
        check(f"{label} {kind}", share >= need, f"{share:.1%} equal to CPU {dtype} (need {need:.0%})"
              + (f", {len(m)} neurons masked" if m is not None else "") + extra)

    def answers():
        compare("answers", None)

    def masked():
        compare("masked answers", mask)

    def ig():
        items = prepare_inputs(loaded, task.sample_prompts(2, 2, seed=0), "gold")
        fast = neuron_ig(loaded, items, steps=8, method="fast").per_prompt
        slow = neuron_ig(loaded, items, steps=8, method="reference").per_prompt
        error = float((fast - slow).abs().max() / slow.abs().max().clamp_min(1e-12))
        bound = 1e-4 if dtype == "float32" else 5e-2
        check(f"{label} IG fast vs reference", error < bound, f"relative error {error:.1e} (bound {bound:.0e}), "
              f"accumulated in {fast.dtype}")

    def maps():
        ours = attention_maps(loaded, TEXT, layers=[loaded.n_layers - 1]).attn
        error = float((ours - maps_reference).abs().max() / maps_reference.abs().max().clamp_min(1e-12))
        bound = 1e-4 if dtype == "float32" else 5e-2
        check(f"{label} attention maps", error < bound, f"relative error {error:.1e} vs CPU (bound {bound:.0e})")

    for name, run in (("answers", answers), ("masked", masked), ("ig", ig), ("maps", maps)):
        guarded(f"{label} {name}", run)


def threads_check(spec: str, device: str, n: int) -> None:
    """Sessions sharing the model on the device: a masked evaluation, an unmasked one and IG in three threads at
    once each give exactly what they give alone (every forward holds the model's lock; CUDA's asynchronous
    kernels must not let one thread's mask or capture reach another's forward)."""
    import threading

    loaded = load_model(spec, device=device)
    task = builtin_tasks()["antonyms"]
    mask = random_mask_like(NeuronMask.from_pairs((layer, 0) for layer in range(loaded.n_layers)),
                            loaded.adapter.neuron_counts(), 5)
    items = prepare_inputs(loaded, task.sample_prompts(2, 2, seed=1), "confidence")
    jobs = {"masked": lambda: evaluate_task(loaded, task, 2, n, seed=0, mask=mask).records.prediction.tolist(),
            "unmasked": lambda: evaluate_task(loaded, task, 2, n, seed=0).records.prediction.tolist(),
            "ig": lambda: neuron_ig(loaded, items, steps=8).per_prompt}
    alone = {name: job() for name, job in jobs.items()}
    together: dict[str, list] = {name: [] for name in jobs}
    barrier = threading.Barrier(len(jobs))

    def run(name: str) -> None:
        barrier.wait()
        for _ in range(2):
            together[name].append(jobs[name]())

    workers = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    same = [all(torch.equal(r, alone[name]) if isinstance(r, torch.Tensor) else r == alone[name]
                for r in runs) and len(runs) == 2 for name, runs in together.items()]
    check(f"{spec} threads", all(same), f"{sum(same)}/{len(same)} job kinds equal alone while run together "
          "(masked and unmasked evaluation, IG), twice each")


def timings(device: str) -> None:
    from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, pruning_tasks
    from analysis.pruning.evaluate import prune_eval

    loaded = load_model("default", device=device)
    counts = loaded.adapter.neuron_counts()
    mask = random_mask_like(NeuronMask.from_pairs((layer, 0) for layer in range(20)), counts, 0)
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    start = time.perf_counter()
    prune_eval(loaded, mask, tasks, shots=[4], n=40, random_controls=PRUNE_CONTROLS)
    toggle = time.perf_counter() - start
    items = prepare_inputs(loaded, builtin_tasks()["antonyms"].sample_prompts(4, 4, seed=0), "copy")
    start = time.perf_counter()
    neuron_ig(loaded, items, steps=20)
    ig = (time.perf_counter() - start) / len(items)
    ids = torch.tensor([loaded.tokenizer(TEXT * 4).input_ids], device=loaded.device)
    forward = {}
    for label, guard in (("guarded", True), ("unguarded", False)):
        saved = model_hooks._GUARDED
        if not guard:
            model_hooks._GUARDED = weakref.WeakKeyDictionary()
        try:
            with loaded.lock, torch.no_grad():
                loaded.model(input_ids=ids)
                sync(device)
                start = time.perf_counter()
                for _ in range(20):
                    loaded.model(input_ids=ids)
                sync(device)
                forward[label] = (time.perf_counter() - start) / 20
        finally:
            model_hooks._GUARDED = saved
    print(f"TIME one forward ({ids.shape[1]} tokens, default model): {forward['guarded'] * 1e3:.2f} ms with the "
          f"lock guard, {forward['unguarded'] * 1e3:.2f} ms without", flush=True)
    toy = load_model("toy-mamba", device=device)
    start = time.perf_counter()
    attention_maps(toy, TEXT * 8)
    attention = (time.perf_counter() - start) / toy.n_layers
    print(f"TIME toggle (page default, cold) {toggle:.1f} s; IG {ig:.2f} s per prompt (20 steps, default model); "
          f"implicit attention {attention:.3f} s per layer (toy-mamba, {len(toy.tokenizer(TEXT * 8).input_ids)} "
          "tokens)", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(model_choices()))
    parser.add_argument("--n", type=int, default=16, help="prompts per evaluation check")
    parser.add_argument("--quick", action="store_true", help="toy models only, no timings")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run this where a GPU is lent)")
        print("gpu_checks_passed=0/0")
        return
    if args.device.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    models = [m for m in args.models.split(",") if m and (not args.quick or m.startswith("toy-"))]
    for spec in models:
        guarded(f"{spec} load", lambda spec=spec: model_checks(spec, args.device, args.n))
    if not args.quick:
        guarded("timings", lambda: timings(args.device))
    print(f"gpu_checks_passed={sum(RESULTS)}/{len(RESULTS)}")


if __name__ == "__main__":
    main()
