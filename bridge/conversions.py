"""Converting a file's plain data into its structs with every problem found, not only the first.

msgspec stops at the first value it cannot take, and a struct's own check (`__post_init__`) at the first key it
refuses, so that a config with a bad `server.port` and a bad `retention.events` would be told of the port alone,
fixed, and loaded again to be told of the other. `convert_each` converts, and after each problem takes the key it
is about out of (a copy of) the data and converts again, the default standing in for the key, until the rest
converts: each key it took out is one problem told. A key in a list is taken out with its list (taking an item
out would move those after it, and their errors' places with them).

A struct's own check after a key of it was taken out may fail for that reason alone (`pool_min` above the default
that stands in for a bad `pool_max`): such a check is not told unless it is about keys all still as written (a
KeyValueError whose key and quoted keys were not taken out); one about the struct as a whole is told only when
nothing in it was taken out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from bridge.errors import ConfigError, Located
from bridge.yamlfile import Document, KeyPath, KeyValueError, PathFormat, format_path, split_validation_error

T = TypeVar("T")
E = TypeVar("E")

MAX_PROBLEMS = 200
"""The most problems one conversion looks for: past a file's worth of mistakes, each one more costs a conversion of
the whole data again."""

_MISSING = re.compile(r"missing required key '(.+)'$")


def convert_each(data: Any, typ: type[T], told: Callable[[msgspec.ValidationError, Any], E], *, strict: bool,
                 ) -> tuple[T | None, list[E]]:
    """`msgspec.convert(data, typ, strict=strict)`, and every problem found on the way, each as `told` tells it (the
    error, and the data it was found in): the value, with a default standing in for each key that had a problem,
    or None when none can stand in (the data as a whole is not what `typ` takes, a required key is missing)."""
    problems: list[E] = []
    taken: list[KeyPath] = []
    current = data
    for _ in range(MAX_PROBLEMS):
        try:
            return msgspec.convert(current, typ, strict=strict), problems
        except msgspec.ValidationError as exc:
            error = exc
        message, sub = split_validation_error(error, typ)
        if not _caused_by_taking(error, message, sub, taken):
            problems.append(told(error, current))
        target = _key_of(sub)
        if not target:
            return None, problems
        if not taken:
            current = copy.deepcopy(data)
        if not _take_out(current, target):
            return None, problems
        taken.append(target)
    return None, problems


def _caused_by_taking(error: msgspec.ValidationError, message: str, sub: KeyPath, taken: list[KeyPath]) -> bool:
    """Whether `error` may come of the keys `taken` out rather than of what the file says."""
    if not taken:
        return False
    cause = error.__cause__
    missing = _MISSING.match(message)
    if missing is not None:
        return (*sub, missing.group(1)) in taken
    if isinstance(cause, KeyValueError):
        struct = sub[: len(sub) - len(cause.key)]
        return any(_within((*struct, *quote.key), taken) for quote in cause.quotes.values())
    if cause is not None:  # the struct's own check, about all of it
        return any(path[: len(sub)] == sub for path in taken)
    return False


def _within(path: KeyPath, taken: list[KeyPath]) -> bool:
    return any(path[: len(t)] == t for t in taken)


def _key_of(sub: KeyPath) -> KeyPath:
    """The key to take out for a problem at `sub`: itself, or the list it is in."""
    end = len(sub)
    while end and isinstance(sub[end - 1], int):
        end -= 1
    return sub[:end]


def _take_out(data: Any, path: KeyPath) -> bool:
    """Remove the key at `path` from `data`; False when there is none to remove."""
    for key in path[:-1]:
        inside = ((isinstance(data, dict) and key in data)
                  or (isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data)))
        if not inside:
            return False
        data = data[key]
    if not isinstance(data, dict) or path[-1] not in data:
        return False
    del data[path[-1]]
    return True


def convert_all(doc: Document, data: Any, typ: type[T], path: KeyPath = (), *, cls: type[Located] = ConfigError,
                fmt: PathFormat = format_path, key_hint: bool = False, show_value: bool = False,
                ) -> tuple[T | None, list[Located]]:
    """`doc.convert`, with every problem: the value (a default standing in for each key that had one) or None, and
    each problem at its file, line and key path, in the order of the file."""
    def told(error: msgspec.ValidationError, current: Any) -> Located:
        if show_value:
            return doc.translate(error, path, cls, fmt, typ, key_hint=key_hint, data=current)
        return doc.translate(error, path, cls, fmt, typ, key_hint=key_hint)

    value, problems = convert_each(data, typ, told, strict=False)  # as Document.convert: `port: "8080"` is 8080
    problems.sort(key=lambda e: (e.line or 0, e.col or 0))
    return value, problems
