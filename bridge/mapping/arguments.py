"""What each filter's arguments must be, checked when a mapping compiles.

Every filter that takes arguments declares each one here: what it is for, what it takes (in words, for the error)
and a test of a literal given for it. A `transform:` entry's arguments are literals, so each is checked; a
template's are checked where they are literals (`truncate(100)`, not `truncate(vars.n)`). An argument no render
could use (`truncate('x')`, `replace(1, 2)`, `split('')`) is then a load error naming the argument, the value and
what would be right, not an error (or an empty value) on every event. The names are the filter's own parameter
names, so a template's keyword arguments (`truncate(length=100)`) are checked as well.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers

from bridge.errors import quoted
from bridge.mapping.dates import ORDERS, known_zone
from bridge.mapping.filters import FILTERS

UNKNOWN: Any = object()
"""An argument whose value is not known before a render (a template's `vars.n`): not checked."""


@dataclass(frozen=True)
class Arg:
    """One argument of a filter: `role` names it in an error, `takes` says what it must be, `fits` tests a value
    given for it, and `example` is the filter written with a good one."""

    role: str
    takes: str
    fits: Callable[[Any], bool]
    example: str


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _some_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def text_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _some_text_or_null(value: Any) -> bool:
    return value is None or _some_text(value)


def _length(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def anything(value: Any) -> bool:
    return True


def _region(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.upper() in phonenumbers.SUPPORTED_REGIONS)


def _zone(value: Any) -> bool:
    return isinstance(value, str) and known_zone(value)


def _order(value: Any) -> bool:
    return value is None or value in ORDERS


ARGUMENTS: dict[str, dict[str, Arg]] = {
    "strip": {"chars": Arg("the characters to strip", "text (each of its characters is stripped), or null for "
                           "whitespace", text_or_null, "strip(' -')")},
    "truncate": {
        "length": Arg("the length", "a whole number of characters, 1 or more", _length, "truncate(100)"),
        "end": Arg("the end (written after a cut text)", "text", _text, "truncate(100, '…')"),
    },
    "replace": {
        "old": Arg("the text to find", "text of at least one character", _some_text, "replace('-', ' ')"),
        "new": Arg("the text put in its place", "text", _text, "replace('-', ' ')"),
    },
    "join": {"sep": Arg("the separator", "text", _text, "join(', ')")},
    "split": {"sep": Arg("the separator", "text of at least one character, or null for any run of whitespace",
                         _some_text_or_null, "split(';')")},
    "default": {
        "default_value": Arg("the default", "any value", anything, "default('none')"),
        "boolean": Arg("the second argument (whether an empty or false value is replaced too)", "true or false",
                       boolean, "default('none', true)"),
    },
    "date": {
        "fmt": Arg("the format", "iso, epoch, epoch_ms or a strftime format such as '%Y-%m-%d'", _some_text,
                   "date('%Y-%m-%d')"),
        "tz": Arg("the time zone", "an IANA time zone name such as UTC or Asia/Kolkata", _zone,
                  "date('iso', 'Asia/Kolkata')"),
        "order": Arg("the order", "'dmy' (day first) or 'mdy' (month first), or null", _order,
                     "date('iso', 'UTC', 'dmy')"),
    },
    "phone_e164": {"region": Arg("the region", "a two-letter country code such as IN, GB or US, or null",
                                 _region, "phone_e164('IN')")},
    "strip_quoted": {"subject": Arg("the subject", "text or null", text_or_null,
                                    "strip_quoted(payload.subject)")},
    "attachment_list": {"heading": Arg("the heading", "text", _text, "attachment_list('Files:')")},
}

ALIASES = {"d": "default", "trim": "strip"}
"""Template filters that are a registry filter under another name (`trim`: Jinja's, on the same stripper), checked
as that filter."""


def shown(value: Any) -> str:
    """`value` as an error shows a literal: YAML's words for booleans and null, else quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else quoted(value)


def _cross_problems(name: str, given: Mapping[str, Any]) -> list[str]:
    """What no single argument says, only two together (`given`: each argument's value, its default when not
    given)."""
    if name == "truncate":
        length, end = given["length"], given["end"]
        if _length(length) and _text(end) and UNKNOWN not in (length, end) and length <= len(end):
            return [f"the length ({length}) must be more than the end's {len(end)} characters, or nothing of the "
                    f"text is kept: write e.g. truncate(100, {quoted(end)})"]
    return []


def argument_problems(name: str, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """What is wrong with the arguments given to the filter `name` (positional `args`, then `kwargs`; a value not
    known before a render given as UNKNOWN), each as a sentence naming the argument, the value and what it takes;
    empty when nothing is (or can be known to be)."""
    if name in ALIASES:  # told with the filter's name as written
        return [problem.replace(f"{ALIASES[name]}(", f"{name}(")
                for problem in argument_problems(ALIASES[name], args, kwargs)]
    fn = FILTERS.get(name)
    if fn is None:
        return []
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first is the value filtered
    problems = call_problems(name, params, ARGUMENTS.get(name, {}), args, kwargs or {})
    if problems:
        return problems
    return _cross_problems(name, {p.name: p.default for p in params} | dict(
        zip([p.name for p in params], args, strict=False)) | dict(kwargs or {}))


def call_problems(name: str, params: Sequence[inspect.Parameter], declared: Mapping[str, Arg], args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> list[str]:
    """What is wrong with `args` and `kwargs` given to `name`, whose parameters (after the value) are `params` and
    whose arguments' rules are `declared`: too many, an unknown name, one given twice, one missing, or a value its
    rule refuses. A parameter Python takes only in place (`/`) is not given by name."""
    in_place = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)}
    names = [p.name for p in params]
    takes = (f"it takes {len(params)} argument{'' if len(params) == 1 else 's'} ({', '.join(names)})"
             if params else "it takes no arguments")
    if len(args) > len(in_place):
        return [f"{name} was given {len(args)} argument{'' if len(args) == 1 else 's'}, but {takes}"
                + (f": write e.g. {_first_example(declared)}" if params else f": write {name}")]
    given = dict(zip([p.name for p in in_place], args, strict=False))
    for key, value in kwargs.items():
        if key in names and key not in by_name:
            return [f"{name} takes its {key} in place, not by name: write e.g. {_first_example(declared)}"]
        if key not in by_name:
            return [f"{name} has no argument {key!r}: {takes}"
                    + (f": write e.g. {_first_example(declared)}" if params else f": write {name}")]
        if key in given:
            return [f"{name} was given its {key} twice (in place and by name)"]
        given[key] = value
    missing = [declared[p.name].role for p in params if p.default is inspect.Parameter.empty and p.name not in given]
    if missing:
        return [f"{name} needs {' and '.join(missing)}: write e.g. {_first_example(declared)}"]
    problems = []
    for key, value in given.items():
        arg = declared.get(key)
        if arg is not None and value is not UNKNOWN and not arg.fits(value):
            problems.append(f"{arg.role} must be {arg.takes}, not {shown(value)}: write e.g. {arg.example}")
    return problems


def _first_example(declared: Mapping[str, Arg]) -> str:
    return next(iter(declared.values())).example
