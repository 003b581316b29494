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
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import torch

from analysis.attention import FORMS, attention_maps
from analysis.attribution import attribute_task
from analysis.attribution.summary import top_neurons
from analysis.attribution.tokens import LRP_FAMILIES, METHODS, token_relevance
from analysis.demo import PRUNE_CONTROLS, PRUNE_TASKS, pruning_tasks
from analysis.evaluation import evaluate_task
from analysis.evaluation.faithfulness import faithfulness
from analysis.evaluation.task_vectors import task_vectors
from analysis.models import LoadedModel, load_model
from analysis.pruning import NeuronMask
from analysis.pruning.evaluate import prune_eval
from analysis.tasks import builtin_tasks
from components.charts import visible_token

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = 2
# (kind, with a mask): session i runs VARIANTS[i % len(VARIANTS)]
VARIANTS = (("prune", True), ("evaluate", False), ("compare", True), ("attribution", False),
            ("task-vectors", False), ("task-vectors", True), ("attention", False), ("faithfulness", False))
TASKS = ("next-letter", "list-first", "prev-letter", "list-last", "antonyms", "to-upper")  # the toy: 30-100 %
PAGES = {"prune": "pruning", "evaluate": "evaluate", "compare": "compare", "attribution": "attribution",
         "task-vectors": "task-vectors", "attention": "attention", "faithfulness": "attention"}
BUTTONS = {"evaluate": "Evaluate", "compare": "Compare", "attribution": "Attribute",
           "task-vectors": "Run task vectors", "faithfulness": "Run faithfulness"}
PRUNE_VERDICTS = ("Against the unpruned model", "Against random masks")  # red when pruning costs accuracy
RED = '[data-testid="stAlertContentError"], [data-testid="stException"]'
PLOTS_JS = """() => {
  const plain = v => (Array.isArray(v) || ArrayBuffer.isView(v)) ? Array.from(v, plain) : v;
  return Array.from(document.querySelectorAll('.js-plotly-plot'), g => ({
    title: (g.layout && g.layout.title && g.layout.title.text) || '',
    traces: (g.data || []).map(t => ({name: t.name || '', mode: t.mode || '', x: plain(t.x || null),
                                      y: plain(t.y || null), z: plain(t.z || null),
                                      customdata: plain(t.customdata || null)}))}));
}"""
TABLE_JS = """frame => {
  const table = frame.querySelector('table');
  if (!table) return null;
  return {columns: Array.from(table.querySelectorAll('thead th'), th => th.textContent),
          rows: Array.from(table.querySelectorAll('tbody tr'),
                           tr => [Number(tr.getAttribute('aria-rowindex')) - 2,
                                  Array.from(tr.querySelectorAll('td'), td => td.textContent)])};
}"""

class NotDrawn(RuntimeError):
    """A chart or table the result comes with is not drawn yet (Plotly and the data grid draw after the script's
    run, later under load): read again."""


Values = dict[str, str]  # what one session shows (or should show): label -> value as the page writes it
TABLE = "table: "  # a label from a data grid, which draws only the rows in view: one it did not draw is not compared


def pct(value) -> str:
    return f"{float(value):.1%}"


def cell(value) -> str:
    """A float as st.dataframe draws it: at most 4 decimals, trailing zeros dropped (the grid's accessible text
    holds the full value)."""
    number = float(value)
    if math.isnan(number):
        return "nan"
    text = f"{number:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass
class Session:
    index: int
    kind: str
    model: str
    mask: NeuronMask | None
    params: dict[str, str | int]
    beside: str = ""  # attention: the model whose map the page shows beside (none: "")
    shown: Values | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float | None = None
    redraws: int = 0  # reads that found a chart or table not drawn yet

    def link(self, url: str) -> str:
        return f"{url}/?" + urlencode({"page": PAGES[self.kind], **self.params})


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


# -- reading what a page shows ------------------------------------------------------------------------------
async def idle(page, timeout_s: float) -> None:
    """Until the script run has finished (Streamlit shows its running indicator meanwhile)."""
    await page.wait_for_timeout(300)
    await page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                 timeout=timeout_s * 1000)


async def red_lines(page, kind: str) -> list[str]:
    texts = await page.locator(RED).all_inner_texts()
    return [t.strip()[:160] for t in texts if not (kind == "prune" and any(v in t for v in PRUNE_VERDICTS))]


async def wait_ready(page, ready, session: Session, deadline: float) -> None:
    """Until ``ready`` shows; gives up early when the page has finished its run with a red line and no result
    (a refused or failed job: nothing more will come)."""
    stalled = 0
    while not (await ready.count() and await ready.first.is_visible()):
        if time.monotonic() > deadline:
            raise TimeoutError("no result within the timeout")
        busy = await page.locator('[data-testid="stStatusWidget"]').count()
        stalled = stalled + 1 if not busy and await red_lines(page, session.kind) else 0
        if stalled >= 5:
            raise RuntimeError("the page finished without a result")
        await page.wait_for_timeout(500)


async def metric(page, label: str) -> str:
    card = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return (await card.locator('[data-testid="stMetricValue"]').inner_text()).strip()


async def plots(page) -> list[dict]:
    return await page.evaluate(PLOTS_JS)


async def table_rows(frame) -> list[dict[str, str]]:
    """The rows a data grid has drawn (its first ten or so, in order), as column -> cell text."""
    got = await frame.evaluate(TABLE_JS)
    if not got or not got["rows"]:
        raise NotDrawn("the table has no rows drawn")
    return [dict(zip(got["columns"], cells)) for _, cells in sorted(got["rows"])]


def plot_titled(figures: list[dict], prefix: str) -> dict:
    found = [f for f in figures if re.sub(r"<[^>]+>", "", f["title"]).startswith(prefix)]
    if not found:
        titles = [re.sub(r"<[^>]+>", "", f["title"])[:40] for f in figures]
        raise NotDrawn(f"no chart titled {prefix!r} (charts: {titles})")
    return found[0]


def trace_named(figures: list[dict], name: str) -> dict:
    """The chart with a trace called ``name``."""
    found = [f for f in figures if any(t["name"] == name for t in f["traces"])]
    if not found:
        raise NotDrawn(f"no chart with a trace {name!r}")
    return found[0]


def heatmap_values(figure: dict, label: str) -> Values:
    [trace] = figure["traces"]
    return {f"{label} [{i},{j}]": f"{v:.4g}" for i, row in enumerate(trace["z"]) for j, v in enumerate(row)}


async def read_prune(page, session: Session) -> Values:
    return {"accuracy, pruned": await metric(page, "Accuracy, pruned"),
            "copy errors, pruned": await metric(page, "Copy errors, pruned")}


async def read_evaluate(page, session: Session) -> Values:
    return {label: await metric(page, label) for label in ("Accuracy", "Copy errors", "Echoes", "Other errors", "n")}


async def read_compare(page, session: Session) -> Values:
    figure = trace_named(await plots(page), "Accuracy")
    return {f"{x} {trace['name']}": pct(y) for trace in figure["traces"] for x, y in zip(trace["x"], trace["y"])}


async def read_attribution(page, session: Session) -> Values:
    figures = await plots(page)
    heat = plot_titled(figures, "mean attribution per neuron")
    [trace] = heat["traces"]
    values = {f"L{layer}.{neuron}": f"{score:.3g}" for layer, row in enumerate(trace["customdata"])
              for neuron, score in row}
    totals = trace_named(figures, "signed sum")
    for trace in totals["traces"]:
        values.update({f"L{x} {trace['name']}": f"{y:.3g}" for x, y in zip(trace["x"], trace["y"])})
    rows = await table_rows(page.locator('[data-testid="stDataFrame"]').first)
    for r, row in enumerate(rows):
        values[f"{TABLE}top {r}"] = (f"{row['layer']}.{row['neuron']} {cell(row['score'])} "
                                     f"{cell(row['max_activation'])} {row['fires_most_on']}")
    return values


async def read_task_vectors(page, session: Session) -> Values:
    values: Values = {}
    expander = page.locator('[data-testid="stExpander"]').filter(has_text="Per layer:").first
    if await expander.locator("details").get_attribute("open") is None:  # its grid draws once it is open
        await expander.locator("summary").click()
    for row in await table_rows(expander.locator('[data-testid="stDataFrame"]').first):
        for column in ("accuracy", "copy_rate", "p_adjusted"):
            values[f"{TABLE}{row['condition']} L{row['layer']} {column}"] = cell(row[column])
    for row in await table_rows(page.locator('[data-testid="stDataFrame"]').first):  # the summary
        for column in ("zero_shot_accuracy", "icl_accuracy"):
            values[f"{TABLE}{row['condition']} {column}"] = cell(row[column])
    figure = trace_named(await plots(page), "unpruned")
    for trace in figure["traces"]:
        if trace["mode"] == "lines+markers":  # a condition's curve (not its stars)
            values.update({f"{trace['name']} L{x} chart": pct(y) for x, y in zip(trace["x"], trace["y"])})
    return values


async def read_attention(page, session: Session) -> Values:
    figures = await plots(page)
    layer = int(session.params["layer"])
    values: Values = {}
    main = plot_titled(figures, f"{session.model} layer {layer} (")
    values["tokens"] = " ".join(main["traces"][0]["x"])
    values.update(heatmap_values(main, "attention"))
    if session.beside:
        values.update(heatmap_values(plot_titled(figures, f"{session.beside} layer "), session.beside))
    relevance = plot_titled(figures, "relevance for the predicted next token")
    [trace] = relevance["traces"]
    for method, row in zip(trace["y"], trace["customdata"]):
        values.update({f"{method} t{j}": f"{v:.4g}" for j, v in enumerate(row)})
    return values


async def read_faithfulness(page, session: Session) -> Values:
    values: Values = {}
    for row in await table_rows(page.locator('[data-testid="stDataFrame"]').first):
        values[f"{TABLE}{row['method']}/{row['order']}"] = (f"{cell(row['auc_mean'])} ± {cell(row['auc_std'])}, "
                                                            f"n={row['n']}")
    return values


READERS: dict[str, Callable[..., Awaitable[Values]]] = {
    "prune": read_prune, "evaluate": read_evaluate, "compare": read_compare, "attribution": read_attribution,
    "task-vectors": read_task_vectors, "attention": read_attention, "faithfulness": read_faithfulness}


def ready_locator(page, session: Session):
    kind = session.kind
    if kind == "prune":
        return page.locator('[data-testid="stMetric"]').filter(has_text="Copy errors, pruned")
    if kind == "evaluate":
        return page.locator('[data-testid="stMetric"]').filter(has_text="Other errors")
    if kind == "attention":  # its maps and the relevance chart
        return page.locator(".js-plotly-plot").nth(2 + bool(session.beside) - 1)
    if kind == "compare":
        return page.locator(".js-plotly-plot")
    return page.locator('[data-testid="stDataFrame"]')  # attribution, task vectors, faithfulness: a table


async def one_session(browser, url: str, session: Session, timeout_s: float) -> None:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    start = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    try:
        await page.goto(session.link(url))
        button = BUTTONS.get(session.kind)
        if button:
            target = page.get_by_role("button", name=button, exact=True)
            await target.wait_for(timeout=timeout_s * 1000)
            await idle(page, timeout_s)  # the link's settings are in (the first run switches page)
            await target.click()
        await wait_ready(page, ready_locator(page, session), session, deadline)
        await idle(page, max(deadline - time.monotonic(), 1))
        while session.shown is None:
            try:
                session.shown = await READERS[session.kind](page, session)
            except NotDrawn:
                if time.monotonic() > deadline:
                    raise
                session.redraws += 1
                await page.wait_for_timeout(500)
        session.seconds = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a session that fails is counted, not fatal
        session.errors.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}")
    finally:
        try:
            session.errors += await red_lines(page, session.kind)
        except Exception:  # noqa: BLE001 - the page is gone: nothing more to read
            pass
        await context.close()


async def run_sessions(url: str, sessions: list[Session], timeout_s: float) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM,
                                               args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            await asyncio.gather(*(one_session(browser, url, s, timeout_s) for s in sessions))
        finally:
            await browser.close()


# -- the same computations through the library ---------------------------------------------------------------
def expect_prune(loaded, session: Session, args, models) -> Values:
    tasks = [pruning_tasks()[name] for name in PRUNE_TASKS]
    direct = prune_eval(loaded, session.mask, tasks, shots=[SHOTS], n=args.n, random_controls=PRUNE_CONTROLS, seed=0)
    rates = direct.cell(shots=SHOTS).rates["pruned"]
    return {"accuracy, pruned": pct(rates["accuracy"].value),
            "copy errors, pruned": pct(rates["copy_error_rate"].value)}


def expect_evaluate(loaded, session: Session, args, models) -> Values:
    p = session.params
    s = evaluate_task(loaded, builtin_tasks()[p["task"]], SHOTS, args.n, seed=int(p["seed"])).summary()
    return {"Accuracy": pct(s["accuracy"]), "Copy errors": pct(s["copy_error_rate"]), "Echoes": pct(s["echo_rate"]),
            "Other errors": pct(s["other_error_rate"]), "n": str(s["n"])}


def expect_compare(loaded, session: Session, args, models) -> Values:
    p, values = session.params, {}
    sides = (("A", "no mask", None), ("B", "active mask", session.mask))
    runs = [evaluate_task(loaded, builtin_tasks()[p["task"]], SHOTS, args.n, seed=int(p["seed"]), mask=m).summary()
            for _, _, m in sides]
    for name, key in (("Accuracy", "accuracy"), ("Copy errors", "copy_error_rate"), ("Echoes", "echo_rate"),
                      ("Other errors", "other_error_rate")):
        for i, ((side, choice, m), s) in enumerate(zip(sides, runs)):
            values[f"#{i + 1} {side}: {loaded.name} ({choice}, {len(m or ())} neurons) {name}"] = pct(s[key])
    return values


def expect_attribution(loaded, session: Session, args, models) -> Values:
    p = session.params
    result = attribute_task(loaded, builtin_tasks()[p["task"]], "copy", args.ig_n, SHOTS, int(p["seed"]),
                            args.ig_steps, "riemann")
    values: Values = {}
    top = top_neurons(loaded, result)
    for r, row in enumerate(top.itertuples()):
        values[f"{TABLE}top {r}"] = (f"{row.layer}.{row.neuron} {cell(row.score)} {cell(row.max_activation)} "
                              f"{visible_token(row.fires_most_on)}")
    rows = [[float(v) for v in layer] for layer in result.scores.tolist()]
    size = max(1, -(-len(rows[0]) // 256))  # the heatmap's bins: each shows its strongest neuron
    for layer, row in enumerate(rows):
        for start in range(0, len(row), size):
            chunk = row[start:start + size]
            offset = max(range(len(chunk)), key=lambda i: abs(chunk[i]))
            values[f"L{layer}.{start + offset}"] = f"{chunk[offset]:.3g}"
    for layer, row in enumerate(rows):
        values[f"L{layer} signed sum"] = f"{float(sum(row)):.3g}"
        values[f"L{layer} sum of |attribution|"] = f"{float(sum(abs(v) for v in row)):.3g}"
    return values


def expect_task_vectors(loaded, session: Session, args, models) -> Values:
    p = session.params
    conditions = {"unpruned": None, **({"pruned": session.mask} if session.mask is not None else {})}
    results = {name: task_vectors(loaded, builtin_tasks()[p["task"]], SHOTS, args.tv_n, 1, seed=int(p["seed"]),
                                  mask=mask) for name, mask in conditions.items()}
    values = {f"{name} L{layer} chart": pct(r.table.accuracy[layer])  # the curves, conditions side by side
              for layer in range(loaded.n_layers) for name, r in results.items()}
    for name, r in results.items():
        for row in r.table.itertuples():
            for column in ("accuracy", "copy_rate", "p_adjusted"):
                values[f"{TABLE}{name} L{row.layer} {column}"] = cell(getattr(row, column))
        values[f"{TABLE}{name} zero_shot_accuracy"] = cell(r.zero_shot_accuracy)
        values[f"{TABLE}{name} icl_accuracy"] = cell(r.icl_accuracy)
    return values


def expect_attention(loaded, session: Session, args, models) -> Values:
    text, layer = str(session.params["text"]), int(session.params["layer"])
    form = FORMS[loaded.family][0]
    maps = attention_maps(loaded, text, form=form, reduce="mean", layers=[layer])
    values = {"tokens": " ".join(f"{i}:{visible_token(t)}"[:24] for i, t in enumerate(maps.tokens))}
    for method in str(session.params["rel_methods"]).split(","):
        scores = token_relevance(loaded, text, method, form=form).scores.tolist()
        values.update({f"{method} t{j}": f"{float(v):.4g}" for j, v in enumerate(scores)})
    values.update({f"attention [{i},{j}]": f"{float(v):.4g}" for i, row in enumerate(maps.attn[0].tolist())
                   for j, v in enumerate(row)})
    if session.beside:
        other = models(session.beside)
        other_maps = attention_maps(other, text, layers=[min(layer, other.n_layers - 1)])
        values.update({f"{session.beside} [{i},{j}]": f"{float(v):.4g}"
                       for i, row in enumerate(other_maps.attn[0].tolist()) for j, v in enumerate(row)})
    return values


def expect_faithfulness(loaded, session: Session, args, models) -> Values:
    p = session.params
    frame = faithfulness(loaded, builtin_tasks()[p["faith_task"]], str(p["rel_methods"]).split(","), int(p["faith_n"]),
                         shots=2)
    return {f"{TABLE}{row.method}/{row.order}": f"{cell(row.auc_mean)} ± {cell(row.auc_std)}, n={row.n}"
            for row in frame.itertuples()}


EXPECT: dict[str, Callable[..., Values]] = {
    "prune": expect_prune, "evaluate": expect_evaluate, "compare": expect_compare, "attribution": expect_attribution,
    "task-vectors": expect_task_vectors, "attention": expect_attention, "faithfulness": expect_faithfulness}


def verdict(session: Session, expected: Values, others: dict[int, Values]) -> tuple[bool, str]:
    """(mixed up?, the line's comparison): the shown values against the expected ones. Every label on one side
    must be on the other, except a table's rows that the grid did not draw (:data:`TABLE`)."""
    head = list(expected)[:2]

    def brief(values: Values) -> str:
        return ", ".join(values.get(k, "-")[:40] for k in head)

    if session.shown is None:
        return False, f"nothing shown, expected {brief(expected)}"
    shown = session.shown
    compared = [k for k in expected if k in shown]
    missing = [k for k in expected if k not in shown and not k.startswith(TABLE)]
    differ = [k for k in compared if shown[k] != expected[k]] + missing + [k for k in shown if k not in expected]
    text = f"{len(compared)} values, shown {brief(shown)}; expected {brief(expected)}"
    if not differ:
        return False, text
    first = differ[0]
    text += (f"  MISMATCH: {len(differ)} differ, first {first}: shown {shown.get(first, '-')} expected "
             f"{expected.get(first, '-')}")
    like = [j for j, values in others.items() if all(shown.get(k) == values.get(k) for k in compared)]
    return True, text + (f"; shows session {like[0]}'s numbers" if like else "")


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
