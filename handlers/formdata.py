"""Parsing form bodies from raw bytes: urlencoded and multipart, repeated keys becoming lists."""

from __future__ import annotations

import hashlib
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

from bridge.errors import Rejected


def _add(out: dict[str, Any], key: str, value: Any) -> None:
    if key in out:
        current = out[key]
        if isinstance(current, list):
            current.append(value)
        else:
            out[key] = [current, value]
    else:
        out[key] = value


def parse_urlencoded(body: bytes, charset: str | None = None) -> dict[str, Any]:
    try:
        text = body.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise Rejected(400, f"form body is not valid {charset or 'utf-8'} text: {exc}", check="form") from None
    out: dict[str, Any] = {}
    text = "&".join(part for part in text.split("&") if part)  # clients leave stray '&'s; they carry no field
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=10_000,
                          encoding=charset or "utf-8", errors="strict")
    except UnicodeDecodeError as exc:  # a percent-escape that is not valid text in the charset
        raise Rejected(400, f"form body is not valid {charset or 'utf-8'} text: {exc}",
                       check="form") from None
    except ValueError as exc:
        raise Rejected(400, f"malformed form body: {exc}", check="form") from None
    for key, value in pairs:
        _add(out, key, value)
    return out


def parse_multipart(body: bytes, content_type_header: str) -> dict[str, Any]:
    """Text parts become values; file parts become {filename, content_type, size, sha256}."""
    if "boundary=" not in content_type_header:
        raise Rejected(400, "multipart body without a boundary in its Content-Type", check="form")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type_header.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart() or message.defects:
        reason = ", ".join(type(d).__name__ for d in message.defects) or "no parts"
        raise Rejected(400, f"malformed multipart body: {reason}", check="form")
    out: dict[str, Any] = {}
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise Rejected(400, "multipart part without a name in its Content-Disposition", check="form")
        raw = part.get_payload(decode=True)
        data = raw if isinstance(raw, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            _add(out, name, {"filename": filename, "content_type": part.get_content_type(), "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()})
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            _add(out, name, data.decode(charset))
        except (UnicodeDecodeError, LookupError):
            raise Rejected(400, f"multipart field {name!r} is not valid {charset} text", check="form") from None
    return out
