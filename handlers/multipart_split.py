"""A multipart body's parts split with `bytes.find`, for the email package's parser to read only their
headers: the parser reads a body line by line in Python, some 2 µs a line, and a form's text part can hold
hundreds of thousands of lines.

The parser is given the same body with each part's content cut (its delimiter lines, header lines and the
line that ends them kept as they are), and each part's content is then put back as the parser would have
read it: the text from after its header block to the next delimiter line, less the line end that belongs to
that delimiter (RFC 2046). Everything the parser decides from the headers and the delimiters (the parts, their
headers, its defects) is then its own. Where a part's content is itself parsed (a nested multipart, a
message/delivery-status), or the Content-Type could be read differently, None tells the caller to parse the
whole body.

In the common case the parser is not run at all: when the first delimiter opens a part, the parts end at a close
delimiter, and each part's header block is `Name: value` lines (no continuation lines) ended by a blank line
or by the next delimiter, the messages are built here as the parser builds them: each line a header, its value
less the blanks after the colon and the line end, as the compat32 policy's `header_source_parse` gives it; the
content cut as above; the preamble and epilogue as the parser keeps them. A body of any other shape is cut and
parsed as above."""

from __future__ import annotations

import re
import sys
from email.message import Message
from email.parser import BytesParser
from typing import NamedTuple

from bridge.offload import OffLoop
from handlers.email import OpaqueMessage

# The parser's own patterns (email.feedparser), over bytes: the parser reads the body as ASCII, any other byte
# a surrogate, and splits lines at \r\n, \r and \n.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# What may follow the boundary on a delimiter line: `--` (the close delimiter), blanks, the line's end.
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
# A header line as the built parts take it: a name (no `From ` envelope line, no line starting with `:`), then
# the value, its leading blanks apart, and the line's end. Possessive: nothing is given back, each byte is read once.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]++):[ \t]*+([^\r\n]*+)(?:\r\n|\r|\n)")


class _Delimiter(NamedTuple):
    start: int
    end: int  # after its line end
    close: bool


def parse_split(prefix: bytes, body: bytes, header_lines: int | None = None) -> Message | None:
    """`prefix + body` parsed as `BytesParser(_class=OpaqueMessage)` parses it, `prefix` being the header
    block (a Content-Type line and a blank line), reading only the headers of the body's parts; None when
    the body has to be parsed whole. The preamble and epilogue, which the parser keeps apart, are left out of
    a body that is cut and parsed; a body whose parts are built keeps them as the parser does.

    With `header_lines` (a parse on the event loop of a body of many lines), only parts built here are taken,
    of at most that many header lines in all: a body they cannot be built from raises OffLoop before the email
    package's parser reads a line of it, and so do more header lines, before the next is read."""
    head = prefix.removesuffix(b"\r\n\r\n")
    if b"\r" in head or b"\n" in head:
        return None
    parser = BytesParser(_class=OpaqueMessage)
    top = _top(head) if head != prefix else None
    if top is None:
        top = parser.parsebytes(prefix, headersonly=True)
    boundary = top.get_boundary() if top.get_content_maintype() == "multipart" else None
    if not boundary or not boundary.isascii():
        return None
    delimiters = _delimiters(body, ("--" + boundary).encode("ascii"))
    if not delimiters:
        return None
    if (built := _built(top, body, delimiters, header_lines)) is not None:
        return built
    if header_lines is not None:
        raise OffLoop("the multipart body's parts are not all of the shape read without the MIME parser")
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


def _top(head: bytes) -> Message | None:
    """The message the parser makes of the header block `head` and a blank line, `head` being one line without
    its line end: its one header, no payload yet; None when that line is not a `Name: value` line."""
    field = _FIELD.match(head + b"\r\n")
    if field is None:
        return None
    top = OpaqueMessage()
    top.set_raw(field[1].decode("ascii"), field[2].decode("ascii", "surrogateescape"))
    return top


def _built(top: Message, body: bytes, delimiters: list[_Delimiter], header_lines: int | None) -> Message | None:
    """`top` with the parts of `body` built as the parser builds them, its preamble and epilogue as the parser
    keeps them; None when the body is not of the common shape (see the module's docstring). OffLoop past
    `header_lines` header lines in all, when given."""
    room = sys.maxsize if header_lines is None else header_lines
    if delimiters[0].close:
        return None  # the parser takes it for the end of a multipart whose start it never saw, a defect
    digest = top.get_content_type() == "multipart/digest"  # its parts' default type is message/rfc822
    parts: list[Message | str] = []  # as set_payload is typed
    k = 0
    while True:  # the spans of _part_spans; the last must end at a close delimiter
        start = delimiters[k].end
        k += 1
        while k < len(delimiters) and delimiters[k].start == start:
            start = delimiters[k].end
            k += 1
        if k == len(delimiters):
            return None  # no close delimiter: the parser reads to the end and notes a defect
        if (part := _built_part(body, start, delimiters[k].start, digest, room)) is None:
            return None
        room -= len(part)  # its header lines
        parts.append(part)
        if delimiters[k].close:
            break
    first, close = delimiters[0], delimiters[k]
    if first.start:  # the preamble less the line end that belongs to the first delimiter
        top.preamble = _without_line_end(body[:first.start]).decode("ascii", "surrogateescape")
    top.epilogue = body[close.end:].decode("ascii", "surrogateescape")  # all after the close delimiter's line
    top.set_payload(parts)
    return top


def _built_part(body: bytes, start: int, stop: int, digest: bool, room: int) -> Message | None:
    """The part from start to stop (the next delimiter line) as the parser builds it, when its header lines
    are all `Name: value` lines ended by a blank line or by the delimiter; else None. OffLoop at a header
    line past `room` more."""
    part = OpaqueMessage()
    if digest:
        part.set_default_type("message/rfc822")
    typed = False
    at = start
    while (field := _FIELD.match(body, at, stop)) is not None:
        if room <= 0:
            raise OffLoop("the multipart body's parts have more header lines than are read on the event loop")
        room -= 1
        name = field[1]
        part.set_raw(name.decode("ascii"), field[2].decode("ascii", "surrogateescape"))
        typed = typed or name.lower() == b"content-type"
        at = field.end()
    if at < stop:
        blank = _LINE_END.match(body, at, stop)
        if blank is None:  # a continuation, envelope or other line, or content where the blank line should be
            return None
        at = blank.end()
    if typed:
        ctype = part.get_content_type()
        if ctype.partition("/")[0] == "multipart" or ctype == "message/delivery-status":
            return None
    part.set_payload(_without_line_end(body[at:stop]).decode("ascii", "surrogateescape"))
    return part


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
