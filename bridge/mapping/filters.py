"""The filter registry shared by `transform:` lists and Jinja templates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Filter = Callable[..., Any]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def strip(value: Any, chars: str | None = None) -> Any:
    return value.strip(chars) if isinstance(value, str) else value


def lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def title(value: Any) -> Any:
    return value.title() if isinstance(value, str) else value


def truncate(value: Any, length: int = 255, end: str = "") -> Any:
    if not isinstance(value, str) or len(value) <= length:
        return value
    return value[: max(0, length - len(end))] + end


def join(value: Any, sep: str = ", ") -> Any:
    if isinstance(value, list | tuple):
        return sep.join(_text(v) for v in value)
    return value


def first(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


FILTERS: dict[str, Filter] = {
    "strip": strip,
    "lower": lower,
    "upper": upper,
    "title": title,
    "truncate": truncate,
    "join": join,
    "first": first,
}
