"""bridge/vendors/json_steps.py: a large look-up answer decoded in short steps gives what decoding it whole gives."""

from __future__ import annotations

import json
import random
import re
from datetime import date
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.vendors.json_steps as steps
from bridge.vendors.base import LOOKUP_MAX_CONTAINERS, SearchStopped, VendorUnavailable, decode_json
from bridge.vendors.http import _looked_up, body_path
from bridge.vendors.json_steps import decode_in_steps, decode_lookup, release
from bridge.vendors.kapture import read_tickets
from bridge.vendors.kapture_pull import _scan_page
from tests.complexity.scaling import assert_linear

TRICKY = ['a,"b"],[{x}', '},{"taskId":1}', "\\", '"', "]", "[", "}", "{", ",", "é ✓ \u2028", "\\u0000", ""]


def ticket(n: int, detail: str = "") -> dict[str, Any]:
    """A pulled ticket as Kapture writes it (fewer of its keys), with a reference to match on."""
    return {"tat": "", "date": "19-04-2024 14:19", "status": "Pending", "taskId": 530348198 + n,
            "ticketId": str(713516551148 + n), "detail": detail, "attachments": [{"name": "a.pdf"}, {"name": "b"}],
            "additional_info": {"bridge_ref": f"evt_{n}"}}


@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of a few hundred bytes, so that answers of a few kilobytes are read in many of them (and as many
    more steps allowed a KiB)."""
    monkeypatch.setattr(steps, "STEP_BYTES", 300)
    monkeypatch.setattr(steps, "CALL_BYTES", 4)
    monkeypatch.setattr(steps, "WINDOW_BYTES", 900)
    monkeypatch.setattr(steps, "RELEASE_SLICE", 3)


@pytest.fixture
def no_whole(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the bodies decoded whole though larger than a step (empty when the steps read all)."""
    whole: list[int] = []

    def watched(body: bytes) -> Any:
        if len(body) > steps.STEP_BYTES:
            whole.append(len(body))
        return decode_json(body)

    monkeypatch.setattr(steps, "decode_json", watched)
    return whole


def same(body: bytes) -> None:
    """`decode_in_steps` gives `decode_json`'s value: equal, keys in the same order, the same types."""
    got, expected = decode_in_steps(body), decode_json(body)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)


def page(tickets: list[Any], **extra: Any) -> bytes:
    return msgspec.json.encode({"totalCount": None, "message": tickets, "status": "success", **extra})


@pytest.mark.parametrize("shape", ["pull", "wrapped", "get-by-id", "indented", "member after", "map", "nested"])
def test_an_answer_of_many_tickets_is_read_in_steps_to_the_same_value(
        shape: str, small_steps: None, no_whole: list[int]) -> None:
    """Kapture's pull page (its tickets inside `message`, or the page inside a one-item array), a get-by-id's
    top-level array, one written with indents, one with a large member after the tickets, an object of tickets,
    tickets nested in arrays and objects: each read in steps (none decoded whole) to what one decode gives."""
    tickets = [ticket(n, TRICKY[n % len(TRICKY)]) for n in range(60)]
    body = {"pull": page(tickets), "wrapped": msgspec.json.encode([msgspec.json.decode(page(tickets))]),
            "get-by-id": msgspec.json.encode(tickets),
            "indented": json.dumps(msgspec.json.decode(page(tickets)), indent=3).encode(),
            "member after": page(tickets[:30], other=tickets[30:]),
            "map": msgspec.json.encode({f"k{n}": t for n, t in enumerate(tickets)}),
            "nested": msgspec.json.encode([[[{"a": [[t]], "b": {"c": t}}]] for t in tickets])}[shape]
    same(body)
    assert no_whole == []


@pytest.mark.parametrize("body", [
    page([ticket(n) for n in range(40)])[:-1],  # cut short
    page([ticket(n) for n in range(40)]).replace(b"evt_39", b"evt_\xff"),  # not UTF-8
    page([ticket(n) for n in range(40)]).replace(b'"taskId":530348230', b'"taskId":1e999'),  # out of range
    page([ticket(n) for n in range(40)]).replace(b'"taskId":530348230', b'"taskId":NaN'),
    page([ticket(n) for n in range(40)]) + b" x",  # trailing text
    page([ticket(n) for n in range(40)]).replace(b'"attachments":', b'"attachments":' + b"[" * 600, 1)
    + b"]" * 600,  # too deep
    b'{"message": ' + msgspec.json.encode([ticket(n) for n in range(40)]) + b', "message": "again"}',
    b"\xef\xbb\xbf" + page([ticket(n) for n in range(40)]),  # a byte-order mark
    b'"' + b"x" * 2000 + b'"',
    b" [1, 2, " + b"3, " * 600 + b"4] ",
], ids=["cut", "not-utf8", "out-of-range", "nan", "trailing", "too-deep", "key-twice", "bom", "string",
        "numbers"])
def test_an_answer_that_is_no_json_or_odd_gives_what_decoding_it_whole_gives(body: bytes, small_steps: None) -> None:
    """A body cut short, not UTF-8, with a number out of range or NaN, trailing text, nesting too deep (None,
    each), a key given twice (the later value, in the first place), a long string, numbers: the same value."""
    same(body)


def value_with(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=8) | st.dictionaries(text, inner, max_size=6),
                        max_leaves=60)


SEPARATORS = st.sampled_from(["", " ", "\n", "\t", "\r\n  "])


@settings(max_examples=150, deadline=None)
@given(values=st.lists(value_with(st.sampled_from(TRICKY) | st.text(max_size=12)), min_size=1, max_size=40),
       space=SEPARATORS, wrap=st.sampled_from(["array", "pull", "wrapped-pull"]))
def test_generated_answers_read_in_steps_give_the_same_value(values: list[Any], space: str, wrap: str) -> None:
    """Generated answers (values nested deep, strings of brackets, quotes, commas and escapes, white space
    between the tokens): read in steps, each gives what one decode gives."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "STEP_BYTES", 64)
        patch.setattr(steps, "WINDOW_BYTES", 256)
        patch.setattr(steps, "CALL_BYTES", 1)
        answer: Any = {"array": values, "pull": {"status": "success", "message": values},
                       "wrapped-pull": [{"Status": "success", "Message": values, "totalCount": len(values)}]}[wrap]
        text = json.dumps(answer, indent=1 if space else None, ensure_ascii=False)
        body = text.replace("\n", space if space else "\n").encode()
        same(body)


def test_released_values_are_emptied_a_slice_at_a_time(small_steps: None) -> None:
    """`release` empties a decoded answer, and each container inside it larger than RELEASE_SLICE (a slice at a
    time); a smaller one is freed with its slice."""
    inner = list(range(10))
    kept = {"a": inner, "b": [{"c": list(range(7))}], "c": 1, "d": None}
    small = [1, 2]
    value = [kept, list(range(20)), small, 1]
    release(value)
    assert value == [] and kept == {} and inner == [] and small == [1, 2]


def test_a_large_pull_page_is_never_decoded_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull page of 8 MiB is decoded and scanned in calls into msgspec that each read at most WINDOW_BYTES
    (a `Raw` skip) or about two STEP_BYTES (a group of tickets), so that the loop runs between them: before, one
    call read the whole page, holding the loop ~40 ms a MiB of tickets."""
    tickets = [ticket(n, "Router down since morning") for n in range(28_000)]
    body = page(tickets)
    assert len(body) > 6 * 1024 * 1024
    read: list[int] = []
    decode = msgspec.json.decode

    def watched(text: Any, **kwargs: Any) -> Any:
        read.append(len(text))
        return decode(text, **kwargs)

    monkeypatch.setattr(msgspec.json, "decode", watched)

    def match(t: dict[str, Any], day: date) -> None:
        return None

    scanned = _scan_page(body, 200, date(2024, 4, 19), match)
    assert scanned.outcome.classification == "success" and len(scanned.keys) == len(tickets)
    assert scanned.keys[-1] == tickets[-1]["ticketId"]
    assert max(read) <= max(steps.WINDOW_BYTES, 3 * steps.STEP_BYTES)


def test_a_trailing_comma_is_no_json() -> None:
    """An array or object whose last element is followed by a comma is no JSON (None), however large the element:
    before, the steps read a large element and then took the `]` after its comma for the array's end."""
    big = msgspec.json.encode({"a": "x" * 300_000})
    for body in (b"[" + big + b",]", b"[" + big + b", ]", b'{"m": ' + big + b",}", b"[[" + big + b",] ]",
                 b"[1, " + big + b",\n]"):
        assert decode_json(body) is None
        assert decode_in_steps(body) is None, body[-20:]


TICKET = msgspec.json.encode(ticket(1, "Router down since morning"))


def adversarial(shape: str, n: int) -> bytes:
    """A body of about `n` KiB in one of the shapes that once made the steps search or decode the same bytes
    again and again."""
    k = n * 1024
    return {
        "mixed first": b'[1,' + b",".join([b'"a"'] * (k // 4)) + b"]",
        "object then numbers": b'[{"a":1},' + b",".join([b"1"] * (k // 2)) + b"]",
        "null then tickets": page([None, *[ticket(i) for i in range(k // len(TICKET))]]),
        "tiny, no cut": b"[" + b",".join([b'"a",{}'] * (k // 7)) + b"]",
        "spaces": b"[1,2" + b" " * k + b"]",
        "huge single": b'[{"a":"' + b"x" * k + b'"}]',
        "deep": b"[" * 200 + msgspec.json.encode("x" * k) + b"]" * 200,
        "separators in strings": msgspec.json.encode([ticket(0), *['},{"tat":\\"},{' * 4] * (k // 70)]),
        "escapes": msgspec.json.encode(["\\\"é\u2028\\" * 16] * (k // 100)),
    }[shape]


SHAPES = ["mixed first", "object then numbers", "null then tickets", "tiny, no cut", "spaces", "huge single",
          "deep", "separators in strings", "escapes"]


class Reads:
    """Counts the calls into msgspec and the regular expression searches for cuts, and the bytes each reads (a
    `Raw` skip: up to where it stopped); AssertionError once more than `limit` bytes are read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = self.read = 0
        self.limit = 0
        decode = msgspec.json.decode

        def counted(text: Any, **kwargs: Any) -> Any:
            try:
                value = decode(text, **kwargs)
            except Exception as exc:
                at = str(exc).rpartition("(byte ")[2].rstrip(")")  # where msgspec stopped, when it says
                self.count(int(at) if at.isdigit() else len(text))
                raise
            self.count(len(text))
            return value

        class Pattern:
            def __init__(self, compiled: Any) -> None:
                self.compiled, self.pattern = compiled, compiled.pattern

            def search(pattern, text: bytes, begin: int = 0, end: int = 2 ** 62) -> Any:
                self.count(min(end, len(text)) - begin)
                return pattern.compiled.search(text, begin, end)

        monkeypatch.setattr(msgspec.json, "decode", counted)
        monkeypatch.setattr(steps, "re", type("re", (), {"compile": lambda p: Pattern(re.compile(p)),
                                                         "escape": re.escape}))

    def count(self, read: int) -> None:
        self.calls += 1
        self.read += read
        if self.read > self.limit:
            raise AssertionError(f"read {self.read} bytes in {self.calls} calls, more than {self.limit}")

    def of(self, body: bytes) -> Any:
        """`decode_in_steps(body)`, allowed 16 times the body's bytes (and a few windows) and counted afresh."""
        self.calls = self.read = 0
        self.limit = 16 * len(body) + 8 * steps.WINDOW_BYTES
        return decode_in_steps(body)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_steps_read_each_byte_a_bounded_number_of_times(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On every shape, the steps (and their one whole decode, when they give up) read at most 16 times the body's
    bytes, in at most ~4 calls a KiB: before, an array whose first element differs from the rest had the same
    256 KiB searched again for each element (a 0.76 MiB body: 8 minutes), a run of white space was searched from
    each of its bytes."""
    reads = Reads(monkeypatch)
    for kib in (300, 1200):
        body = adversarial(shape, kib)
        assert reads.of(body) == decode_json(body)
        assert reads.calls <= 64 + 4 * len(body) // 1024 + 4, (kib, reads.calls)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_steps_cost_grows_linearly_with_the_body(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 times the body costs about 8 times the time, not 64, on each adversarial shape (each read bounded as
    above, so that a quadratic read fails fast). From 600 KiB: each body is then read in steps (STEP_BYTES), where
    from 300 KiB the smaller one was read in two and `tiny, no cut` grew 13-14x on a quiet machine, within the
    noise of the bound (16x) on a busy one; from 600 KiB every shape grows 2.4-9x."""
    reads = Reads(monkeypatch)
    assert_linear(reads.of, lambda kib: adversarial(shape, kib), 600)


FRAGMENTS = ['},{"tat":', '"},{\\"tat\\":', "\\", '\\"', "\\u00e9", "\\ud83d\\ude00", "\\ud800", "é✓\u2028", "]", "[",
             "}", "{", ",", ":", " ", "\n", "\t", '"', "\x00", "\\n"]


def test_random_bodies_broken_or_not_read_in_steps_give_what_decoding_whole_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A differential fuzz, seeded: nested values with strings of separators and escapes, keys given twice, odd
    numbers and white space, a third of them broken a byte or three (not UTF-8, a comma or bracket added or
    lost), read in steps of 64 bytes: each gives what one decode gives."""
    monkeypatch.setattr(steps, "STEP_BYTES", 64)
    monkeypatch.setattr(steps, "WINDOW_BYTES", 200)
    monkeypatch.setattr(steps, "CALL_BYTES", 1)
    rand = random.Random(20240419)

    def text() -> str:
        return "".join(rand.choice([*FRAGMENTS, "abc", "x" * rand.randint(0, 300)])
                       for _ in range(rand.randint(0, 6)))

    def value(depth: int = 0) -> Any:
        r = rand.random()
        if depth > 3 or r < 0.3:
            return rand.choice([rand.randint(-10 ** 20, 10 ** 20), rand.random() * 1e300, 1e-320, True, False, None,
                                text(), 0, -0.0, 2 ** 63, 2 ** 64, -2 ** 63 - 1])
        if r < 0.6:
            return [value(depth + 1) for _ in range(rand.randint(0, 8))]
        return {rand.choice(["tat", "a", text(), "b"]): value(depth + 1) for _ in range(rand.randint(0, 6))}

    def space() -> str:
        return rand.choice([" ", "\n", "\t", "\r", "", "  "])

    def encode(v: Any) -> str:
        if isinstance(v, list):
            return "[" + space() + ("," + space()).join(encode(x) for x in v) + space() + "]"
        if isinstance(v, dict):
            items = list(v.items())
            if items and rand.random() < 0.3:
                items.append((items[0][0], value(3)))  # a key given twice
            return "{" + ",".join(space() + json.dumps(k, ensure_ascii=rand.random() < 0.5) + space() + ":" + space()
                                  + encode(x) for k, x in items) + space() + "}"
        if isinstance(v, float) and rand.random() < 0.3:
            return rand.choice(["1E5", "1e-5", "-0", "0.0e+0", "123456789012345678901234567890", "1.5E+300"])
        return json.dumps(v, ensure_ascii=rand.random() < 0.5)

    read = 0
    for _ in range(3000):
        body = bytearray(encode(value()).encode("utf-8", "surrogatepass"))
        if rand.random() < 0.3:
            for _ in range(rand.randint(1, 3)):
                if body:
                    at, how = rand.randrange(len(body)), rand.random()
                    if how < 0.3:
                        body[at] = rand.choice(b'\xff\xc3\x80,]}"\\ 0')
                    elif how < 0.6:
                        del body[at]
                    else:
                        body.insert(at, rand.choice(b',]}[{"\\ '))
        if len(body) > steps.STEP_BYTES:
            read += 1
            got, expected = decode_in_steps(bytes(body)), decode_json(bytes(body))
            assert got == expected and json.dumps(got) == json.dumps(expected), bytes(body)
    assert read > 1000


def test_a_look_up_answer_is_decoded_in_steps_unless_it_holds_too_many_objects(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """`decode_lookup` gives what decoding gives; an answer of more objects and arrays than a look-up reads is
    refused with the caller's error, naming it, before anything is decoded."""
    assert decode_lookup(b'{"a": [1, {"b": null}]}', "x", SearchStopped) == {"a": [1, {"b": None}]}
    assert decode_lookup(b"not json", "x", SearchStopped) is None
    hostile = b"[" + b",".join([b"{}"] * (LOOKUP_MAX_CONTAINERS + 1)) + b"]"
    decoded: list[bytes] = []
    monkeypatch.setattr(steps, "decode_in_steps", decoded.append)
    with pytest.raises(SearchStopped, match=r"^the answer holds more than 400,000 objects and arrays"):
        decode_lookup(hostile, "the answer", SearchStopped)
    assert decoded == []


def test_every_look_up_refuses_an_answer_of_too_many_objects_with_its_own_error() -> None:
    """Kapture's ticket look-up (the ticket is not known to be there or not: try later), the `http` vendor's
    look-up and Kapture's pull (the search stops, the outcome stays unknown) each name what they read."""
    hostile = b"[" + b",".join([b"{}"] * (LOOKUP_MAX_CONTAINERS + 1)) + b"]"
    with pytest.raises(VendorUnavailable, match=r"^the ticket look-up failed: the ticket look-up's answer holds more"):
        read_tickets(200, hostile)
    with pytest.raises(SearchStopped, match=r"^http: the look-up's answer holds more than 400,000"):
        _looked_up(hostile, body_path("id"))
    with pytest.raises(SearchStopped, match=r"^the pull answer for 2024-04-19 holds more than 400,000"):
        _scan_page(hostile, 200, date(2024, 4, 19), lambda ticket, day: None)
