"""Jinja in its immutable sandbox: no environment, no filesystem, undefined names are errors."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.mapping.filters import FILTERS


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def make_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, cache_size=0,
    )
    env.filters.update(FILTERS)
    env.globals.clear()
    env.globals.update({"range": _bounded_range})
    return env


MAX_RANGE = 10_000


def _bounded_range(*args: Any) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise OverflowError(f"range of {len(r)} items is over the limit of {MAX_RANGE}")
    return r


ENV = make_environment()
