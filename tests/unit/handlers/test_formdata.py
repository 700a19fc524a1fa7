"""handlers/formdata.py: urlencoded and multipart bodies parsed from raw bytes."""

from __future__ import annotations

import gc
import hashlib
import re
import sys
from collections.abc import Callable
from email.message import Message
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

import pytest
from aiohttp import FormData
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from bridge.offload import LOOP_BYTES, LOOP_PARSER_LINES, OffLoop, end_loop_parse, start_loop_parse, text_lines
from handlers import formdata, multipart_split
from handlers.formdata import (
    Part,
    add_value,
    file_attachment,
    first_value,
    multipart_parts,
    parse_multipart,
    parse_urlencoded,
)
from handlers.limits import MAX_FORM_FIELDS, MAX_FORM_RUNS
from tests.fixtures.many_line_forms import MANY_LINE_FORMS

BOUNDARY = "----tbBoundary7MA4YWxk"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, content: bytes, *, filename: str | None = None, content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + content + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def form_rejected(body: bytes, charset: str | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse_urlencoded(body, charset)
    assert (info.value.status, info.value.check) == (400, "form")
    return info.value


def multipart_rejected(body: bytes, ctype: str = CTYPE) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse_multipart(body, ctype)
    assert (info.value.status, info.value.check) == (400, "form")
    return info.value


# -- urlencoded --------------------------------------------------------------------------------------


def test_urlencoded_simple_fields() -> None:
    """Each key maps to its decoded value, with `+` and `%20` as spaces."""
    body = b"name=Asha+Rao&email=asha%40example.com&subject=Router%20down"
    assert parse_urlencoded(body) == {"name": "Asha Rao", "email": "asha@example.com", "subject": "Router down"}


def test_urlencoded_repeated_keys_become_lists_in_order() -> None:
    """A key that repeats becomes a list of its values in body order; single keys stay scalars."""
    body = b"topic=billing&name=A&topic=outage&topic=other"
    assert parse_urlencoded(body) == {"topic": ["billing", "outage", "other"], "name": "A"}


def test_urlencoded_blank_values_are_kept() -> None:
    """Blank values are kept as empty strings, also inside repeated keys."""
    assert parse_urlencoded(b"a=&b=x&a=y&c=") == {"a": ["", "y"], "b": "x", "c": ""}


def test_first_value_of_a_single_or_repeated_field() -> None:
    """A field that should be single gives its text, the first one when repeated, and None when it is absent,
    empty-listed or not text (a file part's dict)."""
    form = parse_urlencoded(b"a=1&b=x&b=y")
    assert (first_value(form["a"]), first_value(form["b"]), first_value(form.get("c"))) == ("1", "x", None)
    assert first_value([]) is None
    assert first_value({"filename": "a.txt"}) is None


def test_urlencoded_empty_body() -> None:
    """An empty body is an empty form."""
    assert parse_urlencoded(b"") == {}


def test_urlencoded_utf8_escapes() -> None:
    """Percent-escaped UTF-8 (what browsers send) decodes to text, keys included."""
    assert parse_urlencoded(b"na%C3%AFve=Jos%C3%A9+%E2%9C%93") == {"naïve": "José ✓"}


def test_urlencoded_declared_charset_applies_to_escapes() -> None:
    """With a declared charset, percent-escapes are decoded in that charset."""
    assert parse_urlencoded(b"name=Jos%E9", "iso-8859-1") == {"name": "José"}


def test_urlencoded_declared_charset_applies_to_raw_bytes() -> None:
    """Raw (unescaped) bytes are decoded in the declared charset too."""
    assert parse_urlencoded(b"name=Jos\xe9", "iso-8859-1") == {"name": "José"}


@pytest.mark.parametrize(("body", "charset"), [(b"name=Jos\xe9", None), (b"name=Jos\xe9", "utf-8")])
def test_urlencoded_invalid_utf8_bytes_are_rejected(body: bytes, charset: str | None) -> None:
    """Raw bytes that are not valid in the charset are a 400 naming the charset."""
    assert "not valid utf-8 text" in str(form_rejected(body, charset))


@pytest.mark.parametrize("body", [b"name=Jos%E9", b"name=%FF%FE", b"%C3=x"])
def test_urlencoded_invalid_utf8_escapes_are_rejected(body: bytes) -> None:
    """Percent-escapes that are not valid UTF-8 are a 400, not silently replaced with U+FFFD."""
    assert "not valid utf-8 text" in str(form_rejected(body))


def calls(run: Callable[[], object]) -> int:
    """How many functions, Python or built-in, `run()` calls: the collector paused, whose callbacks (a test
    library's) would be counted when it runs."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        count += event in ("call", "c_call")

    gc.disable()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        gc.enable()
    return count


@pytest.mark.parametrize(("charset", "unit"), [
    (None, "%C3%A9"), ("utf-8", "é%41"), ("utf-8", "%"), ("utf-8", "%zz"), ("latin-1", "%E9"), ("latin-1", "é%41"),
    ("windows-1252", "é%41"), ("cp500", "é%41"), ("shift_jis", "あ%41"), ("gb18030", "中%41"),
], ids=["utf8", "utf8_mixed", "percent", "not_escapes", "latin1", "latin1_mixed", "cp1252", "ebcdic", "shift_jis",
        "gb18030"])
def test_a_fields_escapes_are_decoded_in_calls_as_many_for_ten_thousand_as_for_a_hundred(
        charset: str | None, unit: str) -> None:
    """urllib's `unquote` decodes escapes one by one in Python, a microsecond or more each, and runs of ASCII
    between other characters one by one too: 1 MiB of `%C3%A9` held the parser thread (and, taking the GIL in
    turns, the loop) 0.2-0.6 s, in a public form or a Twilio post, parsed before its signature is checked. Here a
    field's escapes are decoded by a few calls into C, as many for 10,000 of them (raw characters between, or
    `%` that are no escapes) as for 100."""
    small, large = (f"a={unit * n}&b=1".encode(charset or "utf-8") for n in (100, 10_000))
    expected = {"a": unquote(unit.replace("+", " ") * 10_000, encoding=charset or "utf-8"), "b": "1"}
    assert parse_urlencoded(large, charset) == expected  # and whatever is imported or cached, once, is
    assert calls(lambda: parse_urlencoded(large, charset)) == calls(lambda: parse_urlencoded(small, charset))


@pytest.mark.parametrize("charset", ["utf-16-le", "utf-7"])
def test_a_form_in_a_charset_read_run_by_run_holds_at_most_max_form_runs(charset: str) -> None:
    """In UTF-16, UTF-7 (and HZ, ISO-2022) each run of ASCII between other characters is decoded on its own, as
    `unquote` decodes it: a call each, so that a form may hold MAX_FORM_RUNS such runs in all; past them, a 413
    naming the charset and what to send instead."""
    unit = "é%41%00"  # a run of two bytes: one UTF-16 character

    def form(runs: int) -> bytes:
        half = runs // 2
        return "&".join((f"a={unit * half}", f"b={unit * (runs - half)}")).encode(charset)

    assert parse_urlencoded(form(MAX_FORM_RUNS - 4), charset)["a"] == unquote(unit * ((MAX_FORM_RUNS - 4) // 2),
                                                                              encoding=charset)
    with pytest.raises(Rejected) as info:
        parse_urlencoded(form(MAX_FORM_RUNS + 2), charset)
    assert (info.value.status, info.value.check) == (413, "limits")
    assert f"charset {charset.replace('-', '_')}" in str(info.value) and "send the form as UTF-8" in str(info.value)


_ESCAPED = ["%", "%%", "=", "==", "\r", "\n", "\r\n", "_", " ", "\x00", "a", "4", "%4", "%41", "%4g", "%zz", "%e9",
            "%C3", "%A9", "%C3%A9", "%82", "%E3%81", "%3D", "%25", "=41", "=\n", "é", "あ", "中", "\U0001f600"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(_ESCAPED), max_size=12))
def test_unquote_bytes_gives_what_unquote_to_bytes_gives(pieces: list[str]) -> None:
    """Any bytes, escapes or not, `=` (quoted-printable's own escape), line ends (its soft line breaks)."""
    raw = "".join(pieces).encode("utf-8")
    assert formdata.unquote_bytes(raw) == unquote_to_bytes(raw)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from([*_ESCAPED, "+", "%2B", "%81%30", "%30", "0", "%5C", "\\", "~"]), max_size=12),
       st.sampled_from(["utf_8", "latin_1", "cp1252", "koi8_r", "cp500", "cp864", "shift_jis", "cp932", "gb18030",
                        "euc_jp", "big5", "cp949", "johab", "utf_16_le", "utf_7", "hz", "shift_jis_2004"]))
def test_a_field_unescapes_as_unquote_does(pieces: list[str], charset: str) -> None:
    """A field's text as a body in `charset` is read, decoded by runs where it must be and at once where that
    gives the same: what `unquote` gives, and an error where it raises one (for text of ASCII alone, the same
    error). Characters beside a run never join its escapes into one."""
    try:
        text = "".join(pieces).encode(charset).decode(charset)  # what parse_urlencoded hands it
    except UnicodeError:
        return
    try:
        expected: str | Exception = unquote(text.replace("+", " "), encoding=charset, errors="strict")
    except UnicodeDecodeError as exc:
        expected = exc
    if isinstance(expected, str):
        assert formdata._unquote(text, charset, [MAX_FORM_RUNS]) == expected
    else:
        with pytest.raises(UnicodeDecodeError) as raised:
            formdata._unquote(text, charset, [MAX_FORM_RUNS])
        if text.isascii():
            assert str(raised.value) == str(expected)


def test_urlencoded_unknown_charset_is_rejected() -> None:
    """An unknown declared charset is a 400 naming it."""
    assert "x-no-such-charset" in str(form_rejected(b"a=1", "x-no-such-charset"))


@pytest.mark.parametrize("body", [b"a=1&&b=2", b"a=1&b=2&", b"&a=1&b=2"])
def test_urlencoded_stray_ampersands_are_tolerated(body: bytes) -> None:
    """Empty segments between '&'s carry no field and do not make the body malformed."""
    assert parse_urlencoded(body) == {"a": "1", "b": "2"}


@pytest.mark.parametrize("body", [b"just some text", b"a=1&b"])
def test_urlencoded_malformed_is_rejected(body: bytes) -> None:
    """A body with fields that are not `key=value` is a 400 with the parser's reason."""
    assert "malformed form body" in str(form_rejected(body))


def test_urlencoded_too_many_fields_is_rejected() -> None:
    """More fields than MAX_FORM_FIELDS is a 413 naming the count and the cap, before any field is parsed."""
    with pytest.raises(Rejected) as info:
        parse_urlencoded(b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS + 1)))
    assert (info.value.status, info.value.check) == (413, "limits")
    assert str(info.value) == f"too many form fields: {MAX_FORM_FIELDS + 1}, at most {MAX_FORM_FIELDS}"
    assert len(parse_urlencoded(b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS)))) == MAX_FORM_FIELDS


# -- multipart ---------------------------------------------------------------------------------------

FILE_BYTES = bytes(range(256)) + b"\r\n\r\n--not-the-boundary\r\n" + b"\n\r\x00" + bytes(range(255, -1, -1))


def test_multipart_text_and_file_parts() -> None:
    """Text parts become values; file parts become their name, type, size and SHA-256, never the bytes."""
    body = multipart(
        part("name", b"Asha"),
        part("message", b"line one\r\nline two"),
        part("attachment", FILE_BYTES, filename="dump.bin", content_type="application/octet-stream"),
    )
    assert parse_multipart(body, CTYPE) == {
        "name": "Asha",
        "message": "line one\r\nline two",
        "attachment": {
            "filename": "dump.bin",
            "content_type": "application/octet-stream",
            "size": len(FILE_BYTES),
            "sha256": hashlib.sha256(FILE_BYTES).hexdigest(),
        },
    }


def test_multipart_repeated_names_become_lists() -> None:
    """Repeated text or file part names become lists in body order."""
    body = multipart(
        part("topic", b"billing"),
        part("file", b"one", filename="a.txt", content_type="text/plain"),
        part("topic", b"outage"),
        part("file", b"two!", filename="b.txt", content_type="text/plain"),
    )
    out = parse_multipart(body, CTYPE)
    assert out["topic"] == ["billing", "outage"]
    assert [(f["filename"], f["size"], f["sha256"]) for f in out["file"]] == [
        ("a.txt", 3, hashlib.sha256(b"one").hexdigest()),
        ("b.txt", 4, hashlib.sha256(b"two!").hexdigest()),
    ]


def test_multipart_blank_and_utf8_text() -> None:
    """An empty text part is an empty string; text parts are UTF-8 by default."""
    body = multipart(part("empty", b""), part("name", "José ✓".encode()))
    assert parse_multipart(body, CTYPE) == {"empty": "", "name": "José ✓"}


def test_multipart_part_charset_is_honoured() -> None:
    """A text part declaring its charset is decoded in it."""
    body = multipart(part("name", b"Jos\xe9", content_type="text/plain; charset=iso-8859-1"))
    assert parse_multipart(body, CTYPE) == {"name": "José"}


def test_multipart_non_ascii_file_name() -> None:
    """A file name sent as raw UTF-8 (as browsers do) is kept as text."""
    body = multipart(part("cv", b"%PDF-1.7", filename="résumé.pdf", content_type="application/pdf"))
    assert parse_multipart(body, CTYPE)["cv"]["filename"] == "résumé.pdf"


def test_multipart_empty_file() -> None:
    """An empty file part has size 0 and the SHA-256 of no bytes."""
    body = multipart(part("f", b"", filename="empty.txt", content_type="text/plain"))
    assert parse_multipart(body, CTYPE)["f"] == {
        "filename": "empty.txt", "content_type": "text/plain", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}


def test_multipart_quoted_boundary() -> None:
    """A quoted boundary parameter works like a bare one."""
    body = multipart(part("a", b"1"))
    assert parse_multipart(body, f'multipart/form-data; boundary="{BOUNDARY}"') == {"a": "1"}


async def test_multipart_as_aiohttp_writes_it() -> None:
    """A body produced by aiohttp's own FormData encoder parses to the same fields and file metadata."""
    form = FormData()
    form.add_field("name", "Asha")
    form.add_field("upload", FILE_BYTES, filename="x.bin", content_type="application/octet-stream")
    payload = form()
    body = await payload.as_bytes()
    out = parse_multipart(body, payload.headers["Content-Type"])
    assert out["name"] == "Asha"
    assert out["upload"]["size"] == len(FILE_BYTES)
    assert out["upload"]["sha256"] == hashlib.sha256(FILE_BYTES).hexdigest()


@pytest.mark.parametrize("ctype", ["multipart/form-data", "multipart/form-data; charset=utf-8", ""])
def test_multipart_without_boundary_is_rejected(ctype: str) -> None:
    """A multipart Content-Type without a boundary is a 400 saying so."""
    assert "without a boundary" in str(multipart_rejected(multipart(part("a", b"1")), ctype))


def test_a_boundary_given_only_in_rfc2231_form_is_a_400_that_says_to_send_it_plain() -> None:
    said = str(multipart_rejected(multipart(part("a", b"1")), f"multipart/form-data; boundary*=utf-8''{BOUNDARY}"))
    assert "only in RFC 2231's form (boundary*=)" in said and "boundary=" in said


@pytest.mark.parametrize("name", ["Boundary", "BOUNDARY"])
def test_the_boundary_parameter_is_named_in_any_case(name: str) -> None:
    """RFC 2045's parameter names are case-insensitive."""
    assert parse_multipart(multipart(part("a", b"1")), f"multipart/form-data; {name}={BOUNDARY}") == {"a": "1"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not multipart at all",
        multipart(part("a", b"1"))[:-len(f"--{BOUNDARY}--\r\n")],
        part("a", b"1")[:20],
        multipart(part("a", b"1")).replace(BOUNDARY.encode(), b"other-boundary"),
    ],
)
def test_multipart_malformed_is_rejected(body: bytes) -> None:
    """An empty, truncated, unterminated or wrongly delimited body is a 400 naming the defect."""
    assert "malformed multipart body" in str(multipart_rejected(body))


def test_multipart_part_without_name_is_rejected() -> None:
    """A part whose Content-Disposition has no name is a 400."""
    body = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    assert "without a name" in str(multipart_rejected(body))


def test_multipart_part_without_disposition_is_rejected() -> None:
    """A part with no Content-Disposition at all is a 400."""
    body = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    assert "without a name" in str(multipart_rejected(body))


def test_multipart_text_part_not_in_its_charset_is_rejected() -> None:
    """A text part whose bytes are not valid in its charset is a 400 naming the field."""
    err = multipart_rejected(multipart(part("ok", b"fine"), part("bad", b"\xff\xfe")))
    assert "'bad' is not valid utf-8" in str(err)


def test_multipart_unknown_part_charset_is_rejected() -> None:
    """A text part declaring an unknown charset is a 400 naming the field."""
    err = multipart_rejected(multipart(part("x", b"abc", content_type="text/plain; charset=x-nope")))
    assert "'x'" in str(err)


def test_multipart_with_too_many_parts_is_a_413_before_the_parse() -> None:
    """More parts than MAX_FORM_FIELDS is refused, naming the count; exactly the cap is parsed."""
    fields = [part(f"f{i}", b"v") for i in range(MAX_FORM_FIELDS)]
    assert len(parse_multipart(multipart(*fields), CTYPE)) == MAX_FORM_FIELDS
    with pytest.raises(Rejected) as info:
        parse_multipart(multipart(*fields, part("one", b"more")), CTYPE)
    assert (info.value.status, str(info.value)) == (
        413, f"too many multipart parts: {MAX_FORM_FIELDS + 1}, at most {MAX_FORM_FIELDS}")


XYZ = "multipart/form-data; boundary=XyZ"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """What a multipart parse reads: the email package's parser's runs, and the header lines the split builds."""
    seen = {"parser": 0, "header_lines": 0}

    class Counted(BytesParser):
        def parsebytes(self, *args: Any, **kwargs: Any) -> Message:
            seen["parser"] += 1
            return super().parsebytes(*args, **kwargs)

    field = multipart_split._FIELD

    class CountedField:
        def match(self, *args: Any) -> re.Match[bytes] | None:
            found = field.match(*args)
            seen["header_lines"] += found is not None
            return found

    monkeypatch.setattr(formdata, "BytesParser", Counted)
    monkeypatch.setattr(multipart_split, "BytesParser", Counted)
    monkeypatch.setattr(multipart_split, "_FIELD", CountedField())
    return seen


def on_the_loop(body: bytes, ctype: str = XYZ) -> list[Part]:
    """`multipart_parts` as a parse placed on the event loop runs it (intake's `_run`)."""
    token = start_loop_parse()
    try:
        return multipart_parts(body, ctype)
    finally:
        end_loop_parse(token)


@pytest.mark.parametrize(("body", "status"), MANY_LINE_FORMS.values(), ids=MANY_LINE_FORMS)
def test_on_the_loop_a_multipart_body_of_many_lines_is_read_only_as_far_as_its_built_parts(
        body: bytes, status: int, reads: dict[str, int]) -> None:
    """On the event loop, a multipart body of more than LOOP_PARSER_LINES lines is read only where its parts are
    built without the email package's parser, of at most LOOP_PARSER_LINES header lines in all: any other shape
    (a continuation line, a nested multipart, a `From ` line, no delimiter), or more header lines, stops
    (OffLoop) before the parser reads a line, and the parse is done again in the parser thread."""
    assert len(body) <= LOOP_BYTES and text_lines(body) > LOOP_PARSER_LINES
    with pytest.raises(OffLoop):
        on_the_loop(body)
    assert reads == {"parser": 0, "header_lines": reads["header_lines"]}
    assert reads["header_lines"] <= LOOP_PARSER_LINES + 2  # and the top's Content-Type line, and the one past


@pytest.mark.parametrize(("body", "status"), MANY_LINE_FORMS.values(), ids=MANY_LINE_FORMS)
def test_in_the_parser_thread_a_multipart_body_of_many_lines_is_parsed_whole(body: bytes, status: int) -> None:
    """Outside a loop parse (the parser thread) the same bodies are read as they always were."""
    if status == 202:
        [field] = multipart_parts(body, XYZ)
        assert (field.name, field.data) == ("a", b"From x" + b"\n" * 59_999)
    else:
        with pytest.raises(Rejected) as info:
            multipart_parts(body, XYZ)
        assert info.value.status == status


def test_on_the_loop_a_form_of_many_content_lines_is_built_there(reads: dict[str, int]) -> None:
    """A textarea of 10,000 lines is no costly parse: its part is built, its content cut out unread, on the loop."""
    body = multipart(part("notes", b"line\r\n" * 10_000), part("name", b"Asha"))
    assert [(p.name, len(p.data)) for p in on_the_loop(body, CTYPE)] == [("notes", 60_000), ("name", 4)]
    assert reads["parser"] == 0


def test_on_the_loop_a_multipart_body_of_few_lines_is_parsed_whole_there(reads: dict[str, int]) -> None:
    """A body of few lines, whatever its shape, costs the parser little: parsed on the loop as ever."""
    body = b'--XyZ\nContent-Disposition: form-data;\n name="a"\n\nv\n--XyZ--\n'  # a folded header line
    [field] = on_the_loop(body)
    assert (field.name, field.data, reads["parser"] > 0) == ("a", b"v", True)


def test_multipart_encoded_word_file_name_is_decoded() -> None:
    """A file name sent as an RFC 2047 encoded word reads as its text."""
    body = multipart(part("cv", b"%PDF", filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?=", content_type="application/pdf"))
    assert parse_multipart(body, CTYPE)["cv"]["filename"] == "résumé.pdf"


@pytest.mark.parametrize("boundary", ["grenze-\u20ac", "b\udcff1", "\u0433\u0440"])
def test_multipart_boundary_that_is_not_ascii_is_400(boundary: str) -> None:
    """A boundary that is not ASCII (RFC 2046 allows only ASCII) is a 400 naming it, whatever its bytes: text
    beyond Latin-1, or bytes aiohttp read with surrogateescape."""
    wire = boundary.encode("utf-8", "surrogateescape")
    body = multipart(part("a", b"1")).replace(BOUNDARY.encode(), wire)
    error = multipart_rejected(body, f"multipart/form-data; boundary={boundary}")
    assert "boundary" in str(error)
    assert "not ASCII" in str(error)


def test_content_type_parameter_that_is_not_utf8_is_read_as_sent() -> None:
    """A Content-Type with another parameter in bytes that are not UTF-8 still gives the multipart body its
    ASCII boundary, and the body is parsed."""
    assert parse_multipart(multipart(part("a", b"1")), f"{CTYPE}; note=caf\udce9") == {"a": "1"}


@pytest.mark.parametrize(("charset", "text"), [("punycode", b"name=x"), ("idna", b"xn--")])
def test_charset_whose_codec_fails_with_a_plain_unicode_error_is_400(charset: str, text: bytes) -> None:
    """Codecs such as punycode and idna fail with UnicodeError itself, not UnicodeDecodeError: still a 400
    naming the charset, in a urlencoded body and in a multipart part."""
    assert charset in str(form_rejected(text, charset))
    body = multipart(part("name", text, content_type=f"text/plain; charset={charset}"))
    assert charset in str(multipart_rejected(body))


def test_part_whose_charset_holds_a_nul_is_400() -> None:
    """A multipart part whose charset name holds a NUL is a 400 naming the field."""
    body = multipart(part("name", b"x", content_type='text/plain; charset="utf\x008"'))
    assert "'name'" in str(multipart_rejected(body))


def test_an_attached_message_part_keeps_its_exact_bytes() -> None:
    """A message/rfc822 file part is its bytes as sent, not parsed as a nested message (which left it empty)."""
    forwarded = b"From: a@b.c\r\nSubject: fwd\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    body = multipart(part("attachment-1", forwarded, filename="fwd.eml", content_type="message/rfc822"))
    [file_part] = multipart_parts(body, CTYPE)
    assert (file_part.data, file_part.content_type) == (forwarded, "message/rfc822")


@pytest.mark.parametrize(("sent", "name"), [
    ("C:\\Users\\asha\\report.pdf", "report.pdf"),
    ("\\\\share\\mail\\forwarded.msg", "forwarded.msg"),
    ("/tmp/notes.txt", "notes.txt"),
    ("", ""),
])
def test_a_file_name_is_the_base_name_of_the_path_sent(sent: str, name: str) -> None:
    """Browsers and providers send paths unescaped: backslashes separate folders and are not eaten as escapes."""
    [file_part] = multipart_parts(multipart(part("f", b"x", filename=sent, content_type="text/plain")), CTYPE)
    assert file_part.filename == name


def test_file_attachment_keeps_the_charset_apart_and_marks_a_content_id_inline() -> None:
    """A file part becomes an attachment with the bare type, its charset beside it, inline when it has a
    Content-ID."""
    body = multipart(part("f", b"x", filename="a.txt", content_type='text/plain; charset="ISO-8859-1"'))
    [file_part] = multipart_parts(body, CTYPE)
    meta = file_attachment(file_part._replace(content_id="<c1>")).meta
    assert (meta["content_type"], meta["charset"], meta["inline"]) == ("text/plain", "iso-8859-1", True)


def _by_parse_qsl(body: bytes, charset: str | None) -> dict[str, Any] | str:
    """The standard library's reading of a form body (the reference the parser must agree with), or the
    kind of error it raises."""
    text = body.decode(charset or "utf-8")
    joined = "&".join(part for part in text.split("&") if part)
    try:
        pairs = parse_qsl(joined, keep_blank_values=True, strict_parsing=bool(joined), encoding=charset or "utf-8",
                          errors="strict")
    except UnicodeError:
        return "text"
    except ValueError:
        return "malformed"
    out: dict[str, Any] = {}
    for key, value in pairs:
        add_value(out, key, value)
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "=", "&", "+", "%", "%4", "%41", "%e9", "%C3%A9", "%ZZ", " ", "é"]),
                max_size=16),
       st.sampled_from([None, "latin-1"]))
def test_urlencoded_reads_as_parse_qsl_does(pieces: list[str], charset: str | None) -> None:
    """Any urlencoded body gives the fields the standard library's parse_qsl gives, or is refused where it
    raises (a field without `=`: malformed; an escape that is not text in the charset)."""
    body = "".join(pieces).encode(charset or "utf-8")
    expected = _by_parse_qsl(body, charset)
    if isinstance(expected, str):
        assert expected in str(form_rejected(body, charset))
    else:
        assert parse_urlencoded(body, charset) == expected


@pytest.mark.parametrize(("disposition", "says"), [
    (b"form-data; name*=utf-8''a; name*0=b", "both whole (name*=) and in numbered sections"),
    # the charset parameter is read as UTF-8 ("x"), and "x" is no character set for the field's text
    (b"form-data; name=a\r\nContent-Type: text/plain; charset*=a\x00b''x", "is in charset 'x', which is not a"),
])
def test_a_part_whose_rfc2231_parameter_cannot_be_read_is_a_400_saying_why(disposition: bytes, says: str) -> None:
    body = b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\nx\r\n--b--\r\n"
    with pytest.raises(Rejected) as caught:
        parse_multipart(body, "multipart/form-data; boundary=b")
    assert caught.value.status == 400
    assert says in str(caught.value)


@pytest.mark.parametrize(("disposition", "filename"), [
    (b"form-data; name=a; filename*=idna''%FF", "\ufffd"),  # a codec that is no character set
    (b"form-data; name=a; filename*=a\x00b''x", "x"),  # a NUL in the name: Python's codec lookup raises ValueError
    (b"form-data; name=a; filename*=unicode_escape''%5Cq", "q"),  # read as UTF-8: a path's backslash
])
def test_a_file_name_in_no_character_set_python_reads_is_read_as_utf8(disposition: bytes, filename: str) -> None:
    body = b"--b\r\nContent-Disposition: " + disposition + b"\r\n\r\nx\r\n--b--\r\n"
    assert parse_multipart(body, "multipart/form-data; boundary=b")["a"]["filename"] == filename


def test_a_field_without_an_equals_sign_is_quoted_cut_short_in_the_error() -> None:
    """The error names a malformed field by its first characters and its length, never the whole of a field the
    sender made as long as the body: the reason is logged, and masked, and echoed in the answer."""
    said = r"^malformed form body: bad query field: '\+1-\+1-[^']*'… \(30000 characters\)$"
    with pytest.raises(Rejected, match=said) as caught:
        parse_urlencoded(b"email=a%40b.io&" + b"+1-" * 10_000)
    assert len(str(caught.value)) < 200
