"""A hosted demo under load: concurrent browser sessions of every kind of job, with masks and without, against one
server in public mode; does every session get its own numbers, and does the server stay responsive?

    python bench/load_bench.py [--sessions 16] [--model toy-transformer] [--n 12] [--timeout 600]

It starts ``streamlit run app/main.py`` with ``PRUNESCOPE_PUBLIC=1`` and an empty results cache and opens N
Chromium sessions at once (Debian's chromium through playwright), each by a deep link with its own settings
(task, seed, text, layer, or a random mask of its own), the kinds taken in turn from :data:`VARIANTS` (the default
16: two of each of its eight; about 2 min of sessions and 4 min in all on a shared 2-core machine):

* ``prune`` (mask): the pruning page with Prune on (its background job: masked evaluation of the page's four
  tasks); read: the *Accuracy, pruned* and *Copy errors, pruned* cards; expected: ``prune_eval``.
* ``evaluate`` (no mask: the page has no mask setting): click Evaluate; read: the five metric cards;
  expected: ``evaluate_task``.
* ``compare`` (mask): the Compare page's two masks, no mask (A) against the link's mask (B); click Compare;
  read: the outcome chart's bars (x labels name each side's mask and its size); expected: ``evaluate_task``
  without and with the mask.
* ``attribution`` (no mask): click Attribute (neuron IG job); read: every heatmap cell's neuron id and raw
  score (Plotly ``customdata``), the per-layer totals, and the top-neurons table; expected: ``attribute_task``
  (+ ``top_neurons``).
* ``task-vectors`` (without a mask, and with one: two curves, unpruned and pruned): click Run task vectors (its
  job); read: the per-layer table (its expander opened), the chart's curves and the summary's zero-shot and ICL
  accuracies; expected: ``task_vectors`` per condition.
* ``attention``: the layer's softmax/implicit attention map (the 2nd, 4th... attention session also shows
  toy-mamba's implicit map beside it) and token relevance by every method the family runs (LRP included for
  transformers); read: the maps' ``z`` and the relevance chart's raw ``customdata``; expected:
  ``attention_maps`` and ``token_relevance``.
* ``faithfulness`` (the attention page's table): click Run faithfulness (its job); read: the AUC table; expected:
  ``faithfulness``.

Charts are read from the page's Plotly figures (``.js-plotly-plot``'s ``data``), tables from the data grid's
cells (``st.dataframe``'s accessible table: the rows it has drawn), cards from their text. A session *matches*
when every value read equals the library's, both written with the page's precision: cards as shown,
percentages (hover ``.1%``) as ``.1%``, heatmap hovers at their ``.4g`` / ``.3g``, table cells as
``st.dataframe`` draws floats (at most 4 decimals). The same runs are made directly through the library (no
cache) after the server stops. A session that shows other numbers than its own is a mix-up (``mixed_results``;
the line names the session whose numbers it shows, if any); a red line, an exception or a session that never
shows its result counts as an error. Meanwhile a thread polls the health check every 0.5 s. One line per
session, then a summary and the last line:
``sessions=<N> errors=<e> health_p99_s=<x> kinds=<k> mixed_results=<0|1>``.

Beside this script: load_bench_session.py (a session and the page's number formats), load_bench_pages.py (the
browser side) and load_bench_expect.py (the library's numbers and the verdict).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from analysis.attribution.propagation import LRP_FAMILIES
from analysis.attribution.tokens import METHODS
from analysis.models import LoadedModel, load_model
from analysis.pruning import NeuronMask
from load_bench_expect import EXPECT, verdict  # bench/ is on the path when a bench runs as a script
from load_bench_pages import run_sessions
from load_bench_session import SHOTS, Session

ROOT = Path(__file__).resolve().parents[1]
# (kind, with a mask): session i runs VARIANTS[i % len(VARIANTS)]
VARIANTS = (("prune", True), ("evaluate", False), ("compare", True), ("attribution", False),
            ("task-vectors", False), ("task-vectors", True), ("attention", False), ("faithfulness", False))
TASKS = ("next-letter", "list-first", "prev-letter", "list-last", "antonyms", "to-upper")  # the toy: 30-100 %


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_mask(counts: list[int], size: int, seed: int) -> NeuronMask:
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(sum(counts), generator=generator)[:size].tolist()
    return NeuronMask.from_pairs((i // counts[0], i % counts[0]) for i in flat)


def relevance_methods(loaded: LoadedModel) -> list[str]:
    return [m for m in METHODS if m != "lrp" or loaded.family in LRP_FAMILIES]


def sample_text(seed: int) -> str:
    """A key:value recall prompt like the attention page's default, different for every session."""
    rng = random.Random(seed)
    keys = rng.sample("abcdefgh", 4)
    pairs = [f"{k}:{rng.randint(0, 9)}" for k in keys]
    return f"{' '.join(pairs)} | {pairs[1]} {keys[0]}:"


def plan(args, loaded: LoadedModel) -> list[Session]:
    counts = loaded.adapter.neuron_counts()
    methods = relevance_methods(loaded)
    beside_model = "toy-mamba" if loaded.name != "toy-mamba" else "toy-transformer"
    sessions = []
    for i in range(args.sessions):
        kind, masked = VARIANTS[i % len(VARIANTS)]
        turn = i // len(VARIANTS)
        mask = random_mask(counts, min(args.mask_size * (1 + i % 4), sum(counts)), i) if masked else None
        task = TASKS[i % len(TASKS)]
        params: dict[str, str | int] = {"shots": SHOTS}
        beside = ""
        if kind == "prune":
            params.update(n=args.n, prune=1)
        elif kind in ("evaluate", "compare"):
            params.update(task=task, n=args.n, seed=i)
        elif kind == "attribution":
            params.update(task=task, seed=i, ig_n=args.ig_n, ig_steps=args.ig_steps)
        elif kind == "task-vectors":
            params.update(task=task, seed=i, tv_n=args.tv_n, tv_dummies=1, tv_masked=int(masked))
        elif kind == "attention":
            beside = beside_model if turn % 2 else ""
            params = {"text": sample_text(i), "layer": i % loaded.n_layers, "rel_methods": ",".join(methods),
                      "beside": beside or "none"}
        elif kind == "faithfulness":
            params = {"faith_task": task, "faith_n": args.faith_n,
                      "rel_methods": ",".join(m for m in ("raw", "gxi", "lrp") if m in methods)}
        if mask is not None:
            params["mask"] = mask.to_text()
        sessions.append(Session(i, kind, loaded.name, mask, params, beside))
    return sessions


def poll_health(url: str, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=10).read()
            latencies.append(time.perf_counter() - start)
        except OSError as exc:
            failures.append(type(exc).__name__)
        stop.wait(0.5)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16, help=f"sessions at once; the kinds in turn, "
                        f"{len(VARIANTS)} variants: {', '.join(k + (' +mask' if m else '') for k, m in VARIANTS)}")
    parser.add_argument("--model", default="toy-transformer")
    parser.add_argument("--n", type=int, default=12, help="prompts per task (pruning, evaluate, compare)")
    parser.add_argument("--ig-n", type=int, default=2, help="attribution prompts")
    parser.add_argument("--ig-steps", type=int, default=4, help="attribution IG steps")
    parser.add_argument("--tv-n", type=int, default=8, help="task-vector queries (one dummy query)")
    parser.add_argument("--faith-n", type=int, default=3, help="faithfulness prompts")
    parser.add_argument("--mask-size", type=int, default=100, help="a masked session i prunes (1 + i mod 4) x "
                        "this many random neurons (its own draw), so that sessions' numbers differ and a mix-up shows")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a session may take")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu")
    sessions = plan(args, loaded)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PRUNESCOPE_PUBLIC": "1", "PRUNESCOPE_MODEL": args.model, "PRUNESCOPE_CACHE": cache}
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        latencies, failures, stop = [], [], threading.Event()
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            poller = threading.Thread(target=poll_health, args=(url, stop, latencies, failures), daemon=True)
            poller.start()
            started = time.perf_counter()
            asyncio.run(run_sessions(url, sessions, args.timeout))
            wall = time.perf_counter() - started
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=30)

    loaded_models = {args.model: loaded}

    def models(name: str) -> LoadedModel:
        if name not in loaded_models:
            loaded_models[name] = load_model(name, device="cpu")
        return loaded_models[name]

    expected = {s.index: EXPECT[s.kind](loaded, s, args, models) for s in sessions}
    mixed, errors = 0, len(failures)
    for s in sessions:
        same_kind = {t.index: expected[t.index] for t in sessions if t.kind == s.kind and t.index != s.index}
        wrong, text = verdict(s, expected[s.index], same_kind)
        mixed += wrong
        errors += len(s.errors) + (s.shown is None and not s.errors)
        size = f"mask {len(s.mask):4d}" if s.mask is not None else "no mask  "
        print(f"session {s.index:2d} {s.kind:<12} {size}: {text}; in {s.seconds or float('nan'):.1f} s"
              + (f" (read after {s.redraws} x 0.5 s: not drawn yet)" if s.redraws else "")
              + (f"; errors: {s.errors}" if s.errors else ""))
    for s in sessions:  # a mix-up between sessions expecting the same numbers would not show
        twins = [t.index for t in sessions
                 if t.index > s.index and t.kind == s.kind and expected[t.index] == expected[s.index]]
        if twins:
            print(f"note: sessions {s.index} and {twins} expect the same values ({s.kind}): a mix-up between them "
                  "would not show")
    ordered = sorted(latencies) or [float("nan")]
    p = {q: ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in (50, 95, 99)}
    kinds = sorted({s.kind for s in sessions})
    print(f"{len(sessions)} sessions of {len(kinds)} kinds ({', '.join(kinds)}), model {args.model}, all done in "
          f"{wall:.0f} s; health check p50 {p[50]:.3f} s, p95 {p[95]:.3f} s, p99 {p[99]:.3f} s, max "
          f"{ordered[-1]:.3f} s over {len(latencies)} polls, {len(failures)} failed")
    print(f"sessions={len(sessions)} errors={errors} health_p99_s={p[99]:.3f} kinds={len(kinds)} "
          f"mixed_results={int(mixed > 0)}")


if __name__ == "__main__":
    main()
