"""The request path's parsers grow linearly on hostile inputs: 8x the input costs at most ~16x the time.
Each input is one an attacker would choose against the parser's old shape (a list searched per item, a
sort per name, a pattern rescanned from each start, a structured parse per header token or per part)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from handlers import email as email_module
from handlers.email import (
    Headers,
    address_list,
    decode_words,
    email_payload,
    message_files,
    message_ids,
    parse_mime,
    parse_mime_text,
    sender,
)
from handlers.formdata import parse_multipart, parse_urlencoded
from handlers.intercom import html_text
from handlers.twilio import signature
from tests.complexity.scaling import assert_linear

BOUNDARY = "XyZ"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def addresses(n: int) -> str:
    return ", ".join(f"user{i}@example.com" for i in range(n))


def references(n: int) -> str:
    return " ".join(f"<id{i}.thread@mail.example.com>" for i in range(n))


def twilio_params(n: int) -> list[tuple[str, str]]:
    return [(f"Key{i}", f"value{i}") for i in range(n)] + [("Body", "hi")] * 3


def urlencoded(n: int) -> bytes:
    return "&".join(f"field{i}=value+{i}" for i in range(n)).encode()


def multipart(n: int) -> bytes:
    parts = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="field{i}"\r\n\r\nvalue {i}\r\n' for i in range(n))
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


def header_block(n: int) -> str:
    return f"From: a@example.com\r\nTo: {addresses(n)}\r\nReferences: {references(n // 4)}\r\nSubject: hi\r\n\r\n"


def mime_parts(n: int) -> bytes:
    parts = "".join(f"--{BOUNDARY}\r\nContent-Type: text/plain; name=\"n{i}.txt\"\r\n"
                    f"Content-Disposition: attachment; filename=\"n{i}.txt\"\r\n\r\nv\r\n" for i in range(n))
    return (f"From: a@example.com\r\nContent-Type: multipart/mixed; boundary={BOUNDARY}\r\n\r\n{parts}"
            f"--{BOUNDARY}--\r\n").encode()


def mime_nested(n: int) -> bytes:
    preamble = "\r\n" * 50  # lines the parser checks against every open section's boundary
    head = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n{preamble}--b{i}\r\n" for i in range(n))
    tail = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(n)))
    return f"{head}Content-Type: text/plain\r\n\r\nhi{tail}".encode()


def mime_long_content_type(n: int) -> bytes:
    params = "".join(f'; p{i}="v{i}"' for i in range(n))
    return f"From: a@example.com\r\nContent-Type: text/plain{params}\r\n\r\nhi\r\n".encode()


def mime_many_lines(n: int) -> bytes:
    body = "line\r\n" * n
    return (f"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/alternative; "
            f"boundary=i\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\n{body}\r\n--i--\r\n--o--\r\n").encode()


def mime_path_name(n: int) -> bytes:
    path = "C:" + "\\dir" * n + "\\report.pdf"  # a path the name is the base of, backslashes kept
    return (f"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            f'--o\r\nContent-Disposition: attachment; filename="{path}"\r\n\r\nx\r\n--o--\r\n').encode()


def mime_rfc2231_name(n: int) -> bytes:
    pieces = "".join(f"; filename*{i}*=utf-8''%C3%BC{i}" for i in range(n))  # continuations, collapsed into one
    return (f"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            f"--o\r\nContent-Disposition: attachment{pieces}\r\n\r\nx\r\n--o--\r\n").encode()


def mime_attached_messages(n: int) -> bytes:
    inner = "From: a@example.com\r\nSubject: fwd\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n--in--\r\n"
    parts = "".join(f"--{BOUNDARY}\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n" for _ in range(n))
    return (f"From: a@example.com\r\nContent-Type: multipart/mixed; boundary={BOUNDARY}\r\n\r\n{parts}"
            f"--{BOUNDARY}--\r\n").encode()


def mime_undecodable_param(n: int) -> bytes:
    # idna is no character set: the name is read as UTF-8, and the rest of the header after it
    stars = "*=" * n
    return f"Content-Type: application/pdf; name*=idna''%FF; x={stars}\r\n\r\nx\r\n".encode()


def payload_of_raw(raw: bytes) -> dict[str, Any]:
    """The raw-message path a provider's `body-mime`/`RawEmail` takes: parsed, then normalised."""
    mime = parse_mime_text(raw, "the message")
    return email_payload(from_=None, to=None, cc=None, subject=None, text=None, html=None, stripped_text=None,
                         message_id_=None, in_reply_to=None, references=None,
                         attachments=message_files(mime, []), provider={}, mime=mime)


def mime_named_recipients(n: int) -> bytes:
    names = ", ".join(f"=?utf-8?q?J=C3=B6rg_{i}?= <j{i}@example.com>" for i in range(n))
    return f"From: a@example.com\r\nTo: {names}\r\nReply-To: {names}\r\nDate: {'x' * n}\r\n\r\nhi\r\n".encode()


CASES: dict[str, tuple[Any, Any, int]] = {
    "address_list: a To field of n addresses": (address_list, addresses, 2_000),
    "message_ids: a References field of n ids": (message_ids, references, 1_000),
    "urlencoded form: n fields": (parse_urlencoded, urlencoded, 500),
    "urlencoded form: one key repeated n times": (parse_urlencoded, lambda n: b"&".join([b"k=v"] * n), 500),
    "urlencoded form: a value of n `%` that are no escapes": (parse_urlencoded, lambda n: b"k=" + b"%" * n, 20_000),
    "urlencoded latin-1 form: n raw characters between escapes": (
        lambda b: parse_urlencoded(b, "latin-1"), lambda n: b"k=" + b"\xe9%41" * n, 5_000),
    "multipart form: n parts": (lambda b: parse_multipart(b, MULTIPART), multipart, 100),
    "header block: n addresses and n/4 references": (Headers.from_block, header_block, 1_000),
    "header block: a field folded n times": (Headers.from_block, lambda n: "X: a" + "\r\n b" * n + "\r\n\r\n", 2_000),
    "header block: n fields, the last an envelope line": (
        Headers.from_block, lambda n: "X: y\r\n" * min(n, 900) + "Y:" + " " * n + "\r\nFrom x\r\n", 2_000),
    "encoded words: n unterminated words": (decode_words, lambda n: "=?a?q?x" * n, 1_000),
    "encoded-word shield: n unterminated words": (email_module._shield_encoded_words, lambda n: "=?a?q?x" * n, 1_000),
    "encoded-word shield: n words with commas, then an open comment": (
        email_module._shield_encoded_words, lambda n: "=?a?q?x,y?= <a@b>, " * n + "(" * n, 300),
    "address_list: a To of n encoded names holding commas": (
        address_list, lambda n: ", ".join(f"=?utf-8?q?Doe,_J{i}?= <j{i}@b.example>" for i in range(n)), 100),
    "MIME: n attachment parts": (parse_mime, mime_parts, 25),
    "MIME: n nested multipart sections, 50 lines each": (parse_mime, mime_nested, 40),
    "MIME: a Content-Type of n parameters": (parse_mime, mime_long_content_type, 1_000),
    "MIME: n lines inside two sections": (parse_mime, mime_many_lines, 4_000),
    "MIME: a file name that is a path of n folders": (parse_mime, mime_path_name, 100),
    "MIME: an RFC 2231 file name in n continuations": (parse_mime, mime_rfc2231_name, 40),
    "MIME: n attached messages, kept as bytes": (parse_mime, mime_attached_messages, 25),
    "MIME: an undecodable RFC 2231 parameter, then n '*='": (parse_mime, mime_undecodable_param, 500),
    "raw message to payload: n named To and Reply-To addresses": (payload_of_raw, mime_named_recipients, 100),
    "intercom html: n unclosed tags": (html_text, lambda n: "<" * n, 2_000),
    "sender: a From of n comments, escaped quotes and brackets": (
        sender, lambda n: '(a \\) (<c@d>)) "b\\" <e@f>" <g@h>, ' * n, 70),
    "sender: a From of n nested comments left open": (sender, lambda n: "a@b.example " + "(x " * n, 300),
    # The From reader alone, without the From's cap: routes, comments and quoted words in brackets; group names
    # and quoted strings, then a quote left open.
    "From reader: n mailboxes of one address, each in brackets with a route and comments": (
        email_module._from_addresses, lambda n: 'A (x) <@r.example:"a" (c) . b @ c . example (d)>, ' * n, 300),
    "From reader: n group names and quoted strings, then a quote left open": (
        email_module._from_addresses, lambda n: 'G "a@b.example": "c@d.example" (e@f.example), ' * n + '"', 300),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parser_grows_linearly(case: str) -> None:
    """The parser costs at most ~16x more on an 8x larger hostile input."""
    run, make, n = CASES[case]
    assert_linear(run, make, n)


class CountingParams(list[tuple[str, str]]):
    """Form parameters that count how many of them are read: the signature's work, without a clock."""

    reads = 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for item in super().__iter__():
            self.reads += 1
            yield item


def test_twilio_signature_reads_each_parameter_a_bounded_number_of_times() -> None:
    """Twilio's signature reads its parameters in proportion to their number, not once per distinct name."""
    reads = []
    for n in (500, 4_000):
        params = CountingParams(twilio_params(n))
        signature("token", "https://x.test/hook", params)
        reads.append(params.reads)
    assert reads[1] <= 10 * reads[0], f"8x the keys read the parameters {reads[1] / reads[0]:.0f}x as often"
