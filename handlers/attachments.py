"""Attachment files: metadata in the event's payload, content on disk, addressed by its sha256."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from bridge.errors import Rejected


class Attachment(msgspec.Struct, kw_only=True):
    """One file a request carries: `meta` is the very dict placed in the payload, `content` its bytes
    (None when the provider sent only a link or nothing at all)."""

    meta: dict[str, Any]
    content: bytes | None = None


_CHARSET = re.compile(r'charset\s*=\s*"?([^";\s]+)', re.IGNORECASE)
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


def _described(name: object, content_type: object, inline: bool | None = None) -> dict[str, Any]:
    """`name`, `content_type` (the bare media type) and, when the type names one, `charset`, as the payload
    shows them; a value that is not text (a provider's JSON may hold anything) counts as absent. `inline`
    (a part with a Content-ID, such as a signature logo) is recorded when the caller knows it."""
    bare, charset = media_type(content_type)
    out: dict[str, Any] = {"name": name if isinstance(name, str) else "", "content_type": bare}
    if charset is not None:
        out["charset"] = charset
    if inline is not None:
        out["inline"] = inline
    return out


def media_type(content_type: object) -> tuple[str, str | None]:
    """(bare lower-cased media type, charset or None) of a Content-Type value: `message/rfc822;
    charset="us-ascii"` is ("message/rfc822", "us-ascii"); anything that is not a type is
    application/octet-stream."""
    if not isinstance(content_type, str):
        return "application/octet-stream", None
    head, _sep, params = content_type.partition(";")
    bare = head.strip().lower()
    if not _MEDIA_TYPE.fullmatch(bare):
        bare = "application/octet-stream"
    found = _CHARSET.search(params)
    return bare, found.group(1).lower() if found else None


def attachment(name: str | None, content_type: str | None, content: bytes, *, inline: bool | None = None) -> Attachment:
    """An attachment whose metadata (name, content_type, size, sha256) is computed from its content."""
    meta = {**_described(name, content_type, inline), "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest()}
    return Attachment(meta=meta, content=content)


def remote_attachment(name: str | None, content_type: str | None, size: int | None, reason: str, *,
                      inline: bool | None = None, **extra: Any) -> Attachment:
    """A file the provider did not send the content of: recorded, never silently dropped."""
    meta = {**_described(name, content_type, inline), "size": size, "sha256": None, "stored": False, "reason": reason,
            **extra}
    return Attachment(meta=meta, content=None)


def decode_base64(text: Any, what: str) -> bytes:
    """Base64 content from a JSON body (line breaks allowed), or Rejected(400) naming the field."""
    if not isinstance(text, str):
        raise Rejected(400, f"{what} is not a base64 string", check="attachment")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(400, f"{what} is not valid base64", check="attachment") from None


def content_path(folder: Path, sha256: str) -> Path:
    """Where the content with this digest lives: `folder/ab/abcdef…`."""
    return folder / sha256[:2] / sha256


def save_attachments(attachments: list[Attachment], folder: Path, max_bytes: int) -> None:
    """Write each attachment's content under `folder` (at most once per digest; a file already there has its
    time brought up to now, which retention reads as "named by an event this recent") and mark its metadata
    `stored: true`; content over `max_bytes` is marked `stored: false` with the reason. Raises OSError
    when the disk fails, so that intake answers 503 and the provider retries."""
    for item in attachments:
        if item.content is None:
            item.meta.setdefault("stored", False)
            item.meta.setdefault("reason", "the provider sent no content")
            continue
        size = len(item.content)
        if size > max_bytes:
            item.meta["stored"] = False
            item.meta["reason"] = f"{size} bytes is over the attachment cap of {max_bytes} bytes"
            continue
        target = content_path(folder, item.meta["sha256"])
        try:
            os.utime(target)  # named again: retention keeps a file as long as its newest event
        except FileNotFoundError:
            _write_atomically(target, item.content)
        item.meta["stored"] = True


def _write_atomically(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
