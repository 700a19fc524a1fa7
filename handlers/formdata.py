"""Parsing form bodies from raw bytes: urlencoded and multipart, repeated keys becoming lists."""

from __future__ import annotations

import binascii
import hashlib
import re
from email.message import Message
from email.parser import BytesParser
from typing import Any, NamedTuple

from bridge.errors import Rejected
from bridge.escaping import escape_text, quoted_sent
from bridge.offload import LOOP_PARSER_LINES, OffLoop, on_loop, text_lines
from handlers.attachments import Attachment, attachment
from handlers.charsets import ASCII_MULTIBYTE, byte_table, text_codec
from handlers.email import OpaqueMessage, basename, decode_words, raw_param, raw_utf8
from handlers.form_part import Fields, simple_fields
from handlers.limits import CHECK as LIMITS
from handlers.limits import MAX_FORM_FIELDS, MAX_FORM_RUNS, check_count, check_mime_shape, check_parts
from handlers.multipart_split import parse_split


def add_value(out: dict[str, Any], key: str, value: Any) -> None:
    """Set `out[key]`; a key set again becomes the list of its values, in order."""
    if key in out:
        current = out[key]
        if isinstance(current, list):
            current.append(value)
        else:
            out[key] = [current, value]
    else:
        out[key] = value


def first_value(value: Any) -> str | None:
    """A field `add_value` built that should be single: its text, the first when a client repeated it."""
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _codec(charset: str, what: str) -> str:
    """The codec for the charset a form body or part names; Rejected(400) when it is no character set."""
    codec = text_codec(charset)
    if codec is None:
        raise Rejected(400, f"{what} is in charset {escape_text(charset)[:80]!r}, which is not a character set "
                            "ticketbridge reads; send it as utf-8 (or another IANA character set)", check="form")
    return codec


def parse_urlencoded(body: bytes, charset: str | None = None) -> dict[str, Any]:
    """A urlencoded form body's fields, in `charset` (the Content-Type's; else UTF-8)."""
    codec = "utf-8" if charset is None else _codec(charset, "the form body")
    try:
        text = body.decode(codec)
    except ValueError as exc:
        raise Rejected(400, f"form body is not valid {charset or 'utf-8'} text: {exc}", check="form") from None
    out: dict[str, Any] = {}
    fields = text.split("&")
    if "" in fields:  # clients leave stray '&'s; they carry no field
        fields = [part for part in fields if part]
    check_count("form fields", len(fields), MAX_FORM_FIELDS)
    try:
        pairs = _pairs(fields, codec)
    except UnicodeError as exc:  # a percent-escape that is not valid text in the charset
        raise Rejected(400, f"form body is not valid {charset or 'utf-8'} text: {exc}",
                       check="form") from None
    except ValueError as exc:
        raise Rejected(400, f"malformed form body: {exc}", check="form") from None
    if charset:  # UTF-7 may decode to lone surrogates; UTF-8, read strictly, never does
        pairs = [(escape_text(key), escape_text(value)) for key, value in pairs]
    for key, value in pairs:
        if key in out:
            add_value(out, key, value)
        else:  # add_value's first value of a key, without a call for each field
            out[key] = value
    return out


def _pairs(fields: list[str], encoding: str) -> list[tuple[str, str]]:
    """Each `name=value` field's name and value, `+` read as a space and %-escapes decoded strictly in
    `encoding`, in order: what `parse_qsl(..., keep_blank_values=True, strict_parsing=True)` gives, and the
    same errors (ValueError for a field without `=`, UnicodeError for an escape that is not text), without
    its per-field copies when a field holds neither `+` nor `%` (most fields of most forms)."""
    pairs = []
    runs = [MAX_FORM_RUNS]  # what the form may still decode run by run (`_unquote`)
    for field in fields:
        name, eq, value = field.partition("=")
        if not eq:
            raise ValueError(f"bad query field: {quoted_sent(field)}")
        if "+" in field or "%" in field:
            name = _unquote(name, encoding, runs)
            value = _unquote(value, encoding, runs)
        pairs.append((name, value))
    return pairs


_UTF8 = frozenset({"utf-8", "utf_8"})
_NOT_AN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_NOT_ASCII = re.compile(r"([^\x00-\x7f]+)")


def unquote_bytes(raw: bytes) -> bytes:
    """What `urllib.parse.unquote_to_bytes` gives for `raw` (each `%` and two hex digits the byte they name, any
    other `%` itself), in a few calls into C however many escapes it holds: `unquote_to_bytes` decodes the escapes
    one by one in Python, a microsecond or more each (0.2-0.6 s for 1 MiB of `%C3%A9`).

    The escapes are handed to `binascii.a2b_qp` as quoted-printable ones (`%` made `=`), once every byte it would
    read otherwise is written as its own escape (`=` as `=3D`; CR and LF, which it takes for soft line breaks, as
    `=0D` and `=0A`). Each `=` that starts an escape then makes three bytes one, and any other `=` (from a `%`
    without two hex digits after it) at most two bytes one: the output's length tells whether all were escapes.
    When some `%` was not, each such `%` is first written as its own escape, `%25`, in one pass of a regular
    expression, and the whole decoded again."""
    if b"%" not in raw:
        return raw
    quoted = raw.replace(b"=", b"=3D").replace(b"\r", b"=0D").replace(b"\n", b"=0A").replace(b"%", b"=")
    out = binascii.a2b_qp(quoted)
    if len(out) == len(quoted) - 2 * quoted.count(b"="):
        return out
    return unquote_bytes(_NOT_AN_ESCAPE.sub(b"%25", raw))  # once: every `%` now starts an escape


def _unquote(text: str, encoding: str, runs: list[int]) -> str:
    """`text` with `+` read as a space and %-escapes decoded strictly in `encoding`: what `unquote(text, encoding,
    errors="strict")` gives, and a UnicodeDecodeError where it raises one. `unquote` decodes each run of ASCII
    characters (escapes and the characters between them) on its own, keeping the characters that are not ASCII
    between the runs as they are, and each escape in Python (0.2-0.6 s for 1 MiB of `%C3%A9`). Here the escapes are
    decoded in C (`unquote_bytes`) and, wherever that gives the same text, the whole text at once: one of ASCII alone
    (one run), or one in a character set whose bytes `_as_read` can give back. Only text that mixes escapes with
    other characters in a set of neither kind (UTF-16, UTF-32, UTF-7, HZ, ISO-2022) is decoded run by run, at most
    MAX_FORM_RUNS runs over the form (`runs`, what is left of them): a 413 past it."""
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    if text.isascii():
        return unquote_bytes(text.encode("ascii")).decode(encoding)
    if (raw := _as_read(text, encoding)) is not None:
        return unquote_bytes(raw).decode(encoding)
    pieces = _NOT_ASCII.split(text)  # runs of ASCII at the even places, the other characters between them
    runs[0] -= len(pieces) // 2 + 1
    if runs[0] < 0:
        raise Rejected(413, f"too many runs of ASCII text between other characters in a form in charset {encoding}: "
                            f"over {MAX_FORM_RUNS}, each decoded on its own in that charset; send the form as "
                            "UTF-8", check=LIMITS)
    pieces[::2] = [unquote_bytes(run.encode("ascii")).decode(encoding) for run in pieces[::2]]
    return "".join(pieces)


def _as_read(text: str, encoding: str) -> bytes | None:
    """The bytes `text` was read from in `encoding`, its %-escapes as they are, when decoding them at once gives
    what decoding each run of ASCII in it on its own gives (once its escapes are decoded), and a UnicodeDecodeError
    where that raises one; None for a character set where it may not.

    - UTF-8: a run's bytes never complete the character beside it, which starts with a lead byte, nor does the
      character beside a run complete an unfinished one at its end (a lead byte is no continuation byte);
    - a set read a byte at a time (`byte_table`): each byte is a character on its own;
    - an ASCII-compatible multi-byte set (`ASCII_MULTIBYTE`): its characters' bytes hold no `%` and no byte a run
      could end an escape with, but a run's last escapes could begin a character the next one's bytes end. So the
      runs are first decoded together with a NUL, which no character goes on with, in place of each character
      between them: that raises where a run alone would, and else the text decodes as its runs do."""
    try:
        if encoding in _UTF8:
            return text.encode("utf-8")
        if (table := byte_table(encoding)) is not None:
            return (text.translate(table) if table else text).encode("latin-1")
        if encoding in ASCII_MULTIBYTE:
            unquote_bytes(_NOT_ASCII.sub("\x00", text).encode("ascii")).decode(encoding)
            return text.encode(encoding)
    except UnicodeEncodeError:  # a character the set does not read (a lone surrogate)
        pass
    return None


class Part(NamedTuple):
    """One part of a multipart body, its content as raw bytes."""

    name: str
    filename: str | None
    content_type: str
    charset: str | None
    data: bytes
    content_id: str | None = None


def file_attachment(part: Part) -> Attachment:
    """A file part as an attachment: its base name, bare content type with the charset apart, and `inline`
    when the part has a Content-ID."""
    ctype = f"{part.content_type}; charset={part.charset}" if part.charset else part.content_type
    return attachment(part.filename, ctype, part.data, inline=part.content_id is not None)


def multipart_parts(body: bytes, content_type_header: str) -> list[Part]:
    """The parts of a multipart/form-data body, in order; Rejected(400) when it cannot be read."""
    boundary = _BOUNDARY.search(content_type_header)
    if boundary is None:
        if "boundary*" in content_type_header.lower():
            raise Rejected(400, "multipart body whose Content-Type gives its boundary only in RFC 2231's form "
                                "(boundary*=); a form's boundary is a plain parameter: boundary=…", check="form")
        raise Rejected(400, "multipart body without a boundary in its Content-Type", check="form")
    check_mime_shape(body, "the multipart body")
    # aiohttp read the header's bytes as UTF-8, keeping any other byte as a surrogate: this gives them back.
    sent = content_type_header.encode("utf-8", "surrogateescape")
    # counted before the parse, which costs far more per part than a count
    check_count("multipart parts", body.count(b"--" + boundary.group(1).encode("utf-8", "surrogateescape")) - 1,
                MAX_FORM_FIELDS)
    # The compat32 policy: header values stay text read by `Message`'s own light parameter parser; the
    # structured parse of the newer policies costs some 200 µs a part.
    # An attached message (message/rfc822) is kept as the bytes it was sent as, not parsed as a nested message.
    prefix = b"Content-Type: " + sent + b"\r\n\r\n"
    # On the event loop, a body of many lines is read only as far as parse_split builds its parts, of few header
    # lines in all; any other (nested parts, continuation lines, no delimiter) goes on in the parser thread.
    lines = text_lines(body) if on_loop() else 0
    bounded = lines > LOOP_PARSER_LINES
    message = parse_split(prefix, body, LOOP_PARSER_LINES if bounded else None)
    if message is None:
        if bounded:
            raise OffLoop(f"the multipart body of {lines} lines is read by the full MIME parser")
        message = BytesParser(_class=OpaqueMessage).parsebytes(prefix + body)
    check_parts(message, "the multipart body", MAX_FORM_FIELDS)
    found = message.get_boundary()
    if found is not None and not found.isascii():
        raise Rejected(400, f"multipart boundary {escape_text(found)!r} is not ASCII; RFC 2046 allows only "
                            "letters, digits and '()+_,-./:=? in it", check="form")
    if not message.is_multipart() or message.defects:
        reason = ", ".join(type(d).__name__ for d in message.defects) or "no parts"
        raise Rejected(400, f"malformed multipart body: {reason}", check="form")
    parts = []
    for part in message.get_payload():
        assert isinstance(part, Message)
        name, filename, content_type, charset, data, content_id = simple_fields(part) or _fields(part)
        parts.append(Part(decode_words(name), None if filename is None else basename(filename), content_type,
                          charset, data, content_id))
    return parts


def _fields(part: Message) -> Fields:
    """A part's fields read by the email package's readers, whatever form its headers take."""
    disposition = next((v for n, v in part.raw_items() if n.lower() == "content-disposition"), None)
    if isinstance(disposition, str) and not disposition.isascii():
        # Browsers send names and filenames as raw UTF-8, which the byte parser keeps as surrogates.
        part.replace_header("Content-Disposition", raw_utf8(disposition))
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str):
        raise Rejected(400, "multipart part without a name in its Content-Disposition", check="form")
    raw = part.get_payload(decode=True)
    # Read from the raw header: the standard parser takes a path's backslashes for quote escapes.
    filename = raw_param(part, "content-disposition", "filename")
    content_id = part.get("Content-ID")
    return Fields(name, filename, part.get_content_type(), part.get_content_charset(),
                  raw if isinstance(raw, bytes) else b"", content_id if isinstance(content_id, str) else None)


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def decode_part(part: Part, charset: str | None = None) -> str:
    """A text part as str, in `charset` (else the part's own, else UTF-8); Rejected(400) when it is not. A
    charset that decodes to lone surrogates (malformed UTF-7) has them written out, so that the text can be
    signed, logged and stored."""
    use = charset or part.charset or "utf-8"
    codec = _codec(use, f"multipart field {escape_text(part.name)[:80]!r}")
    try:
        return escape_text(part.data.decode(codec))
    except ValueError:
        raise Rejected(400, f"multipart field {quoted_sent(part.name)} is not valid {use} text", check="form") from None


def parse_multipart(body: bytes, content_type_header: str) -> dict[str, Any]:
    """Text parts become values; file parts become {filename, content_type, size, sha256}."""
    out: dict[str, Any] = {}
    for part in multipart_parts(body, content_type_header):
        if part.filename is not None:
            add_value(out, part.name, {"filename": part.filename, "content_type": part.content_type,
                                  "size": len(part.data), "sha256": hashlib.sha256(part.data).hexdigest()})
            continue
        add_value(out, part.name, decode_part(part))
    return out
