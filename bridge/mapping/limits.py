"""The limits every render runs under: a time budget, a cap on the size of any string or list an
operation builds, and a cap on the size of integers.

The deadline lives in a context variable, set once per mapping render (or per field when a field is
rendered on its own), and checked by everything that can take long: each loop step, each item an
iterating filter reads, each call, attribute and item look-up. Sizes are checked before an operation
allocates where its result can be foreseen (`*`, `+`, `~`, `join`, `replace`, padding), and after it
otherwise, so no string or list past MAX_RESULT_CHARS ever reaches the next step.

A render on the event loop may also run under a loop slice (`start_slice`): past it, the same checks raise
SliceOver, and the caller renders again off the loop, under the whole budget. The budget bounds a render's cost;
the slice bounds how long one may hold the loop, which answers every other request meanwhile.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from jinja2.exceptions import SecurityError

MAX_RESULT_CHARS = 1_000_000
MAX_INT_DIGITS = 4_300  # Python's own limit for turning an int into text
MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))
TIME_BUDGET_S = 0.25

INFINITY = float("inf")
# (deadline on the monotonic clock, the budget in ms for the message); no deadline outside a render.
# The third item says whether that deadline is a loop slice's end, which comes before the budget's (start_slice):
# one look-up and one comparison per check either way.
_deadline: ContextVar[tuple[float, float, bool]] = ContextVar("template_deadline", default=(INFINITY, 0.0, False))
# The end of the loop slice, on the monotonic clock; none outside start_slice … end_slice (nor in other threads).
# Read once per render, by Budget.
_slice: ContextVar[float] = ContextVar("loop_slice", default=INFINITY)
T = TypeVar("T")


class BudgetExceeded(SecurityError, ValueError):
    """A render went past its time budget, or an operation past a size limit."""


class SliceOver(BaseException):
    """A render on the event loop went past its loop slice: render it again off the loop. A BaseException, as
    CancelledError is, so that no handler of a render's errors (`except Exception`, a filter's fallback) takes
    it for the render's own failure."""


def check_time() -> None:
    deadline, budget_ms, sliced = _deadline.get()
    if time.monotonic() > deadline:
        if sliced:
            raise SliceOver
        raise BudgetExceeded(f"render budget of {budget_ms:.0f} ms exceeded")


def start_slice(seconds: float) -> Token[float]:
    """From now until `end_slice`, renders begun in this context raise SliceOver once `seconds` have passed
    (checked where the time budget is). The caller's context only: a render handed to a thread runs without a
    slice. Two calls rather than a `with`: the intake makes one per request."""
    return _slice.set(time.monotonic() + seconds)


def end_slice(token: Token[float]) -> None:
    _slice.reset(token)


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
    """Sets the deadline for the duration of a `with`, unless an outer one is already running."""

    __slots__ = ("token",)

    def __init__(self) -> None:
        self.token: Token[tuple[float, float, bool]] | None = None

    def __enter__(self) -> None:
        if _deadline.get()[0] == INFINITY:
            seconds = TIME_BUDGET_S
            deadline = time.monotonic() + seconds
            ends = _slice.get()
            self.token = _deadline.set((ends, seconds * 1000, True) if ends < deadline
                                       else (deadline, seconds * 1000, False))

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
