"""Statements that write their NULLs themselves, so that sqlite3 binds only values it takes as they are.

sqlite3 puts every bound None, bytes or bool through its adaptation protocol before binding it (a lookup in its
adapter registry and probes for `__adapt__` and `__conform__`, about 3k instructions each); a str, int, float or
bytearray it binds at once. An attempt's record binds several Nones (an ordinary success has no error, no next due
time and no conversation role), so its statements are given in a form where each value that may be None is written
`NULL` in the statement when it is: the same statement, storing the same values, with fewer values bound. The callers
bind JSON as bytearrays and flags as ints (see SqliteStore.record)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

_FIXED = re.compile(r"\?(\d+)")
_NULLABLE = re.compile(r"\{(\d+)\}")


class NullsWritten:
    """A statement whose values that are never None are numbered placeholders `?1` … `?N` (each may appear more
    than once), and whose values that may be None are `{0}` … `{M}` (format fields, likewise): each becomes `NULL`
    when its value is None, otherwise the next numbered placeholder after N."""

    __slots__ = ("_fixed", "_nones", "_shapes", "_template")

    def __init__(self, template: str) -> None:
        self._template = template
        self._fixed = max(int(n) for n in _FIXED.findall(template))
        self._nones = (None,) * (1 + max(int(n) for n in _NULLABLE.findall(template)))
        self._shapes: dict[tuple[bool, ...], tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]]] = {}
        """The statement, and what it binds of the nullable values, for each pattern of Nones met so far: a
        handful, as only some of the values are ever None."""

    def bind(self, fixed: tuple[Any, ...], nullable: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        """The statement for these values (`fixed`: `?1` …, never None; `nullable`: `{0}` …), and what it binds."""
        if len(fixed) != self._fixed or len(nullable) != len(self._nones):
            raise ValueError(f"{len(fixed)} and {len(nullable)} values for a statement of {self._fixed} and "
                             f"{len(self._nones)}")
        shape = tuple(map(operator.is_, nullable, self._nones))
        found = self._shapes.get(shape)
        if found is None:
            found = self._shapes[shape] = self._written(shape)
        sql, kept = found
        return sql, fixed + kept(nullable)

    def _written(self, shape: tuple[bool, ...]) -> tuple[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]]:
        fields: list[str] = []
        kept: list[int] = []
        for i, null in enumerate(shape):
            if null:
                fields.append("NULL")
            else:
                kept.append(i)
                fields.append(f"?{self._fixed + len(kept)}")
        return self._template.format(*fields), _taking(kept)


def _taking(indexes: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function giving the tuple of the values at `indexes`, in C where it can."""
    if len(indexes) > 1:
        return operator.itemgetter(*indexes)  # a tuple for two or more
    if indexes:
        index = indexes[0]
        return lambda values: (values[index],)
    return lambda values: ()
