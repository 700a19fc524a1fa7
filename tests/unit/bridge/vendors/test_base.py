"""The shared adapter pieces: Retry-After parsing, status classification, the bounded reader, JSON decoding and
excerpts."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, cast

import aiohttp
import pytest
from multidict import CIMultiDict

from bridge.config import DestinationConfig
from bridge.vendors.base import (
    Adapter,
    Outcome,
    VendorRequest,
    blank,
    classify_status,
    decode_json,
    excerpt,
    lower_keys,
    parse_retry_after,
    read_bounded,
    read_capped,
)

NOW = datetime(2024, 4, 19, 14, 19, 11, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("0", 0.0), (" 5 ", 5.0), ("1.5", 1.5), ("-3", 0.0)],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    """A number of seconds is read as such, and never below zero."""
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "Fri, 99 Foo 2024 25:61:00 GMT", "12 apples"])
def test_retry_after_absent_or_unreadable_is_none(value: str | None) -> None:
    """No header, or one that is neither seconds nor an HTTP date, gives None."""
    assert parse_retry_after(value, now=NOW) is None


def test_retry_after_http_date_is_seconds_from_now() -> None:
    """An HTTP date is turned into the seconds between now and then."""
    assert parse_retry_after("Fri, 19 Apr 2024 14:21:11 GMT", now=NOW) == 120.0


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
    """Timeouts, 425, 429 and every 5xx are retried, with the status as the error."""
    outcome = classify_status(status, {})
    assert outcome == Outcome(classification="retry", error=f"HTTP {status}", retry_after=None)


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


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 404, 409, 422])
def test_other_statuses_leave_it_to_the_body(status: int) -> None:
    """Success and other client errors are decided by the vendor's body, so the status alone says nothing."""
    assert classify_status(status, {}) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"a": 1}', {"a": 1}), (b"[1, 2]", [1, 2]), (b'"x"', "x"), (b"null", None), (b" 3 ", 3)],
)
def test_decode_json_reads_json(body: bytes, expected: Any) -> None:
    """Any JSON document is decoded."""
    assert decode_json(body) == expected


@pytest.mark.parametrize("body", [
    b"", b"<html>502 Bad Gateway</html>", b"{", b"\xff\xfe", b"OK",
    b'{"id": "\xff\xfe"}',  # not UTF-8 inside a string: msgspec raises UnicodeDecodeError
    b"[" * 100_000 + b"]" * 100_000,  # nested past what msgspec follows: RecursionError
    b'{"id": 1e400}', b'{"id": ' + b"9" * 5000 + b"}",  # numbers out of range
], ids=["empty", "html", "cut", "bytes", "text", "bad-utf8-string", "deep", "huge-float", "huge-int"])
def test_decode_json_returns_none_for_non_json(body: bytes) -> None:
    """A body that is not JSON gives None instead of raising."""
    assert decode_json(body) is None


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


class BigChunks:
    """A response whose body comes in chunks of `chunk` bytes, `count` of them, each made as it is asked for
    (whatever size the reader asks for, as a decompressing stream may give)."""

    def __init__(self, chunk: int, count: int) -> None:
        self.content = self
        self.chunk, self.count = chunk, count

    async def iter_chunked(self, _n: int) -> AsyncIterator[bytes]:
        for i in range(self.count):
            yield bytes([65 + i]) * self.chunk


@pytest.mark.parametrize(("chunk", "count", "margin"), [
    (3 << 20, 4, 0), (1 << 20, 12, 0), (64 << 10, 100, 0), (100_000, 100, (4 << 20) // 8)])
async def test_the_bounded_reader_holds_at_most_its_limit_and_one_chunk(chunk: int, count: int, margin: int) -> None:
    """Reading a long answer in big chunks holds at most the limit and the chunk being read (measured in bytes
    allocated, not time; with chunks that do not divide the limit, plus the buffer's growth margin, reserved but
    not written), returns the first `limit` bytes and says the answer was cut. It used to hold 3-4 times the
    limit: every chunk read, their join, and the join cut."""
    limit = 4 << 20
    response = cast(aiohttp.ClientResponse, BigChunks(chunk, count))
    tracemalloc.start()
    try:
        body, cut = await read_capped(response, limit)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cut and len(body) == limit
    assert body[:chunk] == b"A" * chunk and body[-1:] == bytes([65 + (limit - 1) // chunk])
    assert peak <= limit + chunk + margin + 16 * 1024, f"held {peak / (1 << 20):.1f} MiB"


async def test_the_bounded_reader_reads_an_answer_of_exactly_its_limit_whole() -> None:
    """An answer of exactly `limit` bytes, or shorter, is read whole and not called cut."""
    exact = await read_capped(cast(aiohttp.ClientResponse, BigChunks(1024, 4)), 4096)
    short = await read_capped(cast(aiohttp.ClientResponse, BigChunks(1024, 3)), 4096)
    assert (len(exact[0]), exact[1], len(short[0]), short[1]) == (4096, False, 3072, False)
    assert await read_bounded(cast(aiohttp.ClientResponse, BigChunks(1024, 9)), 4096) == exact[0]
