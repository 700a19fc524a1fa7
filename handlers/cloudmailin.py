"""Cloudmailin, JSON (normalised) format: envelope, headers, plain, html, reply_plain and attachments
(base64 content, or a link when Cloudmailin stores them); or the raw message format, a multipart form of
the envelope (`envelope[to]`, `envelope[recipients][0]`, …) and the whole message in `message`, which is
parsed and wins. Protect the source with `auth` (basic auth)."""

from __future__ import annotations

import itertools
import re
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from bridge.escaping import quoted_sent
from handlers.attachments import Attachment, attachment, decode_base64, remote_attachment
from handlers.base import MAX_JSON_DEPTH, Handler, Inbound, decode_json_object, obj
from handlers.email import Headers, basename, email_payload, header_spam, message_files, parse_mime_text
from handlers.formdata import decode_part, multipart_parts

MULTIPART = "multipart/form-data"
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def raw_format(body: bytes, content_type: str) -> dict[str, Any]:
    """The raw message format as the JSON format's keys: `envelope` rebuilt from its bracketed field names
    (`envelope[spf][result]`, `envelope[recipients][0]`), `message` the message's own bytes."""
    data: dict[str, Any] = {}
    envelope: dict[str, Any] = {}
    for part in multipart_parts(body, content_type):
        if part.name == "message":
            data["message"] = part.data
            continue
        head, _sep, rest = part.name.partition("[")
        keys = _BRACKETS.findall("[" + rest) if rest else []
        if head != "envelope" or not keys:
            data[part.name] = decode_part(part)
            continue
        if len(keys) > MAX_JSON_DEPTH:
            raise Rejected(400, f"field {quoted_sent(part.name, 40)} nests {len(keys)} levels of bracketed keys; an "
                                f"`envelope[…]` field name takes at most {MAX_JSON_DEPTH}", check="form")
        _put(envelope, keys, decode_part(part))
    data["envelope"] = envelope
    return data


def _put(tree: dict[str, Any], keys: list[str], value: str) -> None:
    """Set `value` at the bracketed path `keys`: ["spf", "result"] nests, ["recipients", "0"] appends."""
    node = tree
    for key, after in itertools.pairwise(keys):
        child = node.get(key)
        if after.isdigit() or after == "":
            if not isinstance(child, list):
                child = node[key] = []
            child.append(value)
            return
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


class CloudmailinOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    pass


class CloudmailinHandler(Handler):
    kind: ClassVar[str] = "cloudmailin"
    channel = "email"
    saves_attachments = True
    Options: ClassVar[type[SourceConfig]] = CloudmailinOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json", MULTIPART})

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = raw_format(body, request.headers.get("Content-Type", "")) if request.content_type == MULTIPART \
            else decode_json_object(body)
        raw_headers = data.get("headers")
        # Cloudmailin names headers in lower case with underscores (`message_id`); repeated ones are lists.
        headers = Headers.from_mapping(raw_headers, underscores=True) if isinstance(raw_headers, dict) else Headers()
        envelope = obj(data.get("envelope"))
        files, kept = self._attachments(data.get("attachments"))
        provider = dict(data)
        if "attachments" in data:
            provider["attachments"] = kept
        mime = parse_mime_text(data.get("message"), "`message`")
        provider.pop("message", None)  # parsed, not kept twice
        files = message_files(mime, files)
        payload = email_payload(
            from_=headers.get("From") or envelope.get("from"),
            to=headers.get_all("To") or envelope.get("to"),
            cc=headers.get_all("Cc"),
            subject=headers.get("Subject"),
            text=_text(data.get("plain")),
            html=_text(data.get("html")),
            stripped_text=_text(data.get("reply_plain")),
            message_id_=headers.get("Message-Id"),
            in_reply_to=headers.get("In-Reply-To"),
            references=headers.get_all("References"),
            attachments=files,
            provider=provider,
            mime=mime,
            reply_to=headers.get_all("Reply-To"),
            date=headers.get("Date"),
            envelope_from=envelope.get("from"),
            envelope_to=envelope.get("recipients") or envelope.get("to"),
            spam=header_spam(headers),
        )
        return [Inbound(payload=payload, dedup_key=payload["message_id"], attachments=files)]

    @staticmethod
    def _attachments(raw: Any) -> tuple[list[Attachment], list[Any]]:
        if raw is None:
            return [], []
        if not isinstance(raw, list):
            raise Rejected(400, "`attachments` is not a list", check="json")
        files: list[Attachment] = []
        kept: list[Any] = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise Rejected(400, f"`attachments[{i}]` is not an object", check="json")
            name, ctype = item.get("file_name"), item.get("content_type")
            name = basename(name) if isinstance(name, str) else None
            inline = bool(item.get("content_id")) or item.get("disposition") == "inline"
            if item.get("content") is not None:
                files.append(attachment(name, ctype, decode_base64(item["content"], f"`attachments[{i}].content`"),
                                        inline=inline))
            else:
                files.append(remote_attachment(name, ctype, byte_count(item.get("size")),
                                               "held by Cloudmailin's attachment store", inline=inline,
                                               url=item.get("url")))
            kept.append({k: v for k, v in item.items() if k != "content"})
        return files, kept


def byte_count(value: Any) -> int | None:
    """A size in bytes as the provider wrote it (a number, or digits in a string); anything else, such as
    "²" or "٣" (digits to `str.isdigit`, not to `int`), a negative or a number of a thousand digits, is
    unknown: None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
