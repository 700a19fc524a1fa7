"""structlog set-up: JSON lines, stable event names, and emails and phone numbers masked.

Records of the standard library's `logging` (aiohttp's server and access logs, asyncio's errors) go
through structlog's `ProcessorFormatter`, so they come out as the same lines, masked the same way.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

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
_DOMAIN = re.compile(f"[A-Za-z0-9\\-{_WORLD}]++(?:{_DOT}[A-Za-z0-9\\-{_WORLD}]++)*"
                     f"{_DOT}(?:xn--[A-Za-z0-9-]++|[A-Za-z{_WORLD}]{{2,}})")
# Digits with any of ` -._+()/` between them, as people write (and mistype) a number: `98765_43210`, `98765+43210`.
# Not after a word character, `.` or `-` (the tail of an id, a version or a UUID), nor after `13:23:` (the seconds
# and fraction of a time, `13:23:45.123400+00:00`); not before a digit or `-` (a UUID's first group), nor before two
# word characters (an id or hex digest that begins with digits, `20240419T1419`), but before one letter, as a
# typed O for 0 (`98765+4321O`).
_PHONE = re.compile(r"(?<![\w.-])(?<!\d\d:\d\d:)(\+?)(\d[\d ()._+/-]{6,}\d)(?![\d-]|\w\w)")
# Ids and timestamps are digits too; values under these keys are not personal data.
_SAFE_KEYS = frozenset({"timestamp", "event", "level", "logger", "ticket_id", "event_id", "delivery_id", "id",
                        "version", "status", "duration_ms", "count", "path"})


_DATE = re.compile(r"\d{4}[./-]\d{2}[./-]\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")


def _mask_phone(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(2))
    if not 8 <= len(digits) <= 15 or _DATE.match(m.group(2)):
        return m.group(0)
    return m.group(1) + "*" * (len(digits) - 2) + digits[-2:]


def mask_text(text: str) -> str:
    """`asha@example.com` → `a***@example.com`; `+91 98765 43210` → `+**********10`."""
    if "@" in text:
        text = _mask_emails(text)
    return _PHONE.sub(_mask_phone, text)


def _mask_emails(text: str) -> str:
    """Each address's local part but its first character as `***`. Linear: each `@` reads forward over the
    domain characters up to the next `@` (the domain's labels taken whole) and backward over the local part's
    down to the previous address, and neither run holds an `@`."""
    out: list[str] = []
    done = 0  # text[:done] is in `out`
    backwards = ""
    at = text.find("@")
    while at != -1:
        domain = _DOMAIN.match(text, at + 1)
        if domain is not None:
            backwards = backwards or text[::-1]
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


def configure_logging(level: str = "info", fmt: str | None = "json", stream: TextIO | None = None) -> None:
    """Structlog (and stdlib records) to `stream` (stdout), masked, as JSON lines or for a person to read
    (`console`); `fmt` None picks console when the stream is a terminal, else JSON."""
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
        cache_logger_on_first_use=True,
    )
    _route_stdlib(out, level, render_json_text if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False))
