"""bridge/vendors/json_steps.py: a large look-up answer decoded in short steps gives what decoding it whole gives."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge.vendors.json_steps as steps
from bridge.vendors.base import decode_json
from bridge.vendors.json_steps import decode_in_steps, release
from bridge.vendors.kapture_pull import _scan_page

TRICKY = ['a,"b"],[{x}', '},{"taskId":1}', "\\", '"', "]", "[", "}", "{", ",", "é ✓ \u2028", "\\u0000", ""]


def ticket(n: int, detail: str = "") -> dict[str, Any]:
    """A pulled ticket as Kapture writes it (fewer of its keys), with a reference to match on."""
    return {"tat": "", "date": "19-04-2024 14:19", "status": "Pending", "taskId": 530348198 + n,
            "ticketId": str(713516551148 + n), "detail": detail, "attachments": [{"name": "a.pdf"}, {"name": "b"}],
            "additional_info": {"bridge_ref": f"evt_{n}"}}


@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of a few hundred bytes, so that answers of a few kilobytes are read in many of them."""
    monkeypatch.setattr(steps, "STEP_BYTES", 300)
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
