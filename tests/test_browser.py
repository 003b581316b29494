"""End to end in a real browser: `streamlit run app/main.py` on a free port, Debian's Chromium driven by
playwright (no browser download): model -> task -> evaluate -> copying scores -> pruning toggle; the numbers
appear and change. Then the default model on a new host (no results in the cache): the shipped numbers, an
instant toggle, Copy link equal to the address bar, and a presentation slide with its figure above the fold.
Screenshots go to tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
TIMEOUT_MS = 90_000

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements.txt")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from analysis.paths import cache_dir

    port = _free_port()
    cache = tmp_path_factory.mktemp("browser-cache")  # no results: a new host's
    (cache / "models").symlink_to(cache_dir() / "models", target_is_directory=True)  # dequantized once
    env = {**os.environ, "PRUNESCOPE_MODEL": "toy-mamba", "PRUNESCOPE_CACHE": str(cache)}
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("streamlit did not start: " + process.stdout.read1().decode(errors="replace"))
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1500, "height": 1100})
        tab.set_default_timeout(TIMEOUT_MS)
        tab.outside = []  # requests to any other host: the app must look the same offline
        tab.on("request", lambda r: tab.outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                                           "blob:")) else None)
        try:
            yield tab
        finally:
            tab.screenshot(path=str(ARTIFACTS / "last.png"), full_page=True)  # what the page showed at the end
            browser.close()


def _select(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=re.compile(label)).first.click()
    page.get_by_role("option", name=re.compile(f"^{re.escape(option)}")).first.click()


def _number(page, label: str, value: int, param: str) -> None:
    """Type a number into a shared-setting input and wait until the rerun it starts has put it in the URL (a
    second input typed before that could be overwritten by the first rerun's redraw)."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_url(re.compile(rf"[?&]{param}={value}(&|$)"))
    _idle(page)


def _metric(page, label: str) -> str:
    card = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return card.locator('[data-testid="stMetricValue"]').inner_text()


def _idle(page) -> None:
    """Wait until the script has finished (Streamlit shows its running indicator meanwhile)."""
    page.wait_for_timeout(300)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)


def test_model_task_evaluate_and_pruning_toggle(server, page):
    page.goto(server)
    page.get_by_role("heading", name="Model & task").wait_for()
    _select(page, "Model", "toy-transformer")
    page.get_by_text("toy-transformer (transformer,").first.wait_for()  # the sidebar's load message
    _select(page, "Task", "to-upper")
    page.get_by_text("⟶ gold:").first.wait_for()  # the prompt preview (of the old task, until the rerun)
    page.wait_for_url(re.compile(r"[?&]task=to-upper(&|$)"))  # the rerun with the new task has finished
    _idle(page)
    page.screenshot(path=str(ARTIFACTS / "1-model-task.png"))
    assert "to-upper" in page.url and "toy-transformer" in page.url  # the deep link follows the view

    page.get_by_role("link", name="Evaluate").click()
    page.get_by_role("heading", name="Evaluate").wait_for()
    _number(page, "Prompts (n)", 12, "n")
    _number(page, "Shots", 2, "shots")
    _idle(page)
    page.get_by_role("button", name="Evaluate").click()
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first.wait_for()
    accuracy = _metric(page, "Accuracy")
    assert re.fullmatch(r"\d+\.\d%", accuracy)
    page.screenshot(path=str(ARTIFACTS / "2-evaluate.png"))

    _number(page, "Prompts (n)", 500, "n")  # a long job, cancelled half-way: the page says so and keeps the results
    _idle(page)
    page.get_by_role("button", name="Evaluate").click()
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Cancelled: Evaluating to-upper, 2-shot").wait_for()  # the label names the job's settings
    assert _metric(page, "Accuracy") == accuracy and _metric(page, "n") == "12"
    _number(page, "Prompts (n)", 12, "n")

    page.get_by_role("link", name="Copying neurons & pruning").click()
    page.get_by_role("heading", name="Copying neurons & pruning").wait_for()
    _number(page, "Scoring prompts", 4, "score_n")
    _number(page, "IG steps", 2, "score_steps")  # not the default (4): the link then carries it
    _idle(page)
    page.get_by_role("button", name="Compute copying scores").click()
    page.get_by_text("Mask: 20 neurons").wait_for()  # k defaults to 20
    _idle(page)
    assert "page=pruning" in page.url and "model=toy-transformer" in page.url
    page.goto(re.sub(r"&k=\d+", "", page.url) + "&k=150")  # a deep link: a new session restores everything
    page.get_by_text("Mask: 150 neurons").wait_for()  # the copying scores come from the disk cache
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy, unpruned").first.wait_for()
    unpruned = (_metric(page, "Accuracy, unpruned"), _metric(page, "Copy errors, unpruned"))
    page.screenshot(path=str(ARTIFACTS / "3-pruning-off.png"), full_page=True)
    page.get_by_text("Prune", exact=True).click()
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy, pruned").first.wait_for()
    _idle(page)
    pruned = (_metric(page, "Accuracy, pruned"), _metric(page, "Copy errors, pruned"))
    assert pruned != unpruned
    assert (_metric(page, "Accuracy, unpruned"), _metric(page, "Copy errors, unpruned")) == unpruned
    page.screenshot(path=str(ARTIFACTS / "4-pruning-on.png"), full_page=True)
    assert page.outside == []  # e.g. a Material-icon favicon fetched from fonts.gstatic.com


def test_cancel_stops_the_attribution_job(server, page):
    """A job button's Cancel stops that job: the bar goes and stays gone, no result appears later (it used to
    cancel the session's pruned runs while the IG went on and drew its heatmap minutes later)."""
    page.goto(f"{server}/?page=attribution&model=toy-transformer&task=to-upper&ig_n=256&ig_steps=256"
              "&ig_rule=riemann&ig_target=gold")
    page.get_by_role("button", name="Attribute").click()
    bar = page.locator('[data-testid="stProgress"]').filter(has_text=re.compile(r"IG \w+ on to-upper: [1-9]\d*/256"))
    bar.first.wait_for()
    page.get_by_role("button", name="Cancel").click()
    page.get_by_text("Cancelled: IG").first.wait_for(timeout=20_000)
    _idle(page)
    page.wait_for_timeout(3000)  # a job that went on would redraw its bar on the next poll
    assert page.locator('[data-testid="stProgress"]').count() == 0
    assert page.locator('[data-testid="stStatusWidget"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "7-attribution-cancelled.png"), full_page=True)
    page.reload()  # the session's job is found again after a reload only while it runs: it does not
    page.get_by_role("button", name="Attribute").wait_for()
    _idle(page)
    assert page.locator('[data-testid="stProgress"]').count() == 0
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 0


def _copy_link(page) -> str:
    page.get_by_role("button", name="Copy link").click()
    link = page.locator('[data-testid="stPopoverBody"] [data-testid="stCode"]').first.inner_text().strip()
    page.keyboard.press("Escape")
    return link


@pytest.mark.slow
def test_a_new_host_shows_shipped_numbers_an_instant_toggle_and_a_slide(server, page):
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{server}/?page=pruning&model=default")
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy, unpruned").first.wait_for()
    assert page.get_by_text("No copying scores").count() == 0  # shipped scores, shipped mask
    page.get_by_text("Pruned runs ready").wait_for(timeout=30_000)  # shipped: the speculation only reads them
    _idle(page)
    assert _copy_link(page) == page.url
    start = time.monotonic()
    page.get_by_text("Prune", exact=True).click()
    page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy, pruned").first.wait_for(timeout=30_000)
    took = time.monotonic() - start
    _idle(page)
    assert took < 20, f"Prune on the shipped mask took {took:.0f} s: it computed"  # cold, it takes minutes
    assert "prune=1" in page.url and _copy_link(page) == page.url
    page.screenshot(path=str(ARTIFACTS / "5-default-pruned.png"), full_page=True)

    page.goto(page.url + "&present=1")  # the same view as a slide
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.wait_for()
    _idle(page)
    page.screenshot(path=str(ARTIFACTS / "6-slide-1440x900.png"))
    box = chart.bounding_box()
    verdict = page.get_by_text("Against the unpruned model").first.bounding_box()
    assert verdict["y"] + verdict["height"] <= 900 and box["y"] + box["height"] <= 900, (verdict, box)
    page.locator('[data-testid="stExpandSidebarButton"]').click()  # a slide starts with the sidebar closed
    assert "present=1" in page.url and _copy_link(page) == page.url
    assert page.outside == []
