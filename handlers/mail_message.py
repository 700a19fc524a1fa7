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

from handlers.attachments import Attachment, attachment, remote_attachment
from handlers.base import Inbound
from handlers.email import (
    AddressInput,
    Headers,
    Spam,
    basename,
    email_payload,
    message_files,
    parse_mime,
    part_filename,
)
from handlers.limits import check_count

MAX_BATCH_MESSAGES = 100
"""Messages one post may carry (Brevo's `items`, Mandrill's `mandrill_events`, SparkPost's array). Each costs a
MIME parse (milliseconds), so a post of thousands of tiny messages within the body cap would hold the parser
for minutes; providers post inbound mail one or a few messages at a time."""


@dataclass
class Fields:
    """What a provider's parsed fields say of a message; `headers` (the provider's copy of the message's
    headers) fills what the named fields leave out. The envelope and the spam result are the provider's own
    report: a raw message does not carry them."""

    from_: AddressInput = None
    to: AddressInput = None
    cc: AddressInput = None
    reply_to: AddressInput = None
    subject: str | None = None
    date: str | None = None
    text: str | None = None
    html: str | None = None
    stripped_text: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | list[str] | None = None
    envelope_from: AddressInput = None
    envelope_to: AddressInput = None
    spam: Spam | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: Headers = field(default_factory=Headers)


def check_batch(count: int, what: str) -> None:
    """Rejected(413) when one post carries more than MAX_BATCH_MESSAGES messages."""
    check_count(f"messages in {what}", count, MAX_BATCH_MESSAGES)


def text(value: Any) -> str | None:
    """`value` when it is a string; a provider's JSON may hold anything in its place."""
    return value if isinstance(value, str) else None


_NOT_IN_ADDRESS = frozenset("<>\r\n")


def mailbox(name: Any, address: Any) -> str | None:
    """`"Name" <address>` from a provider's name and address pair (the address alone when unnamed), the name
    quoted with its quotes and backslashes escaped, so that it reads back as that name and that address whatever
    it holds (its line breaks made spaces). None for an address holding an angle bracket or a line break, which
    no one address does."""
    if not isinstance(address, str) or not address or not _NOT_IN_ADDRESS.isdisjoint(address):
        return None
    if isinstance(name, str) and name.strip():
        # A line break ends a quoted string for the standard library's parser: it is whitespace in a name.
        one_line: str = name.replace("\r", " ").replace("\n", " ")
        return '"' + one_line.replace("\\", "\\\\").replace('"', '\\"') + f'" <{address}>'
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


def provider_file(name: Any, content_type: Any, content: bytes, *, inline: bool) -> Attachment:
    """An attachment a provider sent parsed (name, type and content apart): named by the base name of any
    path it holds, RFC 2047 decoded, as a MIME part's name is."""
    return attachment(basename(name) if isinstance(name, str) else None,
                      content_type if isinstance(content_type, str) else None, content, inline=inline)


def provider_remote_file(name: Any, content_type: Any, size: int | None, reason: str, *,
                         inline: bool | None) -> Attachment:
    """An attachment whose content the provider kept, named as `provider_file` names one."""
    return remote_attachment(basename(name) if isinstance(name, str) else None,
                             content_type if isinstance(content_type, str) else None, size, reason, inline=inline)


def part_file(headers: Headers) -> tuple[str, str]:
    """(file name, Content-Type) of an attachment described only by its MIME headers (Mailjet's `Parts`): the
    name read from the raw headers as a MIME part's is (Windows paths, RFC 2231, RFC 2047)."""
    part = Message()
    for name in ("Content-Type", "Content-Disposition", "Content-ID"):
        if (value := headers.get(name)) is not None:
            part[name] = value
    return part_filename(part), headers.get("Content-Type") or "text/plain"  # MIME's default type


def mail_inbound(provider: dict[str, Any], fields: Fields, *, raw: bytes | None = None,
                 provider_id: Any = None, spam: bool = False) -> Inbound:
    """The event of one message, through the email channel's one MIME path: with `raw`, `parse_mime` reads it
    and `email_payload` lets it win over the provider's fields (its attachments replace the provider's copies
    of them); the fields, and the provider's copy of the headers after them, fill only what it lacks. The
    dedup key is the Message-ID, else the provider's id for the message, else a digest of the raw message."""
    mime = parse_mime(raw) if raw is not None else None
    own = fields.headers
    files = message_files(mime, fields.attachments)
    payload = email_payload(
        from_=fields.from_ or own.get("From"),
        to=fields.to or own.get_all("To"),
        cc=fields.cc or own.get_all("Cc"),
        subject=fields.subject if fields.subject is not None else own.get("Subject"),
        text=fields.text, html=fields.html, stripped_text=fields.stripped_text,
        message_id_=fields.message_id or own.get("Message-ID"),
        in_reply_to=fields.in_reply_to or own.get("In-Reply-To"),
        references=fields.references or own.get_all("References"),
        attachments=files,
        provider=provider,
        mime=mime,
        reply_to=fields.reply_to or own.get_all("Reply-To"),
        date=fields.date or own.get("Date"),
        envelope_from=fields.envelope_from or own.get("Return-Path"),
        envelope_to=fields.envelope_to,
        spam=fields.spam,
    )
    key = payload["message_id"]
    if key is None and isinstance(provider_id, str | int) and not isinstance(provider_id, bool) and provider_id != "":
        key = str(provider_id)
    if key is None and raw is not None:
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Inbound(payload=payload, dedup_key=key, spam=spam, attachments=files)


def raw_bytes(value: str) -> bytes:
    """A raw message a provider sent as JSON text: its characters as UTF-8 (8-bit header bytes stay as the
    MIME path reads them)."""
    return value.encode("utf-8", "surrogateescape")


def without(data: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """`data` without `keys`: the raw message and file contents are parsed and stored, not kept twice."""
    drop = set(keys)
    return {k: v for k, v in data.items() if k not in drop}
