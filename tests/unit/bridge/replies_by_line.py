"""The reply stripper as it was before it skipped plain lines: one look at every line, top to bottom. Kept only
as the reference `test_replies_differential` checks `bridge.replies` against; not used by the service."""

from __future__ import annotations

from enum import Enum, auto

from bridge import reply_markers as mk

_MARKER_ENDS = (*mk.COLONS, "-")
_FORWARDED = -1
# A header block is the marker line and the `Key: value` lines under it; no client writes more.
_HEADER_LINES = 8


class _Kind(Enum):
    TEXT = auto()      # the customer's line
    FOOTER = auto()    # "Sent from my iPhone": dropped unless the customer's text follows
    MAYBE = auto()     # a lone `>` line inside a paragraph: a quote only if the message quotes elsewhere
    CUT = auto()       # where history was dropped
    KEPT = auto()      # a forwarded message's line, kept as it is


_CUT = (_Kind.CUT, "")


def strip_reply(text: str | None, subject: str | None = None) -> str:
    """The reply the customer wrote, without quoted history, signature or mail-app footer; "" for nothing.
    With the message's `subject`, a forward ("FW: …", "WG: …") keeps the message Outlook forwarded under
    its header block, which in the body alone looks like a reply's history."""
    if not text:
        return ""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    items, quotes_elsewhere = _Scan(lines, forwarding=mk.forward_subject(subject)).run()
    return _assemble(items, quotes_elsewhere)


def _quote_shaped(line: str) -> bool:
    """`> text`, `>> text` or a bare `>`: how clients quote, unlike `>50%` written in prose."""
    text = line.lstrip()
    return text.startswith(">") and (len(text) == 1 or text[1] in " \t>")


class _Scan:
    """Walks the lines once, top to bottom, classifying each into the items `_assemble` joins."""

    def __init__(self, lines: list[str], *, forwarding: bool = False) -> None:
        self.lines = lines
        self.forwarding = forwarding  # the subject says the message is a forward
        self.n = len(lines)
        self.quoted = [line.lstrip().startswith(">") for line in lines]
        self.items: list[tuple[_Kind, str]] = []
        self.quotes = False  # the message quotes somewhere: a lone `>` line is then a quote too
        self.first = next((i for i, line in enumerate(lines) if line), self.n)  # the first non-blank line

    def run(self) -> tuple[list[tuple[_Kind, str]], bool]:
        lines, n, items = self.lines, self.n, self.items
        in_signature = False
        i = 0
        while i < n:
            line = lines[i]
            if not line:
                items.append((_Kind.TEXT, ""))
                i += 1
            elif self.quoted[i]:
                i, was_quote = self._quote_run(i, in_signature)
                in_signature = in_signature and not was_quote
            elif mk.signature_delimiter(line):
                in_signature = True
                items.append(_CUT)
                i += 1
            elif self._plain(i) or (found := self._marker(i)) is None:
                if not in_signature:
                    items.append((_Kind.FOOTER if mk.footer(line) else _Kind.TEXT, line))
                i += 1
            elif found == _FORWARDED or self._forwarded_block(i, found):
                items.extend((_Kind.KEPT, rest) for rest in lines[i:])
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
        while j < n and self.quoted[j]:
            shaped = shaped or _quote_shaped(lines[j])
            j += 1
        if not shaped:  # `>50% of users`, `>_<`: prose that happens to start with ">"
            if not in_signature:
                self.items.extend((_Kind.TEXT, line) for line in lines[i:j])
            return j, False
        if j - i >= 2 or i <= self.first or self._only_blank_from(j):
            self.quotes = True
            self.items.append(_CUT)
            return j, True
        if not in_signature:
            self.items.append((_Kind.MAYBE, lines[i]))
        return j, False

    def _only_blank_from(self, j: int) -> bool:
        """Whether nothing but blank lines follows j. Called once per quote run and stops at the first text,
        which the scan reaches next anyway, so the scan stays linear."""
        lines = self.lines
        while j < self.n and not lines[j]:
            j += 1
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
        return self.forwarding or not any(line and kind is not _Kind.CUT for kind, line in self.items)

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
        if end < n and self.quoted[end]:
            return self._skip_quote(end)
        return n if strength == mk.STRONG else None

    def _skip_blank(self, j: int, limit: int | None = None) -> int:
        """The first non-blank line from j (n if none), looking at no more than `limit` blank lines."""
        stop = self.n if limit is None else min(self.n, j + limit)
        while j < stop and not self.lines[j]:
            j += 1
        return j

    def _skip_quote(self, j: int) -> int:
        """The index after a quote block, blank lines between its `>` lines included."""
        lines, n = self.lines, self.n
        end = j
        while j < n:
            if self.quoted[j]:
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
        while j < n and j < i + _HEADER_LINES and lines[j] and not self.quoted[j]:
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
            if not line or self.quoted[j] or total > mk.ATTRIBUTION_MAX or lines[j - 1].endswith((".", "!", "?")):
                return None  # a blank line, a quote, or a sentence that ended: the customer's prose
            if line.endswith(mk.COLONS):
                strength = mk.attribution(" ".join(part.strip() for part in lines[i:j + 1]), wrapped=True)
                return (j + 1, strength) if strength else None
        return None


def _assemble(items: list[tuple[_Kind, str]], quotes_elsewhere: bool) -> str:
    """Join the kept lines: footers only when the customer's text follows them, lone `>` lines only when
    the message does not quote elsewhere, blank lines squeezed."""
    kept: list[str] = []
    text_follows = False
    for kind, line in reversed(items):
        if kind is _Kind.CUT or (kind is _Kind.MAYBE and quotes_elsewhere):
            continue
        if kind is _Kind.FOOTER and not text_follows:
            continue
        if kind is _Kind.KEPT:
            text_follows = False
        elif line:
            text_follows = True
        kept.append(line)
    out: list[str] = []
    for line in reversed(kept):
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)
