"""A multipart body's parts split with `bytes.find`, for the email package's parser to read only their
headers: the parser reads a body line by line in Python, some 2 µs a line, and a form's text part can hold
hundreds of thousands of lines.

The parser is given the same body with each part's content cut (its delimiter lines, header lines and the
line that ends them kept as they are), and each part's content is then put back as the parser would have
read it: the text from after its header block to the next delimiter line, less the line end that belongs to
that delimiter (RFC 2046). Everything the parser decides from the headers and the delimiters (the parts, their
headers, its defects) is then its own. Where a part's content is itself parsed (a nested multipart, a
message/delivery-status), or the Content-Type could be read differently, None tells the caller to parse the
whole body."""

from __future__ import annotations

import re
from email.message import Message
from email.parser import BytesParser
from typing import NamedTuple

from handlers.email import OpaqueMessage

# The parser's own patterns (email.feedparser), over bytes: the parser reads the body as ASCII, any other byte
# a surrogate, and splits lines at \r\n, \r and \n.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# What may follow the boundary on a delimiter line: `--` (the close delimiter), blanks, the line's end.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")


class _Delimiter(NamedTuple):
    start: int
    end: int  # after its line end
    close: bool


def parse_split(prefix: bytes, body: bytes) -> Message | None:
    """`prefix + body` parsed as `BytesParser(_class=OpaqueMessage)` parses it, `prefix` being the header
    block (a Content-Type line and a blank line), reading only the headers of the body's parts; None when
    the body has to be parsed whole. The preamble and epilogue, which the parser keeps apart, are left out."""
    head = prefix.removesuffix(b"\r\n\r\n")
    if b"\r" in head or b"\n" in head:
        return None
    parser = BytesParser(_class=OpaqueMessage)
    top = parser.parsebytes(prefix, headersonly=True)
    boundary = top.get_boundary() if top.get_content_maintype() == "multipart" else None
    if not boundary or not boundary.isascii():
        return None
    delimiters = _delimiters(body, ("--" + boundary).encode("ascii"))
    if not delimiters:
        return None
    cut = []
    for i, delimiter in enumerate(delimiters):
        stop = delimiters[i + 1].start if i + 1 < len(delimiters) else len(body)
        if (block := _header_block(body, delimiter.end, stop)) is None:
            return None
        cut.append(body[delimiter.start:block[0]])
    message = parser.parsebytes(prefix + b"".join(cut))
    parts = message.get_payload()
    spans = _part_spans(delimiters, len(body))
    if message.get_boundary() != boundary or not isinstance(parts, list) or len(parts) != len(spans):
        return None
    for part, (start, stop) in zip(parts, spans, strict=True):
        if not isinstance(part, Message):
            return None
        ctype = part.get_content_type()  # what get_content_maintype splits
        if ctype.partition("/")[0] == "multipart" or ctype == "message/delivery-status":
            return None
        if (block := _header_block(body, start, stop)) is None:
            return None
        content = body[block[1]:stop]
        part.set_payload(_without_line_end(content).decode("ascii", "surrogateescape"))
    return message


def _delimiters(body: bytes, separator: bytes) -> list[_Delimiter]:
    """The delimiter lines: `--boundary` at a line's start, then `--` or nothing, blanks, the line's end."""
    found = []
    at = body.find(separator)
    while at != -1:
        if at == 0 or body[at - 1] in b"\r\n":
            tail = _DELIMITER_TAIL.match(body, at + len(separator))
            if tail is not None:
                found.append(_Delimiter(at, tail.end(), tail.group(1) is not None))
        at = body.find(separator, at + 1)
    return found


def _part_spans(delimiters: list[_Delimiter], size: int) -> list[tuple[int, int]]:
    """Where each part the parser makes lies: from after a delimiter line (and the delimiter lines right
    below it, which the parser skips) to the next delimiter line or the end; none after the close delimiter."""
    spans = []
    k = 0
    while k < len(delimiters) and not delimiters[k].close:
        start = delimiters[k].end
        k += 1
        while k < len(delimiters) and delimiters[k].start == start:
            start = delimiters[k].end
            k += 1
        spans.append((start, delimiters[k].start if k < len(delimiters) else size))
    return spans


def _header_block(body: bytes, start: int, stop: int) -> tuple[int, int] | None:
    """For a part from start to stop: where the part's header lines and the line that ends them end, and
    where its content starts. A blank line ending them is the parser's to drop; another line is content. None
    when a header line starts with `From `: the parser reads such a line as an envelope line, a defect, or (the
    last one) the first line of the content, which is its to decide."""
    at = start
    while at < stop:
        end = _LINE_END.search(body, at, stop)
        line_end = stop if end is None else end.end()
        if not _HEADER_LINE.match(body, at, stop):
            return line_end, (line_end if body[at] in b"\r\n" else at)
        if body.startswith(b"From ", at):
            return None
        at = line_end
    return stop, stop


def _without_line_end(content: bytes) -> bytes:
    """`content` less one line end at its end (\r\n, \r or \n), which belongs to the delimiter below it."""
    if content.endswith(b"\r\n"):
        return content[:-2]
    return content[:-1] if content.endswith((b"\r", b"\n")) else content
