"""Text filters for e-mail bodies: HTML to plain text, and a reply without its quoted history.

`html_to_text` reads the HTML in one pass, left to right, without building a tree: each piece of markup is read
once, from where the one before it ended, and what it means for the text (a line break, a list item's "- ", a
cell's tab, whether the text in it keeps its whitespace or is dropped) is decided from the tags open at that
point, kept on a stack with a count of each name. So its cost grows with the length of the HTML however deep
the tags nest, and it checks the render's time budget (and a loop slice) as it goes. Tags nest as Python's
`html.parser` under Beautiful Soup reads them: an end tag closes the innermost open tag of its name and every
tag opened inside it, and is ignored when none is open; void tags (`br`, `img`, …) hold nothing; `script` and
`style` hold raw text up to their end tag. Markup left unfinished at the end (`a <b`) is kept as text.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from bridge.mapping.limits import check_time
from bridge.replies import strip_reply

_DROP = frozenset({"script", "style", "head", "title", "template", "noscript", "svg"})
_BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
    "pre", "section", "table", "tr", "ul",
})
_CELL = frozenset({"td", "th"})
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "menuitem", "meta", "param",
    "source", "track", "wbr", "basefont", "bgsound", "command", "frame", "image", "isindex", "nextid", "spacer",
})
_RAW = {name: re.compile(rf"</\s*{name}\s*>", re.I) for name in ("script", "style")}
_SPACE = re.compile(r"[ \t\r\n\f\v]+")

# A start tag's name, and the rest of it: up to the first `>` outside a quoted attribute value, or the end of
# the text (a quote left open runs to the end). Possessive, so no part is scanned twice.
_START = re.compile(r"<([a-zA-Z][^\t\n\r\f />\x00]*+)")
_TAG_REST = re.compile(r"""(?:[^>"'=]++|=\s*+(?:"[^"]*+"?|'[^']*+'?)|["'=])*+(>)?""")
_END = re.compile(r"</\s*+([a-zA-Z][^\t\n\r\f />\x00]*+)")
_COMMENT_END = re.compile(r"--!?>")
# How many pieces of markup are read between two looks at the clock; how long a piece of text is read at once.
_CHECK_EVERY = 256
_PIECE = 16_384


def html_to_text(value: Any) -> Any:
    """The text a reader sees: blocks and `<br>` become line breaks, list items get "- ", cells are
    separated by tabs, scripts, styles and comments go; whitespace collapses as a browser collapses it."""
    if not isinstance(value, str):
        return value
    check_time()
    text = _Reader(value).read()
    check_time()
    lines = _BREAKS.sub(_breaks, text).split("\n")
    for at in range(0, len(lines), _PIECE):
        check_time()
        lines[at:at + _PIECE] = [line.strip(" \t") for line in lines[at:at + _PIECE]]
    return "\n".join(lines).strip("\n")


class _Reader:
    """One pass over the HTML, writing the text and the block marks (see `_breaks`) to `out`."""

    def __init__(self, html: str) -> None:
        self.html = html
        self.out: list[str] = []
        self.stack: list[str] = []  # the open tags, innermost last
        self.open: dict[str, int] = {}  # how many of each name are open
        self.pre = 0  # open `pre` tags: their text keeps its whitespace
        self.dropped = 0  # open tags whose content is not text (_DROP)
        self.data: list[str] = []  # the text since the last markup, as written (entities not yet read)
        # Void tags written without `/>`, by name: as many end tags of that name after them are no markup at all
        # (they do not even end a text), as html.parser's tree builder reads `<img>…</img>`.
        self.voids: dict[str, int] = {}
        # From where the text is known to hold no `]]>`: a run of unclosed CDATA sections searches once, not once
        # each (which took time in the square of their number).
        self.no_cdata_end = len(html) + 1

    def read(self) -> str:
        html, n = self.html, len(self.html)
        i = 0
        steps = 0
        while i < n:
            steps += 1
            if not steps % _CHECK_EVERY:
                check_time()
            lt = html.find("<", i)
            if lt < 0:
                self.data.append(html[i:])
                break
            if lt > i:
                self.data.append(html[i:lt])
            i = self._markup(lt)
        self._flush()
        return "".join(self.out)

    def _markup(self, i: int) -> int:
        """Read the markup at `html[i] == "<"`; the index after it."""
        html = self.html
        nxt = html[i + 1:i + 2]
        if nxt.isascii() and nxt.isalpha():
            return self._start_tag(i)
        if nxt == "/":
            return self._end_tag(i)
        if nxt == "!":
            if html.startswith("<!--", i):
                m = _COMMENT_END.search(html, i + 4)
                return self._skip(i, m.end() if m else -1)
            if html.startswith("<![CDATA[", i):
                close = html.find("]]>", i + 9) if i + 9 < self.no_cdata_end else -1
                if close < 0:
                    self.no_cdata_end = min(self.no_cdata_end, i + 9)
                else:
                    self._flush()
                    self._text(html[i + 9:close], raw=True)
                    return close + 3
            return self._skip(i, html.find(">", i + 2) + 1 or -1)
        if nxt == "?":
            return self._skip(i, html.find(">", i + 2) + 1 or -1)
        self.data.append("<")  # `a < b`: text
        return i + 1

    def _skip(self, i: int, end: int) -> int:
        """A comment, declaration or processing instruction from i to `end`: it ends a text and adds none.
        One left open (end -1) leaves the rest as text."""
        if end < 0:
            return self._unfinished(i)
        self._flush()
        return end

    def _unfinished(self, i: int) -> int:
        self.data.append(self.html[i:])
        return len(self.html)

    def _start_tag(self, i: int) -> int:
        html = self.html
        m = _START.match(html, i)
        assert m is not None
        rest = _TAG_REST.match(html, m.end())
        assert rest is not None
        if rest.group(1) is None:  # no `>` before the end
            return self._unfinished(i)
        end = rest.end()
        name = m.group(1).lower()
        self._flush()
        closed = html[end - 2] == "/" and (end - 2 == m.end() or html[end - 3] in " \t\n\r\f\"'")  # <br/>, <div />
        if name in _VOID:
            if not closed:
                self.voids[name] = self.voids.get(name, 0) + 1
            if not self.dropped:
                if name == "br":
                    self.out.append(_BR)
                elif name in _BLOCK:  # hr
                    mark = _PARAGRAPH if name in _PARAGRAPHS else _LINE
                    self.out += (mark, mark)
            return end
        self._push(name)
        if closed:
            self._pop_to(name)
        elif name in _RAW:
            close = _RAW[name].search(html, end)
            return close.start() if close else len(html)  # the raw text is in a dropped tag
        return end

    def _end_tag(self, i: int) -> int:
        html = self.html
        gt = html.find(">", i + 2)
        if gt < 0:
            return self._unfinished(i)
        m = _END.match(html, i, gt)
        name = m.group(1).lower() if m else ""
        if self.voids.get(name):
            self.voids[name] -= 1
            return gt + 1
        if html.startswith("</>", i):
            return i + 3
        self._flush()
        if name:
            self._pop_to(name)
        return gt + 1  # `</>`, `</ 3>`: nothing

    def _push(self, name: str) -> None:
        if not self.dropped and name in _BLOCK:
            self.out.append(_PARAGRAPH if name in _PARAGRAPHS else _LINE)
            if name == "li":
                self.out.append("- ")
        self.stack.append(name)
        self.open[name] = self.open.get(name, 0) + 1
        if name == "pre":
            self.pre += 1
        elif name in _DROP:
            self.dropped += 1

    def _pop_to(self, name: str) -> None:
        """Close the innermost open `name` and every tag opened inside it; nothing if none is open."""
        if not self.open.get(name):
            return
        while True:
            top = self.stack.pop()
            self.open[top] -= 1
            if top == "pre":
                self.pre -= 1
            elif top in _DROP:
                self.dropped -= 1
            if not self.dropped:
                if top in _BLOCK:
                    self.out.append(_PARAGRAPH if top in _PARAGRAPHS else _LINE)
                elif top in _CELL:
                    self.out.append("\t")
            if top == name:
                return

    def _flush(self) -> None:
        """End the text read since the last markup: entities read, whitespace collapsed outside `pre`."""
        if self.data:
            raw = "".join(self.data)
            self.data.clear()
            self._text(raw, raw=False)

    def _text(self, text: str, *, raw: bool) -> None:
        """Add a text: read in pieces of about _PIECE characters, each cut just before an `&` (where no entity
        and no run of whitespace is cut in two), with a look at the clock between them."""
        if self.dropped or not text:
            return
        start, n = 0, len(text)
        while start < n:
            stop = n if n - start <= _PIECE else text.rfind("&", start + 1, start + _PIECE)
            if stop <= start:
                stop = text.find("&", start + _PIECE)
                stop = n if stop < 0 else stop
            piece = text[start:stop]
            if not raw and "&" in piece:
                piece = unescape(piece)
            self.out.append(piece if self.pre else _SPACE.sub(" ", piece))
            start = stop
            if start < n:
                check_time()


# Block boundaries are marked while the HTML is read and turned into line breaks at the end, so that two
# neighbouring list items give one line break, not two, and a paragraph gives one blank line.
_LINE, _PARAGRAPH, _BR = "\x01", "\x02", "\x03"
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol", "dl", "pre",
                         "hr", "figure"})
# Each run of blanks and marks, whole: a run without a mark is given back as it is. (A pattern that must end in
# a mark would try, and fail, at every blank of a long run of blanks.)
_BREAKS = re.compile(r"[ \t\n\x01\x02\x03]+")


def _breaks(m: re.Match[str]) -> str:
    check_time()  # one call per run: as many as the tags read, at most
    run = m.group()
    if _LINE not in run and _PARAGRAPH not in run and _BR not in run:
        return run
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
