"""The shared adapter pieces: Retry-After parsing, status classification (an interim 1xx answer included), the ids
read from an answer, JSON decoding and excerpts; and each adapter's use of the shared rules for
1xx answers and ticket ids."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict

from bridge.config import DestinationConfig
from bridge.vendors.base import (
    ID_CHARS,
    LENIENT_BYTES,
    NO_ID,
    Adapter,
    AnswerId,
    Outcome,
    VendorRequest,
    answer_id,
    blank,
    classify_status,
    decode_json,
    excerpt,
    first_id,
    lower_keys,
    parse_retry_after,
    succeeded,
    token_answer,
)
from bridge.vendors.http import HttpAdapter, HttpOptions
from bridge.vendors.kapture import KaptureAdapter, KaptureOptions
from bridge.vendors.leadsquared import LeadSquaredAdapter, LeadSquaredOptions
from bridge.vendors.netgroot import NetgrootAdapter, NetgrootOptions

NOW = datetime(2024, 4, 19, 14, 19, 11, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (" 5 ", 5.0), ("1.5", 1.5), ("-0", 0.0)],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    """A number of seconds is read as such."""
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "Fri, 99 Foo 2024 25:61:00 GMT", "12 apples",
                                   "Fri, 01 Jan 9999999999 00:00:00 GMT", "-3", "-5", "-0.5", "nan", "NaN", "-nan",
                                   "inf", "Infinity", "-inf", "1e400"])
def test_retry_after_absent_or_unreadable_is_none(value: str | None) -> None:
    """No header, or one that is neither seconds nor an HTTP date, gives None: a negative or non-finite number
    too (not a wait of 0 s, which would send again at once)."""
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize("value", ["Fri, 19 Apr 2024 14:21:11 GMT",  # IMF-fixdate, the preferred form
                                   "Friday, 19-Apr-24 14:21:11 GMT",  # the obsolete RFC 850 form
                                   "Fri Apr 19 14:21:11 2024"])  # the obsolete asctime() form
def test_retry_after_http_date_is_seconds_from_now(value: str) -> None:
    """An HTTP date, in any of the three forms RFC 9110 §5.6.7 has a recipient read, is turned into the seconds
    between now and then."""
    assert parse_retry_after(value, now=NOW) == 120.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    """An HTTP date already past means retry now, not a negative wait."""
    assert parse_retry_after("Fri, 19 Apr 2024 14:00:00 GMT", now=NOW) == 0.0


def test_retry_after_http_date_without_zone_is_utc() -> None:
    """An HTTP date with a `-0000` zone (no zone information) is read as UTC."""
    assert parse_retry_after("Fri, 19 Apr 2024 14:19:41 -0000", now=NOW) == 30.0


def test_retry_after_http_date_with_offset() -> None:
    """An HTTP date with a numeric offset is converted to UTC first."""
    assert parse_retry_after("Fri, 19 Apr 2024 16:20:11 +0200", now=NOW) == 60.0


def test_retry_after_uses_the_clock_by_default() -> None:
    """Without `now`, an HTTP date is measured from the current time."""
    in_a_minute = format_datetime(datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC), usegmt=True)
    seconds = parse_retry_after(in_a_minute)
    assert seconds is not None
    assert 50.0 <= seconds <= 60.0


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    """Timeouts, 425, 429 and every 5xx are retried, with the status as the error; a 429 says it is a rate limit
    (the destination pauses)."""
    outcome = classify_status(status, {})
    assert outcome == Outcome(classification="retry", error=f"HTTP {status}", retry_after=None,
                              rate_limited=status == 429)


def test_retry_carries_retry_after() -> None:
    """A retryable answer carries its Retry-After as seconds."""
    outcome = classify_status(429, {"Retry-After": "7"})
    assert outcome is not None
    assert outcome.retry_after == 7.0


def test_retry_after_header_name_is_case_insensitive_with_http_headers() -> None:
    """With aiohttp's case-insensitive headers, a lower-case `retry-after` is honoured."""
    headers: Mapping[str, str] = CIMultiDict({"retry-after": "9"})
    outcome = classify_status(503, headers)
    assert outcome is not None
    assert outcome.retry_after == 9.0


@pytest.mark.parametrize("status", [401, 403])
def test_auth_statuses(status: int) -> None:
    """401 and 403 mean the vendor refused the credentials."""
    outcome = classify_status(status, {"Retry-After": "5"})
    assert outcome == Outcome(classification="auth", error=f"HTTP {status}: the vendor refused the credentials")


@pytest.mark.parametrize("status", [200, 201, 204, 400, 404, 409, 422])
def test_other_statuses_leave_it_to_the_body(status: int) -> None:
    """Success and other client errors are decided by the vendor's body, so the status alone says nothing."""
    assert classify_status(status, {}) is None


@pytest.mark.parametrize("status", [301, 307, 308])
@pytest.mark.parametrize(("location", "shown"), [
    ("https://new.example/v2/tickets?access_token=LIVE-1#frag", "'https://new.example/v2/…'"),
    ("https://user:pw@new.example/t", "'https://new.example/t'"),
    ("/v2/tickets?sig=abc", "'/v2/…'"),
    ("https://new.example/" + "a" * 300, "'https://new.example/" + "a" * 99 + "…'"),
    ("http://[bad/x?k=v", "'http://[bad/x'"),
    ("http://user:pw@[bad/x/LIVE-1", "'http://[bad/x/…'"),
    ("https://app.example:8443/login;jsessionid=LIVE-1", "'https://app.example:8443/login;…'"),
    ("https://hooks.example/services/T0/B0/LIVE-1", "'https://hooks.example/services/…'"),
    ("https://new.example/v2/", "'https://new.example/v2/'"),
    ("", "no Location"),
])
def test_a_redirect_is_a_retry_of_the_destination_naming_where(status: int, location: str, shown: str) -> None:
    """A redirect that asks for the same request elsewhere (301, 307, 308) is not followed, and says the
    destination's URL is wrong: every request will be answered so, so it is a `retry` that counts against the
    destination (the breaker pauses it after 5), not a `permanent` failure per delivery that kills the backlog.
    The error names the Location, without its query string, fragment or user info (they may hold a token), nor its
    path past the first segment (`;jsessionid=`, a webhook's secret segment), cut short."""
    outcome = classify_status(status, {"Location": location} if location else {})
    assert outcome == Outcome(classification="retry",
                              error=f"HTTP {status} redirect to {shown} (not followed): the destination's URL is not "
                                    "where the API answers; fix its base_url or path")
    assert "LIVE" not in (outcome.error or "") and "pw" not in (outcome.error or "")


@pytest.mark.parametrize("status", [300, 302, 304, 399])
def test_a_post_redirect_get_is_in_doubt(status: int) -> None:
    """A 302 (or any redirect but 301, 303, 307, 308) is how many APIs answer a create they made
    (Post/Redirect/Get): `unknown` (held or looked up), never sent again blindly, whatever the request's method (an
    adapter classifies an answer without it)."""
    assert classify_status(status, {"Location": "https://app.example/ticket/4711"}) == Outcome(
        classification="unknown",
        error=f"HTTP {status} redirect to 'https://app.example/ticket/…' (not followed): the vendor may have acted "
              "on the request")


def test_a_see_other_is_in_doubt() -> None:
    """A 303 See Other after a create is how some APIs say it was made: `unknown`, never sent again blindly."""
    assert classify_status(303, {"Location": "/tickets/77"}) == Outcome(
        classification="unknown",
        error="HTTP 303 See Other to '/tickets/…' (not followed): the vendor may have acted on the request")


@pytest.mark.parametrize("status", [100, 101, 102, 103, 199])
def test_an_interim_status_given_as_the_answer_is_unknown(status: int) -> None:
    """A 1xx where the final answer was due (aiohttp hands a 101 over so) is an unknown outcome, not a refusal: a
    proxy's or the vendor's protocol error after the request was written, which the vendor may have acted on."""
    outcome = classify_status(status, {"Retry-After": "5"})
    assert outcome is not None and outcome.classification == "unknown" and outcome.retry_after is None
    assert outcome.error is not None and outcome.error.startswith(f"HTTP {status} (")
    assert outcome.error.endswith("the vendor may have acted on the request")
    assert ("Switching Protocols, which ticketbridge never asks for" in outcome.error) == (status == 101)


# -- ids read from an answer ----------------------------------------------------------------------

NOT_IDS = [
    ({"number": 5}, 'an object ({"number":5})'),
    ([5], "an array ([5])"),
    (True, "a boolean (true)"),
    (False, "a boolean (false)"),
    (143.0, "a number with a fraction or an exponent (143.0)"),
    (1.5e3, "a number with a fraction or an exponent (1500.0)"),
    ("", "empty text"),
    ("  ", 'blank text ("  ")'),
    pytest.param("7" * (ID_CHARS + 1), f"text of {ID_CHARS + 1} characters", id="long-text"),
    pytest.param(int("7" * (ID_CHARS + 1)), f"a whole number of {ID_CHARS + 1} characters", id="long-number"),
    pytest.param(-int("7" * ID_CHARS), f"a whole number of {ID_CHARS + 1} characters", id="long-negative-number"),
    ("14\x003", "text holding a NUL character (\\x00)"),
]


@pytest.mark.parametrize(("value", "said"), NOT_IDS)
def test_what_is_no_id_is_not_kept_and_said(value: Any, said: str) -> None:
    """An object, an array, a boolean, a number with a fraction, empty or blank text, text or a whole number longer
    than ID_CHARS written out, or text holding a NUL is no id: nothing is kept, and the problem names the path, the
    value and what an id would be."""
    assert answer_id(value, "data.id") == AnswerId(problem=(
        f"the answer's ticket id at `data.id` is {said}, not kept (an id is a whole number or non-blank text of "
        f"at most {ID_CHARS} characters, no NUL)"))


def test_a_whole_number_too_long_to_write_out_is_no_id() -> None:
    """A whole number with more digits than Python writes out as text is no id either, said without writing it."""
    assert answer_id(10**5000, "id").problem == (
        f"the answer's ticket id at `id` is a whole number of more than {ID_CHARS} characters, not kept (an id is a "
        f"whole number or non-blank text of at most {ID_CHARS} characters, no NUL)")


@pytest.mark.parametrize(("value", "kept"), [
    (143, "143"), (-7, "-7"), (2**63, str(2**63)),
    pytest.param(int("7" * ID_CHARS), "7" * ID_CHARS, id="longest-number"),
    ("T-143", "T-143"), (" 143 ", " 143 "), pytest.param("7" * ID_CHARS, "7" * ID_CHARS, id="longest-text"),
    ("\u2603", "\u2603")])
def test_whole_numbers_and_text_are_ids(value: Any, kept: str) -> None:
    """A whole number is kept as its decimal text, and text of at most ID_CHARS characters as it is."""
    assert answer_id(value, "id") == AnswerId(kept)


def test_null_is_no_id_given() -> None:
    """null (or a missing key, read as None) is an answer without an id: nothing to keep and nothing to say."""
    assert answer_id(None, "id") == NO_ID


def test_the_first_id_kept_wins_and_what_came_before_is_said() -> None:
    """`first_id` takes the first place holding an id; a place before it holding what is no id is said beside it;
    with none kept, every problem is said and no id given."""
    assert first_id([("a", None), ("b", 7), ("c", "9")]) == AnswerId("7")
    found = first_id([("a", {}), ("b", None), ("c", "9")])
    assert found.text == "9" and found.problem is not None and found.problem.startswith(
        "the answer's ticket id at `a` is an object ({})")
    lost = first_id([("a", ""), ("b", [])])
    assert lost.text is None and lost.problem is not None and "`a` is empty text" in lost.problem \
        and "; the answer's ticket id at `b` is an array ([])" in lost.problem
    assert first_id([("a", None)]) == NO_ID


def test_a_success_says_the_ids_it_could_not_keep() -> None:
    """A success without its ticket id because the answer's was no id is marked `ticket_id_dropped`, its error
    saying why; a key or uuid left out is said without that mark; a success without any id says nothing."""
    dropped = succeeded(answer_id({}, "id"), key=AnswerId("#5"))
    assert (dropped.classification, dropped.ticket_id, dropped.ticket_key, dropped.ticket_id_dropped) == (
        "success", None, "#5", True)
    assert dropped.error is not None and dropped.error.startswith("the answer's ticket id at `id` is an object")
    keyless = succeeded(AnswerId("5"), key=answer_id([], "Key", "ticket key"))
    assert (keyless.ticket_id, keyless.ticket_key, keyless.ticket_id_dropped) == ("5", None, False)
    assert keyless.error is not None and keyless.error.startswith("the answer's ticket key at `Key` is an array")
    assert succeeded() == Outcome(classification="success")


def _kapture() -> Adapter:
    return KaptureAdapter("k", KaptureOptions(vendor="kapture", base_url="http://k.test", token="t"), "http://k.test")


def _leadsquared() -> Adapter:
    opts = msgspec.convert({"vendor": "leadsquared", "base_url": "http://l.test", "org_id": "o", "access_key": "a",
                            "secret_key": "s"}, LeadSquaredOptions)
    return LeadSquaredAdapter("l", opts, "http://l.test")


def _netgroot() -> Adapter:
    opts = msgspec.convert({"vendor": "netgroot", "base_url": "http://n.test", "token": "t"}, NetgrootOptions)
    return NetgrootAdapter("n", opts, "http://n.test")


def _http() -> Adapter:
    opts = msgspec.convert({"vendor": "http", "base_url": "http://h.test", "ticket_id_path": "data.id"}, HttpOptions)
    return HttpAdapter("h", opts, "http://h.test")


# Each adapter, and a create's success answer with `value` where it reads the ticket id (that place's path).
ANSWERS: dict[str, tuple[Any, str, Any]] = {
    "kapture": (_kapture, "ticket_id", lambda value: [{"status": "success", "ticket_id": value}]),
    "leadsquared": (_leadsquared, "Id", lambda value: {"Status": "Success", "Id": value}),
    "netgroot": (_netgroot, "data.ticket_id", lambda value: {"success": True, "data": {"ticket_id": value}}),
    "http": (_http, "data.id", lambda value: {"data": {"id": value}}),
}


@pytest.mark.parametrize("vendor", ANSWERS)
@pytest.mark.parametrize("status", [100, 101, 103])
def test_each_adapter_reads_an_interim_answer_as_unknown(vendor: str, status: int) -> None:
    """Whatever the vendor, a create answered with a 1xx status is an unknown outcome (the shared rule)."""
    make, _, _ = ANSWERS[vendor]
    outcome = make().classify("create_ticket", status, {}, b"")
    assert outcome.classification == "unknown" and f"HTTP {status} (" in (outcome.error or "")


@pytest.mark.parametrize("vendor", ANSWERS)
@pytest.mark.parametrize(("value", "said"), NOT_IDS)
def test_each_adapter_drops_a_ticket_id_that_is_no_id_loudly(vendor: str, value: Any, said: str) -> None:
    """Whatever the vendor, a create's success whose ticket id is no id stays a success (the ticket was made) without
    the id, marked `ticket_id_dropped`, its error naming where the vendor put it and what it was."""
    make, where, answer = ANSWERS[vendor]
    outcome = make().classify("create_ticket", 200, {}, msgspec.json.encode(answer(value)))
    assert (outcome.classification, outcome.ticket_id, outcome.ticket_id_dropped) == ("success", None, True)
    assert outcome.error is not None and outcome.error.startswith(f"the answer's ticket id at `{where}` is {said}, ")


@pytest.mark.parametrize("vendor", ANSWERS)
@pytest.mark.parametrize(("value", "kept"), [(143, "143"), ("T-143", "T-143")])
def test_each_adapter_keeps_whole_numbers_and_text_as_ids(vendor: str, value: Any, kept: str) -> None:
    """Whatever the vendor, a whole number is kept as its decimal text and text as it is, with nothing said."""
    make, _, answer = ANSWERS[vendor]
    outcome = make().classify("create_ticket", 200, {}, msgspec.json.encode(answer(value)))
    assert (outcome.classification, outcome.ticket_id, outcome.ticket_id_dropped, outcome.error) == (
        "success", kept, False, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"a": 1}', {"a": 1}), (b"[1, 2]", [1, 2]), (b'"x"', "x"), (b"null", None), (b" 3 ", 3)],
)
def test_decode_json_reads_json(body: bytes, expected: Any) -> None:
    """Any JSON document is decoded."""
    assert decode_json(body) == expected


@pytest.mark.parametrize("body", [
    b"", b"<html>502 Bad Gateway</html>", b"{", b"\xff\xfe", b"OK",
    b"[" * 100_000 + b"]" * 100_000,  # nested past what msgspec follows: RecursionError
    b'{"id": 1e400}', b'{"id": ' + b"9" * 5000 + b"}",  # numbers out of range
    # msgspec refuses the text, and the lenient read then the rest: still not JSON
    b'{"id": "\xff", "n": 1e400}', b'{"id": "\xff", "n": NaN}', b'{"id": "\xff", "n": -Infinity}',
    b'{"id": "\xff", "n": ' + b"9" * 5000 + b"}", b'{"id": "\xff",}', b'{"id": "\\ud83d"',
    b'["\xff", ' + b"[" * 100_000 + b"]" * 100_000 + b"]",
], ids=["empty", "html", "cut", "bytes", "text", "deep", "huge-float", "huge-int", "bytes-huge-float", "bytes-nan",
        "bytes-infinity", "bytes-huge-int", "bytes-trailing-comma", "surrogate-cut", "bytes-deep"])
def test_decode_json_returns_none_for_non_json(body: bytes) -> None:
    """A body that is not JSON gives None instead of raising."""
    assert decode_json(body) is None


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"id": "\xff\xfe"}', {"id": "\\xff\\xfe"}),  # not UTF-8: msgspec's UnicodeDecodeError
    (b'{"id": "T-1", "title": "Caf\xe9 \\u00e9"}', {"id": "T-1", "title": "Caf\\xe9 \u00e9"}),
    (b'{"t": "\\ud83d", "u": "\\ud83d\\ude00", "v": "\\udc00x"}',  # escaped lone surrogates: msgspec's DecodeError
     {"t": "\\ud83d", "u": "\U0001f600", "v": "\\udc00x"}),
    (b'{"\xe9\\ud800": ["\\udfff", {"k": 1.5}], "n": null}', {"\\xe9\\ud800": ["\\udfff", {"k": 1.5}], "n": None}),
])
def test_decode_json_reads_text_msgspec_refuses_leniently(body: bytes, expected: Any) -> None:
    """A body msgspec refuses only for its text (a byte that is not UTF-8, an escaped lone surrogate) is read, each
    such code point written out as the store keeps text (`escape_text`), keys too: what it gives can be stored,
    logged and encoded again."""
    decoded = decode_json(body)
    assert decoded == expected
    msgspec.json.encode(decoded)


def test_a_long_body_is_not_read_leniently() -> None:
    """Past LENIENT_BYTES (what an answer to a send is read to), only the strict decode: a look-up's answer may be
    32 MiB, and Python's decoder is several times slower."""
    body = b'{"id": "\xff", "pad": "' + b"x" * LENIENT_BYTES + b'"}'
    assert decode_json(body) is None
    assert decode_json(body[:LENIENT_BYTES - 20] + b'"}') is not None


def test_excerpt_keeps_short_bodies() -> None:
    """A body within the limit is returned whole."""
    assert excerpt(b"title is missing") == "title is missing"
    assert excerpt(b"x" * 200) == "x" * 200


def test_excerpt_bounds_long_bodies() -> None:
    """A body over the limit is cut and marked with an ellipsis."""
    assert excerpt(b"x" * 201) == "x" * 200 + "…"
    assert excerpt(b"abcdef", limit=3) == "abc…"


def test_excerpt_never_fails_on_bad_bytes() -> None:
    """Invalid UTF-8, or a character cut at the limit, is replaced rather than raising."""
    assert excerpt(b"\xffok") == "\ufffdok"
    assert excerpt("é".encode() * 3, limit=3) == "é\ufffd…"


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("", True), (" \t\n", True), ("x", False),
                                               (0, False), (False, False), ([], False), ({}, False)])
def test_blank_is_none_or_spaces_only(value: Any, expected: bool) -> None:
    """Only None and text of spaces count as nothing to send; zero, false and empty lists are values."""
    assert blank(value) is expected


def test_lower_keys_folds_the_case_of_keys_only() -> None:
    """Keys are lower-cased (and made text); values, nested keys included, are left as they are."""
    assert lower_keys({"Status": "Success", "TicketId": {"Key": 1}, 7: "x"}) == {
        "status": "Success", "ticketid": {"Key": 1}, "7": "x"}


def test_outcome_defaults() -> None:
    """An Outcome carries only its classification unless told more."""
    outcome = Outcome(classification="success")
    assert (outcome.ticket_id, outcome.error, outcome.retry_after) == (None, None, None)


class _Echo(Adapter):
    vendor = "echo"
    Options = DestinationConfig
    actions = frozenset({"create_ticket"})

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any]) -> VendorRequest:
        return VendorRequest(method="POST", url=self.base_url + "/t", headers={}, body=b"")

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        return Outcome(classification="success")


def test_adapter_base_url_drops_trailing_slashes() -> None:
    """The base URL is kept without trailing slashes, so paths join cleanly."""
    adapter = _Echo("e", DestinationConfig(vendor="echo", base_url="https://x.example"), "https://x.example//")
    assert adapter.base_url == "https://x.example"
    assert adapter.build_request("create_ticket", {}, {}).url == "https://x.example/t"


def test_adapter_base_url_may_be_resolved_late() -> None:
    """A callable base URL is asked each time, for sandboxes whose address is known only once serving."""
    address = ["http://127.0.0.1:1/"]
    adapter = _Echo("e", DestinationConfig(vendor="echo", sandbox=True), lambda: address[0])
    assert adapter.base_url == "http://127.0.0.1:1"
    address[0] = "http://127.0.0.1:2"
    assert adapter.base_url == "http://127.0.0.1:2"


def test_adapter_is_abstract() -> None:
    """An adapter must implement build_request and classify."""

    class Partial(Adapter):
        vendor = "partial"

    with pytest.raises(TypeError, match="abstract"):
        Partial("p", DestinationConfig(vendor="partial", sandbox=True), "http://x")  # type: ignore[abstract]


@pytest.mark.parametrize("vendor", ANSWERS)
def test_each_adapter_names_where_a_creates_ticket_id_is_and_a_follow_up_has_none(vendor: str) -> None:
    """Each adapter says where a create's answer holds the ticket id (so that a success with none there is made
    visible: `ticket_missing`), and that a follow-up's answer is not read for one; its create answered with null
    there is a success without an id and without the dropped mark (nothing there is not something wrong there)."""
    make, where, answer = ANSWERS[vendor]
    adapter = make()
    found = adapter.ticket_id_at("create_ticket")
    assert found is not None and found.startswith(where)
    assert adapter.ticket_id_at("update_ticket") is None
    outcome = adapter.classify("create_ticket", 200, {}, msgspec.json.encode(answer(None)))
    assert (outcome.classification, outcome.ticket_id, outcome.ticket_id_dropped) == ("success", None, False)


def test_an_http_destination_without_a_ticket_id_path_expects_no_id() -> None:
    """An `http` destination that names no `ticket_id_path` gets no id from any answer, so none is missing."""
    opts = msgspec.convert({"vendor": "http", "base_url": "http://h.test"}, HttpOptions)
    assert HttpAdapter("h", opts, "http://h.test").ticket_id_at("create_ticket") is None


@pytest.mark.parametrize(("raw", "said"), [
    (b'{"error": "invalid_client", "error_description": "no such client", "access_token": "LIVE-A"}',
     "invalid_client: no such client"),
    (b'{"error_description": "no such client", "token": "LIVE-A"}', "no such client"),
    (b'{"error": null, "token": "LIVE-A"}', "a JSON object with the keys error, token, values not quoted"),
    (b'"LIVE-A"', "a body of 8 bytes (application/json), not quoted: not a JSON object"),
])
def test_a_token_answer_says_its_error_keys_else_only_its_shape(raw: bytes, said: str) -> None:
    """A token endpoint's answer is quoted by the texts under the keys its caller names, joined, else described
    (`token_answer_said`): never a token it carries."""
    data, got = token_answer(raw, "application/json; charset=utf-8", "error", "error_description")
    assert got == said
    assert data == (msgspec.json.decode(raw) if raw.startswith(b"{") else {})
