"""What Jinja's own filters and tests take, checked when a mapping compiles, as arguments.py checks ticketbridge's.

A template may use Jinja's built-in filters (`round`, `batch`, `sort`, `map`, `tojson`, …) and tests
(`divisibleby`, `in`, `sameas`, …). Each argument of each is declared here with what it takes; a literal given for
one (`round(2, 'sideways')`, `batch(0)`, `divisibleby(0)`, `sort(by='x')`) that no render could use is then a load
error naming the argument, the value and what would be right, not a failure of every delivery. The count and the
names of the arguments are read from the filter's own signature. `map`, `select`, `reject`, `selectattr` and
`rejectattr` name another filter or test as text: the name must be a known one, and the arguments passed on to it
are checked as that filter's or test's. An argument whose value is not known before a render (`round(vars.n)`) is
left to the render, as are the bounds templates.py puts on what a render may build.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from bridge.mapping.arguments import (
    ALIASES,
    UNKNOWN,
    Arg,
    anything,
    argument_problems,
    boolean,
    call_problems,
    shown,
    text_or_null,
)
from bridge.mapping.filters import FILTERS
from bridge.mapping.templates import ENV, MAX_JSON_INDENT, MAX_RANGE, MAX_ROUND_DIGITS
from bridge.yamlfile import did_you_mean


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: Any) -> bool:
    return _whole(value) and 1 <= value <= MAX_RANGE


def _attribute(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or _whole(value)


def _attribute_or_null(value: Any) -> bool:
    return value is None or _attribute(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_URI_SCHEME = re.compile(r"[\w.+-]{2,}:(/){0,2}")  # Jinja's own test of urlize's extra schemes


def _schemes(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple) and all(
        isinstance(s, str) and _URI_SCHEME.fullmatch(s) for s in value))


_ATTRIBUTE = "the name of an attribute or key (text; dots for one inside another) or an index (a whole number)"
_COUNT = f"a whole number from 1 to {MAX_RANGE:,}"


def _case(example: str) -> Arg:
    return Arg("case_sensitive", "true or false", boolean, example)


def _attr(example: str, null: bool = True) -> Arg:
    return Arg("the attribute", _ATTRIBUTE + (", or null" if null else ""),
               _attribute_or_null if null else _attribute, example)


FILTER_ARGUMENTS: dict[str, dict[str, Arg]] = {
    "attr": {"name": Arg("the attribute's name", "text naming an attribute", lambda v: isinstance(v, str) and v != "",
                         "attr('name')")},
    "batch": {
        "linecount": Arg("the count (items in each batch)", _COUNT, _count, "batch(3)"),
        "fill_with": Arg("the filler (for the last batch)", "any value", anything, "batch(3, '')"),
    },
    "dictsort": {
        "case_sensitive": _case("dictsort(case_sensitive=true)"),
        "by": Arg("by (what it sorts by)", "'key' or 'value'", lambda v: v in ("key", "value"),
                  "dictsort(by='value')"),
        "reverse": Arg("reverse", "true or false", boolean, "dictsort(reverse=true)"),
    },
    "filesizeformat": {"binary": Arg("binary (powers of 1024)", "true or false", boolean, "filesizeformat(true)")},
    "groupby": {
        "attribute": _attr("groupby('status')", null=False),
        "default": Arg("the default (for an item without the attribute)", "any value", anything,
                       "groupby('status', default='none')"),
        "case_sensitive": _case("groupby('status', case_sensitive=true)"),
    },
    "max": {"case_sensitive": _case("max(case_sensitive=true)"), "attribute": _attr("max(attribute='price')")},
    "min": {"case_sensitive": _case("min(case_sensitive=true)"), "attribute": _attr("min(attribute='price')")},
    "round": {
        "precision": Arg("the precision (digits after the point)",
                         f"a whole number from -{MAX_ROUND_DIGITS} to {MAX_ROUND_DIGITS}",
                         lambda v: _whole(v) and -MAX_ROUND_DIGITS <= v <= MAX_ROUND_DIGITS, "round(2)"),
        "method": Arg("the method", "'common', 'ceil' or 'floor'", lambda v: v in ("common", "ceil", "floor"),
                      "round(2, 'floor')"),
    },
    "slice": {
        "slices": Arg("the count (of slices)", _COUNT, _count, "slice(3)"),
        "fill_with": Arg("the filler (for the short slices)", "any value", anything, "slice(3, '')"),
    },
    "sort": {
        "reverse": Arg("reverse", "true or false", boolean, "sort(reverse=true)"),
        "case_sensitive": _case("sort(case_sensitive=true)"),
        "attribute": _attr("sort(attribute='name')"),
    },
    "sum": {
        "attribute": _attr("sum(attribute='price')"),
        "start": Arg("the start (what the items are added to)", "a number, or a list to add lists to",
                     lambda v: _number(v) or isinstance(v, list | tuple), "sum(start=0)"),
    },
    "tojson": {"indent": Arg("the indent", f"a whole number from 0 to {MAX_JSON_INDENT}, text of at most "
                             f"{MAX_JSON_INDENT} characters (written once per level, e.g. '\\t'), or null",
                             lambda v: v is None or (_whole(v) and 0 <= v <= MAX_JSON_INDENT)
                             or (isinstance(v, str) and len(v) <= MAX_JSON_INDENT), "tojson(2)")},
    "unique": {"case_sensitive": _case("unique(case_sensitive=true)"), "attribute": _attr("unique(attribute='id')")},
    "urlize": {
        "trim_url_limit": Arg("the length links are cut at", "a whole number of characters, 1 or more, or null",
                              lambda v: v is None or (_whole(v) and v >= 1), "urlize(40)"),
        "nofollow": Arg("nofollow", "true or false", boolean, "urlize(nofollow=true)"),
        "target": Arg("the target", "text or null", text_or_null, "urlize(target='_blank')"),
        "rel": Arg("the rel", "text or null", text_or_null, "urlize(rel='noopener')"),
        "extra_schemes": Arg("the extra schemes", "a list of URI schemes such as ['tel:', 'ftp://'], or null",
                             _schemes, "urlize(extra_schemes=['tel:'])"),
    },
    "xmlattr": {"autospace": Arg("autospace", "true or false", boolean, "xmlattr(false)")},
}
"""Jinja's filters' arguments (ticketbridge's own, and `d` and `trim`, are in arguments.ARGUMENTS); `map`, `select`,
`reject`, `selectattr` and `rejectattr` take another filter's or test's, and are checked apart."""

_COMPARED = Arg("the value compared with", "any value", anything, "eq(3)")
TEST_ARGUMENTS: dict[str, dict[str, Arg]] = {
    "divisibleby": {"num": Arg("the number to divide by", "a number other than 0", lambda v: _number(v) and v != 0,
                               "divisibleby(3)")},
    "in": {"seq": Arg("what it looks in", "text, a list or a table", lambda v: isinstance(v, str | list | tuple | dict),
                      "in(['a', 'b'])")},
    "sameas": {"other": Arg("the value compared with", "any value", anything, "sameas(none)")},
    **{name: {"b": _COMPARED} for name in ("!=", "<", "<=", "==", ">", ">=", "eq", "equalto", "ge", "greaterthan", "gt",
                                           "le", "lessthan", "lt", "ne")},
}
"""Jinja's tests' arguments: the other tests take none."""

_PICKING = {"select": False, "reject": False, "selectattr": True, "rejectattr": True}
"""The filters that keep or drop items by a test named as text, and whether they test an attribute of each."""


def params_of(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters of a Jinja filter or test after the value it works on (and after the environment or context
    Jinja passes first to some): the function's own, beneath any wrapper."""
    inner = inspect.unwrap(fn)
    skip = 1 if getattr(inner, "jinja_pass_arg", None) is not None else 0
    return list(inspect.signature(inner).parameters.values())[skip + 1:]


def filter_problems(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """What is wrong with the arguments given to the template filter `name` (ticketbridge's or Jinja's), each as a
    sentence naming the argument, the value and what it takes; `UNKNOWN` for a value not known before a render."""
    if name in FILTERS or name in ALIASES:
        return argument_problems(name, args, kwargs)
    if name == "map":
        return _map_problems(args, kwargs)
    if name in _PICKING:
        return _picking_problems(name, _PICKING[name], args, kwargs)
    fn = ENV.filters.get(name)
    if fn is None:
        return []
    return call_problems(name, params_of(fn), FILTER_ARGUMENTS.get(name, {}), args, kwargs)


def jinja_test_problems(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """`filter_problems` for the template test `name`."""
    fn = ENV.tests.get(name)
    if fn is None:
        return []
    return call_problems(name, params_of(cast("Callable[..., Any]", fn)), TEST_ARGUMENTS.get(name, {}), args, kwargs)


def unknown_filter(name: Any) -> str:
    return f"{shown(name)}{did_you_mean(name, ENV.filters) if isinstance(name, str) else ''}"


def unknown_test(name: Any) -> str:
    return f"{shown(name)}{did_you_mean(name, ENV.tests) if isinstance(name, str) else ''}"


def known_tests() -> str:
    return ", ".join(sorted(n for n in ENV.tests if n.isidentifier()))


def _map_problems(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """`map('filter', …)` (each item through that filter, with the rest of the arguments) or
    `map(attribute='x', default=…)`: as Jinja's `map` reads them."""
    if not args:
        if "attribute" not in kwargs:
            return ["map needs the filter to apply (by name) or attribute=…: write e.g. map('upper') or "
                    "map(attribute='name')"]
        extra = [key for key in kwargs if key not in ("attribute", "default")]
        if extra:
            return [f"map has no argument {extra[0]!r} beside attribute: it takes attribute and default, or a "
                    "filter's name and that filter's arguments: write e.g. map(attribute='name', default='')"]
        value = kwargs["attribute"]
        if value is not UNKNOWN and not _attribute(value):
            return [f"the attribute must be {_ATTRIBUTE}, not {shown(value)}: write e.g. map(attribute='name')"]
        return []
    name = args[0]
    if name is UNKNOWN:
        return []
    if not isinstance(name, str) or name not in ENV.filters:
        return [f"the filter to apply must be the name of a known filter, not {unknown_filter(name)}: write e.g. "
                "map('upper')"]
    return [f"the {name} filter it applies: {problem}" for problem in filter_problems(name, args[1:], kwargs)]


def _picking_problems(name: str, by_attribute: bool, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """`select('test', …)`, `reject(…)`, `selectattr('attribute', 'test', …)`, `rejectattr(…)`: as Jinja's read
    them (no test: each item, or its attribute, by its truth)."""
    example = f"{name}('status', 'equalto', 'open')" if by_attribute else f"{name}('divisibleby', 3)"
    at = 0
    if by_attribute:
        if not args:
            return [f"{name} needs the attribute to test: write e.g. {example}"]
        if args[0] is not UNKNOWN and not _attribute(args[0]):
            return [f"the attribute must be {_ATTRIBUTE}, not {shown(args[0])}: write e.g. {example}"]
        at = 1
    if len(args) <= at:
        if kwargs:  # Jinja would pass them to no test, and drop them
            return [f"{name} was given {', '.join(map(repr, kwargs))} by name, but no test to pass "
                    f"{'it' if len(kwargs) == 1 else 'them'} to: write e.g. {example}"]
        return []
    test = args[at]
    if test is UNKNOWN:
        return []
    if not isinstance(test, str) or test not in ENV.tests:
        return [f"the test must be the name of a known test, not {unknown_test(test)}: write e.g. {example}; "
                f"known tests: {known_tests()}"]
    return [f"the {test} test it applies: {problem}" for problem in jinja_test_problems(test, args[at + 1:], kwargs)]
