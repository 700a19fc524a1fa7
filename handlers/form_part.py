r"""The fields of a multipart form part read from its raw headers with one strict pattern each, for the forms
that providers and browsers send: `Content-Disposition: form-data; name="x"` (and `; filename="y"`), no
Content-Type or a bare one with a charset, no Content-Transfer-Encoding (or one that leaves the bytes as they
are). For these the email package's readers (`get_param`, which parses a header's parameters again on each
call, `get_content_type`, `get_content_charset`, `get_payload(decode=True)`) give exactly what is read here;
any other header (quotes or backslashes in a value, RFC 2231 or folded parameters, duplicates, bytes that are
not ASCII in a Content-Type) is left to them: `simple_fields` gives None.

The patterns have no nested repetition and each repeated class stops at a character the next part requires,
so they match in linear time."""

from __future__ import annotations

import re
from email.message import Message
from typing import NamedTuple

from handlers.email import raw_utf8

# A quoted value `get_param` gives back as it is: no quote, backslash or semicolon, no control character.
_VALUE = r'"([^"\\;\x00-\x1f\x7f]*)"'
_DISPOSITION = re.compile(rf"form-data; name={_VALUE}(?:; filename={_VALUE})?")
_ATOM = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf'({_ATOM}/{_ATOM})(?:; ?charset=(?:"({_ATOM})"|({_ATOM})))?')
# The encodings `get_payload(decode=True)` undoes; any other leaves the content as its bytes.
_DECODED = frozenset({"quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"})
_MISSING = object()


class Fields(NamedTuple):
    """A part's name and file name as `get_param` and `raw_param` read them (encoded words not yet decoded),
    its content type and charset, content and Content-ID."""

    name: str
    filename: str | None
    content_type: str
    charset: str | None
    data: bytes
    content_id: str | None


def simple_fields(part: Message) -> Fields | None:
    """The part's fields when its headers are of the simple forms above; None when they are not."""
    if part.is_multipart():
        return None
    disposition = ctype = encoding = content_id = None
    for name, value in part.raw_items():
        if not isinstance(value, str):
            return None
        key = name.lower()
        if key == "content-disposition":
            disposition = value if disposition is None else disposition
        elif key == "content-type":
            ctype = value if ctype is None else ctype
        elif key == "content-transfer-encoding":
            encoding = value if encoding is None else encoding
        elif key == "content-id":
            content_id = value if content_id is None else content_id
    if disposition is None or not (ctype or "").isascii() or not (content_id or "").isascii():
        return None
    # The general reader first reads a non-ASCII disposition's bytes as UTF-8 (`raw_utf8`).
    form = _DISPOSITION.fullmatch(raw_utf8(disposition))
    if form is None:
        return None
    if ctype is None:
        content_type, charset = part.get_default_type(), None
    else:
        typed = _CONTENT_TYPE.fullmatch(ctype)
        if typed is None:
            return None
        content_type = typed.group(1).lower()
        given = typed.group(2) or typed.group(3)
        charset = None if given is None else given.lower()
    data = _content(part, encoding)
    if data is None:
        return None
    return Fields(form.group(1), form.group(2), content_type, charset, data, content_id)


def _content(part: Message, encoding: str | None) -> bytes | None:
    """The part's content as `get_payload(decode=True)` gives it for a transfer encoding it leaves alone:
    the text the byte parser read, back to its bytes."""
    if encoding is not None and (not encoding.isascii() or encoding.lower() in _DECODED):
        return None
    payload = getattr(part, "_payload", _MISSING)
    if not isinstance(payload, str):
        return None
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # text that is neither ASCII nor escaped bytes: not from the byte parser
        return None
