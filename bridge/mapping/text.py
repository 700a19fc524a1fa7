"""Text filters for e-mail bodies: HTML to plain text, and a reply without its quoted history."""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup
from bs4.element import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

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


_ON_WROTE = re.compile(r"^\s*(On|Le|Am|El|Il|Op)\b.*\b(wrote|a écrit|schrieb|escribió|ha scritto|schreef)\s*:\s*$",
                       re.IGNORECASE)
_ON_START = re.compile(r"^\s*(On|Le|Am|El|Il|Op)\s", re.IGNORECASE)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(Original Message|Reply above this line|Forwarded by)\b.*$", re.IGNORECASE)
_RULE = re.compile(r"^\s*_{10,}\s*$")
_HEADER = re.compile(r"^\s*\*?(From|Sent|Date|To|Cc|Subject)\s*:\*?\s", re.IGNORECASE)
_SIGNATURE = re.compile(r"^(-- ?|__)$")
_MOBILE = re.compile(r"^\s*(Sent from my \w+|Sent from (Mail|Outlook|Yahoo Mail) for|Get Outlook for \w+)",
                     re.IGNORECASE)


def _starts_quote(lines: list[str], i: int) -> bool:
    line = lines[i]
    if _ON_WROTE.match(line) or _ORIGINAL.match(line) or _SIGNATURE.match(line) or _MOBILE.match(line):
        return True
    if _ON_START.match(line):  # "On Tue, 5 Mar 2024 at 10:00, Asha <a@b.io>" / "wrote:" wrapped over lines
        joined = " ".join(s.strip() for s in lines[i:i + 3])
        if _ON_WROTE.match(joined) or re.search(r"\bwrote:\s*$", " ".join(s.strip() for s in lines[i:i + 2])):
            return True
    if _RULE.match(line) and i + 1 < len(lines) and _HEADER.match(lines[i + 1]):
        return True
    if _HEADER.match(line) and line.lstrip().lower().lstrip("*").startswith("from"):
        following = [s for s in lines[i + 1:i + 5] if _HEADER.match(s)]
        return len(following) >= 2  # an Outlook header block: From, Sent/Date, To, Subject
    return False


def strip_quoted(value: Any) -> Any:
    """The reply alone: the text above the quoted history ("On … wrote:", "----- Original Message -----",
    an Outlook header block, "> " lines) and above the signature ("-- ", "Sent from my iPhone")."""
    if not isinstance(value, str):
        return value
    lines = value.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        if _starts_quote(lines, i):
            break
        if line.lstrip().startswith(">"):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept).strip("\n")
