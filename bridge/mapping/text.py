"""Text filters for e-mail bodies: HTML to plain text, and a reply without its quoted history."""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup
from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

from bridge.replies import strip_reply

_DROP = ("script", "style", "head", "title", "template", "noscript", "svg")
_BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
    "pre", "section", "table", "tr", "ul",
})
_CELL = frozenset({"td", "th"})
_SPACE = re.compile(r"[ \t\r\n\f\v]+")


def html_to_text(value: Any) -> Any:
    """The text a reader sees: blocks and `<br>` become line breaks, list items get "- ", cells are
    separated by tabs, scripts, styles and comments go; whitespace collapses as a browser collapses it."""
    if not isinstance(value, str):
        return value
    soup = BeautifulSoup(value, "html.parser")
    for tag in soup.find_all(_DROP):
        tag.decompose()
    for node in soup.find_all(string=True):
        if isinstance(node, Comment | Declaration | Doctype | ProcessingInstruction):
            node.extract()
        elif node.find_parent("pre") is None:
            node.replace_with(NavigableString(_SPACE.sub(" ", str(node))))
    for tag in soup.find_all(True):
        assert isinstance(tag, Tag)
        name = tag.name
        if name == "br":
            tag.replace_with(_BR)
        elif name in _BLOCK:
            mark = _PARAGRAPH if name in _PARAGRAPHS else _LINE
            if name == "li":
                tag.insert(0, "- ")
            tag.insert_before(mark)
            tag.insert_after(mark)
        elif name in _CELL:
            tag.insert_after("\t")
    text = _BREAKS.sub(_breaks, soup.get_text())
    lines = [line.strip(" \t") for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


# Block boundaries are marked while the tree is walked and turned into line breaks at the end, so that
# two neighbouring list items give one line break, not two, and a paragraph gives one blank line.
_LINE, _PARAGRAPH, _BR = "\x01", "\x02", "\x03"
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol", "dl", "pre",
                         "hr", "figure"})
_BREAKS = re.compile(r"[ \t\n]*[\x01\x02\x03][\x01\x02\x03 \t\n]*")


def _breaks(m: re.Match[str]) -> str:
    run = m.group()
    n = run.count(_BR) + run.count("\n")
    if _PARAGRAPH in run:
        return "\n" * max(2, n)
    if _LINE in run:
        return "\n" * max(1, n)
    return "\n" * n


def strip_quoted(value: Any, subject: Any = None) -> Any:
    """The reply alone, without quoted history, signature or mail-app footer (see `bridge.replies`); with
    the subject (`payload.text | strip_quoted(payload.subject)`), a forward keeps what it forwarded."""
    if not isinstance(value, str):
        return value
    return strip_reply(value, subject if isinstance(subject, str) else None)
