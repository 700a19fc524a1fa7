"""bridge/logs.py: JSON lines, stable event names, and emails and phone numbers masked."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from aiohttp import web

from bridge.logs import LEVEL, STDLIB_HANDLER, cli_logging, configure_logging, mask_personal_data, mask_text
from tests.complexity.scaling import assert_linear


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """configure_logging changes structlog's global config; put the defaults back afterwards."""
    try:
        yield
    finally:
        structlog.reset_defaults()


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("asha@example.com", "a***@example.com"),
        ("Asha.Rao+tickets@mail.example.co.in", "A***@mail.example.co.in"),
        ("write to b_s-1@sub-domain.example.org today", "write to b***@sub-domain.example.org today"),
        ("x@example.io, y.z@example.io", "x***@example.io, y***@example.io"),
    ],
)
def test_masks_emails(text: str, masked: str) -> None:
    """An email keeps its first character and its domain; the rest of the local part is hidden."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+91 98765 43210", "+**********10"),
        ("+919876543210", "+**********10"),
        ("9876543210", "********10"),
        ("555-123-4567", "********67"),
        ("555.123.4567", "********67"),
        ("+44 20 7946 0958", "+**********58"),
        ("+1 (555) 123-4567", "+*********67"),
        ("12345678", "******78"),
        ("tel:+919876543210", "tel:+**********10"),
        ("phone:9876543210", "phone:********10"),
        ("phone2:9876543210", "phone2:********10"),
        ("alt 1:020 7946 0958", "alt 1:*********58"),
    ],
)
def test_masks_phone_numbers(text: str, masked: str) -> None:
    """A phone number keeps only its last two digits (and a leading +), whatever its separators."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("failed on '98765_43210'", "failed on '********10'"),
        ("failed on '98765+4321O'", "failed on '*******21O'"),  # a typed O for 0 after the number
        ("98765/43210", "********10"),
        ("+91_98765_43210", "+**********10"),
        ("98765 43210x", "********10x"),
    ],
)
def test_masks_phone_numbers_with_any_separator(text: str, masked: str) -> None:
    """Digits run together by `_`, `+` or `/` (as people type a number, or a form mangles it) are a phone number
    as much as with spaces or dashes, and a number followed by one letter is masked too."""
    assert mask_text(text) == masked


@pytest.mark.parametrize("text", [
    "123e4567-e89b-12d3-a456-426614174000",
    "12345678-abcd-ef01-2345-6789abcdef01",  # a UUID whose first group is all digits
    "12345678-1234-1234-1234-123456789012",
    "20240419T141911Z",  # an ISO 8601 basic-format time
    "2024/04/19",
    "12345678abcdef0123456789",  # a hex digest that begins with digits
    "file_20240419_123456.log",
    "1717408960.000200",  # a Slack ts: 16 digits
])
def test_ids_and_times_with_the_new_separators_are_left_alone(text: str) -> None:
    """UUIDs, hex digests, compact and slashed dates, and ids joined by `_` are not phone numbers."""
    assert mask_text(text) == text


@pytest.mark.parametrize("make", [
    lambda n: "1-" * n + "ab",
    lambda n: "1" * n + "ab",
    lambda n: "1 " * n + "ab",
    lambda n: "1_" * n + "ab",
    lambda n: "12345678-" * n + "ab",
    lambda n: "2024_04_19_" * n + "ab",
    lambda n: "2024/" * n + "ab",
    lambda n: "2024/000123/" * n + "9876543210",
    lambda n: "2024-04-19 " * n + "ab",
    lambda n: "20240419_" * n + "ab",
    lambda n: "2024/000123_" * n + "ab",
    lambda n: "2024_04_19_0001_" * n + "ab",
    lambda n: "20240419_0001_" * n + "ab",
    lambda n: "2024/1/" * n + "ab",
    lambda n: "2024/07911 " * n + "ab",
    lambda n: "2024/04/19/" * n + "9876543210",
    lambda n: "2024/000123 " * n + "ab",
    lambda n: "2024/0001 1" + " " * n + "ab",
], ids=["dashes", "digits", "spaces", "underscores", "dashed-groups", "dates-joined", "years-joined", "year-ids",
        "dates-spaced", "compact-dates", "year-ids-underscored", "date-ids", "compact-date-ids", "unpadded-ids",
        "ids-spaced", "dates-slashed", "padded-ids-spaced", "id-before-spaces"])
def test_masking_phones_grows_linearly(make: Any) -> None:
    """A long run of digits and separators that ends where no number may (before `-` or a word) costs masking
    about as much more as it is longer."""
    assert_linear(mask_text, make, 4_000)


@pytest.mark.parametrize("text", [
    "2024_04_19_0001",
    "2024/04/19/0001",
    "order 2024_04_19_0001 placed",
    "batch 2024_04_19",
    "04/19/2024",  # a US date: month first
    "ref 20240419_0001",
    "invoice 2024/0001/17",
    "INV/2024/000123",
    "shipment 2024_0419_0001_03",
    "order 2024_04_19_0001_0002",
    "20240419_0001_03",
])
def test_date_and_year_led_ids_joined_by_underscores_or_slashes_stay_readable(text: str) -> None:
    """Ids joined by `_` or `/` that begin with a date (`2024_04_19_0001`, `20240419_0001`) or a year (an order or
    invoice number, `INV/2024/000123`) are not phone numbers: left as they are. Before, those joined by `_` and the
    year-led ones were masked as one."""
    assert mask_text(text) == text


@pytest.mark.parametrize(("text", "masked"), [
    ("2024-04-19 9876543210", "2024-04-19 ********10"),
    ("on 19/04/2024 98765 43210", "on 19/04/2024 ********10"),
    ("2024/04/19/9876543210", "2024/04/19/********10"),
    ("2024/000123/9876543210", "2024/000123/********10"),
    ("20240419/9876543210", "******19/********10"),
    ("2024/9876543210", "************10"),  # a group of 8 digits or more is no id's: the whole run is a number
    ("9876_54_3210", "********10"),  # no month 54: no date
    ("5551-23-45", "******45"),  # no month 23: no date
])
def test_a_number_beside_a_date_or_an_id_is_still_masked(text: str, masked: str) -> None:
    """A date or a year-led id is left alone, not the run it begins: a phone number written after it is masked, as
    is a run shaped like a date whose month or day cannot be one. Before, a date took its whole run with it
    (`2024-04-19 9876543210` in clear)."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(("text", "masked"), [
    ("Tlf. 20110517/40404040", "Tlf. ******17/******40"),  # two Danish mobiles: the first reads as a date
    ("Tlf. 20110517/20110518", "Tlf. ******17/******18"),
    ("20240419/0001", "**********01"),  # a compact date goes on in an id with `_` alone
    ("20240419_9876543210", "******19_********10"),  # no id-sized group after it: 8 digits as any others
])
def test_eight_digits_that_read_as_a_date_are_masked_before_a_slash(text: str, masked: str) -> None:
    """8 digits that begin with 19 or 20 and go on as a month and a day are a compact date only before `_` and a
    group of up to 7 digits (`20240419_0001`); before a `/` (a common way to write two numbers) or a longer group
    they are a number and masked. Before, `20110517/40404040` left the first mobile in clear."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(("text", "masked"), [
    ("INV/2024/000123_07911123456", "INV/2024/000123_*********56"),
    ("ref 2024/0001_07911123456", "ref 2024/0001_*********56"),
    ("INV/2024/000123_+447911123456", "INV/2024/000123_+**********56"),
    ("2024_04_19_9876543210", "2024_04_19_********10"),
    ("2024-04-19_9876543210", "2024-04-19_********10"),
    ("20240419_0001_9876543210", "20240419_0001_********10"),
    ("2024_04_19_0001_98765 43210", "2024_04_19_0001_********10"),
])
def test_a_number_joined_by_an_underscore_after_a_date_or_an_id_is_masked(text: str, masked: str) -> None:
    """A number written after a date or a year-led id with `_` is masked, the date or id left readable. Before, it
    was left in clear: the search went on at the `_`, and no number may begin after a word character."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(("text", "masked"), [
    ("call me on 2012/3456789", "call me on *********89"),
    ("Tel. 2015/5550123", "Tel. *********23"),
    ("Handy: 1976/1234567", "Handy: *********67"),
    ("1999/1234567", "*********67"),
    ("tel 2012_345_6789", "tel *********89"),
    ("tel 2012/345/6789", "tel *********89"),
    ("2024/987/6543210", "************10"),
    ("ref 2024/07911 123456", "ref *************56"),
    ("ref 2024/0001/07911 123456", "ref 2024/0001/*********56"),
])
def test_year_led_groups_a_phone_number_could_be_are_masked(text: str, masked: str) -> None:
    """A year and groups of digits is an id only when a group is padded with a leading zero (`INV/2024/000123`),
    and none runs on into more digits with another separator: a year and a 7-digit group (`2012/3456789`) or groups
    with no padding are as much a phone number written in groups as an id, and masked; so is `2024/07911 123456`,
    whose last group begins a UK mobile. Before, these were left in clear."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(("text", "masked"), [
    ("order 2024/000123 07911 123456", "order 2024/000123 *********56"),
    ("2024/000123 415 555 0100", "2024/000123 ********00"),
    ("2024_0001 2011 0517", "2024_0001 ******17"),
    ("2024/0001 98765 43210", "2024/0001 ********10"),
    ("INV/2024/000123 07911 123456", "INV/2024/000123 *********56"),
    ("2024/000123 20110517", "2024/000123 ******17"),
    ("2024-04-19_0001 07911 123456", "2024-04-19_0001 *********56"),
])
def test_a_number_in_groups_after_a_year_led_id_and_a_space_is_masked_alone(text: str, masked: str) -> None:
    """A year-led id followed by a space and a number (in groups or not) ends before the number, which is masked as
    any other, all its digits but the last two. Before, the id ran on into the number and the whole run was masked
    as one mis-split number, most of the number's digits left in clear (`order *************11 123456`)."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(("text", "masked"), [
    ("order 2024/000123_91-98765-43210", "order 2024/000123_**********10"),
    ("INV/2024/000123/1-800-555-0199", "INV/2024/000123/*********99"),
    ("2024/000123_44.20.7946.0958", "2024/000123_**********58"),
    ("ref 2024/000123/1-555-123-4567 call", "ref 2024/000123/*********67 call"),
])
def test_a_number_written_with_dashes_or_dots_after_a_year_led_id_is_masked(text: str, masked: str) -> None:
    """A number after an id and a `_` or `/`, written with `-` or `.` between its groups: its first group is no
    group of the id (a number cannot begin after a `-` or a `.`, so the rest would be left to no run), and the number
    is masked whole. Before, the id took the number's first group and the rest stayed in clear."""
    assert mask_text(text) == masked


def test_masks_phone_in_parentheses_format() -> None:
    """`(555) 123-4567` shows no digit but the last two."""
    out = mask_text("call (555) 123-4567 now")
    assert digits(out) == "67"
    assert out.startswith("call ")
    assert out.endswith(" now")


def test_masks_every_phone_in_a_sentence() -> None:
    """Several phone numbers in one text are each masked, the words around them kept."""
    out = mask_text("call 98765-43210, or +91 98765 43211.")
    assert out == "call ********10, or +**********11."


@pytest.mark.parametrize(
    "text",
    [
        "1234567",  # too short to be a phone
        "order 12345",
        "1234567890123456",  # longer than any phone number (E.164 allows 15 digits)
        "evt_01HZY3K4M5N6P7Q8R9S0T1V2W3",
        "2026-11-23T17:34:05.123456Z",
        "2026-11-27T13:23:45.123400+00:00",  # datetime.isoformat() of an aware time
        "saved at 13:23:45.123400 today",
        "http://127.0.0.1:38080/hooks/x",
        "HTTP 503: try again",
        "v1.2.3",
        "no personal data here",
        "",
    ],
)
def test_leaves_other_text_alone(text: str) -> None:
    """Short numbers, ids, ISO timestamps, URLs and plain words are not mistaken for personal data."""
    assert mask_text(text) == text


def test_masks_inside_longer_text() -> None:
    """Personal data inside an error message is masked and the message kept."""
    text = "kapture: HTTP 400: customer asha@example.com with phone +91 98765 43210 is unknown"
    assert mask_text(text) == "kapture: HTTP 400: customer a***@example.com with phone +**********10 is unknown"


_FULLWIDTH = "".join(chr(ord(c) + 0xFEE0) for c in "example.com")  # as typed on a Japanese keyboard


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("владимир@пример.рф", "в***@пример.рф"),
        ("josé.garcía@correo.example", "j***@correo.example"),
        ("from: josé.garcía@correo.example, to: 张伟@例子.中国", "from: j***@correo.example, to: 张***@例子.中国"),
        ("राम@उदाहरण.भारत wrote", "र***@उदाहरण.भारत wrote"),  # vowel signs are marks, not letters
        ("jose\u0301@correo.example", "j***@correo.example"),  # é as e and a combining accent
        ("müller@bücher.de", "m***@bücher.de"),
        ("user@xn--e1afmkfd.xn--p1ai", "u***@xn--e1afmkfd.xn--p1ai"),  # the punycode of пример.рф
        ("«юля@пример.рф»", "«ю***@пример.рф»"),
        # IDNA's other label separators (UTS 46): the ideographic, fullwidth and halfwidth ideographic full stops
        ("user@例え。テスト", "u***@例え。テスト"),
        ("asha@" + _FULLWIDTH, "a***@" + _FULLWIDTH),
        ("asha@example\uff61com said", "a***@example\uff61com said"),
        ("ユーザー@例え。テスト。", "ユ***@例え。テスト。"),  # a sentence's full stop after it stays
    ],
)
def test_masks_internationalised_emails(text: str, masked: str) -> None:
    """Addresses in any script (RFC 6531 local parts, IDNA domains as Unicode or punycode) are masked as ASCII
    ones are: the local part's first character and the domain kept, nothing else of the local part."""
    assert mask_text(text) == masked


@pytest.mark.parametrize("make", [
    lambda n: "a" * n + "@",
    lambda n: "a" * n + "@" + "b." * n,
    lambda n: "x@" + "a-" * n + ".",
    lambda n: "я" * n + "@" + "ж." * n + "1",
    lambda n: "a@" * n,
    lambda n: ("a@b." + "c" * 30 + " ") * n,
    lambda n: "@." * n,
    lambda n: "a@" + "例。" * n + "1",
    lambda n: "@。" * n,
], ids=["local-run", "local-then-labels", "hyphen-label", "cyrillic-labels", "ats", "addresses", "at-dots",
        "ideographic-labels", "at-ideographic-dots"])
def test_masking_emails_grows_linearly(make: Any) -> None:
    """However an input is made to defeat the email mask (a long local part whose domain never ends in a TLD,
    a thousand one-letter labels), masking it costs about as much more as it is longer."""
    assert_linear(mask_text, make, 4_000)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ('"asha rao"@example.com', '"a***"@example.com'),
        ("""'"asha rao"@example.com' is not in the map""", """'"a***"@example.com' is not in the map"""),
        (r'"asha \"r\" rao"@example.com', '"a***"@example.com'),  # a quote escaped inside
        ('"a@b"@example.com', '"a***"@example.com'),  # an `@` inside the quotes
        ('he said "hi" to "bo.k"@example.com', 'he said "hi" to "b***"@example.com'),
        ("asha@[127.0.0.1]", "a***@[127.0.0.1]"),
        ("asha@[IPv6:2001:db8::1], ok", "a***@[IPv6:2001:db8::1], ok"),
        ('"asha rao"@[127.0.0.1]', '"a***"@[127.0.0.1]'),
    ],
)
def test_masks_quoted_local_parts_and_address_literals(text: str, masked: str) -> None:
    """An address whose local part is quoted (RFC 5321: it may hold spaces, even an `@`) or whose domain is an
    address literal (an IPv4 or IPv6 address in brackets) is masked as any other: nothing of the local part but
    its first character."""
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+9198765\x0043210", "+**********10"),  # a NUL inside
        ("+91\t98765\n43210", "+**********10"),
        ("98765\x1f43210", "********10"),
        ("98765\u200b43210", "********10"),  # a zero-width space
        ("+91\xa098765\xa043210", "+**********10"),  # no-break spaces
        ("98765\u00ad43210\ufeff", "********10\ufeff"),  # a soft hyphen; a byte-order mark after
        # the same written as escapes, as repr() and JSON quote them in an error message
        (repr("+9198765\x0043210"), "'+**********10'"),
        (repr("+91\t98765\n43210"), "'+**********10'"),
        ("98765\\u200b43210", "********10"),
        ('{"phone": "+91\\u00a098765\\u00a043210"}', '{"phone": "+**********10"}'),
        (repr("note:\n9876543210\n"), "'note:\\n********10\\n'"),  # after an escape, not after a word
        (repr("+91 98765 43210\x00"), "'+**********10\\x00'"),
    ],
)
def test_masks_phone_numbers_with_control_characters_inside(text: str, masked: str) -> None:
    """A control or invisible character between the digits (a NUL, a tab, a line break, a zero-width or no-break
    space), as is or written as an escape in a quoted value, does not hide a phone number from the mask."""
    assert mask_text(text) == masked


@pytest.mark.parametrize("text", [
    repr("\n2026-11-27T13:23:45.123400+00:00"),
    repr("\t12345678-abcd-ef01-2345-6789abcdef01"),
    repr("\n20240419T141911Z"),
    "saved\\n2024-01-15\\n",
    "v1.2.3\n1717408960.000200",
    "x\\x00evt_01HZY3K4M5N6P7Q8R9S0T1V2W3",
    "order 12345\n",
    'say "hi"@ noon',  # no domain after the `@`
    "x@[999]",  # not an address literal
])
def test_ids_and_times_after_control_characters_are_left_alone(text: str) -> None:
    """Ids, UUIDs and timestamps after a line break or a NUL, as is or escaped, are not phone numbers."""
    assert mask_text(text) == text


@pytest.mark.parametrize("make", [
    lambda n: "1- " * n + "ab",
    lambda n: "1-(" * n + "ab",
    lambda n: "1-\x00" * n + "ab",
    lambda n: "1-\\x00" * n + "ab",
    lambda n: "\\n1-" * n + "ab",
    lambda n: "1\\x00" * n + "-",
    lambda n: "\\u00a0" * n + "1",
    lambda n: "1 1 1 x" * n,
    lambda n: "+1-" * n,
    lambda n: "/1-" * n,
    lambda n: " 1__" * n,
    lambda n: "+1__" * n,
    lambda n: "9876543210/" * (n // 4),
], ids=["dash-space", "dash-paren", "dash-nul", "dash-escaped-nul", "escaped-newline-dash", "escaped-nuls",
        "escapes", "short-runs", "plus-dash", "slash-dash", "space-underscores", "plus-underscores", "joined"])
def test_masking_phones_with_any_separator_grows_linearly(make: Any) -> None:
    """Runs of digits and separators that each could begin a number but none ends one (each digit before a `-`),
    raw or escaped, cost masking about as much more as they are longer: each run is read once, not once per digit
    in it."""
    assert_linear(mask_text, make, 4_000)


@pytest.mark.parametrize("make", [
    lambda n: '"a"@' * n,
    lambda n: '"' + "a" * n + '"@x.co',
    lambda n: '"@x.co' * n,
    lambda n: '"' * n + "@x.co",
    lambda n: '"\\' * n + '"@x.co',
    lambda n: ('"' + "a@" * 40 + '"@x.co ') * (n // 10),
    lambda n: "a@[" + "1." * n,
    lambda n: "@[" * n,
    lambda n: "a@[IPv6:" + ":" * n + "]",
    lambda n: "a@[1.1.1.1] " * (n // 4),
], ids=["quoted-ats", "long-quoted", "quote-at-domain", "quotes", "escaped-quotes", "quoted-with-ats",
        "literal-dots", "at-brackets", "ipv6-colons", "literals"])
def test_masking_quoted_and_literal_addresses_grows_linearly(make: Any) -> None:
    """However the quoted local part or the address literal is made to defeat the mask, masking costs about as
    much more as the text is longer."""
    assert_linear(mask_text, make, 4_000)


def run_processor(**event_dict: Any) -> dict[str, Any]:
    return dict(mask_personal_data(None, "info", event_dict))


def test_processor_masks_string_values() -> None:
    """Every string value of an event is masked, including inside lists and nested dicts."""
    out = run_processor(event="intake.invalid", error="asha@example.com", errors=["+91 98765 43210", "x"],
                        meta={"contact": {"email": "bo@example.org"}})
    assert out["error"] == "a***@example.com"
    assert out["errors"] == ["+**********10", "x"]
    assert out["meta"] == {"contact": {"email": "b***@example.org"}}


@pytest.mark.parametrize("key", ["event_id", "delivery_id", "ticket_id", "lead_id", "customer_id", "id"])
def test_processor_leaves_ids_alone(key: str) -> None:
    """Values under id keys (`*_id`) are not personal data, even when they are long runs of digits."""
    assert run_processor(event="delivery.sent", **{key: "713516551148"})[key] == "713516551148"


@pytest.mark.parametrize("key", ["timestamp", "event", "level", "status", "duration_ms", "count", "version"])
def test_processor_leaves_bookkeeping_keys_alone(key: str) -> None:
    """Timestamps, levels, statuses and counts keep their value even when it looks like a phone number."""
    assert run_processor(**{key: "2026-11-23 17:34:05"})[key] == "2026-11-23 17:34:05"


def test_processor_leaves_numbers_alone() -> None:
    """Integers and floats pass through untouched, however many digits they have."""
    out = run_processor(event="delivery.sent", attempt=3, started_at_ms=1795000000000, phone=9876543210,
                        ratio=0.5, flag=True, nothing=None)
    assert out == {"event": "delivery.sent", "attempt": 3, "started_at_ms": 1795000000000, "phone": 9876543210,
                   "ratio": 0.5, "flag": True, "nothing": None}


def test_processor_masks_exception_text() -> None:
    """A rendered traceback is masked like any other string."""
    out = run_processor(event="routing.render_crashed", exception="ValueError: bad email asha@example.com")
    assert out["exception"] == "ValueError: bad email a***@example.com"


def test_configure_logging_writes_json_lines(restore_structlog: None) -> None:
    """Each log call becomes one JSON line with the event name, level, UTC timestamp and masked values."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = structlog.get_logger("ticketbridge.test").bind(delivery_id="dlv_1")
    log.info("delivery.sent", ticket_id="713516551148", email="asha@example.com", attempt=2)
    log.warning("delivery.retry_scheduled", error="phone +91 98765 43210 rejected")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "delivery.sent"
    assert first["level"] == "info"
    assert first["delivery_id"] == "dlv_1"
    assert first["ticket_id"] == "713516551148"
    assert first["email"] == "a***@example.com"
    assert first["attempt"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", first["timestamp"])
    assert second["event"] == "delivery.retry_scheduled"
    assert second["level"] == "warning"
    assert second["error"] == "phone +**********10 rejected"


def test_configure_logging_filters_by_level(restore_structlog: None) -> None:
    """Below the configured level nothing is written."""
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    log = structlog.get_logger("ticketbridge.test")
    log.debug("x.debug")
    log.info("x.info")
    log.error("x.error")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["x.error"]


@pytest.mark.parametrize(("level", "debug"), [("debug", True), ("info", False), ("error", False)])
def test_configure_logging_says_whether_debug_lines_are_written(restore_structlog: None, level: str,
                                                                 debug: bool) -> None:
    """LEVEL.debug follows the level configured (a per-request path asks it before making a debug line)."""
    try:
        configure_logging(level, "json", io.StringIO())
        assert LEVEL.debug is debug
    finally:
        LEVEL.debug = True


def test_configure_logging_renders_exceptions_masked(restore_structlog: None) -> None:
    """log.exception writes the traceback into the JSON line, with personal data in it masked."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = structlog.get_logger("ticketbridge.test")
    try:
        raise ValueError("no ticket for asha@example.com")
    except ValueError:
        log.exception("routing.render_crashed", mapping="m")
    [entry] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entry["event"] == "routing.render_crashed"
    assert entry["level"] == "error"
    assert "ValueError: no ticket for a***@example.com" in entry["exception"]
    assert "asha@" not in stream.getvalue()


def test_configure_logging_console_format(restore_structlog: None) -> None:
    """The console format writes readable lines, masked too."""
    stream = io.StringIO()
    configure_logging("debug", "console", stream)
    structlog.get_logger("ticketbridge.test").debug("store.opened", email="asha@example.com")
    out = stream.getvalue()
    assert "store.opened" in out
    assert "a***@example.com" in out
    assert "asha@" not in out


def test_processor_leaves_nested_ids_alone() -> None:
    """An `*_id` key is left alone inside a nested dict just as at the top level."""
    out = run_processor(event="delivery.sent", vendor={"lead_id": "98765432", "phone": "98765432"})
    assert out["vendor"] == {"lead_id": "98765432", "phone": "******32"}


def test_processor_masks_values_nested_past_its_depth() -> None:
    """Personal data nested deeper than the processor walks is still masked, never logged as it is."""
    out = run_processor(event="intake.invalid", payload={"a": {"b": {"c": {"email": "asha@example.com"}}}},
                        rows=[[[["+91 98765 43210"]]]])
    assert "asha@" not in str(out)
    assert "a***@example.com" in str(out)
    assert "98765" not in str(out)


@pytest.mark.parametrize("text", ["2024-01-15", "15/01/2024", "15.01.2024", "deadline 2024-01-15, ok"])
def test_dates_are_not_masked_as_phone_numbers(text: str) -> None:
    """A calendar date is not personal data and stays readable in logs."""
    assert mask_text(text) == text


def test_a_date_and_time_is_not_masked_as_a_phone_number() -> None:
    """`2024-04-19 14:19:11` (Kapture's format) stays readable: the digits run on past the date, but it is one."""
    assert mask_text("callback_time must look like 2024-04-19 14:19:11") == \
        "callback_time must look like 2024-04-19 14:19:11"


@pytest.fixture
def restore_stdlib_logging(restore_structlog: None) -> Iterator[None]:
    """configure_logging also puts a handler on the root logger and sets its level; undo both afterwards."""
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h.name == STDLIB_HANDLER]:
            root.removeHandler(handler)
        root.setLevel(level)


async def test_aiohttp_logs_go_through_the_same_masking(restore_stdlib_logging: None, aiohttp_client: Any) -> None:
    """aiohttp's traceback for a failing handler and its access line are JSON lines with emails and phones masked."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    async def failing(request: web.Request) -> web.Response:
        raise RuntimeError("cannot reach asha.rao@example.com on +91 98765 43210")

    app = web.Application()
    app.router.add_get("/fail", failing)
    client = await aiohttp_client(app)
    resp = await client.get("/fail", params={"reply_to": "ravi.k@example.org"})
    assert resp.status == 500
    await resp.read()
    await client.close()
    text = stream.getvalue()
    for secret in ("asha.rao@", "ravi.k@", "98765 43210", "9876543210"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    [server] = [line for line in lines if line["logger"] == "aiohttp.server"]
    assert server["level"] == "error"
    assert "RuntimeError: cannot reach a***@example.com on +**********10" in server["exception"]
    [access] = [line for line in lines if line["logger"] == "aiohttp.access"]
    assert "reply_to=r***@example.org" in access["event"]


def test_values_that_are_not_utf8_are_logged_escaped(restore_structlog: None) -> None:
    """A value quoting request bytes that are not UTF-8 (a header read with surrogateescape) is written as
    `\\xNN` in a valid JSON line, instead of failing the log call and the request with it."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    structlog.get_logger("ticketbridge.test").warning("intake.rejected", reason="agent caf\udce9",
                                                      detail=ValueError("bad \udcff"))
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert (entry["reason"], entry["detail"]) == ("agent caf\\xe9", "bad \\xff")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "console"), [(Terminal(), True), (io.StringIO(), False)])
def test_an_unset_format_is_console_on_a_terminal_and_json_elsewhere(restore_structlog: None, stream: io.StringIO,
                                                                     console: bool) -> None:
    """With `log.format` unset, a terminal gets readable lines and anything else (a file, a pipe) JSON lines."""
    configure_logging("info", None, stream)
    structlog.get_logger("ticketbridge.test").info("store.opened", path="var/x.db")
    line = stream.getvalue().strip()
    assert "store.opened" in line
    assert line.startswith("{") is not console


@pytest.mark.parametrize(("text", "masked"), [
    ("call 9876543210/9876543211 or +91-98765-43210 / 080-2345-6789",
     "call ********10/********11 or +**********10 / *********89"),
    ("+919876543210/+919876543211", "+**********10/+**********11"),
    ("+14155550100+14155550101", "+*********00+*********01"),
    ("9876543210, 9876543211; 9876543212", "********10, ********11; ********12"),
    ("9876543210  9876543211", "********10  ********11"),
    ("ext 12/9876543210/3456789", "ext **********10/3456789"),
    ("9876543210_9876543211", "********10_********11"),
])
def test_numbers_written_one_after_another_are_each_masked(text: str, masked: str) -> None:
    """Numbers joined by a `/`, a `_`, a `+`, a `,` or `;` or two spaces make a run of more than 15 digits, which is no
    single number: each is masked as it would be alone, never the whole run left in clear."""
    assert mask_text(text) == masked


def test_cli_logging_writes_masked_lines_on_stderr_and_puts_the_config_back(
        capsys: pytest.CaptureFixture[str]) -> None:
    """While a command runs, its warnings and errors go to stderr (the stderr of that moment), masked, never to
    stdout, and its info lines nowhere (they would bury a refusal a script reads on stderr); after it, the logging
    configuration is what it was (a command run inside another program's process, a test's, leaves its logging
    alone)."""
    before, debug = structlog.get_config(), LEVEL.debug
    with cli_logging():
        structlog.get_logger("t").warning("cli.said", to="asha.rao@example.com")
        structlog.get_logger("t").info("store.opened")
        structlog.get_logger("t").debug("cli.chatter")
    out, err = capsys.readouterr()
    assert out == ""
    [said] = [json.loads(line) for line in err.splitlines()]
    assert (said["event"], said["to"]) == ("cli.said", "a***@example.com")
    assert (structlog.get_config(), LEVEL.debug) == (before, debug)
