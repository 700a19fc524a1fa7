"""The email channel's shape, shared by every mail provider: addresses, message ids, the reply without its
quoted history, and raw MIME. One mapping then serves Mailgun, Postmark, SendGrid, SES and Cloudmailin."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Any, NamedTuple

from bridge.errors import Rejected
from bridge.replies import strip_reply
from handlers.attachments import Attachment, attachment
from handlers.limits import (
    MAX_ADDRESS_FIELD_CHARS,
    MAX_ADDRESSES,
    MAX_ATTACHMENTS,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_IDS,
    check_chars,
    check_count,
    check_header_block,
    check_mime_shape,
    check_parts,
)

AddressInput = str | Iterable[str] | None

# RFC 2047: an encoded word holds no whitespace and no "?" inside its parts, so a match ends at the next "?"
# and the scan stays linear (the standard library's pattern is lazy and rescans to the line's end).
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    charset = charset.partition("*")[0]  # RFC 2231 adds a language: utf-8*en
    try:
        if encoding in "bB":
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.encode("ascii"), header=True)
        return data.decode(charset)
    except (ValueError, LookupError, UnicodeError):
        return None


def decode_words(value: str) -> str:
    """A header value with RFC 2047 encoded words (`=?utf-8?q?…?=`) decoded; a broken word is left as it is.
    Whitespace between two encoded words is dropped, as the RFC says."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos:match.start()]
        decoded = _decode_word(*match.groups())
        if not (after_word and decoded is not None and (not between or between.isspace())):
            out.append(between)
        out.append(match.group() if decoded is None else decoded)
        after_word = decoded is not None
        pos = match.end()
    out.append(value[pos:])
    return "".join(out)


def _texts(value: object) -> list[str]:
    """The strings in a header value or a list of them. Providers' JSON is read as it comes: anything else in
    its place (a number, an object) counts as absent rather than failing the request."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def _outside_quotes(text: str) -> str:
    return "".join(text.split('"')[::2])


def _mailboxes(texts: list[str], field: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of address header values, split before encoded words are decoded (a
    decoded name may hold a comma or an "@"); Rejected(413/400) over the caps or when it cannot be read."""
    # An address has its "@" outside quotes: counting those bounds a real list before the (costlier) parse;
    # the addresses parsed are counted again after it.
    estimate = sum(_outside_quotes(t).count("@") for t in texts)
    check_count(f"{field} addresses", estimate, MAX_ADDRESSES)
    check_chars(f"the {field} field", sum(len(t) for t in texts), MAX_ADDRESS_FIELD_CHARS)
    try:
        pairs = getaddresses(texts)
    except RecursionError:  # comments nested a thousand deep
        raise Rejected(400, f"{field} is not an address list: comments are nested too deep", check="email") from None
    # Decoded after the split (RFC 2047): a word may decode to a comma, a line break or a whole `Bcc: x@y`
    # and must stay part of its display name. A value that holds an address only once decoded (a sender that
    # encoded it all) is parsed decoded.
    decoded = [(" ".join(decode_words(name).split()), addr) for name, addr in pairs]
    if not any("@" in addr for _name, addr in decoded) and any("=?" in t for t in texts):
        decoded = getaddresses([decode_words(t) for t in texts])
    return decoded


def address_list(*values: AddressInput, field: str = "email") -> list[str]:
    """The bare, lower-cased addresses in header values or lists of them, each once, in order. `field` names
    the header in the 413 when there are more than MAX_ADDRESSES."""
    seen: dict[str, None] = {}
    for _name, raw in _mailboxes([t for v in values for t in _texts(v)], field):
        addr = raw.strip().lower()
        if "@" in addr:
            seen[addr] = None
    check_count(f"{field} addresses", len(seen), MAX_ADDRESSES)
    return list(seen)


def sender(value: AddressInput) -> tuple[str | None, str | None]:
    """(display name, bare lower-cased address) of a From value; the first mailbox when there are several."""
    texts = _texts(value)
    if not texts:
        return None, None
    pairs = _mailboxes(texts, "From")
    name, addr = pairs[0] if pairs else parseaddr(decode_words(texts[0]))
    addr = addr.strip().lower()
    return (name.strip() or None), (addr if "@" in addr else None)


_MSG_ID = re.compile(r"<[^<>\s]+>")


def message_ids(value: str | Iterable[str] | None, field: str = "References") -> list[str]:
    """The message ids in a Message-ID, In-Reply-To or References value, each as `<id@host>`, each once;
    Rejected(413) past MAX_MESSAGE_IDS, naming `field`."""
    seen: dict[str, None] = {}
    for text in _texts(value):
        found = _MSG_ID.findall(text)
        if not found:  # some providers strip the brackets
            found = [f"<{t}>" for t in re.split(r"[\s,]+", text.strip()) if t and "<" not in t and ">" not in t]
        seen.update(dict.fromkeys(found))
        check_count(f"{field} message ids", len(seen), MAX_MESSAGE_IDS)
    return list(seen)


def message_id(value: str | Iterable[str] | None, field: str = "Message-ID") -> str | None:
    """The first message id in a header value, as `<id@host>`, or None."""
    ids = message_ids(value, field)
    return ids[0] if ids else None


def newlines(text: Any) -> str | None:
    """Text with CRLF and CR line ends made LF, so every provider's copy of a body compares equal."""
    if not isinstance(text, str):
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- headers and MIME --------------------------------------------------------------------------------


ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to",
                             "resent-cc", "resent-bcc", "resent-sender"})
_FOLD = re.compile(r"\r\n|\r|\n")


def raw_utf8(value: str) -> str:
    """A header value the byte parser read, with its 8-bit bytes (kept as surrogates) read as UTF-8."""
    return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _header_value(name: str, raw: str) -> str:
    """A raw header value as text: unfolded, 8-bit bytes read as UTF-8, encoded words decoded except in
    address headers, whose encoded display names are decoded only once the addresses are split."""
    value = raw_utf8(_FOLD.sub("", raw))
    return value if name.lower() in ADDRESS_HEADERS else decode_words(value)


class Headers:
    """Header fields by case-insensitive name, keeping repeats in order; at most MAX_HEADER_FIELDS of them."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = (), what: str = "the email") -> None:
        self._fields: dict[str, list[str]] = {}
        listed = list(pairs)
        check_header_block(listed, what)
        for name, value in listed:
            self._fields.setdefault(name.lower(), []).append(value)

    @classmethod
    def from_message(cls, message: Message, what: str = "the email") -> Headers:
        """The headers of a parsed message, read from their raw text: parsing them structurally costs more than
        linear time on a long header, and the addresses and ids are read by this module's own parsers."""
        return cls([(name, _header_value(name, str(value))) for name, value in message.raw_items()], what)

    @classmethod
    def from_block(cls, block: str) -> Headers:
        """Headers from a raw header block (`Name: value` lines, folded lines joined, encoded words decoded)."""
        check_chars("the header block", len(block), MAX_HEADER_BYTES)
        return cls.from_message(HeaderParser().parsestr(block), "the header block")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], underscores: bool = False) -> Headers:
        """Headers from a JSON object of name to value (or list of values)."""
        pairs: list[tuple[str, str]] = []
        for name, value in mapping.items():
            key = name.replace("_", "-") if underscores else name
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str | int | float):
                    pairs.append((key, str(v)))
        return cls(pairs)

    def get(self, name: str) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return list(self._fields.get(name.lower(), []))


class MimeContent(NamedTuple):
    """What a raw RFC 5322 message holds, decoded."""

    headers: Headers
    text: str | None
    html: str | None
    attachments: list[Attachment]


def _part_text(part: EmailMessage) -> str | None:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown, lying or NUL-holding charset
        raw = part.get_payload(decode=True)
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
    return content if isinstance(content, str) else None


def parse_mime(raw: bytes) -> MimeContent:
    """Parse a whole message: its headers, plain and HTML bodies, and attachments with their content."""
    check_mime_shape(raw, "the message")
    # The shape is checked on a compat32 parse, some ten times cheaper per part than the default policy's,
    # whose structured parse of each part's headers is what the checks bound.
    check_parts(BytesParser().parsebytes(raw), "the message")
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    headers = Headers.from_message(message)
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    files = []
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):  # an attached message/rfc822 is kept as its bytes
            data = part.as_bytes() if part.get_content_maintype() == "message" else b""
        files.append(attachment(part.get_filename(), part.get_content_type(), data))
    return MimeContent(
        headers=headers,
        text=_part_text(text_part) if isinstance(text_part, EmailMessage) else None,
        html=_part_text(html_part) if isinstance(html_part, EmailMessage) else None,
        attachments=files,
    )


def email_payload(
    *, from_: AddressInput, to: AddressInput, cc: AddressInput, subject: str | None, text: str | None,
    html: str | None, stripped_text: str | None, message_id_: str | Iterable[str] | None,
    in_reply_to: str | Iterable[str] | None, references: str | Iterable[str] | None,
    attachments: list[Attachment], provider: dict[str, Any],
) -> dict[str, Any]:
    """The email channel's payload, the same keys for every provider (docs/architecture.md, "The canonical event")."""
    check_count("attachments", len(attachments), MAX_ATTACHMENTS)
    from_name, from_addr = sender(from_)
    body = newlines(text)
    given = (newlines(stripped_text) or "").strip()
    decoded_subject = decode_words(subject) if isinstance(subject, str) else None
    return {
        "from": from_addr,
        "from_name": from_name,
        "to": address_list(to, field="To"),
        "cc": address_list(cc, field="Cc"),
        "subject": decoded_subject,
        "text": body,
        "html": newlines(html),
        "stripped_text": given or strip_reply(body, decoded_subject),
        "message_id": message_id(message_id_),
        "in_reply_to": message_id(in_reply_to, "In-Reply-To"),
        "references": message_ids(references),
        "attachments": [a.meta for a in attachments],
        "provider": provider,
    }
