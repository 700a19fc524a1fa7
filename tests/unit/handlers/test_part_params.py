"""The parameters of MIME part headers: each Content-Type and Content-Disposition is read once, and a header
(or a body) with more semicolons than any client sends is a 413 naming the part and the cap, for every kind
that reads multipart forms or MIME messages. The email package reads a header's parameters in time that grows
with its length times its semicolons, and did so several times a part."""

from __future__ import annotations

import email.message
from collections import Counter
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest

from bridge.errors import Rejected
from handlers.email import parse_mime
from handlers.formdata import multipart_parts
from handlers.limits import MAX_ATTACHMENTS, MAX_BODY_PARAMS, MAX_HEADER_PARAMS
from tests.fixtures.providers import build, multipart, post

CTYPE = "multipart/form-data; boundary=B"


def semicolon_parts(parts: int, semicolons: int) -> bytes:
    """`parts` parts, each naming itself in a Content-Disposition followed by `semicolons` more semicolons."""
    return b"".join(b'--B\r\nContent-Disposition: form-data; name="a%d"' % i + b";" * semicolons + b"\r\n\r\nx\r\n"
                    for i in range(parts)) + b"--B--\r\n"


def test_a_part_header_with_thousands_of_semicolons_is_a_413_naming_the_part_and_the_cap() -> None:
    """7 parts of 7,900 semicolons each (56 KB) held the loop for half a second; now the first is refused."""
    with pytest.raises(Rejected) as info:
        multipart_parts(semicolon_parts(7, 7_900), CTYPE)
    assert (info.value.status, info.value.check) == (413, "limits")
    assert str(info.value) == ("too many parameters (semicolons) in header Content-Disposition of part 1 of the "
                               f"multipart body: 7901, at most {MAX_HEADER_PARAMS}")


def test_semicolons_over_all_the_part_headers_past_the_cap_are_a_413() -> None:
    """Parts each under the per-header cap, together over the body's (the body's own Content-Type counts too)."""
    per_part = MAX_HEADER_PARAMS - 1
    parts = MAX_BODY_PARAMS // MAX_HEADER_PARAMS + 1
    with pytest.raises(Rejected) as info:
        multipart_parts(semicolon_parts(parts, per_part - 1), CTYPE)
    assert info.value.status == 413
    assert str(info.value) == ("too many parameters (semicolons) in the Content-Type and Content-Disposition headers "
                               f"of the multipart body: {parts * per_part + 1}, at most {MAX_BODY_PARAMS}")
    assert len(multipart_parts(semicolon_parts(MAX_BODY_PARAMS // MAX_HEADER_PARAMS, per_part - 1), CTYPE)) == (
        MAX_BODY_PARAMS // MAX_HEADER_PARAMS)


def test_a_long_file_name_in_forty_rfc2231_continuations_is_read_whole() -> None:
    """What a mail client sends for a long non-ASCII file name stays well under the cap."""
    pieces = ["%C3%BC" * 10] * 40
    disposition = "form-data; name=\"f\"; " + "; ".join(f"filename*{i}*={'utf-8' + chr(39) * 2 if i == 0 else ''}{p}"
                                                         for i, p in enumerate(pieces))
    body = (f"--B\r\nContent-Disposition: {disposition}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "x\r\n--B--\r\n").encode()
    [part] = multipart_parts(body, CTYPE)
    assert (part.filename, part.charset) == ("ü" * 400, "utf-8")


def test_each_part_header_s_parameters_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts the simple reader does not take (more parameters than name and filename, a format=flowed) are
    read by the email package's readers: its name, file name and charset come from one parse of each header,
    not one per reader."""
    reads: Counter[str] = Counter()
    parse = email.message._parseparam  # type: ignore[attr-defined]

    def counted(value: Any) -> Any:
        reads[str(value)] += 1
        return parse(value)

    monkeypatch.setattr(email.message, "_parseparam", counted)
    body = b"".join(b'--B\r\nContent-Disposition: form-data; name="a%d"; filename="f%d.txt"; size=1\r\n'
                    b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nx\r\n" % (i, i)
                    for i in range(3)) + b"--B--\r\n"
    parts = multipart_parts(body, CTYPE)
    assert [(p.name, p.filename, p.charset) for p in parts] == [(f"a{i}", f"f{i}.txt", "utf-8") for i in range(3)]
    part_headers = {value: n for value, n in reads.items() if "boundary" not in value}
    assert len(part_headers) == 4  # three dispositions, one content type (the same in each part)
    assert all(n == 1 for value, n in part_headers.items() if "form-data" in value), part_headers


def test_a_folded_part_header_is_read_unfolded_for_its_file_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folded Content-Disposition (a long one, as mail libraries write it) is read for its file name from its
    unfolded text, parsed once more: the part's own parse keeps the line break inside a quoted value, and
    reusing it would put that break in the file name."""
    reads: Counter[str] = Counter()
    parse = email.message._parseparam  # type: ignore[attr-defined]

    def counted(value: Any) -> Any:
        reads[str(value)] += 1
        return parse(value)

    monkeypatch.setattr(email.message, "_parseparam", counted)
    body = (b'--B\r\nContent-Disposition: form-data; name="upload";\r\n filename="annual\r\n report.pdf"\r\n\r\n'
            b"x\r\n--B--\r\n")
    [part] = multipart_parts(body, CTYPE)
    assert (part.name, part.filename) == ("upload", "annual report.pdf")
    assert sorted(n for value, n in reads.items() if value.startswith("form-data")) == [1, 1]  # folded, unfolded


def test_a_mime_message_part_with_thousands_of_semicolons_is_a_413() -> None:
    """Raw MIME messages (every email kind) are checked by the same caps."""
    raw = (b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: text/plain; charset=utf-8" + b";" * 7_900 + b"\r\n\r\nhi\r\n--B--\r\n")
    with pytest.raises(Rejected, match=r"header Content-Type of part 1 of the message: 7901, at most"):
        parse_mime(raw)


HOSTILE = semicolon_parts(7, 7_900)


@pytest.mark.parametrize(("kind", "options"), [
    ("form", {}), ("jotform", {"secret": "s"}), ("sendgrid", {}), ("mailgun", {"signing_key": "k"}),
    ("cloudmailin", {}),
])
def test_every_kind_that_reads_multipart_refuses_the_hostile_form(kind: str, options: dict[str, Any]) -> None:
    """The web form, Jotform and the email kinds that take multipart posts share the parse, and the 413."""
    handler = build(kind, **options)
    with pytest.raises(Rejected) as info:
        handler.parse(post({"Content-Type": CTYPE}), HOSTILE)
    assert info.value.status == 413
    assert "Content-Disposition of part 1 of the multipart body: 7901" in str(info.value)


def attachments_mail(count: int, name_chars: int, name_in_content_type: bool = False) -> bytes:
    """A mail as Python's EmailMessage.add_attachment writes it: `count` PDFs, each with a Japanese file name
    of `name_chars` characters, which it splits into RFC 2231 continuations (some 29 a header for 200); a
    mail client may name the file in the Content-Type too."""
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@example.com", "b@example.com", "files"
    mail.set_content("see attached")
    name = ("日本語の長いファイル名" * 30)[:name_chars] + ".pdf"
    for i in range(count):
        mail.add_attachment(b"%PDF-1.4 x", maintype="application", subtype="pdf", filename=f"{i}-{name}")
    if name_in_content_type:
        for part in mail.iter_attachments():
            part.set_param("name", part.get_filename(), header="Content-Type")
    return mail.as_bytes(policy=policy.SMTP)


@pytest.mark.parametrize(("count", "in_content_type"), [(70, False), (MAX_ATTACHMENTS, True)],
                         ids=["70_named_in_the_disposition", "100_named_in_both_headers"])
def test_a_mail_with_as_many_attachments_as_allowed_with_long_rfc2231_names_is_read(
        count: int, in_content_type: bool) -> None:
    """A SendGrid Inbound Parse post of a real mail: 70 PDFs with 200-character Japanese names (174 KB, 2,032
    semicolons) was a 413 under a cap of 2,000 semicolons a body; so is MAX_ATTACHMENTS of them named in both
    headers, as mail clients do, well under the cap."""
    raw = attachments_mail(count, 200, in_content_type)
    assert raw.count(b";") > 2_000
    body, ctype = multipart({"email": raw.decode(), "envelope": '{"to":["b@example.com"],"from":"a@example.com"}',
                             "charsets": '{"email":"UTF-8"}'})
    [inbound] = build("sendgrid").parse(post({"Content-Type": ctype}), body)
    assert len(inbound.attachments) == count
    assert inbound.attachments[-1].meta["name"] == f"{count - 1}-" + ("日本語の長いファイル名" * 30)[:200] + ".pdf"
