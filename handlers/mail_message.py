"""One inbound message of a mail provider made into an event: the raw MIME message, when the provider sends
it, parsed by the email channel's MIME path and winning over the provider's own parsed fields, which are the
fallback for what the raw message lacks. Shared by the providers that post JSON or forms of their own
(Brevo, Mailjet, Mandrill, SparkPost, Resend, MailerSend, Postal)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from handlers.attachments import Attachment
from handlers.base import Inbound
from handlers.email import AddressInput, Headers, email_payload, message_id, parse_mime
from handlers.limits import check_count

MAX_BATCH_MESSAGES = 100
"""Messages one post may carry (Brevo's `items`, Mandrill's `mandrill_events`, SparkPost's array). Each costs a
MIME parse (milliseconds), so a post of thousands of tiny messages within the body cap would hold the parser
for minutes; providers post inbound mail one or a few messages at a time."""


@dataclass
class Fields:
    """What a provider's parsed fields say of a message; `headers` fills what the named fields leave out."""

    from_: AddressInput = None
    to: AddressInput = None
    cc: AddressInput = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    stripped_text: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | list[str] | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: Headers = field(default_factory=Headers)


def check_batch(count: int, what: str) -> None:
    """Rejected(413) when one post carries more than MAX_BATCH_MESSAGES messages."""
    check_count(f"messages in {what}", count, MAX_BATCH_MESSAGES)


def text(value: Any) -> str | None:
    """`value` when it is a string; a provider's JSON may hold anything in its place."""
    return value if isinstance(value, str) else None


def mailbox(name: Any, address: Any) -> str | None:
    """`"Name" <address>` from a provider's name and address pair (the address alone when unnamed)."""
    if not isinstance(address, str) or not address:
        return None
    if isinstance(name, str) and name.strip():
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>'
    return address


def mailboxes(entries: Any, name_key: str, address_key: str) -> list[str]:
    """A list of provider address objects (`{"Name": …, "Address": …}`) as `"Name" <address>` texts."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and (box := mailbox(entry.get(name_key), entry.get(address_key))):
            out.append(box)
    return out


def header_pairs(mapping: Any) -> Headers:
    """Headers from a JSON object of name to value or list of values (Brevo, Mailjet, MailerSend)."""
    return Headers.from_mapping(mapping) if isinstance(mapping, dict) else Headers()


def part_file(headers: Headers) -> tuple[str | None, str]:
    """(file name, content type) of an attachment described only by its MIME headers (Mailjet's `Parts`)."""
    part = Message()
    for name in ("Content-Type", "Content-Disposition"):
        if (value := headers.get(name)) is not None:
            part[name] = value
    return part.get_filename(), part.get_content_type()


def mail_inbound(provider: dict[str, Any], fields: Fields, *, raw: bytes | None = None,
                 provider_id: Any = None, spam: bool = False) -> Inbound:
    """The event of one message. With `raw`, the headers, bodies and attachments are the raw message's (its
    attachments replace the provider's copies of them); the provider's fields fill only what it lacks. The
    dedup key is the Message-ID, else the provider's id for the message, else a digest of the raw message."""
    headers, body_text, body_html, files = fields.headers, fields.text, fields.html, fields.attachments
    if raw is not None:
        mime = parse_mime(raw)
        headers = mime.headers
        body_text = mime.text if mime.text is not None else body_text
        body_html = mime.html if mime.html is not None else body_html
        files = mime.attachments
    own = fields.headers

    def pick(name: str, given: Any) -> Any:
        """The raw message's header, else the provider's field, else the provider's copy of the header."""
        if raw is not None and (found := headers.get_all(name)):
            return found
        return given or own.get_all(name)

    subject = headers.get("Subject") if raw is not None else None
    ids = _first(*pick("Message-ID", fields.message_id and [fields.message_id]))
    payload = email_payload(
        from_=pick("From", fields.from_),
        to=pick("To", fields.to),
        cc=pick("Cc", fields.cc),
        subject=subject if subject is not None else fields.subject if fields.subject is not None
        else own.get("Subject"),
        text=body_text, html=body_html, stripped_text=fields.stripped_text,
        message_id_=ids,
        in_reply_to=_first(*pick("In-Reply-To", fields.in_reply_to and [fields.in_reply_to])),
        references=pick("References", fields.references),
        attachments=files,
        provider=provider,
    )
    key = message_id(ids)
    if key is None and isinstance(provider_id, str | int) and not isinstance(provider_id, bool) and provider_id != "":
        key = str(provider_id)
    if key is None and raw is not None:
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Inbound(payload=payload, dedup_key=key, spam=spam, attachments=files)


def _first(*values: Any) -> str | None:
    return next((v for v in values if isinstance(v, str) and v), None)


def raw_bytes(value: str) -> bytes:
    """A raw message a provider sent as JSON text: its characters as UTF-8 (8-bit header bytes stay as the
    MIME path reads them)."""
    return value.encode("utf-8", "surrogateescape")


def without(data: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """`data` without `keys`: the raw message and file contents are parsed and stored, not kept twice."""
    drop = set(keys)
    return {k: v for k, v in data.items() if k not in drop}
