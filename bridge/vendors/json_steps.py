"""A large look-up answer decoded as JSON in steps, each a short call into msgspec, so that the event loop runs
between them while a thread decodes it.

msgspec holds the GIL for the whole of one call: a 32 MiB page of tickets is ~200 ms in one call, and even its
`msgspec.Raw` pass (which only finds where each ticket lies) ~25 ms, all of which the loop waits out.
`decode_in_steps(body)` gives what `decode_json(body)` gives (the same value, or None for what is not JSON),
decoding a body larger than STEP_BYTES a piece at a time:

- an array's elements in groups of STEP_BYTES or more: a group is cut before a separator like the one after the
  array's first element (`},{"ticketId":` for tickets that start alike) and decoded as an array of its own, which
  it is only when the cut falls between two of the array's elements (a cut inside an element, or inside a
  string, leaves a text that is no JSON array);
- where no cut is found (the array's tail, elements larger than a group), one element at a time: msgspec reading
  from an element's start stops after it with "trailing characters (byte n)", which says where it ends without
  a pass over the rest (a `Raw` skip within WINDOW_BYTES); an array or object larger than STEP_BYTES is read in
  steps the same way, an object member by member;
- the rest in one call (a long string, a group of small members).

Every piece is checked as it is read (a group decodes as an array; an element is followed by `,` or the
container's end, a `,` by another element; nothing but white space follows the body's value), so that what the
steps build is the body's value. Where a step cannot tell (a body that is not JSON, a shape whose cuts keep
failing, an msgspec that words its errors otherwise), the body is decoded whole, as `decode_json` does: the same
value, the loop held as long as that takes. The loop's longest stall: tests/bench/test_lookup_stall_bench.py.

The steps' work is linear in the body on every input: a stretch searched for a cut without finding one is not
searched again (when the array's elements changed shape, it is searched once more with cuts made from the
element at hand), and the steps may take at most one call per CALL_BYTES of the body and read at most
WORK_TIMES its length (searched, skipped over, decoded): past either, the body is decoded whole, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from bridge.vendors.base import decode_json, too_many_containers

STEP_BYTES = 256 * 1024
"""About the most one step decodes (~2 ms of msgspec's time); a body up to this long is decoded whole."""
WINDOW_BYTES = 2 * 1024 * 1024
"""How far an element's end is looked for (a `Raw` skip, ~1 ms a MiB); a longer one is read in steps."""
BASE_CALLS = 64
CALL_BYTES = 256
"""A body is read in at most BASE_CALLS + one step per CALL_BYTES of it (a page of 36,000 tickets takes a few
hundred; elements read one at a time take one each, ~4 us however small: a few per KiB cost about what the
whole decode does); past it, it is decoded whole."""
WORK_TIMES = 8
"""The most bytes the steps may read, as a multiple of the body's length (plus a few windows): each stretch
searched for a cut, skipped over or decoded counts. Nesting re-reads a large element once a level; past it, the
body is decoded whole."""
RELEASE_SLICE = 256
"""How many elements `release` frees at a time (~1 ms of tickets)."""
FAILED_CUTS = 16
"""How many group cuts may fail (a separator inside an element) before groups are no longer tried."""

_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")
_WS = b" \t\n\r"
_SPACE = re.compile(rb"[ \t\n\r]*")
_FIRST_KEY = re.compile(rb'\{[ \t\n\r]*"(?:[^"\\]|\\.){0,64}"[ \t\n\r]*:')
_FAILURES = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class _Whole(Exception):
    """The steps cannot tell what the body holds: it is decoded whole."""


def decode_in_steps(body: bytes) -> Any:
    """`decode_json(body)`: the same value, or None; a body longer than STEP_BYTES decoded in steps (module
    docstring), so that a thread decoding it lets the event loop run between them."""
    if len(body) <= STEP_BYTES:
        return decode_json(body)
    steps = _Steps(body)
    try:
        value, end = steps.value(steps.skip(0))
        if steps.skip(end) != len(body):
            raise _Whole
        return value
    except (_Whole, *_FAILURES):
        return decode_json(body)


def decode_lookup(body: bytes, what: str, refused: Callable[[str], Exception]) -> Any:
    """A look-up's answer (`what`, as its errors name it) decoded in steps (`decode_in_steps`); `refused(reason)`
    raised instead, before anything is decoded, when it holds more objects and arrays than a look-up reads
    (`too_many_containers`)."""
    reason = too_many_containers(body, what)
    if reason is not None:
        raise refused(reason)
    return decode_in_steps(body)


def _cuts(first: bytes) -> tuple[re.Pattern[bytes], ...]:
    """Where an array whose first element starts `first` may be cut, most likely first: before a comma followed by
    an element that starts as the first does (an object by the same first key), else by the same kind of value
    (group `comma`: the comma; `next`: the next element's start)."""
    space = rb"[ \t\n\r]*"

    def after(end: bytes, start: bytes) -> re.Pattern[bytes]:
        # white space only after a character that ends a value: a search from each byte of a long run of it
        # would read the rest of the run again
        return re.compile(end + (space if end else b"") + rb"(?P<comma>,)" + space + rb"(?P<next>" + start + rb")")

    if first.startswith(b"{"):
        head = _FIRST_KEY.match(first)
        return ((after(rb"\}", re.escape(head.group())),) if head else ()) + (after(rb"\}", rb"\{"),)
    if first.startswith(b"["):
        return (after(rb"\]", rb"\["),)
    if first.startswith(b'"'):
        return (after(b'"', b'"'),)
    return (after(b"", rb"[-0-9tfn]"),)


class _Steps:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.view = memoryview(body)
        self.calls = 0
        self.max_calls = BASE_CALLS + len(body) // CALL_BYTES
        self.work = 0
        self.max_work = WORK_TIMES * len(body) + 4 * WINDOW_BYTES
        self.failed = 0

    def skip(self, at: int) -> int:
        """`at` past any white space."""
        end = _SPACE.match(self.body, at)
        return at if end is None else end.end()

    def call(self, work: int) -> None:
        """Count a step that reads `work` bytes: past the body's budget of calls or bytes, it is decoded whole."""
        self.calls += 1
        self.work += work
        if self.calls > self.max_calls or self.work > self.max_work:
            raise _Whole

    def decode(self, text: bytes | memoryview) -> Any:
        self.call(len(text))
        return msgspec.json.decode(text)

    def value(self, at: int) -> tuple[Any, int]:
        """The array or object starting at `at`, read in steps, and where it ends (just past it)."""
        opener = self.body[at:at + 1]
        if opener == b"[":
            return self.array(at)
        if opener == b"{":
            return self.object(at)
        raise _Whole  # a long scalar, or no JSON: one call

    def end(self, at: int, closers: tuple[bytes, ...]) -> int | None:
        """Where the value starting at `at` is followed by one of `closers` (its index); None when the value runs
        past WINDOW_BYTES."""
        self.call(0)
        try:
            msgspec.json.decode(self.view[at:at + WINDOW_BYTES], type=msgspec.Raw)
        except msgspec.DecodeError as exc:
            trailing = _TRAILING.search(str(exc))
            self.work += min(WINDOW_BYTES, len(self.body) - at) if trailing is None else int(trailing.group(1))
            if trailing is None:
                if at + WINDOW_BYTES < len(self.body):
                    return None  # cut off by the window (or broken: read in steps, that shows)
                raise _Whole from None
            after = at + int(trailing.group(1)) - 1  # msgspec counts the trailing character in
            if self.body[after:after + 1] not in closers:
                raise _Whole from None
            return after
        self.work += WINDOW_BYTES
        if at + WINDOW_BYTES < len(self.body):
            return None  # the window ends where a value may (a number's digits): read in steps
        raise _Whole  # the body ends with this value, inside its container

    def array(self, start: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        at = self.skip(start + 1)
        if self.body[at:at + 1] == b"]":
            return out, at + 1
        first = at
        cuts: tuple[re.Pattern[bytes], ...] = ()
        tried = tail_tried = 0  # cuts before `tried` failed; no tail ends before `tail_tried`
        searched = 0  # no cut was found before `searched`: not searched again
        pending: int | None = None  # where elements start whose ends are known, not yet decoded
        while True:
            if self.body[at:at + 1] == b"]":
                raise _Whole  # a comma before the array's end: no JSON
            if cuts and self.failed < FAILED_CUTS:
                group = at if pending is None else pending  # the elements read one at a time go with it
                begin, end = max(group + STEP_BYTES, tried, at, searched), group + 2 * STEP_BYTES
                cuts, found = self.cut(cuts, at, begin, end)
                if found is None:
                    searched = max(searched, end)
                if found is not None:
                    try:
                        out.extend(self.decode(b"[" + self.body[group:found.start("comma")] + b"]"))
                    except _FAILURES:
                        self.failed += 1
                        tried = found.start("comma") + 1
                    else:
                        at, pending = found.start("next"), None
                        continue
                elif at >= tail_tried:
                    tail = self.tail(group)
                    if tail is not None:
                        out.extend(tail[0])
                        return out, tail[1]
                    tail_tried = at + 2 * STEP_BYTES
            after = self.end(at, (b",", b"]"))
            if after is None or (after - at > STEP_BYTES and self.body[at:at + 1] in (b"[", b"{")):
                if pending is not None:
                    out.extend(self.decode(b"[" + self.body[pending:at].rstrip(_WS)[:-1] + b"]"))
                    pending = None
                value, past = self.value(at)
                after = self.skip(past)
                if self.body[after:after + 1] not in (b",", b"]"):
                    raise _Whole
                out.append(value)
            elif pending is None:
                pending = at
            if pending is not None and (after - pending >= STEP_BYTES or self.body[after:after + 1] == b"]"):
                out.extend(self.decode(b"[" + self.body[pending:after] + b"]"))
                pending = None
            if self.body[after:after + 1] == b"]":
                return out, after + 1
            if not cuts:
                cuts = _cuts(self.body[first:first + 80])
            at = self.skip(after + 1)

    def cut(self, cuts: tuple[re.Pattern[bytes], ...], at: int, begin: int,
            end: int) -> tuple[tuple[re.Pattern[bytes], ...], re.Match[bytes] | None]:
        """The first place in `begin`..`end` where one of `cuts` matches (the likeliest first), or else one of the
        cuts made from the element at `at` when its shape differs from the one `cuts` were made from (an array's
        first element may be unlike the rest); the cuts to go on with, and the place, None when none matches."""
        if begin >= end:
            return cuts, None
        for shape in (cuts, _cuts(self.body[at:at + 80])):
            if shape is not cuts and [p.pattern for p in shape] == [p.pattern for p in cuts]:
                break
            for pattern in shape:
                self.call(end - begin)
                found = pattern.search(self.body, begin, end)
                if found is not None:
                    return shape, found
        return shape, None

    def tail(self, at: int) -> tuple[list[Any], int] | None:
        """The array's elements from `at` to its end and the index past it, when it ends within 2 x STEP_BYTES;
        else None."""
        window = self.body[at:at + 2 * STEP_BYTES]
        self.call(len(window))
        try:
            return msgspec.json.decode(b"[" + window), at + len(window)
        except _FAILURES as exc:
            trailing = _TRAILING.search(str(exc))
            if trailing is None:
                return None
            after = at + int(trailing.group(1)) - 2  # less the `[` put before it
        text = self.body[at:after].rstrip(_WS)
        try:
            return self.decode(b"[" + text), at + len(text)
        except _FAILURES:
            return None

    def object(self, start: int) -> tuple[dict[Any, Any], int]:
        out: dict[Any, Any] = {}
        at = self.skip(start + 1)
        if self.body[at:at + 1] == b"}":
            return out, at + 1
        pending: int | None = None  # where members start whose ends are known, not yet decoded
        while True:
            if self.body[at:at + 1] == b"}":
                raise _Whole  # a comma before the object's end: no JSON
            colon = self.end(at, (b":",))
            if colon is None:
                raise _Whole  # a key longer than a window
            begins = self.skip(colon + 1)
            after = self.end(begins, (b",", b"}"))
            if after is None or (after - begins > STEP_BYTES and self.body[begins:begins + 1] in (b"[", b"{")):
                if pending is not None:
                    self.members(out, self.body[pending:at].rstrip(_WS)[:-1])
                    pending = None
                key = self.decode(self.view[at:colon])
                if not isinstance(key, str):
                    raise _Whole
                value, past = self.value(begins)
                after = self.skip(past)
                if self.body[after:after + 1] not in (b",", b"}"):
                    raise _Whole
                out[key] = value
            elif pending is None:
                pending = at
            if pending is not None and (after - pending >= STEP_BYTES or self.body[after:after + 1] == b"}"):
                self.members(out, self.body[pending:after])
                pending = None
            if self.body[after:after + 1] == b"}":
                return out, after + 1
            at = self.skip(after + 1)

    def members(self, out: dict[Any, Any], text: bytes) -> None:
        """Decode `text`, members of the object (no comma after the last), into `out` as one object's members are:
        a key given again keeps its first place and takes the later value."""
        out.update(self.decode(b"{" + text + b"}"))


def release(value: Any) -> None:
    """Free `value` (decoded JSON, referenced nowhere else) a slice at a time. Dropped whole, a page of 36,000
    tickets is freed in one cascade of deallocations, ~40 ms during which the thread keeps the GIL and the loop
    waits; a slice of RELEASE_SLICE elements or members at a time, it lets the loop run between them. A container
    of more than RELEASE_SLICE held by one is freed so in turn; smaller ones go with their slice."""
    stack = [value]
    del value
    while stack:
        here = stack.pop()
        if isinstance(here, list):
            while here:
                piece = here[-RELEASE_SLICE:]
                del here[-RELEASE_SLICE:]
                stack.extend(v for v in piece if isinstance(v, list | dict) and len(v) > RELEASE_SLICE)
                del piece
        elif isinstance(here, dict):
            while here:
                piece = [here.popitem()[1] for _ in range(min(RELEASE_SLICE, len(here)))]
                stack.extend(v for v in piece if isinstance(v, list | dict) and len(v) > RELEASE_SLICE)
                del piece
