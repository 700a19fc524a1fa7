"""What an attempt sent and what came back, kept with the attempt for the console, secrets redacted: any
header, query parameter or JSON key whose name suggests a credential is replaced by REDACTED, and so is every
header the destination's credentials or configuration put on the request, whatever its name (`hidden`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from bridge.escaping import escape_text

REDACTED = "[redacted]"
BODY_CHARS = 2000
SECRET_NAME = re.compile(r"auth|token|secret|key|signature|password|passwd|cookie|session|credential", re.I)
SECRET_NAMES_KEPT = 4096
# The response headers kept: a vendor may send up to aiohttp's 128 headers of 8 KiB each (a megabyte per attempt).
HEADERS_KEPT = 40
HEADER_CHARS = 500
SECRET_NAME_KEPT_CHARS = 64
"""Longer names are searched each time, never kept: a JSON key inside a field that carries a sender's object (a
form's answers) can be as long as the request body, and SECRET_NAMES_KEPT of those would hold gigabytes."""


class _SecretNames(dict[str, bool]):
    """Whether each name suggests a credential (`secret_name`), the answers kept: a name asked again is a look-up
    in C, no call. A name longer than SECRET_NAME_KEPT_CHARS is searched each time, never kept; once
    SECRET_NAMES_KEPT answers are kept, they are dropped all at once and kept anew."""

    def __missing__(self, name: str) -> bool:
        found = SECRET_NAME.search(name) is not None
        if len(name) <= SECRET_NAME_KEPT_CHARS:
            if len(self) >= SECRET_NAMES_KEPT:
                self.clear()
            self[name] = found
        return found


_SECRET = _SecretNames()
_secret_key = _SECRET.__getitem__


def secret_name(name: str) -> bool:
    """Whether `name` (a header, query parameter or JSON key) suggests a credential. Every attempt asks about
    the same few names (its mapping's fields, its vendor's headers): the answer is kept (`_SecretNames`) rather
    than searched again (a search costs microseconds; a look-up, a tenth)."""
    return _SECRET[name]


_CONTAINERS = (dict, list)  # a tuple made once: `dict | list` would make a union at each test
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _redact_json(value: Any) -> Any:
    """`value` (decoded JSON) with the values of credential-named keys redacted; a value that is neither an object
    nor an array is taken as it is, without a call, and so is an object of scalars none of whose keys (text, in
    JSON) is credential-named, looked at in C: no comprehension builds its copy."""
    if isinstance(value, dict):
        if not any(map(_secret_key, value)) and set(map(type, value.values())) <= _SCALARS:
            return value
        return {k: REDACTED if _SECRET[str(k)] else _redact_json(v) if isinstance(v, _CONTAINERS) else v
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


def redact_url(url: str) -> str:
    """`url` with the password of its user info (`https://user:pw@host/`) and its credential-named query
    parameters redacted, its fragment dropped."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        user, _, host = parts.netloc.rpartition("@")
        name, colon, _password = user.partition(":")
        parts = parts._replace(netloc=f"{name}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}")
    elif not parts.query:
        return url
    query = [(k, REDACTED if _SECRET[k] else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query), fragment=""))


def redact_headers(headers: Mapping[str, str], hidden: frozenset[str] = frozenset()) -> dict[str, str]:
    """`headers` with those named like a credential, and those in `hidden` (lower-case names), redacted."""
    return {k: REDACTED if _SECRET[k] or k.lower() in hidden else v for k, v in headers.items()}


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def kept_response_headers(headers: Mapping[str, str], hidden: frozenset[str] = frozenset()) -> dict[str, str]:
    """The response headers as kept: credential-named ones and those in `hidden` redacted, the first
    HEADERS_KEPT, names and values cut at HEADER_CHARS, and a last entry `…` counting those left out. A byte that
    is not UTF-8 (read by aiohttp as a lone surrogate, which no store takes) is written out (`\\xe9`)."""
    kept: dict[str, str] = {}
    left_out = 0
    for name, value in dict(headers.items()).items():  # a name given twice (a multidict's) once, its last value
        if len(kept) < HEADERS_KEPT:
            secret = _SECRET[name] or name.lower() in hidden
            # As _kept_text keeps them, an ASCII name or value that fits without a call.
            kept[name if len(name) <= HEADER_CHARS and name.isascii() else _kept_text(name)] = (
                REDACTED if secret else value if len(value) <= HEADER_CHARS and value.isascii()
                else _kept_text(value))
        else:
            left_out += 1
    if left_out:
        kept["…"] = f"{left_out} more headers not kept"
    return kept


def _kept_text(text: str) -> str:
    """A response header's name or value as kept: escaped (`escape_text`) and cut at HEADER_CHARS; an ASCII text
    that fits is itself (which kept_response_headers checks before it calls)."""
    if len(text) <= HEADER_CHARS and text.isascii():
        return text
    return clip(escape_text(text), HEADER_CHARS)


def body_excerpt(body: bytes) -> str:
    """The body's start as text; a JSON body with its credential-named keys redacted."""
    try:
        text = msgspec.json.encode(_redact_json(msgspec.json.decode(body))).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        text = body[:BODY_CHARS].decode("utf-8", "replace")
    return text[:BODY_CHARS]


def exchange(method: str, url: str, headers: Mapping[str, str], body: bytes,
             response_headers: Mapping[str, str] | None, *, hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The attempt's request and response headers as kept; `hidden`: lower-case names of headers that carry
    the destination's secrets whatever they are called (its auth header, its configured headers)."""
    return {
        "request": {"method": method, "url": redact_url(url), "headers": redact_headers(headers, hidden),
                    "body": body_excerpt(body)},
        "response_headers": None if response_headers is None else kept_response_headers(response_headers, hidden),
    }
