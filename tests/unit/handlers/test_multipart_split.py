"""handlers/multipart_split.py: a multipart form split with bytes.find, the parser reading only the parts'
headers, must give what the parser gives reading the whole body: the same parts, or the same refusal."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import Message
from email.parser import BytesParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from handlers import formdata, multipart_split
from handlers.email import OpaqueMessage
from handlers.formdata import Part, multipart_parts
from handlers.multipart_split import parse_split
from tests.fixtures.providers import sendgrid_multipart

B = "xYzZY"
CTYPE = f"multipart/form-data; boundary={B}"


def whole(body: bytes, ctype: str) -> list[Part] | tuple[int, str]:
    """What multipart_parts gave before: the parser reading the whole body."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formdata, "parse_split", lambda prefix, body, header_lines=None: None)
        return split(body, ctype)


def split(body: bytes, ctype: str) -> list[Part] | tuple[int, str]:
    try:
        return multipart_parts(body, ctype)
    except Rejected as exc:
        return exc.status, str(exc)


def same(body: bytes, ctype: str = CTYPE) -> None:
    assert split(body, ctype) == whole(body, ctype)
    prefix = f"Content-Type: {ctype}\r\n\r\n".encode()
    if (fast := built(prefix, body)) is not None:
        assert structure(fast) == structure(BytesParser(_class=OpaqueMessage).parsebytes(prefix + body))


def structure(message: Message) -> Any:
    """All the parser decides about a message: envelope line, raw headers, default type, defects, preamble,
    epilogue, and its parts' structures or its text."""
    payload = message.get_payload()
    return (message.get_unixfrom(), list(message.raw_items()), message.get_default_type(),
            [type(d).__name__ for d in message.defects], message.preamble, message.epilogue,
            [structure(p) for p in payload] if isinstance(payload, list) else payload)


class _ParserRun(Exception):
    pass


class _NoParser:
    """In place of BytesParser: any parse raises _ParserRun."""

    def __init__(self, **_kwargs: object) -> None:
        pass

    def parsebytes(self, *_args: object, **_kwargs: object) -> Message:
        raise _ParserRun


def built(prefix: bytes, body: bytes) -> Message | None:
    """What parse_split gives when it builds the parts itself; None when it would run the parser (to cut
    the body) or leave the body to the whole parse."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multipart_split, "BytesParser", _NoParser)
        try:
            return parse_split(prefix, body)
        except _ParserRun:
            return None


@pytest.fixture
def counted_parses() -> Iterator[list[int]]:
    """How many times parse_split runs the parser."""
    runs = [0]

    class Counted(BytesParser):
        def parsebytes(self, *args: Any, **kwargs: Any) -> Message:
            runs[0] += 1
            return super().parsebytes(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(multipart_split, "BytesParser", Counted)
        yield runs


# Pieces of a form body near every edge of the split: delimiters where a line starts and where it does not,
# close delimiters early, twice or missing, blanks after a delimiter, header lines without the blank line
# below them, parts nested or encoded, line ends of every kind, bytes that are not UTF-8.
PIECES = [
    f"--{B}", f"--{B}--", f"--{B}  ", f"--{B}--\t", f"--{B}x", f" --{B}", f"x--{B}", f"--{B}-", f"----{B}",
    'Content-Disposition: form-data; name="a"', 'Content-Disposition: form-data; name="f"; filename="f.txt"',
    "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64",
    "Content-Transfer-Encoding: quoted-printable", f'Content-Type: multipart/mixed; boundary="{B}2"',
    f"--{B}2", f"--{B}2--", "Content-Type: message/rfc822", "Content-Type: message/delivery-status",
    "From: a@b.c", "From nobody", "Subject: x", " folded", "\tfolded", "", "", "", "text", "aGVsbG8=",
    "a=3D=C3=A9", "x: y", ":", "\x0c", "\xff\xfe raw", "caf\xe9", "ok",
]


def assemble(pieces: list[str], ends: list[str]) -> bytes:
    return b"".join(p.encode("latin-1") + e.encode() for p, e in zip(pieces, ends, strict=True))


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PIECES) | st.text(alphabet="ab-:\r\n \t\xe9", max_size=8),
                          st.sampled_from(["\r\n", "\n", "\r", ""])), max_size=30))
def test_any_body_gives_what_the_whole_parse_gave(lines: list[tuple[str, str]]) -> None:
    """Any body made of those pieces, with any line ends: the same parts or the same refusal."""
    body = assemble([p for p, _ in lines], [e for _, e in lines])
    same(body)
    same(f'--{B}\r\nContent-Disposition: form-data; name="lead"\r\n\r\nx\r\n'.encode() + body)


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"])
def test_a_boundary_inside_a_part_not_at_a_line_start_is_content(newline: bytes) -> None:
    """The boundary inside a line, or followed by more than `--` and blanks, is the part's content."""
    body = newline.join([f"--{B}".encode(), b'Content-Disposition: form-data; name="a"', b"",
                         f"x--{B}".encode(), f"--{B}x".encode(), f"--{B}--y".encode(), f"--{B}--".encode(), b""])
    [part] = multipart_parts(body, CTYPE)
    assert part.data == newline.join([f"x--{B}".encode(), f"--{B}x".encode(), f"--{B}--y".encode()])
    same(body)


def test_content_keeps_its_bytes_and_loses_one_line_end() -> None:
    """A part's content is its bytes as sent, 8-bit ones included, less the line end before the delimiter."""
    body = (f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\xfe\r\n\r\n\r\n--{B}--\r\n'
            ).encode("latin-1")
    [part] = multipart_parts(body, CTYPE)
    assert part.data == b"\xff\xfe\r\n\r\n"
    same(body)


@pytest.mark.parametrize("body", [
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--{B}\r\n--{B}--\r\nContent-Disposition: '
    f'form-data; name="b"\r\n\r\ny\r\n--{B}--\r\n',  # a close delimiter right below a delimiter is skipped
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx',  # no close delimiter
    f'preamble\r\n--{B}\r\nContent-Disposition: form-data; name="a"\r\nno blank line\r\n--{B}--\r\nepilogue',
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n--{B}--',  # headers and no content
    f'--{B}--\r\n',  # a close delimiter and no part
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n--{B}--',
    # A line starting `From ` among a part's headers: an envelope line first, a defect in the middle, and last the
    # first line of the content, which the parser pushes back (with or without the blank line below it).
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\nFrom me\r\n\r\nhello\r\n--{B}--\r\n',
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\nFrom me\r\nhello\r\n--{B}--\r\n',
    f'--{B}\r\nFrom me\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--{B}--\r\n',
    f'--{B}\r\nContent-Disposition: form-data; name="a"\r\nFrom me\r\nX: y\r\n\r\nhello\r\n--{B}--\r\n',
])
def test_edge_bodies(body: str) -> None:
    """Doubled and missing delimiters, no blank line under the headers, no part at all, encoded content."""
    same(body.encode())


def test_a_nested_multipart_is_left_to_the_whole_parse() -> None:
    """A part whose content the parser parses (a nested multipart) sends the body to the whole parse."""
    body = (f'--{B}\r\nContent-Disposition: form-data; name="a"\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n'
            f'--in\r\nContent-Type: text/plain\r\n\r\nx\r\n--in--\r\n--{B}--\r\n').encode()
    assert parse_split(f"Content-Type: {CTYPE}\r\n\r\n".encode(), body) is None
    same(body)


def test_the_parts_and_their_headers_are_the_parsers() -> None:
    """Part for part, the headers and content are what the whole parse reads."""
    body = (f'pre\r\n--{B}\r\nContent-Disposition: form-data; name="a"\r\nX-Folded: one\r\n two\r\n\r\n'
            f"line 1\nline 2\r\n--{B}\r\nContent-Disposition: form-data; name=b\r\n\r\n\r\n--{B}--\r\nafter").encode()
    prefix = f"Content-Type: {CTYPE}\r\n\r\n".encode()
    fast = parse_split(prefix, body)
    slow = BytesParser(_class=OpaqueMessage).parsebytes(prefix + body)
    assert fast is not None
    fast_parts, slow_parts = fast.get_payload(), slow.get_payload()
    assert isinstance(fast_parts, list) and isinstance(slow_parts, list)
    assert [(p.items(), p.get_payload()) for p in fast_parts if isinstance(p, Message)] == \
        [(p.items(), p.get_payload()) for p in slow_parts if isinstance(p, Message)]
    assert len(fast_parts) == len(slow_parts) == 2
    assert fast.defects == slow.defects == []


def test_a_text_part_of_200000_lines_is_split_whole() -> None:
    """SendGrid's raw mail of 200,000 lines: one part, its content exactly the mail."""
    mail = b"Subject: log\r\n\r\n" + b"ok\r\n" * 200_000
    head = f'--{B}\r\nContent-Disposition: form-data; name="email"\r\n\r\n'.encode()
    body = head + mail + f"\r\n--{B}--\r\n".encode()
    [part] = multipart_parts(body, CTYPE)
    assert part.data == mail


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_an_ordinary_form_is_built_without_the_parser(newline: str, counted_parses: list[int]) -> None:
    """`Name: value` header lines and a blank line, in every part: the parts are built, the parser never runs,
    and the message is the one the parser makes of the whole body, preamble and epilogue included."""
    body, ctype = sendgrid_multipart()
    body = b"preamble\r\n" + body.replace(b"\r\n", newline.encode()) + b"epilogue"
    prefix = f"Content-Type: {ctype}\r\n\r\n".encode()
    fast = parse_split(prefix, body)
    assert fast is not None and counted_parses == [0]
    slow = BytesParser(_class=OpaqueMessage).parsebytes(prefix + body)
    assert structure(fast) == structure(slow)
    assert len(slow.get_payload()) == 18
    same(body, ctype)


@pytest.mark.parametrize(("body", "why"), [
    (f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n folded\r\n\r\nx\r\n--{B}--\r\n', "continuation line"),
    (f'--{B}\r\n folded\r\nX: y\r\n\r\nx\r\n--{B}--\r\n', "first line a continuation"),
    (f'--{B}\r\n:x\r\n\r\nx\r\n--{B}--\r\n', "line starting with a colon"),
    (f'--{B}\r\nX: y\r\ncontent\r\n--{B}--\r\n', "no blank line below the headers"),
    (f'--{B}\r\nX: y\r\n\r\nx\r\n--{B}\r\nX: y\r\n\r\nx\r\n', "no close delimiter"),
])
def test_other_shapes_are_cut_and_parsed(body: str, why: str, counted_parses: list[int]) -> None:
    """A part the builder does not read goes to the cut parse, which gives what the whole parse gives."""
    assert built(f"Content-Type: {CTYPE}\r\n\r\n".encode(), body.encode()) is None, why
    same(body.encode())
    assert counted_parses[0] >= 1


@pytest.mark.parametrize("ctype", [f"multipart/digest; boundary={B}", f"multipart/mixed; boundary={B}",
                                   f'multipart/form-data; boundary="{B}"; charset=utf-8'])
def test_built_parts_take_the_parsers_default_type(ctype: str) -> None:
    """The parts of a multipart/digest are message/rfc822 unless they say otherwise."""
    body = f"--{B}\r\nX-A:  b \t\r\n\r\nx\r\n--{B}\r\nContent-Type: text/plain\r\n\r\ny\r\n--{B}--".encode()
    fast = built(f"Content-Type: {ctype}\r\n\r\n".encode(), body)
    assert fast is not None
    parts = fast.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == \
        ["message/rfc822" if "digest" in ctype else "text/plain", "text/plain"]
    assert parts[0].items() == [("X-A", "b \t")]
    same(body, ctype)


@pytest.mark.parametrize("ctype", ["multipart/mixed; boundary=in", "message/delivery-status", "Multipart/X"])
def test_a_part_the_parser_reads_inside_is_not_built(ctype: str) -> None:
    """A nested multipart or a delivery status: the parser reads its content, so the builder leaves it."""
    body = f"--{B}\r\nContent-Type: {ctype}\r\n\r\n--in\r\n\r\nx\r\n--in--\r\n--{B}--\r\n".encode()
    assert built(f"Content-Type: {CTYPE}\r\n\r\n".encode(), body) is None
    same(body)
