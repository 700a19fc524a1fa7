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

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")
# Not after `13:23:` either: the seconds and fraction of a time (`13:23:45.123400+00:00`) are not a phone number.
_PHONE = re.compile(r"(?<![\w.-])(?<!\d\d:\d\d:)(\+?)(\d[\d ().-]{6,}\d)(?![\w-])")
# Ids and timestamps are digits too; values under these keys are not personal data.
_SAFE_KEYS = frozenset({"timestamp", "event", "level", "logger", "ticket_id", "event_id", "delivery_id", "id",
                        "version", "status", "duration_ms", "count", "path"})


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")


def _mask_phone(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(2))
    if not 8 <= len(digits) <= 15 or _DATE.match(m.group(2)):
        return m.group(0)
    return m.group(1) + "*" * (len(digits) - 2) + digits[-2:]


def mask_text(text: str) -> str:
    """`asha@example.com` → `a***@example.com`; `+91 98765 43210` → `+**********10`."""
    if "@" in text:
        text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(_mask_phone, text)


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
