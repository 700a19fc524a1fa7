"""structlog set-up: JSON lines, stable event names, and emails and phone numbers masked.

Records of the standard library's `logging` (aiohttp's server and access logs, asyncio's errors) go
through structlog's `ProcessorFormatter`, so they come out as the same lines, masked the same way.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO, cast

import msgspec
import structlog

from bridge.escaping import escape_text, escape_tree

# Addresses in any script (RFC 6531, IDNA): beyond ASCII, a letter is any character but the Latin-1 and general
# punctuation, spaces, CJK punctuation, surrogates and specials (marks are in: a vowel sign, a combining accent).
_WORLD = ("\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u167f\u1681-\u1fff\u200c\u200d\u2070-\u2fff\u3040-\ud7ff"
          "\ue000-\ufefe\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uffef\U00010000-\U0010ffff")
# The local part is matched backwards from its `@` (in the reversed text), so that each character is read once
# whatever the input: a search from each start of a long run that finds no domain is quadratic.
_LOCAL_BACKWARDS = re.compile(f"[A-Za-z0-9._%+\\-{_WORLD}]+")
# Labels are separated by a full stop, or by one of the stops IDNA reads as one (UTS 46): the ideographic (U+3002),
# fullwidth (U+FF0E) and halfwidth ideographic (U+FF61), as typed in Chinese or Japanese text.
_DOT = "[.\u3002\uff0e\uff61]"
# A domain: labels ending in a TLD, or an address literal (RFC 5321): `[127.0.0.1]`, `[IPv6:2001:db8::1]`.
_DOMAIN = re.compile(f"[A-Za-z0-9\\-{_WORLD}]++(?:{_DOT}[A-Za-z0-9\\-{_WORLD}]++)*"
                     f"{_DOT}(?:xn--[A-Za-z0-9-]++|[A-Za-z{_WORLD}]{{2,}})"
                     r"|\[(?:\d{1,3}(?:\.\d{1,3}){3}|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]{2,45})\]")
# A quoted local part (`"asha rao"@example.com`), read backwards from its closing quote: up to 64 characters (RFC
# 5321's limit for a local part) that are not a quote or a line break, or a quote escaped by a backslash, then the
# opening quote. Bounded, so each `@` reads a constant number of characters back whatever the input.
_QUOTED_BACKWARDS = re.compile(r'"(?:"\\|[^"\r\n]){1,64}"')
# What may stand between the digits of a phone number: ` -._+()/` as people write (and mistype) one
# (`98765_43210`, `98765+43210`); a control character (a NUL, a tab, a line break), an invisible format character
# (a soft hyphen, a zero-width space, a byte-order mark) or a space other than U+0020 (no-break, thin, ideographic),
# which a form or a copy and paste leaves in a number; and any of those written as an escape, as `repr()` and JSON
# quote them in an error message (`'+9198765\x0043210'`, `\u00a0`, `\n`).
_ESCAPED = r"\\(?:[tnrbf]|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4})"  # a separator written as an escape
_SEPARATOR = ("[ ()._+/\\-\x00-\x1f\x7f-\x9f\xa0\xad\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u2064\u3000\ufeff]"
              f"|{_ESCAPED}")
_ESCAPE = re.compile(_ESCAPED)
# A calendar date where a run begins, its separators alike (`2024-04-19`, `2024_04_19`, `19/04/2024`, `04/19/2024`),
# or a compact one (`20240419`) that an id goes on from with `_` and a group of up to 7 digits (`20240419_0001`);
# else 8 digits that read as a date are a number as any others (`20110517/40404040`, a Danish mobile and another;
# `20240419_9876543210`). A date goes on in the groups of an id (`2024_04_19_0001`). Not a phone number, and the
# search goes on after it, so that a number written after a date (`2024-04-19 98765 43210`) is still masked.
# Fixed lengths: each costs a constant whatever the input.
_YEAR = "(?:19|20)\\d\\d"
_MONTH = "(?:0[1-9]|1[0-2])"
_DAY = "(?:0[1-9]|[12]\\d|3[01])"
# A group of an id: `_` or `/` and up to 7 digits, not run on by another separator into digits too few to be a
# number of their own (`2024/07911 123456` is no id and a number: the group is left to the number after the id).
# Before a number of 8 digits or more the id ends there, and that number is a run of its own, masked
# (`2024/000123 07911 123456`). A group followed by `-` or `.` and a digit is no id group: a number cannot begin
# after those (`_PHONE_RUN`), so the whole run is read as one number (`2024/000123/1-800-555-0199`). Taken
# possessively, each read once; the look-ahead reads at most 8 digits and the separators between them.
_ID_GROUP = f"[_/]\\d{{1,7}}+(?!\\d|[-.]\\d|(?![_/])(?:{_SEPARATOR})(?!(?:\\d(?:{_SEPARATOR})*+){{7}}\\d)\\d)"
_DATE_SHAPED = (f"(?:{_YEAR}(?P<ymd>[-./_]){_MONTH}(?P=ymd){_DAY}(?!\\d)"
                f"|{_DAY}(?P<dmy>[-./_]){_DAY}(?P=dmy){_YEAR}(?!\\d)"
                f"|{_YEAR}{_MONTH}{_DAY}(?=_\\d{{1,7}}(?!\\d)))(?:{_ID_GROUP})*+")
# An id that begins with a year and goes on in groups joined by `_` or `/`, one of them padded with a leading zero
# (`2024/000123`, an order or invoice number, `INV/2024/000123` read from its digits; `2024_0419_0001_03`): not a
# phone number. Each group at most 7 digits, so that a number of 8 or more written after one (`2024/9876543210`) is
# no part of it and is masked. Groups with no leading zero (`2012/3456789`, `2012/345/6789`) read as a phone number
# written in groups as well as an id: masked.
_YEAR_ID = f"{_YEAR}(?=(?:[_/][1-9]\\d{{0,6}}+(?!\\d))*+[_/]0)(?:{_ID_GROUP})++"
_NUMBER = f"\\+?\\d(?:\\d|{_SEPARATOR}){{7,}}+"  # a run of 8 or more digits and separators, maybe after a `+`


# Where a phone number may begin: right after an escape (`\n9876543210`: the `n` is not a word before it), or not
# after a word character, `.` or `-` (the tail of an id, a version or a UUID), nor after `13:23:` (the seconds and
# fraction of a time, `13:23:45.123400+00:00`). There a date or a year-led id is taken (and left as it is) with the
# number that goes on from it after a `_` or `/` (`2024_04_19_9876543210`, `INV/2024/000123_07911123456`: masked;
# no number may begin after `_`, a word character, so it is taken here); else the match runs to the end of the
# digits and separators, possessively (no backtracking), so that each run of them is read once and the search goes
# on after it; a run of fewer than 8 (no number) is not matched, and costs no call of _mask_phone. `(?=[+\d])`
# first: most places fail on it before any look-behind is tried.
_PHONE_RUN = re.compile(r"(?=[+\d])(?:(?<=\\[tnrbf])|(?<=\\x[0-9A-Fa-f]{2})|(?<=\\u[0-9A-Fa-f]{4})"
                        r"|(?<![\w.-])(?<!\d\d:\d\d:))"
                        f"(?:(?P<id>{_DATE_SHAPED}|{_YEAR_ID})(?:[_/]{_NUMBER})?|{_NUMBER})")
# Where the number ends in its run: the last digit that is not before a digit or `-` (a UUID's first group), nor
# before two word characters (an id or hex digest that begins with digits, `20240419T1419`), but may be before one
# letter, as a typed O for 0 (`98765+4321O`). Matched once from the run's first digit, so it backtracks over that
# run alone.
_PHONE_BODY = re.compile(f"\\d(?:\\d|{_SEPARATOR}){{6,}}\\d(?![\\d-]|\\w\\w)")
# Ids and timestamps are digits too; values under these keys are not personal data.
_SAFE_KEYS = frozenset({"timestamp", "event", "level", "logger", "ticket_id", "event_id", "delivery_id", "id",
                        "version", "status", "duration_ms", "count", "path"})


def _mask_phone(run: re.Match[str]) -> str:
    """The run of digits and separators with the phone number it begins with masked, or as it is when it holds
    none (8 to 15 digits: E.164 allows 15); a date or a year-led id (`_DATE_SHAPED`, `_YEAR_ID`) as it is, and the
    number that goes on from it masked so."""
    text, start, end = run.string, run.start(), run.end()
    if run.group("id") is not None:  # the number, if any, begins after the id and its `_` or `/`
        start = run.end("id") + 1
        if start > end:
            return run.group(0)
    start += text[start] == "+"
    body = _PHONE_BODY.match(text, start)
    if body is None:
        return run.group(0)
    number = body.group()
    digits = re.sub(r"\D", "", _ESCAPE.sub("", number))
    kept = text[run.start():start]  # the date or id and its `_` or `/`, and a `+`
    if len(digits) > 15 and _BETWEEN.search(number):
        return kept + _mask_joined(number) + text[body.end():end]
    if not 8 <= len(digits) <= 15:
        return run.group(0)
    return kept + "*" * (len(digits) - 2) + digits[-2:] + text[body.end():end]


# A body's pieces: an escape (a separator, though it holds hex digits), a run of digits, or another character.
_PIECES = re.compile(f"{_ESCAPED}|(\\d+)|\\D")
# Between two numbers rather than inside one: a `/`, a `_`, a `+`, a `,` or `;`, or two spaces or more.
_BETWEEN = re.compile(r"[/_+,;]| {2}")


def _mask_joined(body: str) -> str:
    """A body of more than 15 digits with a separator that stands between numbers: numbers written one after
    another (`9876543210/9876543211`, `+91-98765-43210 / 080-2345-6789`), each masked as one would be alone. Read
    once from the left: a number takes groups of digits while it holds at most 15, and stops before a separator that
    stands between numbers once it holds 8; one of fewer than 8 digits is left as it is written."""
    groups: list[str] = []  # digit groups, each followed by its separator in `seps`
    seps: list[str] = []
    sep: list[str] = []
    for piece in _PIECES.finditer(body):
        if piece.group(1) is not None:
            if groups:
                seps.append("".join(sep))
            sep = []
            groups.append(piece.group(1))
        else:
            sep.append(piece.group())
    seps.append("".join(sep))
    out: list[str] = []
    i = 0
    while i < len(groups):
        number = groups[i]
        j = i + 1
        while j < len(groups) and len(number) + len(groups[j]) <= 15 and not (
                len(number) >= 8 and _BETWEEN.search(seps[j - 1])):
            number += groups[j]
            j += 1
        if len(number) >= 8:
            out.append("*" * (len(number) - 2) + number[-2:])
        else:
            out.extend(groups[k] + seps[k] for k in range(i, j - 1))
            out.append(groups[j - 1])
        out.append(seps[j - 1])
        i = j
    return "".join(out)


def mask_text(text: str) -> str:
    """`asha@example.com` → `a***@example.com`; `+91 98765 43210` → `+**********10`."""
    if "@" in text:
        text = _mask_emails(text)
    return _PHONE_RUN.sub(_mask_phone, text)


def _mask_emails(text: str) -> str:
    """Each address's local part but its first character as `***` (a quoted one keeps its quotes:
    `"a***"@example.com`). Linear: each `@` reads forward over the domain characters up to the next `@` (the
    domain's labels taken whole, an address literal bounded) and backward over the local part's down to the
    previous address, and neither run holds an `@` (a quoted local part may, but no more than 130 characters of it
    are read back)."""
    out: list[str] = []
    done = 0  # text[:done] is in `out`
    backwards = ""
    at = text.find("@")
    while at != -1:
        domain = _DOMAIN.match(text, at + 1)
        if domain is not None:
            backwards = backwards or text[::-1]
            quoted = _QUOTED_BACKWARDS.match(backwards, len(text) - at, len(text) - done)
            if quoted is not None:
                start = at - (quoted.end() - quoted.start())
                out += (text[done:start], text[start:start + 2], '***"@', domain.group())
                done = domain.end()
                at = text.find("@", done)
                continue
            local = _LOCAL_BACKWARDS.match(backwards, len(text) - at, len(text) - done)
            if local is not None:
                start = at - (local.end() - local.start())
                out += (text[done:start], text[start], "***@", domain.group())
                done = domain.end()
                at = text.find("@", done)
                continue
        at = text.find("@", at + 1)
    out.append(text[done:])
    return "".join(out)


def _is_safe_key(key: Any) -> bool:
    return key in _SAFE_KEYS or (isinstance(key, str) and key.endswith("_id"))


def _mask_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth < 3 and isinstance(value, dict):
        return {k: v if _is_safe_key(k) else _mask_value(v, depth + 1) for k, v in value.items()}
    if depth < 3 and isinstance(value, list | tuple):
        return [_mask_value(v, depth + 1) for v in value]
    if isinstance(value, dict | list | tuple):
        return mask_text(str(value))  # too deep to walk: logged as masked text, never as it is
    return value


def mask_personal_data(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if not _is_safe_key(key):
            event_dict[key] = _mask_value(value)
    return event_dict


_json = msgspec.json.Encoder(enc_hook=str)
_json_escaped = msgspec.json.Encoder(enc_hook=lambda value: escape_text(str(value)))


def render_json_bytes(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> bytes:
    """One JSON line, encoded by msgspec (a per-request log line must stay cheap)."""
    try:
        return _json.encode(event_dict)
    except UnicodeEncodeError:  # a value quoting request bytes that are not UTF-8: logged escaped
        return _json_escaped.encode(escape_tree(dict(event_dict))[0])


def render_json_text(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    return render_json_bytes(_logger, _name, event_dict).decode()


class Level:
    """What configure_logging lets through, for a per-request path to ask before it makes a debug line: a
    filtered-out call still costs 1-2 us of CPU (structlog's lazy proxy, the bound method, the keyword dict)."""

    debug = True  # before configure_logging, structlog's defaults write every level


LEVEL = Level()
STDLIB_HANDLER = "ticketbridge"  # the name of the handler configure_logging puts on the root logger


def mask_message(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A stdlib record's message is free text (an exception's, a request line): masked as any value is."""
    event_dict["event"] = mask_text(str(event_dict.get("event", "")))
    return event_dict


def _route_stdlib(out: TextIO, level: str, renderer: Any) -> None:
    """Send every stdlib record at `level` or above to `out`, through the same masking and renderer."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_message,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.name = STDLIB_HANDLER
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == STDLIB_HANDLER]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])


def configure_logging(level: str = "info", fmt: str | None = "json", stream: TextIO | None = None, *,
                      cache: bool = True, stdlib: bool = True) -> None:
    """Structlog (and, with `stdlib`, stdlib records) to `stream` (stdout), masked, as JSON lines or for a person
    to read (`console`); `fmt` None picks console when the stream is a terminal, else JSON. `cache`: each logger
    keeps this configuration from its first use on (a server's, configured once); without, a later one applies."""
    out = stream or sys.stdout
    LEVEL.debug = logging.getLevelNamesMapping()[level.upper()] <= logging.DEBUG
    if fmt is None:
        isatty = getattr(out, "isatty", None)
        fmt = "console" if isatty is not None and isatty() else "json"
    binary = getattr(out, "buffer", None)
    factory: Any
    if fmt == "json" and binary is not None:
        renderer: Any = render_json_bytes
        factory = structlog.BytesLoggerFactory(binary)
    else:
        renderer = render_json_text if fmt == "json" else structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    if stdlib:
        _route_stdlib(out, level, render_json_text if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False))


class _Stderr:
    """`sys.stderr` as it is when a line is written (a redirect, or a test's capture, made after the logs were
    configured)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


@contextmanager
def cli_logging() -> Iterator[None]:
    """While a command that prints its results runs (every verb but `serve` and `sandbox`): its log lines on
    stderr, masked, warnings and errors only (a command's own output says what it did; `store.opened`,
    `render.offloaded` and other info lines would bury a refusal a script reads on stderr), for a person on a
    terminal and as JSON lines otherwise; never on stdout, where what it prints (a rendered body piped on, JSON
    lines) is all there is.
    The configuration before it is put back after (the command may run inside another program's process). Stdlib
    records are left as they are: Python writes their warnings to stderr (and an in-process simulator's access
    lines stay out)."""
    before = structlog.get_config()
    debug = LEVEL.debug
    configure_logging("warning", None, cast(TextIO, _Stderr()), cache=False, stdlib=False)
    try:
        yield
    finally:
        structlog.configure(**before)
        LEVEL.debug = debug
