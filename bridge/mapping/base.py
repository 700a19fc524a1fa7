"""What the compiler's parts share: the errors, the compiled field, and small helpers."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from jinja2.exceptions import SecurityError, TemplateRuntimeError

from bridge.errors import MappingError
from bridge.mapping.limits import check_slice, text_weight
from bridge.mapping.trace import FieldTrace

Context = dict[str, Any]
FieldFn = Callable[[Context], Any]
# A source gives the value, or an Absent (paths.py) whose str() says what is missing, so that a path need not
# be described unless someone reads the description, and a value found costs no more than the look-up.
Source = Callable[[Context], Any]
Step = tuple[str, Callable[[Any], Any]]
At = tuple[str | int, ...]

# What a filter may raise on a value it cannot take; anything else is a bug, and crashes loudly.
FILTER_ERRORS = (TypeError, ValueError, ArithmeticError, LookupError, RecursionError)
TEMPLATE_ERRORS = (SecurityError, TemplateRuntimeError, *FILTER_ERRORS)
# How `describe` writes a value too long to write whole: a few items of each list, the start of each string.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 3


class RenderError(MappingError):
    """An event that a mapping cannot turn into a vendor body."""


class LimitExceeded(RenderError):
    """A render stopped by its time budget or a size limit; the message names the limit and the field."""


class CompileError(ValueError):
    """A field that cannot be compiled; the loader adds file, line and path. `errors` holds every problem
    found in the field (this one first), each with its sub-path."""

    def __init__(self, message: str, subpath: tuple[str | int, ...] = (),
                 errors: list[CompileError] | None = None) -> None:
        super().__init__(message)
        self.subpath = subpath
        self.errors = errors or [self]

    @classmethod
    def collect(cls, problems: list[CompileError]) -> CompileError:
        return cls(str(problems[0]), problems[0].subpath, problems)


@dataclass(eq=False)
class CompiledField:
    """One field: `render` for the hot path, `explain` for people; `constant` when it never varies."""

    name: str
    render: FieldFn
    explain: Callable[[Context], FieldTrace]
    constant: bool = False
    jinja: bool = False  # some part of it renders through Jinja (and so needs the time budget)
    steps: int = 1
    """The most steps on small values (a read, a filter, a map look-up) a render of it takes without a look at the
    clock (limits.UNCHECKED_STEPS): a whole mapping, list or table of more looks after each of its fields or items."""

    def __call__(self, ctx: Context) -> Any:
        return self.render(ctx)


def then_check(fn: FieldFn) -> FieldFn:
    """`fn`, followed by a look at the loop slice (for the fields or items of a mapping, list or table of more than
    limits.UNCHECKED_STEPS steps)."""

    def checked(ctx: Context) -> Any:
        value = fn(ctx)
        check_slice()
        return value

    return checked


def out_of(exc: MemoryError | RecursionError, what: str = "template") -> str:
    """What a render that ran out of memory or stack says (a limit error, not a crash)."""
    if isinstance(exc, MemoryError):
        return f"{what} needs more memory than a render may use"
    return f"{what} nests or recurses too deeply (past Python's recursion limit)"


MAX_SAID_CHARS = 300
"""The most of an exception's own words a render error quotes (`said`)."""


def said(exc: BaseException | str) -> str:
    """What `exc` says (or the message itself), for a render error: cut to MAX_SAID_CHARS, the rest counted. Python's,
    Jinja's and JMESPath's own messages may hold the whole value they failed on (`float()` of a text, an attribute's
    name, a function's argument), which a sender chose and may make 32,000 characters long."""
    text = exc if isinstance(exc, str) else str(exc)
    return text if len(text) <= MAX_SAID_CHARS else f"{text[:MAX_SAID_CHARS]}… ({len(text)} characters)"


def describe(value: Any) -> str:
    """`repr(value)` cut to 60 characters; a value longer than that as text is shortened before it is written,
    so describing a large payload costs no more than a small one."""
    text = repr(value) if text_weight(value, 60) <= 60 else _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def copier(value: Any) -> Callable[[], Any]:
    """A function giving `value`, or a fresh copy of it when it is a list or table (so that no render can
    change what the next one starts from)."""
    if isinstance(value, list | dict):
        frozen = msgspec.json.encode(value)
        return lambda: msgspec.json.decode(frozen)
    return lambda: value
