"""What the simulators keep, weighed in bytes: a value weighs its JSON encoding's length, and a held ticket's
weight is kept as it changes, each value weighed once as it comes and once as it goes (never the whole ticket
again), so a bound in bytes costs each follow-up in proportion to what it brings."""

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


def ticket_weight(ticket: Mapping[Any, Any], histories: Iterable[str]) -> int:
    """A ticket's weight from scratch: its JSON encoding's length, composed field by field and history entry by
    entry (so that a value only the fallback weighs counts as `TicketWeight` counts it)."""
    named = set(histories)
    total = 2 + _commas(len(ticket))
    for name, value in ticket.items():
        total += field_weight(name, value) if name not in named else \
            field_weight(name, []) + sum(map(weigh, value)) + _commas(len(value))
    return total


class TicketWeight:
    """A held ticket's weight (`total`, equal to `ticket_weight` of it), kept as it changes: the weight of
    each field (a history's without its entries), and of each history entry in a queue, oldest first, so that
    dropping the oldest costs nothing to weigh. Each method answers how much the total changed."""

    __slots__ = ("entries", "fields", "sums", "total")

    def __init__(self, ticket: Mapping[Any, Any], histories: Iterable[str]) -> None:
        named = set(histories)
        self.fields: dict[Any, int] = {}
        self.entries: dict[str, deque[int]] = {}
        self.sums: dict[str, int] = {}  # a history's entries' weights added up
        for name, value in ticket.items():
            if name in named:
                self.fields[name] = field_weight(name, [])
                self.entries[name] = deque(map(weigh, value))
                self.sums[name] = sum(self.entries[name])
            else:
                self.fields[name] = field_weight(name, value)
        self.total = 2 + sum(self.fields.values()) + _commas(len(self.fields)) + sum(
            self.sums[name] + _commas(len(kept)) for name, kept in self.entries.items())

    def set(self, name: Any, weight: int) -> int:
        """Field `name` (not a history) now weighs `weight` (as `field_weight` counts it)."""
        if name in self.entries:
            raise ValueError(f"{name!r} is a history: its entries change through add and drop_oldest")
        old = self.fields.get(name)
        delta = weight - old if old is not None else weight + (1 if self.fields else 0)
        self.fields[name] = weight
        self.total += delta
        return delta

    def add(self, name: str, weights: list[int]) -> int:
        """History `name` gains entries weighing `weights`, oldest first."""
        kept = self.entries[name]
        before = len(kept)
        kept.extend(weights)
        added = sum(weights)
        self.sums[name] += added
        delta = added + _commas(len(kept)) - _commas(before)
        self.total += delta
        return delta

    def drop_oldest(self, name: str, count: int) -> int:
        """History `name` loses its `count` oldest entries."""
        kept = self.entries[name]
        before = len(kept)
        dropped = sum(kept.popleft() for _ in range(min(count, before)))
        self.sums[name] -= dropped
        delta = -dropped - _commas(before) + _commas(len(kept))
        self.total += delta
        return delta
