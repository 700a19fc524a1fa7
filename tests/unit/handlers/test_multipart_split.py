"""handlers/multipart_split.py: a multipart form split with bytes.find, the parser reading only the parts'
headers, must give what the parser gives reading the whole body: the same parts, or the same refusal."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from handlers import formdata
from handlers.email import OpaqueMessage
from handlers.formdata import Part, multipart_parts
from handlers.multipart_split import parse_split

B = "xYzZY"
CTYPE = f"multipart/form-data; boundary={B}"


def whole(body: bytes, ctype: str) -> list[Part] | tuple[int, str]:
    """What multipart_parts gave before: the parser reading the whole body."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formdata, "parse_split", lambda prefix, body: None)
        return split(body, ctype)


def split(body: bytes, ctype: str) -> list[Part] | tuple[int, str]:
    try:
        return multipart_parts(body, ctype)
    except Rejected as exc:
        return exc.status, str(exc)


def same(body: bytes, ctype: str = CTYPE) -> None:
    assert split(body, ctype) == whole(body, ctype)


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
