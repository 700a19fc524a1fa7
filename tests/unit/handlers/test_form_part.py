"""handlers/form_part.py: a form part's fields read from its raw headers with strict patterns must be what the
email package's readers give (the path every part took before), part for part, or the same refusal; and an
ordinary provider's form must take the quick path."""

from __future__ import annotations

from email.message import Message
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from handlers import formdata
from handlers.email import OpaqueMessage
from handlers.form_part import simple_fields
from handlers.formdata import multipart_parts, parse_multipart
from tests.fixtures.providers import sendgrid_multipart

B = "xYzZY"
CTYPE = f"multipart/form-data; boundary={B}"


def run(read: Any, body: bytes, ctype: str) -> object:
    try:
        return read(body, ctype)
    except Rejected as exc:
        return exc.status, str(exc)


def before(read: Any, body: bytes, ctype: str) -> object:
    """What `read` gave before: every part read by the email package's readers, the parser reading the
    whole body."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(formdata, "simple_fields", lambda part: None)
        patch.setattr(formdata, "parse_split", lambda prefix, body, header_lines=None: None)
        return run(read, body, ctype)


def same(body: bytes, ctype: str = CTYPE) -> None:
    assert run(multipart_parts, body, ctype) == before(multipart_parts, body, ctype)
    assert run(parse_multipart, body, ctype) == before(parse_multipart, body, ctype)


# Text for names, file names and other values: quotes, escapes, separators, RFC 2047 words, RFC 2231's
# percent escapes, non-ASCII text, and lone surrogates (bytes that are not UTF-8, as the parser keeps them).
TEXT = st.text(alphabet='ab "\\;=%\'*<>/:.?\t\xe9\u2713\udce9\udcff\x0b\x85\u3000', max_size=8) | st.sampled_from([
    "=?utf-8?q?caf=C3=A9?=", "=?utf-8?b?w6k=?= =?utf-8?q?x?=", "C:\\Users\\asha\\r.pdf", "a/b/c.txt", "\u2713.txt",
    "caf\udce9", "", " x ", "<x>", "utf-8''%C3%A9", "''", "a\\\"b", "a\\\\b", "x\\", "\\\\\\",
])
PARAM = st.sampled_from(["name", "filename", "NAME", "Filename", "name*", "filename*", "name*0", "name*1",
                         "name*0*", "filename*0*", "charset", "x"])
VALUE = st.one_of(TEXT.map(lambda t: f'"{t}"'), TEXT, st.sampled_from(["utf-8''%C3%A9", "iso-8859-1'en'%E9",
                                                                         "x''%ZZ", '"unclosed', 'a"b"c']))
SEPARATOR = st.sampled_from(["; ", ";", " ; ", ";\t", "; \r\n "])
PARAMS = st.lists(st.tuples(SEPARATOR, PARAM, VALUE).map(lambda p: f"{p[0]}{p[1]}={p[2]}"), max_size=4)
DISPOSITION = st.one_of(
    st.tuples(st.sampled_from(["form-data", "FORM-DATA", "attachment", "", "form-data "]), PARAMS)
    .map(lambda d: d[0] + "".join(d[1])),
    st.tuples(TEXT, st.none() | TEXT).map(
        lambda n: f'form-data; name="{n[0]}"' + ("" if n[1] is None else f'; filename="{n[1]}"')),
)
CONTENT_TYPE = st.one_of(
    st.tuples(st.sampled_from(["text/plain", "TEXT/HTML", "image/jpeg", "application/octet-stream", "textplain",
                               "a/b/c", "message/rfc822", "text/plain ", "text/\xe9", "*/*"]),
              st.lists(st.tuples(SEPARATOR, st.sampled_from(["charset", "Charset", "charset*", "name"]),
                                 st.sampled_from(["utf-8", '"UTF-8"', "iso-8859-1", '""', "", "utf-8''x", "\xe9",
                                                  '"utf-8', "us-ascii "])).map(lambda p: f"{p[0]}{p[1]}={p[2]}"),
                       max_size=2))
    .map(lambda c: c[0] + "".join(c[1])),
    TEXT,
)
ENCODING = st.sampled_from(["base64", "BASE64", " base64", "quoted-printable", "7bit", "8bit", "binary",
                            "x-uuencode", "uue", "b\xe9", ""])
CONTENT_ID = st.sampled_from(["<a@b>", "", "<caf\udce9@x>", "x"])
HEADER = st.one_of(
    st.tuples(st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"]), DISPOSITION),
    st.tuples(st.sampled_from(["Content-Type", "content-type"]), CONTENT_TYPE),
    st.tuples(st.just("Content-Transfer-Encoding"), ENCODING),
    st.tuples(st.sampled_from(["Content-ID", "content-id"]), CONTENT_ID),
    st.tuples(st.sampled_from(["X-Other", "Content-Length"]), TEXT),
)
CONTENT = st.binary(max_size=12) | st.sampled_from([b"aGVsbG8=", b"caf=C3=A9=\r\nx", b"\xff\xfe\r\n",
                                                     b"begin 644 x\n#86)C\n`\nend\n"])


def assemble(parts: list[tuple[list[tuple[str, str]], bytes]], newline: str) -> bytes:
    out = []
    for headers, content in parts:
        head = f"--{B}{newline}" + "".join(f"{name}: {value}{newline}" for name, value in headers) + newline
        out.append(head.encode("utf-8", "surrogateescape") + content + newline.encode())
    return b"".join(out) + f"--{B}--{newline}".encode()


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.tuples(st.lists(HEADER, max_size=4), CONTENT), min_size=1, max_size=4),
       st.sampled_from(["\r\n", "\n"]))
def test_any_part_gives_what_the_email_package_gives(parts: list[tuple[list[tuple[str, str]], bytes]],
                                                    newline: str) -> None:
    """Any headers in any order, repeated or missing, simple or not: the same parts or the same refusal."""
    same(assemble(parts, newline))


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(TEXT, st.none() | TEXT, st.none() | CONTENT_TYPE, CONTENT), min_size=1, max_size=4))
def test_any_ordinary_form_gives_what_the_email_package_gives(fields: list[tuple[str, str | None, str | None,
                                                                                 bytes]]) -> None:
    """Forms as browsers and providers write them, names and file names of any text: the same parts."""
    parts = []
    for name, filename, ctype, content in fields:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        headers = [("Content-Disposition", disposition)] + ([] if ctype is None else [("Content-Type", ctype)])
        parts.append((headers, content))
    same(assemble(parts, "\r\n"))


@pytest.mark.parametrize("header", [
    'form-data; name="a"', 'form-data; name="a"; filename="r.pdf"', 'form-data; name="caf\u00e9"',
    'form-data; name="caf\udce9"', 'form-data; name=""; filename=""', 'form-data; name="=?utf-8?q?x?="',
])
@pytest.mark.parametrize("ctype", [None, "text/plain", "TEXT/Plain; charset=UTF-8", 'text/plain;charset="x"'])
def test_simple_headers_take_the_quick_path(header: str, ctype: str | None) -> None:
    """A plain disposition and a bare Content-Type (with a charset) are read without `get_param`."""
    body = f"--{B}\r\nContent-Disposition: {header}\r\n" + ("" if ctype is None else f"Content-Type: {ctype}\r\n")
    data = body.encode("utf-8", "surrogateescape") + b"\r\n\xff1\r\n" + f"--{B}--\r\n".encode()
    message = OpaqueMessage()
    message["Content-Disposition"] = header
    if ctype is not None:
        message["Content-Type"] = ctype
    message.set_payload("\udcff1")
    assert simple_fields(message) is not None
    same(data)


@pytest.mark.parametrize("header", [
    'form-data; name="a\\"b"', 'form-data; name="C:\\x"', 'form-data; name=a', 'form-data; name*=utf-8\'\'x',
    'form-data; filename="f"; name="a"', 'form-data; name="a"; name="b"', 'form-data; name="a" ',
    'form-data;name="a"', 'form-data; name="a;b"',
])
def test_other_headers_are_left_to_the_email_package(header: str) -> None:
    """Escapes, unquoted or RFC 2231 values, other orders, repeats and blanks take the general readers."""
    message = OpaqueMessage()
    message["Content-Disposition"] = header
    message.set_payload("x")
    assert simple_fields(message) is None
    same(f"--{B}\r\nContent-Disposition: {header}\r\n\r\nx\r\n--{B}--\r\n".encode())


def test_a_provider_form_takes_the_quick_path_for_every_part(monkeypatch: pytest.MonkeyPatch) -> None:
    """SendGrid's form: every part is read by the strict patterns, none by the general readers."""
    def general(part: Message) -> None:
        raise AssertionError(f"general reader for {part.items()}")

    monkeypatch.setattr(formdata, "_fields", general)
    body, ctype = sendgrid_multipart()
    parts = multipart_parts(body, ctype)
    assert len(parts) == 18
    assert parts[-1].filename == "router.jpg"
    assert parts[-1].content_type == "image/jpeg"
    monkeypatch.undo()
    same(body, ctype)
