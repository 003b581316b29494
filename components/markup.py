"""A visitor's text inside the app's own messages stays text: never a link, an image, HTML or formatting.

Streamlit renders the body of ``st.error``, ``st.warning``, ``st.info`` and ``st.caption`` as GitHub-flavoured
Markdown, where ``[Session expired, log in](https://evil.example)`` from a link would become a clickable link
inside the app's own red line, and a bare ``https://…`` or ``www.…`` becomes one too. A value a link or an upload
carries is shown with :func:`echo` (a code span, cut short); a whole message that may hold such values (a
library error naming a file, a header or a choice) goes through :func:`plain` (:func:`components.widgets.one_line`
does it for every error shown).
"""

from __future__ import annotations

import re
import unicodedata

ECHO_LIMIT = 40  # characters of a visitor's value shown in a message
LINE_LIMIT = 300  # characters of a message shown

_MARKDOWN = re.compile(r"([\\`*_\[\]<>!~|$#])")  # what can start a link, image, HTML, emphasis, math or heading
_LINK_LIKE = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]{0,20}://|www\.|(?:mailto|xmpp):)\S*"
                        r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+")  # what GitHub-flavoured Markdown would link on its own
_LIST_START = re.compile(r"^(\d{1,9})([.)])")  # "1." or "1)" starting a line: an ordered list


def _one_line(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters ("…" marks the cut), control and format characters (newlines, bidi
    overrides) made visible as spaces or U+FFFD, so nothing breaks out of the line or reorders it."""
    cut = text[:limit] + ("…" if len(text) > limit else "")
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else
                   "\ufffd" if unicodedata.category(c) == "Cf" else c for c in cut)


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as an inline code span of at most ``limit`` characters: Markdown and HTML inside it show as
    typed. The fence is one backtick longer than any run of backticks in the value, so none can close it."""
    text = _one_line(str(value), limit)
    if not text.strip():
        return "(empty)" if not text else f"({len(text)} spaces)"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""  # CommonMark strips one padding space each side
    return f"{fence}{pad}{text}{pad}{fence}"


def plain(text: str, limit: int = LINE_LIMIT) -> str:
    """A one-line message of at most ``limit`` characters shown as typed: Markdown's special characters escaped,
    URL-like runs (which GitHub-flavoured Markdown links even when escaped) shown with :func:`echo`."""
    text = _one_line(text, limit).strip()
    parts, start = [], 0
    for match in _LINK_LIKE.finditer(text):
        url = match.group().rstrip(")]>'\".,;:!?")  # trailing punctuation belongs to the sentence, as in GFM
        parts += [_MARKDOWN.sub(r"\\\1", text[start:match.start()]), echo(url, 60) if url else ""]
        start = match.start() + len(url)
    parts.append(_MARKDOWN.sub(r"\\\1", text[start:]))
    line = "".join(parts)
    return "\\" + line if line[:1] in ("-", "+") else _LIST_START.sub(r"\1\\\2", line)  # not a list item


__all__ = ["ECHO_LIMIT", "LINE_LIMIT", "echo", "plain"]
