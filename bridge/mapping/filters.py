"""The filter registry shared by `transform:` lists and Jinja templates.

A filter takes the value first, then literal arguments (what each must be is declared in arguments.py, and checked
when a mapping compiles). String filters pass other types through
unchanged; conversions (`int`, `float`, `bool`, `date`, `phone_e164`) keep a null as null. A filter that
cannot convert its value raises ValueError or TypeError, which the engine reports as a render error
naming the field and the value; a filter's own message quotes a sender's text by its first 80 characters and
its length (escaping.quoted_sent), never whole. Inside a Jinja template a filter may also receive an Undefined,
which it hands back untouched so that StrictUndefined reports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import phonenumbers
from jinja2 import Undefined

from bridge.escaping import quoted_sent
from bridge.mapping.dates import date
from bridge.mapping.limits import MAX_RESULT_CHARS, check_time, replaced_size, text_weight, too_long
from bridge.mapping.text import html_to_text, strip_quoted
from bridge.vendors.files import attachment_list

Filter = Callable[..., Any]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _absent(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


def strip(value: Any, chars: str | None = None) -> Any:
    return stripped(value, chars) if isinstance(value, str) else value


FEW_CHARS = 64
"""Up to this many characters to strip, Python's own strip runs (it looks each character of the text up in them by
a scan: at most this many steps a character); more, and they are made a set first (`stripped`)."""


def stripped(text: str, chars: Any = None, left: bool = True, right: bool = True) -> str:
    """`text.strip(chars)` (`lstrip` without `right`, `rstrip` without `left`), in time linear in both: Python's
    looks each character up in `chars` by a scan, so that a template stripping a payload's text of another
    payload's (32,000 characters each) would take 32,000 times 32,000 steps in one call into C. Many characters
    are made a set, and the text is read from each end while its characters are in it, under the time budget."""
    if not isinstance(chars, str) or len(chars) <= FEW_CHARS:
        return text.strip(chars) if left and right else text.lstrip(chars) if left else text.rstrip(chars)
    check_time()
    distinct = set(chars)
    if len(distinct) <= FEW_CHARS:
        return stripped(text, "".join(distinct), left, right)
    start, end = 0, len(text)
    while left and start < end and text[start] in distinct:
        start += 1
        if not start & 4095:
            check_time()
    while right and end > start and text[end - 1] in distinct:
        end -= 1
        if not end & 4095:
            check_time()
    return text[start:end]


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


def replace(value: Any, old: str, new: str) -> Any:
    if not isinstance(value, str):
        return value
    size = replaced_size(value, old, new)
    if size > MAX_RESULT_CHARS:
        raise too_long(size)
    return value.replace(old, new)


def join(value: Any, sep: str = ", ") -> Any:
    """A list's (or a sequence's, as `map` or `range` give) items as text, with `sep` between them; refused
    (under the time budget, item by item, each weighed before it is written) as soon as the text it would
    build passes the size cap."""
    if not isinstance(value, list | tuple | range | Iterator):
        return value
    parts: list[str] = []
    size = -len(sep)
    for item in value:
        check_time()
        size += len(sep) + (len(item) if type(item) is str else text_weight(item, MAX_RESULT_CHARS - size))
        if size > MAX_RESULT_CHARS:
            raise too_long(size)
        parts.append(_text(item))
    return sep.join(parts)


def split(value: Any, sep: str | None = ",") -> Any:
    """`"a, b,,c"` → `["a", "b", "c"]`: parts stripped, empty parts dropped; the time budget (and a loop slice)
    checked every _SPLIT_CHUNK parts."""
    if not isinstance(value, str):
        return value
    parts = value.split(sep)
    if len(parts) <= _SPLIT_CHUNK:
        return [part.strip() for part in parts if part.strip()]
    out: list[str] = []
    for at in range(0, len(parts), _SPLIT_CHUNK):
        check_time()
        out += [part.strip() for part in parts[at:at + _SPLIT_CHUNK] if part.strip()]
    return out


_SPLIT_CHUNK = 1024


def first(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


def default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """`default_value` when the value is missing or null; with `boolean`, also when it is empty or false.
    (Unlike Jinja's own `default`, a null counts as absent: a JSON null should not print as "None".)"""
    if _absent(value) or (boolean and not value):
        return default_value
    return value


def to_int(value: Any) -> Any:
    if _absent(value) or isinstance(value, bool):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            number = _number(value, text)  # "12.0" is 12
            if math.isinf(number):
                raise ValueError(f"{quoted_sent(value)} is too large a number") from None
            if not number.is_integer():
                raise ValueError(f"{quoted_sent(value)} is not a whole number") from None
            return int(number)
    raise TypeError(f"cannot make an integer of a {type(value).__name__}")


def _number(value: str, text: str) -> float:
    """`float(text)`, `text` being `value` made ready: a ValueError quoting `value` cut short (Python's own names
    the whole text, which a sender may make 32,000 characters long)."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{quoted_sent(value)} is not a number") from None


def to_float(value: Any) -> Any:
    if _absent(value):
        return value
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        return _number(value, value.strip())
    raise TypeError(f"cannot make a number of a {type(value).__name__}")


_TRUE = frozenset({"true", "yes", "y", "on", "1", "checked"})
_FALSE = frozenset({"false", "no", "n", "off", "0", ""})


def to_bool(value: Any) -> Any:
    """true/yes/on/1 and false/no/off/0/"" (any case); numbers by their truth."""
    if _absent(value) or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{quoted_sent(value)} is not a yes/no value (true, false, yes, no, on, off, 1, 0)")
    raise TypeError(f"cannot make a boolean of a {type(value).__name__}")


def phone_e164(value: Any, region: str | None = None) -> Any:
    """`+919876543210` from a number as people write it; `region` (IN, GB, US…) for numbers without `+`."""
    if _absent(value):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"a phone number must be text, not {type(value).__name__}")
    text = str(value).strip()
    try:
        number = phonenumbers.parse(text, region.upper() if isinstance(region, str) else region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{quoted_sent(text)} is not a phone number ({exc._msg})") from None
    # "possible" (the length fits the country) rather than "valid": new number ranges reach the
    # library's metadata late, and a real customer's number must not be refused for that.
    if not phonenumbers.is_possible_number(number):
        where = f" for region {region}" if region else ""
        raise ValueError(f"{quoted_sent(text)} is not a possible phone number{where}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


FILTERS: dict[str, Filter] = {
    "strip": strip,
    "lower": lower,
    "upper": upper,
    "title": title,
    "truncate": truncate,
    "replace": replace,
    "join": join,
    "split": split,
    "first": first,
    "default": default,
    "int": to_int,
    "float": to_float,
    "bool": to_bool,
    "date": date,
    "phone_e164": phone_e164,
    "html_to_text": html_to_text,
    "strip_quoted": strip_quoted,
    "attachment_list": attachment_list,
}

STR_METHODS: dict[Filter, Filter] = {strip: str.strip, lower: str.lower, upper: str.upper, title: str.title}
"""Filters that, given a str, give what its str method gives (a str): a chain of them on a str calls the methods (in
C), not the filters, which first test the value's type (modifiers.str_methods, fastpath._piece)."""

GROWING = frozenset({"replace", "join"})
"""Filters that may make a large value of a small one (by the payload: each match replaced, each item joined with a
separator): a chain that has one looks at the clock after each of its steps on a value that is not small, whatever
its value to begin with. The others give at most a few times what they are given (a case mapping) or less."""
