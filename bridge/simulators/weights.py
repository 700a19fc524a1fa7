"""What the simulators keep, weighed in bytes: a value weighs its JSON encoding's length, and a held ticket's
weight is kept as it changes: a history entry is weighed once as it comes (its weight kept for when it goes), a
field's value once as it is set and once as it is replaced; never the whole ticket again, so a bound in bytes
costs each follow-up in proportion to what it brings."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


def weigh(value: Any) -> int:
    """The length of `value`'s JSON encoding. What JSON cannot hold (an object, a key neither text nor a number,
    an int too long to write, a cycle) weighs its repr's length instead, or its size in memory if even that
    cannot be written; a value read from a JSON body never needs it."""
    try:
        return len(_encode(value))
    except (TypeError, ValueError, RecursionError):
        try:
            return len(repr(value))
        except (ValueError, RecursionError):
            return sys.getsizeof(value)


def field_weight(name: Any, value: Any) -> int:
    """What one field adds inside its object's braces: `"name":value`."""
    return weigh({name: value}) - 2


def _commas(count: int) -> int:
    return max(count - 1, 0)


def set_delta(obj: Mapping[Any, Any], name: Any, value: Any) -> int:
    """How much `obj`'s weight changes when its field `name` is set to `value` (the value it replaces is weighed
    again as it goes: each value is weighed once in and once out)."""
    if name in obj:
        return field_weight(name, value) - field_weight(name, obj[name])
    return field_weight(name, value) + (1 if obj else 0)


class TicketWeight:
    """A held ticket's weight (`total`, its JSON encoding's length), kept as it changes: the ticket is
    weighed once, whole but for its histories' entries, each of which is weighed on its own and kept in a queue,
    oldest first, so that dropping the oldest weighs nothing again. Each method answers how much the total
    changed."""

    __slots__ = ("entries", "sums", "total")

    def __init__(self, ticket: Mapping[Any, Any], histories: Iterable[str]) -> None:
        named = set(histories)
        self.entries: dict[str, deque[int]] = {}
        self.sums: dict[str, int] = {}  # a history's entries' weights added up
        for name, value in ticket.items():
            if name in named:
                self.entries[name] = deque(map(weigh, value))
                self.sums[name] = sum(self.entries[name])
        bare = {name: [] if name in self.entries else value for name, value in ticket.items()}
        self.total = weigh(bare) + sum(
            self.sums[name] + _commas(len(kept)) for name, kept in self.entries.items())

    def set(self, ticket: Mapping[Any, Any], name: Any, value: Any) -> int:
        """`ticket`'s field `name` (not a history) is about to be set to `value`."""
        if name in self.entries:
            raise ValueError(f"{name!r} is a history: its entries change through add and drop_oldest")
        return self.grow(set_delta(ticket, name, value))

    def grow(self, delta: int) -> int:
        """A field (not a history) changes to weigh `delta` bytes more (as the caller weighed it)."""
        self.total += delta
        return delta

    def add(self, name: str, weights: list[int]) -> int:
        """History `name` gains entries weighing `weights`, oldest first."""
        kept = self.entries[name]
        before = len(kept)
        kept.extend(weights)
        added = sum(weights)
        self.sums[name] += added
        return self.grow(added + _commas(len(kept)) - _commas(before))

    def drop_oldest(self, name: str, count: int) -> int:
        """History `name` loses its `count` oldest entries."""
        kept = self.entries[name]
        before = len(kept)
        dropped = sum(kept.popleft() for _ in range(min(count, before)))
        self.sums[name] -= dropped
        return self.grow(-dropped - _commas(before) + _commas(len(kept)))
