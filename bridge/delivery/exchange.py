"""What an attempt sent and what came back, kept with the attempt for the console, secrets redacted: any
header, query parameter or JSON key whose name suggests a credential is replaced by REDACTED."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

REDACTED = "[redacted]"
BODY_CHARS = 2000
SECRET_NAME = re.compile(r"auth|token|secret|key|signature|password|passwd|cookie|session|credential", re.I)
SECRET_NAMES_KEPT = 4096
SECRET_NAME_KEPT_CHARS = 64
"""Longer names are searched each time, never kept: a JSON key inside a field that carries a sender's object (a
form's answers) can be as long as the request body, and SECRET_NAMES_KEPT of those would hold gigabytes."""


@functools.lru_cache(maxsize=SECRET_NAMES_KEPT)
def _kept_secret_name(name: str) -> bool:
    return SECRET_NAME.search(name) is not None


def secret_name(name: str) -> bool:
    """Whether `name` (a header, query parameter or JSON key) suggests a credential. Every attempt asks about
    the same few names (its mapping's fields, its vendor's headers): the answer is kept for the last
    SECRET_NAMES_KEPT of them rather than searched again (a search costs microseconds; a look-up, a tenth),
    for names of at most SECRET_NAME_KEPT_CHARS characters."""
    if len(name) > SECRET_NAME_KEPT_CHARS:
        return SECRET_NAME.search(name) is not None
    return _kept_secret_name(name)


def _redact_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if secret_name(str(k)) else _redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    return value


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, REDACTED if secret_name(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query), fragment=""))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: REDACTED if secret_name(k) else v for k, v in headers.items()}


def body_excerpt(body: bytes) -> str:
    """The body's start as text; a JSON body with its credential-named keys redacted."""
    try:
        text = msgspec.json.encode(_redact_json(msgspec.json.decode(body))).decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        text = body[:BODY_CHARS].decode("utf-8", "replace")
    return text[:BODY_CHARS]


def exchange(method: str, url: str, headers: Mapping[str, str], body: bytes,
             response_headers: Mapping[str, str] | None) -> dict[str, Any]:
    return {
        "request": {"method": method, "url": redact_url(url), "headers": redact_headers(headers),
                    "body": body_excerpt(body)},
        "response_headers": None if response_headers is None else redact_headers(response_headers),
    }
