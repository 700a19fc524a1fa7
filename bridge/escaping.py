"""Text that can be stored, logged and answered: lone surrogates and NUL written out as visible escapes.

aiohttp reads header bytes that are not UTF-8 as lone surrogates (Python's `surrogateescape`); the email
package does the same with 8-bit header bytes, and a few codecs a request may name as its charset (UTF-7,
unicode_escape) decode to them too. Such a str cannot be encoded as UTF-8, so msgspec, SQLite and the log
writer all refuse it. Refusing the request would refuse a provider's real event forever (it resends the same
bytes), so the text is kept with each bad code point written out: an undecodable byte as `\\xNN`, any other
lone surrogate as `\\uNNNN`. The checks cost an ASCII scan in C on ordinary text.

PostgreSQL's `text` refuses the NUL character, which JSON carries as `\\u0000` and a raw body as a zero byte:
text a store keeps as text (keys, ids, errors; not the JSON it keeps as bytes) that holds a NUL is kept written
out (`write_nul`), by every backend alike, on the way in and in look-ups: NUL_MARK, then the text with each
backslash doubled and each NUL written `\\x00`. So the written form reads back unambiguously (`read_nul`): a
literal `\\x00` in text (which holds no NUL) is kept as it is, never taken for a NUL. Text holding no NUL is kept
unchanged, unless it begins with NUL_MARK, which is then written out the same way. Before this, a NUL was written
`\\x00` without the mark or a doubled backslash; such a row reads as it always did (`read_nul` leaves text without
the mark alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
NUL = "\x00"
NUL_WRITTEN = "\\x00"
NUL_MARK = "\\0~"
"""What text kept with its NUL written out begins with: a backslash, a zero and a tilde, printable ASCII (every
database encoding holds it); the earlier write-out never began so for a NUL (it wrote `\\x00`), and text hardly
does by itself (one that does is written out too)."""
_WRITTEN = re.compile(r"\\(?:x00|\\)")


def _escaped_code(code: int) -> str:
    """A lone surrogate written out: `\\xNN` for a byte read with surrogateescape, else `\\uNNNN`."""
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


SLICE_CHARS = 256 * 1024
"""How much of a long text one search or substitution of lone surrogates reads (`encodable`, `escape_text`): `re`
holds the GIL for all of one call, some 50 ms on a 20 MiB mail's text, so a worker thread escaping a large payload
(intake's net for a refused one) lets the event loop run between two slices. A surrogate is one code point: no
match spans two slices."""


def encodable(text: str) -> bool:
    """Whether `text` encodes as UTF-8 (it holds no lone surrogate); a long text looked at a slice at a time."""
    if text.isascii():
        return True
    if len(text) <= SLICE_CHARS:
        return _SURROGATE.search(text) is None
    return all(_SURROGATE.search(text, start, start + SLICE_CHARS) is None
               for start in range(0, len(text), SLICE_CHARS))


def escape_text(text: str) -> str:
    """`text` with each lone surrogate written out (`\\xff` for a byte read with surrogateescape); a long text
    escaped a slice at a time."""
    return text if encodable(text) else _substituted(text)


_WRITTEN_OUT = {code: _escaped_code(code) for code in range(0xD800, 0xE000)}
"""Each lone surrogate's written-out form, for `str.translate`: a table look-up per character in C, some 80 ns,
whatever the text (20 ms for 256 KiB of Latin-1 bytes read with surrogateescape, where a substitution calling
Python for each took 200 ms; the codecs' backslashreplace, for its part, calls its handler per bad byte)."""


def _substituted(text: str) -> str:
    """`text` with each lone surrogate written out (`_WRITTEN_OUT`), a slice at a time when it is long."""
    if len(text) <= SLICE_CHARS:
        return text.translate(_WRITTEN_OUT)
    return "".join([text[start:start + SLICE_CHARS].translate(_WRITTEN_OUT)
                    for start in range(0, len(text), SLICE_CHARS)])


def quoted_sent(text: str, limit: int = 80) -> str:
    """A sender's text as an error a human reads quotes it: `repr` of its first `limit` characters (an undecodable
    byte written `\\xNN`), and when it is longer, `…` and its length."""
    shown = repr(escape_text(text[:limit]))
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"


def write_nul(text: str) -> str:
    """`text` as a text column keeps it: itself when it holds no NUL and does not begin with NUL_MARK (one scan in
    C), else NUL_MARK and the text with each backslash doubled and each NUL written `\\x00`. One text, one written
    form: `read_nul` gives the text back."""
    if NUL not in text and not text.startswith(NUL_MARK):
        return text
    return NUL_MARK + text.replace("\\", "\\\\").replace(NUL, NUL_WRITTEN)


def read_nul(text: str) -> str:
    """The text `write_nul` wrote as `text`. Text without NUL_MARK is as it was written: text that never held a NUL,
    or a row written before the mark, whose NUL reads `\\x00` as it always did."""
    if not text.startswith(NUL_MARK):
        return text
    return _WRITTEN.sub(lambda m: NUL if m.group() == NUL_WRITTEN else "\\", text[len(NUL_MARK):])


def legacy_nul(written: str) -> str | None:
    """The form a row written before NUL_MARK keeps for the text `write_nul` wrote as `written` (each NUL written
    `\\x00`, nothing else changed), or None when `written` is no written-out form (text that never held a NUL and
    does not begin with NUL_MARK, kept the same by both): what a key is also matched by while such rows can exist
    (a thread begun, an event or a nonce accepted, before the upgrade; an older process during a rolling one).
    One `startswith` for ordinary text."""
    if not written.startswith(NUL_MARK):
        return None
    return read_nul(written).replace(NUL, NUL_WRITTEN)


def lookup_forms(text: str) -> tuple[str, ...]:
    """Every form a look-up by `text` (an operator's: a conversation key or id) matches in a text column: `text` as
    a write keeps it (`write_nul`), and `text` with each NUL written `\\x00`: `text` itself when it holds none (a
    written form the store shows, or raw text that merely begins with NUL_MARK, which a write keeps written out:
    both are looked for) and, when it holds one, the form a row written before NUL_MARK keeps. Ordinary text:
    itself alone."""
    written = write_nul(text)
    if written is text:
        return (text,)
    return written, text.replace(NUL, NUL_WRITTEN)


def escape_values(mapping: dict[str, Any]) -> int:
    """Escape, in place, the str values of a flat mapping (kept headers, request meta); how many changed."""
    changed = 0
    for key, value in mapping.items():
        if isinstance(value, str) and not value.isascii() and not encodable(value):  # ASCII: no call
            mapping[key] = _substituted(value)
            changed += 1
    return changed


def escape_tree(value: Any) -> tuple[Any, int]:
    """`value` (JSON-like: dicts, lists, str, scalars) with every str in it escaped, object keys too, and how
    many strings changed. Containers are changed in place. Walked with a stack, not recursion: a payload may
    nest as deep as the JSON parser allowed."""
    if isinstance(value, str):
        fixed = escape_text(value)
        return fixed, int(fixed is not value)
    changed = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if not all(encodable(k) for k in node if isinstance(k, str)):
                pairs = list(node.items())
                node.clear()
                for k, v in pairs:
                    fixed_key = escape_text(k) if isinstance(k, str) else k
                    changed += fixed_key is not k
                    node[fixed_key] = v
            entries: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, list):
            entries = enumerate(node)
        else:
            continue
        for k, v in entries:  # replacing the value of a key or index seen is safe while iterating
            if isinstance(v, str):
                if not encodable(v):
                    node[k] = _substituted(v)
                    changed += 1
            elif isinstance(v, dict | list):
                stack.append(v)
    return value, changed


HEADER_FORBIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
"""What no HTTP header name or value may hold (RFC 9110 §5.5): CR, LF, NUL and every other control character
but tab. aiohttp refuses to write a request with one (a ValueError, before any byte goes out)."""


def header_problem(text: str) -> str | None:
    """Why `text` cannot be sent in an HTTP header, or None when it can: "ends with a newline" (all it holds: the
    trailing newline a secret file brings), else the first control character it holds. Never the text itself,
    which may be a secret."""
    found = HEADER_FORBIDDEN.search(text)
    if found is None:
        return None
    if HEADER_FORBIDDEN.search(text.rstrip("\r\n")) is None:
        return "ends with a newline"
    return f"holds a control character ({found.group()!r})"
