"""Jinja in its immutable sandbox: no environment, no filesystem, undefined names are errors, and every
render bounded in size and time.

Templates see only the render context (payload, headers, event, vars, ticket) and a bounded `range`.
Bounds, because payloads come from strangers: `range` gives at most MAX_RANGE items; `*` and `**`
refuse results past the size cap; Jinja's padding filters (center, indent, wordwrap, format) and
`random` are removed; output is counted as it streams and stops at MAX_RENDERED_CHARS; and a render
that runs past TIME_BUDGET_S (checked at every attribute, item, call, range and output chunk) stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.mapping.filters import FILTERS

MAX_RANGE = 10_000
MAX_RENDERED_CHARS = 1_000_000
MAX_EXPONENT = 1_000
TIME_BUDGET_S = 0.25
GLOBAL_NAMES = frozenset({"range"})
_REMOVED_FILTERS = ("center", "indent", "wordwrap", "format", "random", "d")

_deadline: ContextVar[float] = ContextVar("template_deadline", default=float("inf"))


class BudgetExceeded(SecurityError):
    """A template went past its size or time budget."""


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _check_time() -> None:
    if time.monotonic() > _deadline.get():
        raise BudgetExceeded(f"the template ran for over {TIME_BUDGET_S * 1000:.0f} ms")


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple | bytes)


class BridgeEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with size guards on `*` and `**` and the time budget on every access."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _sized(seq) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                    raise BudgetExceeded(f"repeating {len(seq)} items {n} times is over the limit of "
                                         f"{MAX_RENDERED_CHARS}")
        elif operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise BudgetExceeded(f"an exponent of {right} is over the limit of {MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)


def make_environment() -> BridgeEnvironment:
    env = BridgeEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, cache_size=0)
    for name in _REMOVED_FILTERS:
        env.filters.pop(name, None)
    env.filters.update(FILTERS)
    env.filters["d"] = FILTERS["default"]
    env.globals.clear()
    env.globals.update({"range": _bounded_range})
    return env


def _bounded_range(*args: Any) -> range:
    _check_time()
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise OverflowError(f"range of {len(r)} items is over the limit of {MAX_RANGE}")
    return r


def bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run under the time budget (for compiled `when` expressions)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        token = _deadline.set(time.monotonic() + TIME_BUDGET_S)
        try:
            return fn(*args, **kwargs)
        finally:
            _deadline.reset(token)

    return run


def render_bounded(template: Template, ctx: dict[str, Any]) -> str:
    """Render `template`, counting output as it streams: stops past MAX_RENDERED_CHARS or TIME_BUDGET_S."""
    token = _deadline.set(time.monotonic() + TIME_BUDGET_S)
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(ctx):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise BudgetExceeded(f"template output is over {MAX_RENDERED_CHARS} characters")
            _check_time()
            parts.append(chunk)
        return "".join(parts)
    finally:
        _deadline.reset(token)


ENV = make_environment()
