"""Error lines never render a visitor's Markdown or HTML: hostile values from links and uploads, shown by the
app, render (CommonMark, with raw HTML on) to no link, no image and no bare URL outside code, in a short line."""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from components.markup import LINE_LIMIT, echo, plain
from tests.app_helpers import MAIN, TIMEOUT, no_exception

RENDER = MarkdownIt("commonmark")  # raw HTML enabled: what a renderer that trusted these lines would do
LINK = "[Session expired, log in](https://evil.example)"
IMAGE = "![x](http://e/x.png)"
ANCHOR = "<a href=https://evil.example>log in</a>"
ONERROR = "<img src=x onerror=alert(1)>"
TICKS = "`` `</code>" + ONERROR + "[x](http://e)` ``"  # tries to close the code span first
HOSTILE = [LINK, IMAGE, ANCHOR, ONERROR, TICKS, "x\n\n" + LINK, "www.evil.example", "$\\Huge{x}$ *b* _i_",
           "- list", "1. list", "\u202e" + LINK]


def rendered(markdown: str) -> tuple[str, str]:
    """(HTML, visible text) of one message as a Markdown renderer shows it."""
    out = RENDER.render(markdown)
    return out, html.unescape(re.sub(r"<[^>]+>", "", out)).strip()


def assert_inert(markdown: str, limit: int = LINE_LIMIT + 1) -> str:
    """The message renders to one paragraph of text and code only, no longer than ``limit``; its text."""
    out, text = rendered(markdown)
    assert "<a" not in out and "<img" not in out and "<em" not in out and "<strong" not in out, (markdown, out)
    assert out.count("<p>") == 1 and "<li" not in out and "<h" not in out, (markdown, out)
    outside_code = re.sub(r"<code>.*?</code>", "", out)
    assert "http" not in outside_code and "www." not in outside_code, (markdown, out)  # GFM would link these
    assert len(text) <= limit, (len(text), markdown)
    return text


@pytest.mark.parametrize("value", HOSTILE)
def test_echo_and_plain_show_a_value_as_typed(value):
    shown = value.replace("\n", " ").replace("\u202e", "\ufffd")
    assert assert_inert(echo(value, limit=200)) == shown.strip()  # a code span shows every character
    assert assert_inert(plain(value)) == shown.strip()  # escaped Markdown, URLs as code: the same characters
    assert assert_inert(echo(value)) == (shown[:40] + "…" if len(shown) > 40 else shown).strip()


def test_a_long_value_is_cut_short():
    assert assert_inert(echo("x" * 60_000)) == "x" * 40 + "…"
    assert assert_inert(plain("y" * 60_000)) == "y" * LINE_LIMIT + "…"
    assert echo("") == "(empty)"


def _app(monkeypatch, public: bool = False, **query) -> AppTest:
    monkeypatch.setenv("PRUNESCOPE_MODEL", "toy-transformer")
    if public:
        monkeypatch.setenv("PRUNESCOPE_PUBLIC", "1")
    at = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    at.query_params.update(query)
    return no_exception(at.run())


def _lines(at: AppTest) -> list[str]:
    return [e.value for e in at.error] + [w.value for w in at.warning]


CASES = [
    ({"page": "attention", "reduce": LINK, "form": ONERROR}, ["unknown reduction", "form="]),
    ({"page": "attribution", "ig_rule": IMAGE, "ig_target": TICKS}, ["ig_rule=", "ig_target="]),
    ({"page": "pruning", "prune_tasks": f"{ANCHOR},antonyms", "score_target": LINK[:40], "mask": LINK},
     ["prune_tasks:", "target=", "mask in the link:"]),
    ({"page": "model", "model": LINK}, ["the link's model:"]),
]


@pytest.mark.parametrize("query,starts", CASES, ids=[c[0]["page"] for c in CASES])
def test_hostile_links_render_inert_in_the_apps_lines(query, starts, monkeypatch):
    """e.g. ?reduce=[Session expired, log in](https://evil.example) once became a clickable link in the app's
    own red line."""
    at = _app(monkeypatch, public=query["page"] == "model", **query)
    texts = [assert_inert(line) for line in _lines(at)]
    assert sorted(next(s for s in starts if t.startswith(s)) for t in texts) == sorted(starts), texts


def test_a_hostile_upload_name_and_header_render_inert(monkeypatch):
    from components.widgets import UPLOAD_OPTION

    at = _app(monkeypatch, page="evaluate")
    at.selectbox(key="_w_task").set_value(UPLOAD_OPTION).run()
    name = f"{LINK}{ONERROR}.csv"
    at.file_uploader(key="task_upload").set_value((name, f"{IMAGE},{ANCHOR}\na,b\n".encode(), "text/csv"))
    no_exception(at.run())
    [line] = _lines(at)
    text = assert_inert(line)
    assert text.startswith(f"task file {LINK}{ONERROR}.csv: line 1: expected the columns input,output; got ")
