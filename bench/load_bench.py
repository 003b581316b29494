"""A hosted demo under load: N concurrent browser sessions, each with its own mask, against one server in public
mode; does every session get its own numbers, and does the server stay responsive?

    python bench/load_bench.py [--sessions 8] [--model toy-transformer] [--n 12] [--timeout 600]

It starts ``streamlit run app/main.py`` with ``PRUNESCOPE_PUBLIC=1`` and an empty results cache, opens N Chromium
sessions (Debian's chromium through playwright) on the pruning page, each by a link with a different random
mask and Prune on, and waits until each shows its pruned accuracy. Meanwhile a thread polls the health check
every 0.5 s. Each session's number is compared with the same evaluation run directly through the library
(``prune_eval``): a difference means sessions mixed their results. Last line:
``sessions=<N> errors=<e> health_p99_s=<x> mixed_results=<0|1>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, pruning_tasks
from analysis.models import load_model
from analysis.pruning import NeuronMask
from analysis.pruning.evaluate import prune_eval

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_mask(counts: list[int], size: int, seed: int) -> NeuronMask:
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(sum(counts), generator=generator)[:size].tolist()
    return NeuronMask.from_pairs((i // counts[0], i % counts[0]) for i in flat)


def poll_health(url: str, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=10).read()
            latencies.append(time.perf_counter() - start)
        except OSError as exc:
            failures.append(type(exc).__name__)
        stop.wait(0.5)


async def one_session(browser, url: str, mask: NeuronMask, n: int, timeout_s: float) -> dict:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    start = time.perf_counter()
    result = {"value": None, "errors": [], "seconds": None}
    try:
        await page.goto(f"{url}/?page=pruning&mask={mask.to_text()}&n={n}&shots={SHOTS}&prune=1")
        values = []
        for label in ("Accuracy, pruned", "Copy errors, pruned"):
            card = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
            await card.wait_for(timeout=timeout_s * 1000)
            values.append((await card.locator('[data-testid="stMetricValue"]').inner_text()).strip())
        result["value"] = " / ".join(values)
        result["seconds"] = time.perf_counter() - start
        shown = page.locator('[data-testid="stAlertContentError"], [data-testid="stException"]')
        verdict = ("Against the unpruned model", "Against random masks")  # red when pruning costs accuracy
        result["errors"] = [text[:120] for text in await shown.all_inner_texts()
                            if not any(v in text for v in verdict)]
    except Exception as exc:  # noqa: BLE001 - a session that fails is counted, not fatal
        result["errors"].append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    finally:
        await context.close()
    return result


async def run_sessions(url: str, masks: list[NeuronMask], n: int, timeout_s: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM,
                                               args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            return await asyncio.gather(*(one_session(browser, url, m, n, timeout_s) for m in masks))
        finally:
            await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--model", default="toy-transformer")
    parser.add_argument("--n", type=int, default=12, help="prompts per task (the page's four tasks)")
    parser.add_argument("--mask-size", type=int, default=100, help="session i prunes (i + 1) x this many neurons, "
                        "so that sessions' numbers differ and a mix-up shows")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a session may take")
    args = parser.parse_args()

    loaded = load_model(args.model, device="cpu")
    counts = loaded.adapter.neuron_counts()
    masks = [random_mask(counts, min(args.mask_size * (i + 1), sum(counts)), i) for i in range(args.sessions)]
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
            results = asyncio.run(run_sessions(url, masks, args.n, args.timeout))
            wall = time.perf_counter() - started
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=30)

    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    mixed, errors = 0, len(failures)
    for i, (mask, got) in enumerate(zip(masks, results)):
        direct = prune_eval(loaded, mask, tasks, shots=[SHOTS], n=args.n, random_controls=PRUNE_CONTROLS, seed=0)
        rates = direct.cell(shots=SHOTS).rates["pruned"]
        expected = f"{rates['accuracy'].value:.1%} / {rates['copy_error_rate'].value:.1%}"
        own = got["value"] == expected
        mixed += not own
        errors += len(got["errors"])
        print(f"session {i} ({len(mask)} neurons): accuracy / copy errors shown {got['value']}, expected "
              f"{expected}, in {got['seconds'] or float('nan'):.1f} s{'' if own else '  MISMATCH'}"
              + (f"; errors: {got['errors']}" if got["errors"] else ""))
    ordered = sorted(latencies) or [float("nan")]
    p = {q: ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] for q in (50, 95, 99)}
    print(f"{args.sessions} sessions, model {args.model}, {args.n} prompts x 4 tasks x (unpruned, pruned, "
          f"{PRUNE_CONTROLS} controls) each, all done in {wall:.0f} s; health check p50 {p[50]:.3f} s, p95 "
          f"{p[95]:.3f} s, p99 {p[99]:.3f} s over {len(latencies)} polls, {len(failures)} failed")
    print(f"sessions={args.sessions} errors={errors} health_p99_s={p[99]:.3f} mixed_results={int(mixed > 0)}")


if __name__ == "__main__":
    main()
