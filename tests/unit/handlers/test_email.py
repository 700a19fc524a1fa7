"""handlers/email.py: addresses, message ids, MIME, the email shape."""

from __future__ import annotations

import base64
import json
from email._header_value_parser import get_address_list  # the strict RFC 5322 reader
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import default as default_policy
from email.utils import parseaddr
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import offload
from bridge.errors import Rejected
from handlers import email as email_module
from handlers.attachments import attachment
from handlers.email import (
    Headers,
    OpaqueMessage,
    Spam,
    address_list,
    basename,
    decode_words,
    email_payload,
    header_spam,
    message_id,
    message_ids,
    parse_mime,
    part_filename,
    sender,
    spam_score,
)
from handlers.limits import (
    MAX_ADDRESSES,
    MAX_ATTACHMENTS,
    MAX_FROM_CHARS,
    MAX_HEADER_FIELDS,
    MAX_MESSAGE_IDS,
    MAX_MIME_PARTS,
)
from tests.fixtures.providers import (
    ASHA_TEXT,
    FIXTURES,
    FORWARDED,
    JPEG,
    JPEG_SHA256,
    LOGO,
    REPORT,
    THREAD,
    THREAD_EMAIL,
    UEBERSICHT,
    raw,
)

# -- addresses ---------------------------------------------------------------------------------------


def test_address_list_gives_bare_lower_case_addresses_once() -> None:
    """Display names go, addresses are lower-cased, and an address given twice is listed once, in order."""
    assert address_list('"Rao, Asha" <Asha@Example.com>, b@x.org', ["B@X.org", "c@y.net"]) == [
        "asha@example.com", "b@x.org", "c@y.net"]


@pytest.mark.parametrize("value", [None, "", [], "undisclosed-recipients:;", "not an address"])
def test_address_list_without_addresses_is_empty(value: object) -> None:
    """Nothing, an empty group or text without an @ gives an empty list."""
    assert address_list(value) == []  # type: ignore[arg-type]


def test_sender_splits_name_and_address() -> None:
    """The From value gives its display name and its bare, lower-cased address."""
    assert sender('"Rao, Asha" <ASHA@example.com>') == ("Rao, Asha", "asha@example.com")
    assert sender("asha@example.com") == (None, "asha@example.com")
    assert sender(["Asha <a@x.org>"]) == ("Asha", "a@x.org")  # SES's commonHeaders.from: a list of mailboxes
    assert sender(["Asha <a@x.org>", "b@y.org"]) == (None, None)  # several mailboxes: no sender
    assert sender(None) == (None, None)


def test_encoded_words_are_decoded() -> None:
    """RFC 2047 encoded words in names and subjects are decoded; broken ones are left as they are."""
    assert decode_words("=?utf-8?q?J=C3=B3zef?= <j@x.org>") == "Józef <j@x.org>"
    assert sender("=?utf-8?b?w4lsb2RpZQ==?= <E@x.org>") == ("Élodie", "e@x.org")
    assert decode_words("=?bogus-charset?q?x?=") == "=?bogus-charset?q?x?="


# -- message ids ---------------------------------------------------------------------------------------


def test_message_ids_are_bracketed_and_ordered() -> None:
    """Ids in a References value (folded or not) come out as `<id>`, once each, in order."""
    assert message_ids("<a@b>\r\n <c@d> <a@b>") == ["<a@b>", "<c@d>"]
    assert message_ids(["<a@b>", "<e@f>"]) == ["<a@b>", "<e@f>"]


def test_message_id_without_brackets_gets_them() -> None:
    """A provider that strips the brackets gives the same id as one that keeps them."""
    assert message_id("abc@mail.example.com") == message_id("<abc@mail.example.com>") == "<abc@mail.example.com>"
    assert message_id(None) is None
    assert message_id("") is None


# -- the reply ------------------------------------------------------------------------------------------


def test_email_payload_strips_a_forward_by_its_subject() -> None:
    """The email payload's stripped_text keeps an Outlook-forwarded message when the (encoded) subject says FW."""
    body = "FYI\n\nFrom: Shop <o@shop.example>\nSent: Monday\nTo: Sam\nSubject: Order\n\nThanks for your order."
    common = {"from_": "s@x.org", "to": None, "cc": None, "html": None, "stripped_text": None, "message_id_": None,
              "in_reply_to": None, "references": None, "attachments": [], "provider": {}}
    assert email_payload(text=body, subject="=?utf-8?q?FW=3A_Order?=", **common)["stripped_text"] == body
    assert email_payload(text=body, subject="RE: Order", **common)["stripped_text"] == "FYI"


# -- headers and MIME ---------------------------------------------------------------------------------


def test_headers_from_a_raw_block() -> None:
    """A header block's names are case-insensitive, folded lines are joined and encoded words decoded."""
    headers = Headers.from_block("Message-ID: <x@y>\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\nReceived: a\r\n"
                                 "Received: b\r\nTo: a@b,\r\n c@d\r\n")
    assert headers.get("message-id") == "<x@y>"
    assert headers.get("SUBJECT") == "Café"
    assert headers.get_all("received") == ["a", "b"]
    assert address_list(headers.get_all("To")) == ["a@b", "c@d"]
    assert headers.get("cc") is None


def parsed_fields(block: str) -> list[tuple[str, Any]]:
    """The header fields the email package's parser reads from a header block."""
    return list(HeaderParser().parsestr(block).raw_items())


def block_outcome(block: str, parser: bool) -> Any:
    """What Headers.from_block gives, read without the parser where it can be (or, `parser`, always with it,
    as it was read before): its fields, the refusal, or the error raised."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            if parser:
                patch.setattr(email_module, "_block_fields", lambda block: None)
            return Headers.from_block(block)._fields
    except Rejected as exc:
        return exc.status, str(exc)
    except Exception as exc:  # the parser's own failures are compared too
        return type(exc).__name__, str(exc)


def same_block(block: str) -> None:
    """The block's fields read without the parser, when they are, are the parser's; from_block gives what it
    gave reading every block with the parser."""
    fields = email_module._block_fields(block)
    if fields is not None:
        assert fields == parsed_fields(block)
    assert block_outcome(block, parser=False) == block_outcome(block, parser=True)


SENDGRID_HEADERS = json.loads((FIXTURES / "sendgrid" / "parse.json").read_text())["headers"]


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_an_ordinary_header_block_is_read_without_the_parser(newline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Name: value` lines, folded ones among them, in any line end: read here, as the parser reads them."""
    block = (SENDGRID_HEADERS + "X-Folded: one\n two\n\tthree\nX-Blank:\nX-Blanks: \t \n\nbody: x\n"
             ).replace("\n", newline)
    fields = email_module._block_fields(block)
    assert fields is not None and fields == parsed_fields(block)
    assert ("X-Folded", f"one{newline} two{newline}\tthree") in fields
    same_block(block)
    monkeypatch.setattr(email_module, "HeaderParser", None)  # the parser is not used
    assert Headers.from_block(block).get("x-folded") == "one two\tthree"


@pytest.mark.parametrize("block", [
    "From nobody Mon Jun  3 10:00:00 2024\r\nSubject: x\r\n",  # an envelope line first
    "Subject: x\r\nFrom nobody\r\nTo: a@b.c\r\n",  # in the middle, a defect
    "Subject: x\r\nFrom nobody",  # last, the body's first line
    # bytes kept as surrogates beside other text that is not ASCII, in the Content-Type the parser reads:
    # UnicodeEncodeError, from_block's before and still
    "Content-Type: text/plain; c\u2029harset=\udc80\r\n",
    "Subject: Caf\udcc3\udca9\r\n",  # bytes kept as surrogates anywhere
    " folded first\r\nSubject: x\r\n",  # a continuation with no header above it
    "Subject: x\r\n: no name\r\n folded\r\nTo: a@b.c\r\n",  # a line starting with a colon
])
def test_header_blocks_the_parser_reads_otherwise_are_left_to_it(block: str) -> None:
    assert email_module._block_fields(block) is None
    same_block(block)


@pytest.mark.parametrize("block", [
    "", "\r\n", "Subject: x", "Subject: x\r", "Subject: x\r\r\n\tnot folded", "Subject: x\n\rbody",
    "Subject: x\r\nno colon\r\nTo: a@b.c\r\n", "X-A:\r\n\r\n", "X-A:\r\n \r\n", "X-A: \t\r\n\t \r\nX-B: y",
    "Subject: a\x00b\x85c\u2028d\x0be\x0cf\udcff\r\n", "Sub ject: x\r\n", "Subject : x\r\n", "From: a@b.c\r\n",
    "Subject:x\r\n\r\nFrom nobody\r\n", "S\xe9: x\r\n",
])
def test_header_block_edges(block: str) -> None:
    same_block(block)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["Subject: x", "To: a@b.c,", "X-A:", "X-A:  \t", "Received: by x", " folded", "\tfolded",
                     "From nobody", "From: a@b.c", ":", ": v", "", "", "body", "no colon", "=?utf-8?q?a?=", "\t",
                     "Sub ject: x", "Subject : x", "Caf\xe9: x", "X:\x00\x85\u2028\udcff",
                     "Content-Type: a\udcff\u3000", "content-type: text/x"])
    | st.text(alphabet="ab :\t\r\n\xe9-", max_size=8),
    st.sampled_from(["\r\n", "\n", "\r", ""])), max_size=20))
def test_any_header_block_reads_as_the_parser_reads_it(lines: list[tuple[str, str]]) -> None:
    same_block("".join(text + end for text, end in lines))


def test_headers_from_a_mapping_with_underscores() -> None:
    """Cloudmailin-style `message_id` keys and list values become ordinary headers."""
    headers = Headers.from_mapping({"message_id": "<x@y>", "received": ["a", "b"], "n": 1}, underscores=True)
    assert headers.get("Message-Id") == "<x@y>"
    assert headers.get_all("Received") == ["a", "b"]
    assert headers.get("n") == "1"


def test_parse_mime_reads_bodies_and_attachments() -> None:
    """A raw multipart message gives its headers, plain and HTML bodies and the attachment with its content."""
    mime = parse_mime(raw("ses/message.eml"))
    assert mime.headers.get("Message-ID") == "<CAF=asha.1@mail.example.com>"
    assert (mime.text or "").replace("\r\n", "\n") == ASHA_TEXT
    assert mime.html is not None and mime.html.startswith("<div>Hi,")
    [photo] = mime.attachments
    assert photo.content == JPEG
    assert photo.meta == {"name": "router.jpg", "content_type": "image/jpeg", "inline": False, "size": len(JPEG),
                          "sha256": JPEG_SHA256}


def test_parse_mime_single_part_latin1() -> None:
    """A single-part message in another charset is decoded with it, and has no attachments."""
    mime = parse_mime(b"Subject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nCaf\xe9\r\n")
    assert mime.text == "Café\r\n"
    assert mime.html is None
    assert mime.attachments == []


# -- the payload ----------------------------------------------------------------------------------------


def payload(**changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "from_": "Asha <asha@x.org>", "to": "s@acme.test", "cc": None, "subject": "Hi", "text": "a\r\nb",
        "html": None, "stripped_text": None, "message_id_": "<m@x>", "in_reply_to": None, "references": None,
        "attachments": [], "provider": {"raw": 1},
    }
    args.update(changes)
    return email_payload(**args)  # type: ignore[arg-type]


def test_email_payload_has_the_documented_keys_in_order() -> None:
    """Every provider's payload has exactly the email keys of docs/architecture.md, in order."""
    assert list(payload()) == ["from", "from_name", "to", "to_names", "cc", "cc_names", "reply_to", "subject",
                               "date", "text", "html", "stripped_text", "message_id", "in_reply_to", "references",
                               "envelope_from", "envelope_to", "spam", "attachments", "provider"]


def test_email_payload_prefers_the_providers_stripped_reply() -> None:
    """A stripped reply the provider gives wins; a blank one falls back to our own stripping."""
    assert payload(text="new\n\nOn Mon, X <x@y> wrote:\n> old", stripped_text="theirs")["stripped_text"] == "theirs"
    assert payload(text="new\n\nOn Mon, X <x@y> wrote:\n> old", stripped_text="  ")["stripped_text"] == "new"


def test_email_payload_decodes_the_subject_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The subject's encoded words are decoded once, for both the subject and the reply stripping."""
    calls: list[str] = []

    def counting(value: str) -> str:
        calls.append(value)
        return decode_words(value)

    monkeypatch.setattr("handlers.email.decode_words", counting)
    out = payload(from_="asha@x.org", subject="=?utf-8?q?FW=3A_Order?=")
    assert out["subject"] == "FW: Order"
    assert calls.count("=?utf-8?q?FW=3A_Order?=") == 1


def test_email_payload_normalises_line_ends_and_lists_attachment_metadata() -> None:
    """CRLF becomes LF, and attachments are listed by their metadata only."""
    item = attachment("a.txt", "text/plain", b"abc")
    out = payload(attachments=[item])
    assert out["text"] == "a\nb"
    assert out["attachments"] == [item.meta]
    assert "content" not in item.meta


# -- caps and hostile shapes ---------------------------------------------------------------------------------


def test_too_many_addresses_is_a_413_naming_the_field() -> None:
    """More than MAX_ADDRESSES in a field is refused before the list is parsed; exactly the cap passes."""
    listed = ", ".join(f"u{i}@example.com" for i in range(MAX_ADDRESSES))
    assert len(address_list(listed, field="To")) == MAX_ADDRESSES
    with pytest.raises(Rejected) as info:
        address_list(listed + ", one@more.example", field="Cc")
    assert (info.value.status, str(info.value)) == (413, f"too many Cc addresses: {MAX_ADDRESSES + 1}, "
                                                         f"at most {MAX_ADDRESSES}")


def test_names_quoting_an_address_do_not_count_against_the_cap() -> None:
    """Outlook's `"a@b" <a@b>` has two "@" per address; only the one outside the quotes counts."""
    listed = ", ".join(f'"u{i}@example.com" <u{i}@example.com>' for i in range(MAX_ADDRESSES))
    assert len(address_list(listed, field="To")) == MAX_ADDRESSES


def test_deeply_nested_comments_in_an_address_are_a_400() -> None:
    """Comments nested thousands deep are refused as unreadable, not a crash."""
    with pytest.raises(Rejected) as info:
        address_list("(" * 5000 + "a@b.c", field="To")
    assert (info.value.status, str(info.value)) == (400, "To is not an address list: comments are nested too deep")


def test_an_encoded_name_with_a_comma_stays_one_mailbox() -> None:
    """An encoded display name that decodes to "Last, First" is decoded after the addresses are split."""
    assert sender("=?utf-8?Q?M=C3=BCller=2C_Hans?= <H@x.org>") == ("Müller, Hans", "h@x.org")
    assert address_list("=?utf-8?q?evil=40x.test=2C?= <real@y.test>") == ["real@y.test"]


def test_too_many_message_ids_is_a_413_naming_the_field() -> None:
    """More than MAX_MESSAGE_IDS distinct ids is refused; repeats of one id count once."""
    assert message_ids("<a@b> " * 5000) == ["<a@b>"]
    with pytest.raises(Rejected, match=rf"^too many References message ids: {MAX_MESSAGE_IDS + 1}, at most"):
        message_ids(" ".join(f"<{i}@x>" for i in range(MAX_MESSAGE_IDS + 1)))
    with pytest.raises(Rejected, match=r"^too many In-Reply-To message ids"):
        email_payload(from_=None, to=None, cc=None, subject=None, text=None, html=None, stripped_text=None,
                      message_id_=None, in_reply_to=" ".join(f"<{i}@x>" for i in range(MAX_MESSAGE_IDS + 1)),
                      references=None, attachments=[], provider={})


def test_encoded_words_decode_in_one_pass() -> None:
    """Adjacent encoded words join, a broken one stays as written, and unterminated ones are left alone."""
    assert decode_words("=?utf-8?q?a?= =?utf-8?q?b?= c") == "ab c"
    assert decode_words("=?utf-8*en?q?hi?=") == "hi"
    assert decode_words("=?a?q?x" * 3) == "=?a?q?x" * 3


def test_header_block_is_read_raw_and_capped() -> None:
    """Raw 8-bit UTF-8 reads as text, address headers keep their encoded names for the address parser, and a
    block with more than MAX_HEADER_FIELDS fields is a 413."""
    headers = Headers.from_block("Subject: Caf\xc3\xa9".encode("latin-1").decode("ascii", "surrogateescape")
                                 + "\r\nFrom: =?utf-8?q?A=2C_B?= <a@b.c>\r\n\r\n")
    assert headers.get("Subject") == "Café"
    assert sender(headers.get("From")) == ("A, B", "a@b.c")
    with pytest.raises(Rejected, match=rf"^too many header fields in the header block: {MAX_HEADER_FIELDS + 1}"):
        Headers.from_block("X: y\r\n" * (MAX_HEADER_FIELDS + 1))


def test_too_many_attachments_is_a_413() -> None:
    """An email with more than MAX_ATTACHMENTS attachments is refused, naming the count."""
    files = [attachment("a.txt", "text/plain", b"x")] * (MAX_ATTACHMENTS + 1)
    with pytest.raises(Rejected, match=rf"^too many attachments: {MAX_ATTACHMENTS + 1}, at most {MAX_ATTACHMENTS}$"):
        payload(attachments=files)


def test_mime_with_too_many_parts_or_a_long_content_header_is_a_413() -> None:
    """A message over MAX_MIME_PARTS parts, or with a Content-* header over its cap, is refused before the
    structured parse."""
    parts = b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\nv\r\n" for _ in range(MAX_MIME_PARTS + 1))
    with pytest.raises(Rejected, match=rf"^too many MIME parts in the message: {MAX_MIME_PARTS + 1}"):
        parse_mime(b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + parts + b"--B--\r\n")
    long_type = b"Content-Type: text/plain" + b"; p=v" * 2000 + b"\r\n\r\nhi"
    with pytest.raises(Rejected, match=r"^header Content-Type of the message is 10010 characters, at most 8192$"):
        parse_mime(long_type)


def test_mime_headers_keep_raw_utf8_and_encoded_names() -> None:
    """A raw message's 8-bit header reads as UTF-8; its From keeps an encoded name with a comma whole."""
    mime = parse_mime(b"From: =?utf-8?Q?M=C3=BCller=2C_Hans?= <h@x.org>\r\nSubject: Caf\xc3\xa9\r\n\r\nhi\r\n")
    assert mime.headers.get("Subject") == "Café"
    assert sender(mime.headers.get("From")) == ("Müller, Hans", "h@x.org")


@pytest.mark.parametrize("word", ["=?utf-8?q?Asha=0ARao?=", "=?utf-8?b?QXNoYQ0KUmFv?="])
def test_header_block_with_an_encoded_word_that_decodes_to_a_line_break(word: str) -> None:
    """A From whose display name decodes to a line break (the email package's parser raises on it) is kept
    raw, and still gives its sender, with the name's whitespace made single spaces."""
    headers = Headers.from_block(f"From: {word} <asha.rao@example.com>\r\nSubject: Hi\r\n")
    assert headers.get("Subject") == "Hi"
    assert sender(headers.get("From")) == ("Asha Rao", "asha.rao@example.com")


def test_encoded_words_are_decoded_after_addresses_are_parsed() -> None:
    """An encoded word that decodes to a comma or to `Bcc: x@y` stays inside its display name (RFC 2047):
    it never splits a mailbox nor adds an address."""
    comma = "=?utf-8?q?Rao=2C_Asha?= <asha@example.com>"
    smuggled = "=?utf-8?q?Asha=0D=0ABcc=3A_x=40evil=2Etest?= <asha@example.com>"
    assert sender(comma) == ("Rao, Asha", "asha@example.com")
    assert sender(smuggled) == ("Asha Bcc: x@evil.test", "asha@example.com")
    assert address_list(comma, smuggled, "ops@acme.test") == ["asha@example.com", "ops@acme.test"]


@pytest.mark.parametrize("value", [
    "=?utf-8?q?=3Cceo=40corp.example=3E?=",
    "=?utf-8?q?Asha_Rao_=3Casha=40example=2Ecom=3E?=",
    "=?utf-8?b?Y2VvQGNvcnAuZXhhbXBsZQ==?=",
    "<=?utf-8?q?ceo=40corp.example?=>",
    "Boss =?utf-8?q?=3Cceo=40corp.example=3E?= (via a@evil.example)",
])
def test_an_address_only_inside_an_encoded_word_names_no_sender(value: str) -> None:
    """An encoded word is display text, never an address (RFC 2047 5): a From whose address exists only once
    decoded names no mailbox a provider's DMARC check read, so it names no sender."""
    assert sender(value)[1] is None


def test_an_encoded_name_beside_an_address_leaves_that_address_the_sender() -> None:
    assert sender("=?utf-8?q?x?= <a@b.example>") == ("x", "a@b.example")
    assert sender("=?utf-8?q?=3Cceo=40corp.example=3E?= <a@evil.example>") == ("<ceo@corp.example>",
                                                                                  "a@evil.example")


def test_mime_part_whose_charset_holds_a_nul_is_read_as_utf8() -> None:
    """A part whose charset name holds a NUL (the codec lookup raises ValueError, not LookupError) is read as
    UTF-8 with replacement characters, not a failure of the message."""
    message = (b"From: a@example.com\r\nContent-Type: text/plain; charset=\"utf\x008\"\r\n\r\ncaf\xc3\xa9 \xff\r\n")
    assert parse_mime(message).text == "café \ufffd\r\n"


# -- attachments intact ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "base"), [
    ("C:\\Users\\asha\\report.pdf", "report.pdf"),
    ("\\\\share\\mail\\forwarded.msg", "forwarded.msg"),
    ("/home/asha/notes.txt", "notes.txt"),
    ("../../etc/passwd", "passwd"),
    ("plain.txt", "plain.txt"),
    ("", ""),
    (None, ""),
])
def test_basename_takes_the_last_part_of_any_path(name: str | None, base: str) -> None:
    """A Windows, UNC or POSIX path gives the file's base name; the backslashes separate, not escape."""
    assert basename(name) == base


def _part(header: bytes) -> Message:
    return BytesParser(_class=OpaqueMessage).parsebytes(header + b"\r\n\r\nx")


@pytest.mark.parametrize(("header", "name"), [
    (b'Content-Disposition: attachment; filename="C:\\Users\\asha\\report.pdf"', "report.pdf"),
    (b"Content-Disposition: attachment; filename*=utf-8''%C3%BCbersicht%20Q3.pdf", "übersicht Q3.pdf"),
    (b"Content-Disposition: attachment; filename*0*=utf-8''%C3%BCber; filename*1=\"sicht.pdf\"", "übersicht.pdf"),
    (b'Content-Disposition: attachment; filename="=?utf-8?b?w7xiZXJzaWNodC5wZGY=?="', "übersicht.pdf"),
    (b'Content-Disposition: attachment; filename="say \\"hi\\".txt"', 'say "hi".txt'),
    (b'Content-Type: image/png; name="logo.png"\r\nContent-Disposition: inline', "logo.png"),
    (b"Content-Disposition: attachment", ""),
])
def test_part_filename_reads_the_raw_header(header: bytes, name: str) -> None:
    """File names come from Content-Disposition (else Content-Type `name`), RFC 2231 and RFC 2047 decoded,
    Windows paths intact until the base name is taken."""
    assert part_filename(_part(header)) == name


def test_parse_mime_keeps_an_attached_message_byte_for_byte() -> None:
    """A message/rfc822 part is stored as the attached message's exact bytes, without the wrapper's headers, and
    the inline logo of a multipart/related body is listed and marked inline."""
    mime = parse_mime(THREAD)
    assert [a.meta for a in mime.attachments] == THREAD_EMAIL["attachments"]
    assert mime.attachments[3].content == FORWARDED
    assert [a.content for a in mime.attachments[:3]] == [LOGO, REPORT, UEBERSICHT]


def test_a_multipart_part_without_a_boundary_is_a_file_not_a_crash() -> None:
    """A multipart/related part that names no boundary keeps its content as text: it is one leaf, kept as a
    file, as a whole message without a boundary is (the standard library's body search indexed into its text
    and raised AttributeError)."""
    raw_message = (b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                   b"--b1\r\nContent-Type: multipart/related\r\n\r\nhello\r\n--b1--\r\n")
    mime = parse_mime(raw_message)
    assert mime.text == "hi"
    assert mime.html is None
    [part] = mime.attachments
    assert part.meta["content_type"] == "multipart/related"
    assert (part.content or b"").strip() == b"hello"


def test_base64_encoded_attached_message_is_decoded() -> None:
    """An attached message a client base64-encoded (against RFC 2046, but sent) is stored decoded."""
    raw_message = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
                   b"--b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                   + base64.b64encode(FORWARDED) + b"\r\n--b--\r\n")
    [forwarded] = parse_mime(raw_message).attachments
    assert forwarded.content == FORWARDED


def test_blank_names_are_generated_from_place_and_type() -> None:
    """A file without a name is `attachment-N.ext`, N its place among the files, the extension from its type."""
    files = [attachment("a.txt", "text/plain", b"a"), attachment("", "message/rfc822", b"m"),
             attachment(None, "application/x-unknown-thing", b"x")]
    out = payload(attachments=files)
    assert [a["name"] for a in out["attachments"]] == ["a.txt", "attachment-2.eml", "attachment-3.bin"]


@pytest.mark.parametrize(("value", "iso"), [
    ("Mon, 3 Jun 2024 15:35:00 +0530", "2024-06-03T10:05:00+00:00"),
    ("Mon, 03 Jun 2024 10:05:00 GMT", "2024-06-03T10:05:00+00:00"),
    ("2024-06-03T10:05:00.000Z", "2024-06-03T10:05:00+00:00"),
    ("Mon, 3 Jun 2024 10:05:00", "2024-06-03T10:05:00+00:00"),
    ("next Tuesday", None),
    ("Fri, 31 Dec 9999 23:59:59 -0100", None),
    ("0001-01-01T00:00:00+01:00", None),
    ("Mon, 3 Jun 2024 10:00:00 +9999", None),
    ("", None),
    (None, None),
])
def test_date_is_utc_iso(value: str | None, iso: str | None) -> None:
    """The Date header becomes UTC ISO 8601; one that cannot be read is null, not a refusal."""
    assert payload(date=value)["date"] == iso


def test_mime_wins_over_the_provider_fields_which_remain_the_fallback() -> None:
    """With the raw message, its headers and bodies are used; a header it lacks falls back to the provider's."""
    mime = parse_mime(b"From: Raw <raw@x.org>\r\nSubject: raw\r\n\r\nraw body\r\n")
    out = payload(mime=mime, subject="parsed", text="parsed body", reply_to="Back <back@x.org>", date="bad")
    assert (out["from"], out["subject"], out["text"], out["reply_to"]) == \
        ("raw@x.org", "raw", "raw body\n", ["back@x.org"])


def test_display_names_stand_beside_the_addresses() -> None:
    """`to_names`/`cc_names` hold each address's display name, "" when it has none, in the same order."""
    out = payload(to="=?utf-8?q?J=C3=B6rg?= <J@x.org>, k@x.org, Again <j@x.org>", cc='"Ops, Team" <ops@x.org>')
    assert (out["to"], out["to_names"], out["cc"], out["cc_names"]) == \
        (["j@x.org", "k@x.org"], ["Jörg", ""], ["ops@x.org"], ["Ops, Team"])


# Encoded display names as mailers write them: B, or Q with a name's specials (comma, parentheses, colon, quote,
# "@", brackets) left unencoded, which RFC 2047 5(3) forbids in a phrase and the email package reads all the same.
_Q_RAW = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789()<>@,;:\".[]!*+-/")


def q_word(name: str) -> str:
    text = "".join("_" if c == " " else c if c in _Q_RAW else "".join(f"={b:02X}" for b in c.encode())
                   for c in name)
    return f"=?utf-8?q?{text}?="


def b_word(name: str) -> str:
    return f"=?UTF-8?B?{base64.b64encode(name.encode()).decode()}?="


def package_mailboxes(value: str) -> list[tuple[str, str]]:
    """(display name, lower-cased address) of a To value as the email package's header parser reads it, the
    name's whitespace runs made single spaces as the payload writes them."""
    header = BytesParser(policy=default_policy).parsebytes(f"To: {value}\r\n\r\n".encode())["To"]
    return [(" ".join(a.display_name.split()), a.addr_spec.lower()) for a in header.addresses]


@pytest.mark.parametrize("value", [
    "=?UTF-8?B?SsO2cmcgTcO8bGxlcg==?= <a@b.example>",
    "=?utf-8?q?J=C3=B6rg?= <j@b.example>",
    "=?utf-8?Q?M=C3=BCller,_J=C3=B6rg?= <j@b.example>",
    "=?utf-8?q?J=C3=B6rg_(Sales)?= <j@b.example>, =?utf-8?q?Ana:?= <a@b.example>",
    "=?utf-8?q?Support_[EU]?= <s@b.example>",
    "=?utf-8?q?a@b?= <j@b.example>",
    '=?utf-8?q?Jo_"JJ"?= <j@b.example>',
    "=?utf-8?q?M=C3=BCller,_J=C3=B6rg?=<j@b.example>,=?utf-8?q?x;y?= <x@b.example>",
    '"=?utf-8?q?J=C3=B6rg?=" <j@b.example>, Dr. =?utf-8?q?Ana,_M.?= <a@b.example>',
    "=?utf-8?q?M=C3=BCller,_J=C3=B6rg?= <j@b.example> (=?utf-8?q?a,b?=)",
    "team: =?utf-8?q?M=C3=BCller,_J=C3=B6rg?= <j@b.example>;",
])
def test_encoded_names_in_to_and_cc_read_as_the_email_package_reads_them(value: str) -> None:
    """To and Cc mailboxes whose display names are encoded words (B, or Q with the name's comma, parentheses,
    colon or "@" unencoded, as mailers write them) give the addresses and decoded names the email package
    gives: an encoded word is one word, which no comma inside splits and no "@" inside makes an address."""
    out = payload(to=value, cc=value)
    expected = package_mailboxes(value)
    assert list(zip(out["to_names"], out["to"], strict=True)) == expected  # type: ignore[call-overload]
    assert list(zip(out["cc_names"], out["cc"], strict=True)) == expected  # type: ignore[call-overload]
    assert address_list(value) == [a for _n, a in expected]


_name_chars = st.sampled_from([*'abcXYZ09 ,()<>@:;.[]\\"éöüß€-', "Jörg", "Müller", "李"])
_names = st.lists(_name_chars, min_size=1, max_size=12).map("".join).filter(lambda n: n.strip() == n and n.strip())


@given(st.lists(st.tuples(_names, st.sampled_from([q_word, b_word]), st.sampled_from(["j", "ana.m", "ops"])),
                min_size=1, max_size=3))
@settings(max_examples=300, deadline=None)
def test_any_encoded_names_read_as_the_email_package_reads_them(mailboxes: list[tuple[str, Any, str]]) -> None:
    """Differential: a To of mailboxes named by encoded words, of any text, reads as the email package reads it."""
    value = ", ".join(f"{encode(name)} <{local}{i}@b.example>" for i, (name, encode, local) in enumerate(mailboxes))
    out = payload(to=value)
    assert list(zip(out["to_names"], out["to"], strict=True)) == package_mailboxes(value)  # type: ignore[call-overload]


def test_a_raw_message_keeps_its_encoded_to_and_cc_names() -> None:
    """A raw message's To and Cc, folded, with encoded names holding commas, are its addresses and names."""
    raw = (b"From: a@x.org\r\nTo: =?utf-8?Q?M=C3=BCller,_J=C3=B6rg?= <j@b.example>,\r\n"
           b" =?UTF-8?B?QW5hIE1hcsOtYQ==?= <ana@b.example>\r\nCc: =?utf-8?q?Ops_(EU)?= <ops@b.example>\r\n"
           b"Subject: s\r\n\r\nbody\r\n")
    out = payload(mime=parse_mime(raw))
    assert (out["to"], out["to_names"], out["cc"], out["cc_names"]) == (
        ["j@b.example", "ana@b.example"], ["Müller, Jörg", "Ana María"], ["ops@b.example"], ["Ops (EU)"])


@pytest.mark.parametrize(("pairs", "spam"), [
    ([("X-Spam-Status", "No"), ("X-Spam-Score", "-0.1")], Spam("ham", -0.1)),
    ([("X-Spam-Status", "Yes, score=7.2 required=5.0 tests=BAYES_99")], Spam("spam", 7.2)),
    ([("X-Spam-Score", "nan")], None),
    ([("X-Spam-Status", "maybe")], Spam("unknown", None)),
    ([], None),
])
def test_header_spam_reads_the_filters_headers(pairs: list[tuple[str, str]], spam: Spam | None) -> None:
    """SpamAssassin-style headers give a verdict and a score; none of them gives no spam result."""
    assert header_spam(Headers(pairs)) == spam


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_date_text_is_an_iso_date_or_null(value: str) -> None:
    """Whatever a Date header holds, the payload's `date` is UTC ISO 8601 or null; it never fails the request."""
    got = payload(date=value)["date"]
    assert got is None or got.endswith("+00:00")


@pytest.mark.parametrize(("value", "score"), [
    (5, 5.0), (-0.5, -0.5), (" 2.5 ", 2.5), pytest.param(10**400, None, id="int-past-float"),
    pytest.param(-(10**400), None, id="negative-int-past-float"), ("1e400", None), (True, None),
])
def test_spam_score_is_a_finite_number_or_none(value: object, score: float | None) -> None:
    """A score is the number the provider sent when a float holds it; an integer past a float's range (JSON
    allows any) is not a score, as a string past it is not, and never an OverflowError."""
    assert spam_score(value) == score


def test_a_bounce_report_lists_its_status_and_returned_message_once_each() -> None:
    """A delivery status notification (multipart/report) gives its status fields as one attachment and the
    returned message as another, not a file per block of fields."""
    dsn = (b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n"
           b'Content-Type: multipart/report; report-type=delivery-status; boundary="r1"\r\n\r\n'
           b"--r1\r\nContent-Type: text/plain\r\n\r\nThis is the mail system.\r\n"
           b"--r1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
           b"Final-Recipient: rfc822; nobody@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
           b"--r1\r\nContent-Type: message/rfc822\r\n\r\nFrom: support@acme.test\r\nSubject: hi\r\n\r\nbody\r\n"
           b"--r1--\r\n")
    mime = parse_mime(dsn)
    status, returned = mime.attachments
    assert status.meta["content_type"] == "message/delivery-status"
    assert status.content is not None and b"Status: 5.1.1" in status.content
    assert returned.content == b"From: support@acme.test\r\nSubject: hi\r\n\r\nbody"


@pytest.mark.parametrize(("raw", "header"), [
    # a multipart's boundary both whole and in sections: the parser reads it before any part
    (b"Content-Type: multipart/mixed; boundary*=utf-8''a; boundary*0=a\n\n--a\n\nx\n--a--\n", "content-type"),
    (b"Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: application/pdf\n"
     b"Content-Disposition: attachment; filename*=utf-8''a.pdf; filename*0=b.pdf\n\nx\n--a--\n", "content-disposition"),
])
def test_an_rfc2231_parameter_in_both_forms_is_a_400_naming_the_header(raw: bytes, header: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse_mime(raw)
    assert caught.value.status == 400
    assert header in str(caught.value) and "name*0=" in str(caught.value)


@pytest.mark.parametrize(("raw", "names"), [
    # a character set its text is not in: an odd byte count of UTF-16
    (b"Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: application/pdf\n"
     b"Content-Disposition: attachment; filename*=utf-16''%61\n\nx\n--a--\n", ["\ufffd"]),
    # codecs that are no character set: read as UTF-8
    (b"Content-Type: application/pdf; name*=punycode''x\n\nx\n", ["x"]),
    (b"Content-Type: application/pdf; name*=idna''%FF\n\nx\n", ["\ufffd"]),
    (b"Content-Type: application/pdf; name*=unicode_escape''%5Cq.pdf\n\nx\n", ["q.pdf"]),  # a path's \\
    # read by the parser: \ufffd matches no line, so the body is one part, kept as a file without a name
    (b"Content-Type: multipart/mixed; boundary*=idna''%FF\n\n--a\n\nx\n--a--\n", [""]),
    (b"Content-Type: multipart/mixed; boundary*=unicode_escape''%5Cq\n\n--\\q\n"
     b"Content-Type: application/pdf; name=r.pdf\n\nx\n--\\q--\n", ["r.pdf"]),
    # a NUL in the name (Python's codec lookup raises ValueError for it)
    (b"Content-Type: application/pdf; name*=a\x00b''x\n\nx\n", ["x"]),
    (b"Content-Type: multipart/mixed; boundary*=a\x00b''a\n\n--a\nContent-Type: image/png; name=p.png\n\nx\n--a--\n",
     ["p.png"]),
    (b"Content-Type: text/plain\nContent-Disposition: attachment; filename*=a\x00b''x\n\nx\n", ["x"]),
])
def test_an_rfc2231_parameter_in_no_character_set_python_reads_is_read_as_utf8(raw: bytes, names: list[str]) -> None:
    """A parameter in a character set Python has no codec for, or in a codec that is no character set, is read
    as UTF-8 with the bytes it cannot read replaced (the message is taken: a 400 would refuse the same bytes
    on every retry); one whose text is not in its character set has those bytes replaced."""
    assert [a.meta["name"] for a in parse_mime(raw).attachments] == names


def test_an_rfc2231_parameter_in_an_unknown_charset_is_still_read() -> None:
    raw = b"Content-Type: application/pdf; name*=bogus''report.pdf\n\nx\n"
    assert [a.meta["name"] for a in parse_mime(raw).attachments] == ["report.pdf"]


@pytest.mark.parametrize(("value", "address"), [
    ("x@evil.example, <ceo@corp.example>", None),  # several, one in brackets: still no address
    ("x@evil.example, Boss <ceo@corp.example>", None),
    ("victim@corp.example, a@evil.example", None),  # several, none in brackets: no address
    ("A <a@x.io>, B <b@y.io>", None),  # several in brackets: no address
    ('"victim@corp.example" <a@evil.example>', "a@evil.example"),
    ("John Doe, Support <john@x.example>", "john@x.example"),  # a name's unquoted comma: one address
    ("asha@x.io, Asha <asha@x.io>", "asha@x.io"),  # one address twice is one mailbox
    ("asha@x.io <ASHA@x.io>", "asha@x.io"),
    ("Asha Rao <ASHA@x.io>", "asha@x.io"),
])
def test_a_from_of_several_mailboxes_names_no_sender(value: str, address: str | None) -> None:
    """Conversations trust a message's sender: a From a list parse splits into mailboxes of more than one address
    names none of them (which one a provider's DMARC check read, if any, cannot be told: the one in angle
    brackets may be a victim's); mailboxes without an address (a display name's unquoted comma) do not count."""
    from handlers.email import sender

    assert sender(value)[1] == address


@pytest.mark.parametrize(("value", "address"), [
    ("'john@x.com' <john@x.com>", "john@x.com"),  # Outlook/Exchange: the address, single-quoted, as the name
    ("'John@X.com' <john@x.com>", "john@x.com"),
    ("john@x.com <John@X.com>", "john@x.com"),
    ("john@x.com (x) <john@x.com> (y)", "john@x.com"),
    # display text naming another address: a lenient parse (parseaddr, policy.default's From.addresses) reads
    # that one, and a provider's DMARC check may have passed for its domain
    ("attacker@evil.example <victim@corp.example>", None),
    ("attacker@evil.example <victim@corp.example> (x)", None),
    ("attacker@evil.example (x) <victim@corp.example>", None),
    ("victim@corp.example <attacker@evil.example>", None),
    ("victim@corp.example (x) <A@Evil.example>", None),
    ("'jdoe@x.com' <john@x.com>", None),
    ("jdoe@corp.onmicrosoft.com <john@corp.com>", None),
    ("'john@x.com <john@x.com>", None),  # one quote: not Outlook's form, another address
    # several mailboxes (a top-level comma, or a group) of more than one address: none, as before
    ("victim@corp.example <a@evil.example>, b <a@evil.example>", None),
    ("'jdoe@x.com' <john@x.com>,", None),
    ("Team: victim@corp.example <a@evil.example>;", None),
    ("victim@corp.example a <a@evil.example>", None),  # display text that is no one addr-spec: not read
    # display text that is no address at all: the angle-addr
    ('"victim@corp.example" <a@evil.example>', "a@evil.example"),
    ("Asha Rao <ASHA@x.io>", "asha@x.io"),
])
def test_a_lone_mailbox_whose_display_text_is_an_address_names_it_only_when_it_is_the_angle_addr(
        value: str, address: str | None) -> None:
    """A From of one mailbox (no comma outside quotes, comments, brackets and groups) whose display text is an
    addr-spec names its angle-addr only when that text is the same address (case aside; Outlook writes
    `'john@x.com' <john@x.com>`). Otherwise it names none: `email.utils.parseaddr` and `policy.default`'s
    `From.addresses` read the display text's address, so a provider or verifier parsing that way may have
    checked DMARC for the attacker's domain while the angle-addr is a victim's."""
    assert sender(value)[1] == address


@pytest.mark.parametrize("value", [
    # an address inside a display name whose quote is escaped, then a second mailbox
    '"\\"<ceo@corp.example>" <attacker@evil.example>, b@evil.example',
    # an address inside a comment, then a second mailbox
    "attacker@evil.example (<ceo@corp.example>), b@evil.example",
    # a quote inside a comment, which opens no quoted string
    'attacker@evil.example (" <ceo@corp.example> "), b@evil.example',
    # nested comments, escaped parentheses
    "attacker@evil.example (a (b \\) <ceo@corp.example>) c), b@evil.example",
    # a name built from a provider's decoded name without escaping: the quote is left open
    '"M" <ceo@corp.example>" <attacker@evil.example>',
    # an angle bracket left open, or closed twice
    "<ceo@corp.example, b@evil.example",
    "ceo@corp.example>, <attacker@evil.example>>",
    # a line break in a provider's field, where the standard library's parser ends a quoted string or comment
    '"x\r<ceo@corp.example>"',
    '"x\r\n <ceo@corp.example>"',
    "attacker@evil.example (x\r<ceo@corp.example>)",
])
def test_an_address_in_a_name_or_a_comment_is_never_the_sender(value: str) -> None:
    """An address written inside a quoted display name (escapes read as RFC 5322 reads them) or a comment is
    text, not a mailbox: the sender is the mailbox the From really is, or none when that cannot be told."""
    assert sender(value)[1] != "ceo@corp.example"


@pytest.mark.parametrize(("value", "address"), [
    ('"\\"<ceo@corp.example>" <attacker@evil.example>, b@evil.example', None),  # two mailboxes
    ('"\\"<ceo@corp.example>" <attacker@evil.example>', "attacker@evil.example"),
    ("attacker@evil.example (<ceo@corp.example>), b@evil.example", None),
    ('"M" <ceo@corp.example>" <attacker@evil.example>', None),
    ('"M\\" <ceo@corp.example>" <attacker@evil.example>', "attacker@evil.example"),
    ("Asha (the <boss@x.io>) <asha@x.io>", "asha@x.io"),
    ("asha@x.io (Asha <boss@x.io>)", "asha@x.io"),
    ('"Rao \\"Asha\\" (ops)" <asha@x.io>', "asha@x.io"),
    ("Asha <Support> <asha@x.io>", "asha@x.io"),
    ("<>", None),
])
def test_the_sender_is_the_mailbox_read_with_its_quotes_and_comments(value: str, address: str | None) -> None:
    assert sender(value)[1] == address



@pytest.fixture
def loop_parse() -> Any:
    """A parse marked as running on the event loop, as intake marks one its body placed there."""
    token = offload.start_loop_parse()
    yield
    offload.end_loop_parse(token)


@pytest.mark.parametrize("value", ["[." * 32000, "<" * 2000, "a@b.example (c) " * 100])
def test_on_the_loop_a_long_address_field_the_fast_path_cannot_read_goes_to_the_parser_thread(
        loop_parse: None, value: str) -> None:
    """The standard library's address parser reads a character in microseconds (64 KB of "[." held the loop for
    a quarter of a second): on the loop, past LOOP_ADDRESS_CHARS of such text the parse stops (OffLoop), to be
    run again in the parser thread; nothing of it is parsed first."""
    with pytest.raises(offload.OffLoop, match=r"^the To field is read by the full address parser$"):
        address_list(value, field="To")


def test_the_loop_budget_is_the_requests_over_all_its_fields(loop_parse: None) -> None:
    """Each field within the budget, all of them past it: the request's parse stops at the field that is."""
    field = "a@b.example (c), " * (offload.LOOP_ADDRESS_CHARS // 17 // 2)
    assert sender(field)[1] == "a@b.example"
    assert len(address_list(field, field="To")) == 1
    with pytest.raises(offload.OffLoop, match="the Cc field"):
        address_list(field, field="Cc")


def test_on_the_loop_ordinary_addresses_cost_nothing_from_the_budget(loop_parse: None) -> None:
    """The fast path (the forms most mail carries, read by one regular expression) stays on the loop whatever
    the length: a To of as many addresses as the cap, named and quoted."""
    many = ", ".join(f'"Customer {i}" <c{i}@ex.co>' for i in range(MAX_ADDRESSES))
    assert len(address_list(many, field="To")) == MAX_ADDRESSES
    assert len(address_list(many, field="Cc")) == MAX_ADDRESSES
    assert sender("Asha Rao <asha@example.com>") == ("Asha Rao", "asha@example.com")


def test_off_the_loop_a_long_address_field_is_parsed_whole() -> None:
    """In the parser thread (no loop parse marked) nothing bounds the parse but the caps."""
    assert address_list("<" * 4000, field="To") == []
    assert len(address_list("a@b.example (c), " * 200, field="To")) == 1


def test_on_the_loop_a_raw_message_of_many_parts_goes_to_the_parser_thread(loop_parse: None) -> None:
    """A raw message a body carried encoded (SES's base64 `content`, Mailgun's urlencoded `body-mime`): its
    decoded delimiter lines and size, which a look at the body did not see, send its parse to the thread."""
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(offload.LOOP_MIME_LINES + 1))
    raw = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n"
    with pytest.raises(offload.OffLoop, match="MIME delimiter lines"):
        parse_mime(raw)
    large = b"Subject: x\r\n\r\n" + b"x" * offload.LOOP_BYTES
    with pytest.raises(offload.OffLoop, match=rf"^the raw message is {len(large)} bytes with 0 MIME"):
        parse_mime(large)
    assert parse_mime(b"Subject: x\r\n\r\nhi\r\n").text == "hi\r\n"


def test_on_the_loop_the_raw_messages_of_a_request_share_one_budget(loop_parse: None) -> None:
    """A batch's raw messages (SparkPost's, base64) each of a few parts, many together: the parse stops at the
    message that takes the request's decoded parts past LOOP_MIME_LINES."""
    half = offload.LOOP_MIME_LINES // 2 + 1
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(half - 1))
    raw = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n"
    assert raw.count(b"\n--") == half
    assert len(parse_mime(raw).attachments) == half - 2  # the first part is the text
    with pytest.raises(offload.OffLoop, match=rf"^the raw message is {len(raw)} bytes with {half} MIME delimiter "
                                              "lines, past the loop's share with the request's messages before it$"):
        parse_mime(raw)


@pytest.mark.parametrize("lines", [b"\n", b"\r\n", b"\r", b" \n"], ids=["lf", "crlf", "cr", "continuation"])
def test_on_the_loop_a_raw_message_of_many_lines_goes_to_the_parser_thread(
        loop_parse: None, lines: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads a raw message line by line in Python: 60 KB of blank or continuation lines, under the
    size and delimiter counts that place a parse, held the loop 50-90 ms. Past LOOP_PARSER_LINES lines (however
    they end) the parse stops before the parser runs, to be done in the parser thread; fewer are parsed there."""
    runs: list[int] = []

    class Counted(BytesParser):
        def parsebytes(self, *args: Any, **kwargs: Any) -> Message:
            runs.append(1)
            return super().parsebytes(*args, **kwargs)

    monkeypatch.setattr(email_module, "BytesParser", Counted)
    head = b"Subject: x\r\nX-Note: y\r\n" if lines == b" \n" else b"Subject: x\r\n\r\n"
    raw = head + lines * 20_000
    assert len(raw) <= offload.LOOP_BYTES and raw.count(b"\n--") == 0
    with pytest.raises(offload.OffLoop, match=r"^the raw message is 2000\d lines$"):
        parse_mime(raw)
    assert runs == []
    few = head + lines * (offload.LOOP_PARSER_LINES - 3)
    assert offload.text_lines(few) <= offload.LOOP_PARSER_LINES
    assert parse_mime(few).headers.get("subject") == "x" and runs == [1]


def test_on_the_loop_the_lines_of_a_requests_raw_messages_share_one_budget(loop_parse: None) -> None:
    """A batch's raw messages, each under LOOP_PARSER_LINES lines, many together: the parse stops at the message
    that takes the request's lines for the email package's parser past LOOP_PARSER_LINES."""
    raw = b"Subject: x\r\n\r\n" + b"\r\n" * (offload.LOOP_PARSER_LINES // 2 + 1)
    assert offload.text_lines(raw) <= offload.LOOP_PARSER_LINES
    assert parse_mime(raw).headers.get("subject") == "x"
    with pytest.raises(offload.OffLoop, match=rf"^the raw message is {offload.text_lines(raw)} lines, past the "
                                              "loop's share with the request's messages before it$"):
        parse_mime(raw)


def test_a_from_longer_than_any_mailbox_is_a_413_naming_the_field() -> None:
    """A From is one mailbox: past MAX_FROM_CHARS it is refused before it is parsed, naming which field."""
    assert sender("a" * (MAX_FROM_CHARS - 14) + " <a@b.example>")[1] == "a@b.example"
    over = rf"^the From field is {MAX_FROM_CHARS + 1} characters, at most {MAX_FROM_CHARS}$"
    with pytest.raises(Rejected, match=over):
        sender("[" * (MAX_FROM_CHARS + 1))
    with pytest.raises(Rejected, match=r"^the envelope From field is"):
        payload(envelope_from="[" * (MAX_FROM_CHARS + 1))



_IN_QUOTES = st.lists(st.sampled_from(["x", " ", "<ceo@corp.example>", '\\"', "\\\\", "(", ")", ",", "<", ">"]),
                      max_size=6).map(lambda parts: '"' + "".join(parts) + '"')
_IN_COMMENT = st.lists(st.sampled_from(["x", " ", "<ceo@corp.example>", "\\(", "\\)", "\\\\", '"', ",", "<",
                                        "(in <ceo@corp.example>)"]),
                       max_size=6).map(lambda parts: "(" + "".join(parts) + ")")
_MAILBOX = st.one_of(
    st.builds(lambda name: f"{name} <a@evil.example>", _IN_QUOTES),
    st.builds(lambda comment: f"a@evil.example {comment}", _IN_COMMENT),
    st.builds(lambda name, comment: f"{name} <b@evil.example> {comment}", _IN_QUOTES, _IN_COMMENT),
    st.just("b@evil.example"),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_MAILBOX, min_size=1, max_size=3).map(", ".join))
def test_an_address_only_in_names_and_comments_is_never_the_sender(value: str) -> None:
    """A From of one to three mailboxes whose display names and comments hold quotes, escapes, brackets and a
    victim's address: the sender is the one address of its mailboxes (as the standard library's RFC 5322
    parser reads them), or none; never the victim, nor any of several."""
    got = sender(value)[1]
    parsed, rest = get_address_list(value)
    assert rest == ""
    addresses = {m.addr_spec for m in parsed.all_mailboxes}
    assert got is None or (addresses == {got})


_ADDRESS = st.sampled_from(["ceo@corp.example", "a@evil.example", "b@evil.example", "CEO@corp.example.net"])
_FORMS = st.sampled_from(["{}", "<{}>", "Boss <{}>", '"Boss, CEO" <{}>', "{} (Boss)", "John Doe, Support <{}>",
                          "=?utf-8?q?x?= <{}>", "(in <{}>) <{}>"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_ADDRESS, _FORMS), min_size=2, max_size=3, unique_by=lambda m: m[0].lower()))
def test_a_from_of_mailboxes_of_several_addresses_names_no_sender(mailboxes: list[tuple[str, str]]) -> None:
    """However they are written, with names, comments, quotes or a name's unquoted comma, and whichever of them
    is in angle brackets, two or three mailboxes of different addresses name no sender."""
    value = ", ".join(form.replace("{}", address) for address, form in mailboxes)
    assert sender(value)[1] is None


_DISPLAY_FORMS = st.sampled_from(["{}", "'{}'", "{} (x)", "(x) {}"])


@settings(max_examples=300, deadline=None)
@given(_ADDRESS, _DISPLAY_FORMS, _ADDRESS, st.sampled_from(["", " (x)", " (<ceo@corp.example>)"]))
def test_a_lone_mailbox_names_no_address_a_lenient_parse_reads_otherwise(
        shown: str, form: str, address: str, comment: str) -> None:
    """A lone mailbox whose display text is an address (bare, single-quoted as Outlook writes it, beside a
    comment) names its angle-addr only when the two are one address; and whatever it names, `parseaddr` and
    `policy.default`'s `From.addresses` (which read the display text's address) read the same one, quotes
    aside: a provider's DMARC check that parsed it that way checked the sender's own domain."""
    value = f"{form.replace('{}', shown)} <{address}>{comment}"
    got = sender(value)[1]
    assert got == (address.lower() if shown.lower() == address.lower() else None)
    if got is not None:
        header = HeaderParser(policy=default_policy).parsestr(f"From: {value}\n\n")["From"]
        lenient = {parseaddr(value)[1], header.addresses[0].addr_spec}
        assert {a.strip("'").lower() for a in lenient} == {got}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["John", "Doe", "Support", "Acme-Co", "=?utf-8?q?M=C3=BCller?="]), min_size=1,
                max_size=4), st.lists(st.sampled_from([" ", ", "]), min_size=3, max_size=3), _ADDRESS)
def test_a_names_unquoted_commas_leave_its_address_the_sender(words: list[str], gaps: list[str], address: str) -> None:
    """A display name written with unquoted commas (`John Doe, Support <john@x.example>`) is read by a list parse
    as mailboxes without an address and then the one with it: that address is the sender."""
    name = words[0] + "".join(gap + word for gap, word in zip(gaps, words[1:], strict=False))
    assert sender(f"{name} <{address}>")[1] == address.lower()


def _encoded(text: str, how: str) -> str:
    data = text.encode()
    if how == "b":
        return f"=?utf-8?b?{base64.b64encode(data).decode()}?="
    return "=?utf-8?q?" + "".join(f"={byte:02X}" for byte in data) + "?="


_WORD_TEXT = st.lists(st.sampled_from(["<ceo@corp.example>", "ceo@corp.example", "Boss ", ", ", '"', "(", ")",
                                       "<", ">", "é", "?", "_", "=", ":", ";"]),
                      min_size=1, max_size=6).map("".join)
_WORDS = st.lists(st.tuples(_WORD_TEXT, st.sampled_from("bq")), min_size=1, max_size=3).map(
    lambda words: " ".join(_encoded(text, how) for text, how in words))


@settings(max_examples=500, deadline=None)
@given(_WORDS, st.sampled_from(["{}", "<{}>", "Boss {}", "{} (note)", '"Boss" {}']))
def test_an_encoded_word_is_never_an_address(words: str, form: str) -> None:
    """Whatever an encoded word decodes to (an address, brackets, commas, quotes), a From whose only address
    would be inside one names no sender; beside an address, it leaves that address the sender."""
    assert sender(form.replace("{}", words))[1] is None
    assert sender(f"{words} <a@b.example>")[1] == "a@b.example"


@pytest.mark.parametrize("value", [
    '"ceo@corp.example"',  # a quoted string alone: a display name without a mailbox
    '"ceo@corp.example" attacker',
    '"<ceo@corp.example>"',
    "ceo@corp.example:;",  # a group's display name, no members
    'Group: "ceo@corp.example";',  # a group whose member is a quoted string
    "ceo@corp.example: Team <evil>;",
    'Team <evil>, "ceo@corp.example"',  # an angle-addr without "@", then a quoted string
    "Team <>, (ceo@corp.example)",
    "=?utf-8?q?ceo=40corp.example?=",
    "=?utf-8?q?CEO_=3Cceo=40corp.example=3E?=",
])
def test_an_address_written_in_a_name_with_no_mailbox_is_never_the_sender(value: str) -> None:
    """A From with no real mailbox names no sender, whatever address its name text holds: a list parse reads a
    lone quoted string, or a group's display name, as that address, and the message would join the thread of
    the address it only writes."""
    assert sender(value)[1] is None


@pytest.mark.parametrize(("value", "name", "address"), [
    ("Asha Rao <@route.example:asha@corp.example>", "Asha Rao", "asha@corp.example"),  # obsolete route
    ("Asha Rao <asha @ corp.example>", "Asha Rao", "asha@corp.example"),  # folding whitespace in the addr-spec
    ("CORP\\asha <asha@corp.example>", "CORP\\asha", "asha@corp.example"),  # a backslash in a bare name
    ("Asha :) <asha@corp.example>", None, "asha@corp.example"),
    ("Asha <asha@corp.example (home)>", "Asha (home)", "asha@corp.example"),  # a comment in the brackets
    ('Asha Rao <"asha.rao"@corp.example>', "Asha Rao", "asha.rao@corp.example"),  # quoting that changes nothing
    ('Asha Rao <"asha rao"@corp.example>', "Asha Rao", '"asha rao"@corp.example'),
    ("Team: Asha <asha@corp.example>;", "Asha", "asha@corp.example"),  # a group of one
    ('"asha" . rao@corp.example', None, "asha.rao@corp.example"),  # a bare one, words joined by a spaced dot
])
def test_an_old_style_from_with_one_addr_spec_names_its_sender(value: str, name: str | None, address: str) -> None:
    """Old but valid forms (RFC 5322 4.4) whose one angle-addr or bare addr-spec is unambiguous are read, so a
    sender who writes them keeps one conversation."""
    assert sender(value) == (name, address)


@pytest.mark.parametrize("value", [
    "Asha <asha@corp.example",  # the bracket left open
    "Asha <mailto:asha@corp.example>",
    "Asha <a@evil.example (ceo@corp.example)>",  # an address in a comment inside the brackets
    'Asha <"ceo@corp.example"@evil.example>',
    "Asha <@a.example:@b.example:asha@corp.example>",
])
def test_an_angle_addr_that_is_not_one_plain_addr_spec_names_no_sender(value: str) -> None:
    assert sender(value)[1] is None


_NAME_PIECE = st.sampled_from([
    '"ceo@corp.example"', '"<ceo@corp.example>"', '"x\\"ceo@corp.example"', "(ceo@corp.example)",
    "(<ceo@corp.example>)", "ceo@corp.example:", '"ceo@corp.example":', "Team:", "=?utf-8?q?ceo=40corp.example?=",
    "=?utf-8?q?=3Cceo=40corp.example=3E?=", "Boss", '"Boss"', "<evil>", "<>", ", ", ";", " ", "<a@evil.example>",
    "a@evil.example"])


@settings(max_examples=1500, deadline=None)
@given(st.lists(_NAME_PIECE, min_size=1, max_size=7).map(" ".join))
def test_an_address_only_in_quoted_strings_comments_group_names_or_encoded_words_is_never_the_sender(
        value: str) -> None:
    """Quoted strings with no angle-addr, groups' display names, comments and encoded words holding a victim's
    address, mixed with names, separators and an attacker's real mailbox: the sender is never the victim, and
    none at all without the attacker's mailbox."""
    got = sender(value)[1]
    assert got in (None, "a@evil.example")
    assert got is None or "a@evil.example" in value
