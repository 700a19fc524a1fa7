"""The new part of an e-mail reply: what the customer wrote, without the quoted history below, above or
between it, and without the sign-off a mail app adds.

One pass over the lines, each looked at a bounded number of times (see `reply_markers`), so a body of any
shape costs time in proportion to its length. Most lines of a long body are plain prose no marker test can
take for anything else: three regular expressions over the whole text find the few lines that may be more
(`_marked`), and the runs of lines between them are kept or dropped as one range, without a look at each.
Whether a line is a mail app's footer matters only below the customer's last line, so `_assemble` asks it
walking up from the end, and stops at that line. The customer's own lines are kept wherever they stand:
above the quote (top-posting), below it (bottom-posting) or between quoted lines (inline answers).

- A quote block is a run of `>` lines. It is history when an attribution ("On … wrote:") or a separator
  introduces it, when it has two lines or more, when it starts or ends the text. A single `>` line between
  the customer's lines ("the app shows\\n> Session expired\\nafter login") is text unless the message quotes
  elsewhere (inline answers); lines not written the way clients quote (`>50% of users`) are always text.
- An attribution, separator or header block followed by unquoted text (Outlook's top-posting, HTML mail
  turned into text) starts history that runs to the end.
- A forwarded message is kept whole: what was forwarded is the point of the message. So is a header block
  or separator with nothing of the customer's above it, or any when the subject says "FW:": Outlook
  forwards without a marker.
- A `-- ` line starts a signature that runs to the next quote; an app's footer ("Sent from my iPhone") is
  dropped when nothing of the customer's follows it.
- Trailing whitespace is trimmed, runs of blank lines become one, and leading and trailing blank lines go.

Inside a template (the `strip_quoted` filter) the stripper checks the render's time budget, and its loop slice, as
it goes (`check_time`, every few lines); elsewhere that check does nothing.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import re
from enum import Enum, auto

from bridge import reply_markers as mk
from bridge.mapping.limits import check_time

_MARKER_ENDS = (*mk.COLONS, "-")
_FORWARDED = -1
# A header block is the marker line and the `Key: value` lines under it; no client writes more.
_HEADER_LINES = 8
# How many steps of a walk over the lines (or over the items found) pass between two looks at the clock.
_CHECK = 64


class _Kind(Enum):
    TEXT = auto()      # the customer's lines; a footer among them ("Sent from my iPhone") is dropped unless
                       # the customer's text follows it
    MAYBE = auto()     # a lone `>` line inside a paragraph: a quote only if the message quotes elsewhere
    CUT = auto()       # where history was dropped
    KEPT = auto()      # a forwarded message's lines, kept as they are


# An item is a kind and the range of lines it covers, [start, end).
_Item = tuple[_Kind, int, int]
_CUT: _Item = (_Kind.CUT, 0, 0)

# The lines `_Scan._plain` may say are not plain, found in the text "\n" + lines + "\n" (each line between two
# "\n"): a line that starts (after blanks) with `>`, `-` or `_` (a quote, a signature delimiter, a separator
# or rule) or holds a colon in its first 40 characters (a header key); a line that ends with a colon or a
# dash (and the two lines above one that ends with a colon: a wrapped attribution); "above this line". A
# line none of these finds is plain. Each expression looks at a bounded stretch from where it starts, but for
# the blanks before the first character of a line, which belong to that line alone: linear.
_QUOTED = re.compile(r"\n[^\S\n]*>")
_STARTS = re.compile(r"\n(?:[^\S\n]*[_-]|[^\n]{0,39}[:\uff1a])")
_ENDS = re.compile(r"-(?=\n)")
_COLON_ENDS = re.compile(r"[:\uff1a](?=\n)")
_ABOVE = re.compile("above this line")
_FEW_LINES = 64
_DENSE = ("\n>", "\n-", "\n_", "-\n", ":\n", "\uff1a\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def strip_reply(text: str | None, subject: str | None = None) -> str:
    """The reply the customer wrote, without quoted history, signature or mail-app footer; "" for nothing.
    With the message's `subject`, a forward ("FW: …", "WG: …") keeps the message Outlook forwarded under
    its header block, which in the body alone looks like a reply's history."""
    if not text:
        return ""
    check_time()
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    check_time()
    items, quotes_elsewhere = _Scan(lines, forwarding=mk.forward_subject(subject)).run()
    check_time()
    return _assemble(lines, items, quotes_elsewhere)


def _marked(lines: list[str]) -> tuple[list[int] | None, set[int]]:
    """The lines, in order, that may be a quote, a signature delimiter or part of a marker (every line for
    which `_Scan._plain` is false, every line that starts with `>`, and some plain ones), and the lines that
    start with `>`. None for the first in a short body (a look at each line costs less than the set-up),
    and when so many lines look marked that finding them would cost more than
    looking at every line (a quarter or more, by a cheap count)."""
    text = "" if len(lines) < _FEW_LINES else "\n" + "\n".join(lines) + "\n"
    if not text or 4 * sum(map(text.count, _DENSE)) >= len(lines):
        return None, {i for i, line in enumerate(lines) if line.lstrip().startswith(">")}
    check_time()  # here and below: between steps that each cost a pass over the text or its lines
    quoted = [m.start() for m in _QUOTED.finditer(text)]
    starts = [m.start() for m in _STARTS.finditer(text)]
    check_time()
    ends = [m.start() for m in _ENDS.finditer(text)]
    colons = [m.start() for m in _COLON_ENDS.finditer(text)]
    above = [m.start() for m in _ABOVE.finditer(text)]
    check_time()
    if not (quoted or starts or ends or colons or above):
        return [], set()
    # Where each line but the first starts in `text`: the line a position is in is the number of these at or
    # before it. A match of _QUOTED or _STARTS begins at the newline before its line.
    offsets = list(map(operator.add, itertools.accumulate(map(len, lines[:-1])), itertools.count(2)))
    at = functools.partial(bisect.bisect_right, offsets)
    check_time()
    quoted_lines = set(map(at, map(operator.add, quoted, itertools.repeat(1))))
    colon_lines = list(map(at, colons))
    check_time()
    found = set(map(at, map(operator.add, starts, itertools.repeat(1))))
    check_time()
    found.update(quoted_lines, map(at, ends), map(at, above), colon_lines)
    for above_it in (1, 2):  # a wrapped attribution's first lines
        found.update(map(operator.sub, colon_lines, itertools.repeat(above_it)))
    check_time()
    found.discard(-1)
    found.discard(-2)
    return sorted(found), quoted_lines


def _quote_shaped(line: str) -> bool:
    """`> text`, `>> text` or a bare `>`: how clients quote, unlike `>50%` written in prose."""
    text = line.lstrip()
    return text.startswith(">") and (len(text) == 1 or text[1] in " \t>")


class _Scan:
    """Walks the lines once, top to bottom, classifying each into the items `_assemble` joins: each marked
    line (`_marked`) on its own, the plain and blank lines between two marked ones as one range."""

    def __init__(self, lines: list[str], *, forwarding: bool = False) -> None:
        self.lines = lines
        self.forwarding = forwarding  # the subject says the message is a forward
        self.n = len(lines)
        self.items: list[_Item] = []
        self.quotes = False  # the message quotes somewhere: a lone `>` line is then a quote too
        self._first: int | None = None
        self.marked, self.quoted = _marked(lines)  # the quoted: lines that start with `>`

    @property
    def first(self) -> int:
        """The first non-blank line (n if none); looked for once, when a quote first asks."""
        if self._first is None:
            self._first = next((i for i, line in enumerate(self.lines) if line), self.n)
        return self._first

    def _plain_lines(self, i: int, j: int, in_signature: bool) -> None:
        """Lines i to j, each blank or plain: the customer's, or in a signature only its blank lines (one
        stands for all: `_assemble` squeezes a run of blank lines into one)."""
        if not in_signature:
            self.items.append((_Kind.TEXT, i, j))
        elif "" in self.lines[i:j]:
            blank = self.lines.index("", i, j)
            self.items.append((_Kind.TEXT, blank, blank + 1))

    def run(self) -> tuple[list[_Item], bool]:
        lines, n, items = self.lines, self.n, self.items
        marked, quoted = self.marked, self.quoted
        in_signature = False
        i = k = steps = 0
        while i < n:
            steps += 1
            if not steps % _CHECK:
                check_time()
            if marked is not None:
                k = bisect.bisect_left(marked, i, k)
                if (stop := marked[k] if k < len(marked) else n) > i:
                    self._plain_lines(i, stop, in_signature)
                    i = stop
                    continue
            line = lines[i]
            if not line:
                items.append((_Kind.TEXT, i, i + 1))
                i += 1
            elif i in quoted:
                i, was_quote = self._quote_run(i, in_signature)
                in_signature = in_signature and not was_quote
            elif mk.signature_delimiter(line):
                in_signature = True
                items.append(_CUT)
                i += 1
            elif self._plain(i) or (found := self._marker(i)) is None:
                if not in_signature:
                    items.append((_Kind.TEXT, i, i + 1))
                i += 1
            elif found == _FORWARDED or self._forwarded_block(i, found):
                items.append((_Kind.KEPT, i, n))
                break
            else:
                self.quotes = True
                in_signature = False
                items.append(_CUT)
                if found >= n:
                    break
                i = found
        return items, self.quotes

    def _plain(self, i: int) -> bool:
        """Whether line i cannot be part of a marker (most lines), so the marker tests can be skipped. A
        marker line ends with a colon or a dash, starts with a dash, an underscore or a `Key:`, says "reply
        above this line", or opens an attribution wrapped onto the next two lines, which then end with a
        colon."""
        line, lines, n = self.lines[i], self.lines, self.n
        head = line[:40]
        return (
            not line.endswith(_MARKER_ENDS)
            and ":" not in head and mk.COLONS[1] not in head
            and not line.lstrip().startswith(("-", "_"))
            and not (i + 1 < n and lines[i + 1].endswith(mk.COLONS))
            and not (i + 2 < n and lines[i + 2].endswith(mk.COLONS))
            and "above this line" not in line
        )

    def _quote_run(self, i: int, in_signature: bool) -> tuple[int, bool]:
        """Classify the run of `>` lines starting at i: (the index after it, whether it is history)."""
        lines, n = self.lines, self.n
        j = i
        shaped = False
        while j < n and j in self.quoted:
            shaped = shaped or _quote_shaped(lines[j])
            j += 1
            if not j % _CHECK:
                check_time()
        if not shaped:  # `>50% of users`, `>_<`: prose that happens to start with ">"
            if not in_signature:
                self.items.append((_Kind.TEXT, i, j))
            return j, False
        if j - i >= 2 or i <= self.first or self._only_blank_from(j):
            self.quotes = True
            self.items.append(_CUT)
            return j, True
        if not in_signature:
            self.items.append((_Kind.MAYBE, i, i + 1))
        return j, False

    def _only_blank_from(self, j: int) -> bool:
        """Whether nothing but blank lines follows j. Called once per quote run and stops at the first text,
        which the scan reaches next anyway, so the scan stays linear."""
        lines = self.lines
        while j < self.n and not lines[j]:
            j += 1
            if not j % _CHECK:
                check_time()
        return j == self.n

    def _marker(self, i: int) -> int | None:
        """_FORWARDED if a forwarded message starts at line i, the index where the customer's text may resume
        if quoted history does (n when it runs to the end), else None."""
        return _FORWARDED if mk.forward(self.lines[i]) else self._history(i)

    def _forwarded_block(self, i: int, found: int) -> bool:
        """Whether the header block or separator at line i starts a forwarded message rather than history:
        the subject says the message is a forward, or the block runs to the end with nothing of the
        customer's above it (Outlook forwards without a marker, and a reply's history sits below a reply).
        Costs a bounded look at line i, and a look at what was kept only when the scan then stops."""
        if found < self.n and not self.forwarding:
            return False
        if self._attribution(i) is not None:
            return False
        return self.forwarding or not any(kind is not _Kind.CUT and any(self.lines[a:b]) for kind, a, b in self.items)

    def _history(self, i: int) -> int | None:
        """If quoted history starts at line i, the index where the customer's text may resume (n when the
        history runs to the end); else None."""
        lines, n = self.lines, self.n
        line = lines[i]
        strength = mk.STRONG
        if mk.separator(line) or (mk.rule(line) and self._header_block(self._skip_blank(i + 1, limit=2)) is not None):
            end = i + 1
        elif (block := self._header_block(i)) is not None:
            end = block
        elif (found := self._attribution(i)) is not None:
            end, strength = found
        else:
            return None
        end = self._skip_blank(end)
        if end < n and (block := self._header_block(end)) is not None:  # "-----Original Message-----\nFrom: …"
            end = self._skip_blank(block)
        if end < n and end in self.quoted:
            return self._skip_quote(end)
        return n if strength == mk.STRONG else None

    def _skip_blank(self, j: int, limit: int | None = None) -> int:
        """The first non-blank line from j (n if none), looking at no more than `limit` blank lines."""
        stop = self.n if limit is None else min(self.n, j + limit)
        while j < stop and not self.lines[j]:
            j += 1
            if not j % _CHECK:
                check_time()
        return j

    def _skip_quote(self, j: int) -> int:
        """The index after a quote block, blank lines between its `>` lines included."""
        lines, n = self.lines, self.n
        end = j
        while j < n:
            if not j % _CHECK:
                check_time()
            if j in self.quoted:
                j += 1
                end = j
            elif not lines[j]:
                j += 1
            else:
                break
        return end

    def _header_block(self, i: int) -> int | None:
        """If a quoted message's header block (From/Sent/To/Subject in any language, or starting with Date)
        starts at line i, the index after it; else None."""
        lines, n = self.lines, self.n
        if i >= n:
            return None
        first = mk.header_key(lines[i])
        if first not in ("from", "date"):
            return None
        keys = {first}
        count = 1
        address = "@" in lines[i]
        j = i + 1
        while j < n and j < i + _HEADER_LINES and lines[j] and j not in self.quoted:
            key = mk.header_key(lines[j])
            if key:
                keys.add(key)
                count += 1
                address = address or "@" in lines[j]
            j += 1
        # Prose can hold "Date: Friday / From: 9am / To: noon"; a message's header names a subject or an address.
        if count >= 2 and "from" in keys and ("subject" in keys or address):
            return j
        return None

    def _attribution(self, i: int) -> tuple[int, int] | None:
        """(index after it, strength) of an attribution over lines i… (up to three lines, as clients wrap
        them), or None."""
        lines, n = self.lines, self.n
        if lines[i].endswith(_MARKER_ENDS):
            strength = mk.attribution(lines[i], wrapped=False)
            return (i + 1, strength) if strength else None
        if not mk.opens_attribution(lines[i]):
            return None
        total = len(lines[i])
        for j in range(i + 1, min(i + 3, n)):
            line = lines[j]
            total += len(line) + 1
            if not line or j in self.quoted or total > mk.ATTRIBUTION_MAX or lines[j - 1].endswith((".", "!", "?")):
                return None  # a blank line, a quote, or a sentence that ended: the customer's prose
            if line.endswith(mk.COLONS):
                strength = mk.attribution(" ".join(part.strip() for part in lines[i:j + 1]), wrapped=True)
                return (j + 1, strength) if strength else None
        return None


def _assemble(lines: list[str], items: list[_Item], quotes_elsewhere: bool) -> str:
    """Join the kept lines: footers only when the customer's text follows them, lone `>` lines only when
    the message does not quote elsewhere, blank lines squeezed. Walks up from the end: until the customer's
    last line is found, each line is asked whether it is a footer; above it, ranges are joined whole."""
    pieces: list[str] = []  # from the end up
    text_follows = False
    for steps, (kind, start, stop) in enumerate(reversed(items), 1):
        if not steps % _CHECK:
            check_time()
        end = stop
        if kind is _Kind.CUT or (kind is _Kind.MAYBE and quotes_elsewhere):
            continue
        if kind is _Kind.KEPT:
            text_follows = False
        elif kind is _Kind.MAYBE:
            text_follows = True
        else:
            while not text_follows and end > start:
                line = lines[end - 1]
                if not line:
                    pieces.append("")
                elif not mk.footer(line):
                    text_follows = True
                    break
                end -= 1
                if not end % _CHECK:
                    check_time()
        if end > start:
            pieces.append("\n".join(lines[start:end]))
    pieces.reverse()
    # Kept lines are never blank at either end nor hold a newline: squeezing the joined text's runs of
    # newlines and trimming its ends gives what squeezing the blank lines between them gives.
    joined = "\n".join(pieces)
    if "\n\n\n" in joined:  # a substring search in C; the pattern alone tries a match at every character
        joined = _BLANK_RUNS.sub("\n\n", joined)
    return joined.strip("\n")
