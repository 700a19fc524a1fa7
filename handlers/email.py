"""The email channel's shape, shared by every mail provider: addresses, message ids, the reply without its
quoted history, and raw MIME. One mapping then serves Mailgun, Postmark, SendGrid, SES and Cloudmailin."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesParser, Parser
from email.utils import getaddresses, parseaddr
from typing import Any, NamedTuple

from handlers.attachments import Attachment, attachment

AddressInput = str | Iterable[str] | None


def decode_words(value: str) -> str:
    """A header value with RFC 2047 encoded words (`=?utf-8?q?…?=`) decoded; left as it is if they are broken."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeDecodeError):
        return value


def _texts(value: object) -> list[str]:
    """The strings in a header value or a list of them. Providers' JSON is read as it comes: anything else in
    its place (a number, an object) counts as absent rather than failing the request."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def _mailboxes(text: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of one header value. Parsed before encoded words are decoded, as RFC 2047
    says: a word may decode to a comma, a line break or a whole `Bcc: x@y` and must stay part of its display
    name. A value that holds an address only once decoded (a sender that encoded it all) is parsed decoded."""
    pairs = [(" ".join(decode_words(name).split()), addr) for name, addr in getaddresses([text])]
    if "=?" in text and not any("@" in addr for _name, addr in pairs):
        pairs = getaddresses([decode_words(text)])
    return pairs


def address_list(*values: AddressInput) -> list[str]:
    """The bare, lower-cased addresses in header values or lists of them, each once, in order."""
    out: list[str] = []
    for _name, raw in (pair for v in values for t in _texts(v) for pair in _mailboxes(t)):
        addr = raw.strip().lower()
        if "@" in addr and addr not in out:
            out.append(addr)
    return out


def sender(value: AddressInput) -> tuple[str | None, str | None]:
    """(display name, bare lower-cased address) of a From value; the first mailbox when there are several."""
    texts = _texts(value)
    if not texts:
        return None, None
    pairs = [pair for text in texts for pair in _mailboxes(text)]
    name, addr = pairs[0] if pairs else parseaddr(decode_words(texts[0]))
    addr = addr.strip().lower()
    return (name.strip() or None), (addr if "@" in addr else None)


_MSG_ID = re.compile(r"<[^<>\s]+>")


def message_ids(value: str | Iterable[str] | None) -> list[str]:
    """The message ids in a Message-ID, In-Reply-To or References value, each as `<id@host>`."""
    out: list[str] = []
    for text in _texts(value):
        found = _MSG_ID.findall(text)
        if not found:  # some providers strip the brackets
            found = [f"<{t}>" for t in re.split(r"[\s,]+", text.strip()) if t and "<" not in t and ">" not in t]
        out.extend(f for f in found if f not in out)
    return out


def message_id(value: str | Iterable[str] | None) -> str | None:
    """The first message id in a header value, as `<id@host>`, or None."""
    ids = message_ids(value)
    return ids[0] if ids else None


def newlines(text: Any) -> str | None:
    """Text with CRLF and CR line ends made LF, so every provider's copy of a body compares equal."""
    if not isinstance(text, str):
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- the reply without its quoted history --------------------------------------------------------------

_ATTRIBUTION = r"(On|Le|Am|El|Il|Op|Em|Den|W dniu)\s"
_WROTE_START = re.compile(_ATTRIBUTION, re.IGNORECASE)
_WROTE = re.compile(  # German puts the name after the verb: "Am … schrieb Support <s@acme.test>:"
    _ATTRIBUTION + r".*\b((wrote|a écrit|escribió|ha scritto|schreef|escreveu|skrev|napisał)\s*|schrieb\b.*):",
    re.IGNORECASE,
)
_ORIGINAL = re.compile(r"-{2,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine|Mensaje original|"
                       r"Messaggio originale|Oorspronkelijk bericht)\s*-{2,}", re.IGNORECASE)
_RULE = re.compile(r"_{10,}")
_HEADER_FROM = re.compile(r"\*?(From|De|Von|Van|Da|Från)\s*:\*?\s+\S.*", re.IGNORECASE)
_HEADER_NEXT = re.compile(r"\*?(Sent|Date|To|Subject|Cc|Envoyé|Gesendet|Enviado|Datum|Objet|Betreff|Asunto)\s*:",
                          re.IGNORECASE)
_SIGNATURE = re.compile(
    r"--|-- |Sent from my [\w\s.-]{1,40}|Sent from (Mail|Outlook|Yahoo Mail|Gmail) for [\w\s.-]{1,30}|"
    r"Get Outlook for [\w\s.-]{1,30}|Envoyé de mon [\w\s.-]{1,40}|Von meinem [\w\s.-]{1,40} gesendet",
    re.IGNORECASE,
)


def _starts_history(lines: list[str], i: int) -> bool:
    line = lines[i].strip()
    if _ORIGINAL.fullmatch(line):
        return True
    if _RULE.fullmatch(line):
        return any(_HEADER_FROM.fullmatch(lines[j].strip()) for j in range(i + 1, min(i + 3, len(lines))))
    if _HEADER_FROM.fullmatch(line):
        return any(_HEADER_NEXT.match(lines[j].strip()) for j in range(i + 1, min(i + 5, len(lines))))
    if _WROTE_START.match(line):
        # Mail clients wrap a long attribution line; it ends, within three lines, with "wrote:".
        for k in range(1, 4):
            if _WROTE.fullmatch(" ".join(part.strip() for part in lines[i:i + k])):
                return True
    return False


def strip_reply(text: str | None) -> str:
    """The new part of a reply: cut at the first quoted-history marker ("On … wrote:", an Outlook header
    block, "-----Original Message-----") or signature delimiter ("-- ", "Sent from my …"), drop the lines
    quoted with ">", and squeeze the blank lines left behind."""
    if not text:
        return ""
    lines = (newlines(text) or "").split("\n")
    cut = len(lines)
    for i, raw in enumerate(lines):
        if _starts_history(lines, i) or (_SIGNATURE.fullmatch(raw.rstrip("\n")) and i > 0):
            cut = i
            break
    kept: list[str] = []
    for line in lines[:cut]:
        if line.lstrip().startswith(">"):
            continue
        if not line.strip() and (not kept or not kept[-1].strip()):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept).strip()


# -- headers and MIME --------------------------------------------------------------------------------


class Headers:
    """Header fields by case-insensitive name, keeping repeats in order."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: dict[str, list[str]] = {}
        for name, value in pairs:
            self._fields.setdefault(name.lower(), []).append(value)

    @classmethod
    def from_block(cls, block: str) -> Headers:
        """Headers from a raw header block (`Name: value` lines, folded lines joined, encoded words decoded)."""
        return cls(header_items(Parser(policy=policy.default).parsestr(block, headersonly=True)))

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


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def header_items(message: Message) -> Iterator[tuple[str, str]]:
    """A parsed message's header fields as (name, text), folded lines joined and encoded words decoded. The
    email package's structured parse is used where it succeeds; on a hostile value it raises (an encoded word
    that decodes to a line break inside an address is a ValueError, and its parser has others), and then the
    raw value is kept, unfolded, its encoded words left for the reader (`sender`, `address_list` and the
    subject decode them where they belong): one odd header never loses the message."""
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # see above: whatever the parser raises, the raw value is read instead
            value = _FOLD.sub("", str(raw))
        yield name, value


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
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    headers = Headers(header_items(message))
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
    """The email channel's payload, the same keys for every provider (DESIGN: "The canonical event")."""
    from_name, from_addr = sender(from_)
    body = newlines(text)
    given = newlines(stripped_text)
    return {
        "from": from_addr,
        "from_name": from_name,
        "to": address_list(to),
        "cc": address_list(cc),
        "subject": decode_words(subject) if isinstance(subject, str) else None,
        "text": body,
        "html": newlines(html),
        "stripped_text": given.strip() if given and given.strip() else strip_reply(body),
        "message_id": message_id(message_id_),
        "in_reply_to": message_id(in_reply_to),
        "references": message_ids(references),
        "attachments": [a.meta for a in attachments],
        "provider": provider,
    }
