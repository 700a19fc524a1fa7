"""The limits every render runs under: a time budget, a cap on the size of any string or list an
operation builds, and a cap on the size of integers.

The deadline lives in a context variable, set once per mapping render (or per field when a field is
rendered on its own) or by a loop slice, and checked by everything that can take long: each loop step, each item an
iterating filter reads, each call, attribute and item look-up. Sizes are checked before an operation
allocates where its result can be foreseen (`*`, `+`, `~`, `join`, `replace`, padding), and after it
otherwise, so no string or list past MAX_RESULT_CHARS ever reaches the next step.

A render on the event loop runs under a loop slice (`start_slice`), whatever its mapping: past it, the same checks
raise SliceOver, and the caller renders again off the loop, under the whole budget, which every mapping's render
takes there, with Jinja or without (`unbounded`), so that a filter costly on a large value holds the one parser
thread no longer than a template may. The budget bounds a render's cost; the slice bounds how long one may hold the
loop, which answers every other request meanwhile. So that the slice holds for a mapping without Jinja too, every
step of a render that can take long looks at the clock: a filter on a value that is not small (past SMALL_CHARS) is
followed by a look (`after_large`), one on a value too large for the loop (past LOOP_BULK_CHARS, which no filter of
one uninterruptible call, a case mapping or a strip, handles within a slice) is not begun on it (`check_large`), and
a mapping, list or table of more than UNCHECKED_STEPS steps on small values looks after each of its fields. Steps on
small values take microseconds each, and cost no look at the clock.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from jinja2.exceptions import SecurityError

MAX_RESULT_CHARS = 1_000_000
MAX_INT_DIGITS = 4_300  # Python's own limit for turning an int into text
MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))
TIME_BUDGET_S = 0.25
SMALL_CHARS = 1024
"""A filter on a string up to this long takes microseconds: no look at the clock after it. One on a longer string,
or on anything else (a list, a table, a number), is followed by one (`after_large`)."""
LOOP_BULK_CHARS = 32_768
"""The most a value may weigh (characters, `text_weight`) for a filter to begin on it under a loop slice: a filter
that is one call into C (a case mapping of non-ASCII text takes some 40 ns a character, `str()` of a list more) cannot
stop part-way, so a larger value ends the slice at once (`check_large`) and the render runs off the loop."""
UNCHECKED_STEPS = 64
"""How many steps on small values (a field read, a filter) a mapping, list or table may take between two looks at
the clock, counted when it compiles (`CompiledField.steps`): one with more looks after each of its fields or items,
a longer `transform:` list after each filter, and a fast-path template or `when` with more filters than this runs
in Jinja, which looks before each."""

INFINITY = float("inf")
# (deadline on the monotonic clock, the budget in ms for the message, whether that deadline is a loop slice's end,
# whether a loop slice is running): no deadline outside a render or a slice. A slice's end comes before the budget of
# a render begun inside it (start_slice, Budget): one look-up and one comparison per check either way.
Deadline = tuple[float, float, bool, bool]
_deadline: ContextVar[Deadline] = ContextVar("template_deadline", default=(INFINITY, 0.0, False, False))
T = TypeVar("T")


class BudgetExceeded(SecurityError, ValueError):
    """A render went past its time budget, or an operation past a size limit."""


class SliceOver(BaseException):
    """A render on the event loop went past its loop slice: render it again off the loop. A BaseException, as
    CancelledError is, so that no handler of a render's errors (`except Exception`, a filter's fallback) takes
    it for the render's own failure."""


def check_time() -> None:
    deadline, budget_ms, sliced, _ = _deadline.get()
    if time.monotonic() > deadline:
        if sliced:
            raise SliceOver
        raise BudgetExceeded(f"render budget of {budget_ms:.0f} ms exceeded")


def check_slice() -> None:
    """`check_time` for the loop slice alone: SliceOver past it, nothing for a render's budget. Between a mapping's
    fields (or a list's items), where a budget run out would belong to no field."""
    deadline, _, sliced, _ = _deadline.get()
    if sliced and time.monotonic() > deadline:
        raise SliceOver


def start_slice(seconds: float) -> Token[Deadline]:
    """From now until `end_slice`, every check in this context raises SliceOver once `seconds` have passed: those of
    any render begun in it (a mapping with Jinja or without, its `when`, a conversation key, an explanation), whose
    budget (`Budget`) ends later. Begun outside any render (it replaces a running render's deadline). The caller's
    context only: a render handed to a thread runs without a slice. Two calls rather than a `with`: the intake makes
    one per request."""
    return _deadline.set((time.monotonic() + seconds, 0.0, True, True))


def end_slice(token: Token[Deadline]) -> None:
    _deadline.reset(token)


SERVER_THREADS = "ticketbridge-"
"""How the names of the server's worker threads begin (bridge/offload.py: the parser's, the console's)."""


def unbounded() -> bool:
    """Whether a render begun now would run with nothing to bound it in a thread where the server must bound it: no
    loop slice nor render's budget running, in one of the server's worker threads (the parser's, the console's),
    where every render takes a budget of its own (`Budget`). On the loop, one without Jinja takes none: the slice
    bounds it, and ends before a budget would. Nor in the CLI (`render`, `test`, `--explain`, in its own thread): an
    operator's command on a large fixture renders to its end, as it always has."""
    return _deadline.get()[0] == INFINITY and threading.current_thread().name.startswith(SERVER_THREADS)


def check_large(value: Any) -> None:
    """Before a filter (one call that may not stop part-way) on `value`, not a small one: under a loop slice, a value
    weighing more than LOOP_BULK_CHARS ends the slice at once (SliceOver), for the render to run off the loop.
    Elsewhere nothing. Its weight is found by a walk of at most LOOP_BULK_CHARS steps."""
    if _deadline.get()[3] and text_weight(value, LOOP_BULK_CHARS) > LOOP_BULK_CHARS:
        raise SliceOver


LOOP_SORTED = 2_048
"""The most items a sort (`sort`, `dictsort`, `groupby`: one call that may not stop part-way) may begin on under a
loop slice: about a millisecond of it. More end the slice (`check_loop_count`), for the render to run off the loop."""


def check_loop_count(count: int, most: int) -> None:
    """Before one call on `count` items that may not stop part-way (a sort, a pretty print): under a loop slice, more
    than `most` end the slice at once (SliceOver)."""
    if count > most and _deadline.get()[3]:
        raise SliceOver


def after_large(fn: Callable[..., T], value: Any, *args: Any) -> T:
    """`fn(value, *args)`, a filter on a value that is not small (see SMALL_CHARS): not begun on the loop when the
    value is too large for it (`check_large`), and followed by a look at the clock."""
    check_large(value)
    out = fn(value, *args)
    check_time()
    return out


def looking(fn: Callable[..., T], every: bool = False) -> Callable[..., T]:
    """`fn`, a filter, as a step that looks at the clock after it when its value is not small (`after_large`), or
    after every value with `every`."""
    if every:
        return functools.partial(after_large, fn)

    def step(value: Any, *args: Any) -> T:
        if type(value) is str and len(value) <= SMALL_CHARS:
            return fn(value, *args)
        return after_large(fn, value, *args)

    return step


def too_long(size: int, what: str = "string") -> BudgetExceeded:
    return BudgetExceeded(f"{what} result over {MAX_RESULT_CHARS} characters (it would be {size})")


def check_size(value: Any) -> Any:
    """`value`, unless it is a string, bytes or list longer than the cap."""
    if isinstance(value, str | bytes | list | tuple) and len(value) > MAX_RESULT_CHARS:
        raise too_long(len(value), "string" if isinstance(value, str | bytes) else "list")
    return value


def check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise BudgetExceeded(f"integer result over {MAX_INT_DIGITS} digits")
    return value


def budget_iter(iterable: Iterable[T]) -> Iterator[T]:
    """`iterable`, checking the time budget before each item."""
    for item in iterable:
        check_time()
        yield item


def sized_iter(iterable: Iterable[T]) -> Iterator[T]:
    """`iterable` under the time budget, refusing once its items' lengths add up past the cap (for
    operations that concatenate what they read: join, sum)."""
    total = 0
    for item in iterable:
        check_time()
        if isinstance(item, str | bytes | list | tuple):
            total += len(item)
            if total > MAX_RESULT_CHARS:
                raise too_long(total)
        yield item


def joined_size(parts: list[Any], sep: str) -> int:
    return sum(len(p) if isinstance(p, str) else len(str(p)) for p in parts) + len(sep) * max(0, len(parts) - 1)


def replaced_size(text: str, old: str, new: str, count: int = -1) -> int:
    hits = len(text) + 1 if old == "" else text.count(old)
    if count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


class Budget:
    """Sets the deadline for the duration of a `with`, unless an outer one is already running, or a loop slice that
    ends before it would."""

    __slots__ = ("token",)

    def __init__(self) -> None:
        self.token: Token[Deadline] | None = None

    def __enter__(self) -> None:
        ends, _, sliced, on_loop = _deadline.get()
        if ends == INFINITY or sliced:  # no render's budget running yet (a loop slice's end may be set)
            seconds = TIME_BUDGET_S
            deadline = time.monotonic() + seconds
            if deadline < ends:  # else the slice ends first, and stays the deadline
                self.token = _deadline.set((deadline, seconds * 1000, False, on_loop))

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _deadline.reset(self.token)
            self.token = None



# -- what a value weighs as text ------------------------------------------------------------------------
# A list of a million references to one long string costs a few megabytes, yet writing it out (str, repr, JSON,
# format, join) builds a string of a million times that string's length, in one C call the time budget cannot
# stop. So whatever writes a value as text, copies a list or builds one weighs it first: its strings' lengths,
# each integer's digits and one for every item, nested lists and tables counted through, by a walk that stops
# once past the cap. That weight is never more than the text str(), repr() or JSON make of the value, and that
# text is never more than a few times the weight (quotes, separators, escapes).

_WALKED: tuple[type, ...] = (list, tuple, set, frozenset, type({}.keys()), type({}.values()), type({}.items()))
_WEIGHED: tuple[type, ...] = (*_WALKED, dict)
WEIGHED = _WEIGHED
"""What `text_weight` walks through: lists, tuples, sets, tables and their views."""


def _scalar_weight(value: Any) -> int:
    """What a value that is not walked weighs: a string's length, an integer's digits (a lower bound, from its
    bits), else 1."""
    if isinstance(value, str | bytes):
        return len(value)
    if type(value) is int:
        return _digits(value)
    return 1


def _digits(value: int) -> int:
    """A lower bound of the digits of `value`, from its bits (0.30102 < log10(2)), without writing it."""
    return (value.bit_length() - 1) * 30102 // 100000 + 1 if value else 1


def text_weight(value: Any, limit: int = MAX_RESULT_CHARS, indent: int = 0) -> int:
    """What `value` weighs as text (see above), found without building any text; the walk stops, and the
    count so far is returned, as soon as it passes `limit` (so it takes at most about `limit` steps), and it
    checks the time budget as it goes. `indent`: what a pretty printer adds to each item's line per level of
    nesting (tojson's indent, pprint's)."""
    if type(value) is str:
        return len(value)
    if not isinstance(value, _WEIGHED):
        return _scalar_weight(value)
    total = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    opened = 0
    while todo:
        opened += 1
        if not opened & 1023:
            check_time()
        container, depth = todo.pop()
        per_item = 1 + indent * depth
        if type(container) is dict:
            for n, (key, member) in enumerate(container.items(), 1):
                total += per_item + (len(key) if type(key) is str else _member_weight(key, limit - total))
                if type(member) is str:
                    total += len(member)
                elif isinstance(member, _WEIGHED):
                    if member:
                        todo.append((member, depth + 1))
                else:
                    total += _member_weight(member, 0)
                if total > limit:
                    return total
                if not n & 8191:
                    check_time()
            continue
        for n, member in enumerate(container, 1):
            if type(member) is str:
                total += per_item + len(member)
            elif type(member) is int:
                total += per_item + _digits(member)
            elif member is None:
                total += per_item + 1
            elif isinstance(member, _WEIGHED):
                total += per_item
                if member:
                    todo.append((member, depth + 1))
            else:
                total += per_item + _member_weight(member, 0)
            if total > limit:
                return total
            if not n & 8191:
                check_time()
    return total


def _member_weight(member: Any, limit: int) -> int:
    """What an item not walked in place weighs (a table's key may be a tuple: weighed up to `limit`)."""
    if member is None or member is True or member is False or type(member) is float:
        return 1
    if type(member) is int:
        return _digits(member)
    if isinstance(member, _WEIGHED):
        return text_weight(member, limit)
    return _scalar_weight(member)


def too_heavy(weight: int, value: Any) -> BudgetExceeded:
    what = "table" if isinstance(value, dict) else "list" if isinstance(value, _WALKED) else "string"
    return BudgetExceeded(f"{what} result over {MAX_RESULT_CHARS} characters "
                          f"(it would be at least {weight} as text)")


def check_weight(value: Any, indent: int = 0) -> Any:
    """`value`, unless it is a string longer than the cap, or a list, tuple, set or table that would write more
    than the cap as text (weighed by a bounded walk, before anything writes or copies it)."""
    if type(value) is str:
        if len(value) > MAX_RESULT_CHARS:
            raise too_long(len(value))
        return value
    if isinstance(value, str | bytes):
        return check_size(value)
    if isinstance(value, _WEIGHED):
        weight = text_weight(value, indent=indent)
        if weight > MAX_RESULT_CHARS:
            raise too_heavy(weight, value)
    return value


def as_text(value: Any) -> str:
    """`str(value)`, refused before it is built when it would pass the cap."""
    if isinstance(value, str):
        return value
    check_weight(value)
    return str(value)
