"""The browser side of the load benchmark (bench/load_bench.py): drive one Chromium session through its deep
link (click its button, wait for its result) and read what the page shows, charts from the page's Plotly figures,
tables from the data grid's drawn cells, cards from their text."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from load_bench_session import TABLE, Session, Values, cell, pct  # bench/ is on the path when a bench runs

CHROMIUM = "/usr/bin/chromium"
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
