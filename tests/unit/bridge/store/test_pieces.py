"""bridge/store/pieces.py: a stored value's long strings decoded a piece at a time, to the value decoded at once."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.store import pieces
from bridge.store.rows import decode_event, encode
from tests.integration.store.contract import make_event
from tests.spies import calls_through

PIECE = 16
"""PIECE_CHARS in these tests: a string of more than 16 bytes is decoded in pieces."""


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "PIECE_CHARS", PIECE)
    monkeypatch.setattr(pieces, "DECODE_AT_ONCE_BYTES", 0)
    monkeypatch.setattr(pieces, "_PROBE_BYTES", 8)


def decoded_strings(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Each string piece decode_in_pieces gives msgspec from now on (its bytes, quotes included)."""
    calls: list[bytes] = []
    calls_through(monkeypatch, pieces, "_decode_str", lambda piece: calls.append(bytes(piece)))
    return calls


TEXTS = [
    "plain " * 10,
    'quotes " and \\ backslashes\n\t\x00\x1f, \u00e9t\u00e9, \u2603 and \U0001f600 ' * 3,
    "\\" * 41 + '"' * 7 + "\\" * 3,
    "\u00e9" * 40,
    "\U0001f600" * 20 + "a",
    "\n" * 50,
    "x" * 16,
    "x" * 17,
]


@pytest.mark.parametrize("text", TEXTS)
def test_an_event_decoded_in_pieces_is_the_event_decoded_at_once(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever its long strings escape (a quote, a backslash, a control character) and whatever their characters
    (a piece ends between two characters' bytes and outside any escape), in a payload's values and keys, in
    headers and in lists, an event decodes to what it decodes to at once; no piece decoded holds more than a piece
    of a long string (and its escape or character cut at the piece's end)."""
    event = make_event(text=text, stripped_text=text, provider={"TextBody": text, text: [text, 1, None, {"k": text}]})
    event.headers["subject"] = text
    data = encode(event)
    calls = decoded_strings(monkeypatch)
    assert pieces.decode_in_pieces(data, decode_event) == decode_event(data) == event
    assert max(len(call) for call in calls) <= max(pieces._PROBE_BYTES, PIECE + 2 + 6)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=60),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=30), inner,
                                                                                 max_size=4),
                    max_leaves=12))
@example({"\x80\U00010000": None, "x" * 20: None})  # a string as long as the probe (8 bytes), then a long one
def test_any_json_value_decodes_in_pieces_as_at_once(value: Any) -> None:
    """Any JSON value msgspec writes decodes in pieces to what it decodes to at once, and is decoded in pieces
    (never whole, as a value the steps cannot read is) when it holds a string longer than a piece."""
    data = msgspec.json.encode({"payload": value, "more": [value]})
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    given: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pieces, "PIECE_CHARS", PIECE)
        patch.setattr(pieces, "DECODE_AT_ONCE_BYTES", 0)
        patch.setattr(pieces, "_PROBE_BYTES", 8)
        assert pieces.decode_in_pieces(data, lambda part: given.append(bytes(part)) or decode(part)) == decode(data)
    long_string = any(len(msgspec.json.encode(text)) > PIECE for text in _strings(value))  # quotes included
    assert (data not in given) if long_string else (given == [data]), given


def _strings(value: Any) -> list[str]:
    """Every string of a JSON value: its strings, its dicts' keys."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *_strings(item)]]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


@pytest.mark.parametrize("data", [
    b'{"a": "' + b"x" * 40 + b'"',  # cut off inside a long string
    b'{"a": "' + b"x" * 40 + b'", }',  # a comma before the end
    b'{"a": "' + b"x" * 40 + b'\\q"}',  # an escape JSON has not
    b'{"a": "' + b"x" * 40 + b'\xff"}',  # bytes that are not UTF-8
    b'"' + b"x" * 40 + b'"',  # a string at the top
])
def test_what_does_not_decode_at_once_fails_in_pieces_the_same_way(data: bytes) -> None:
    """Data that does not decode at once raises the same error in pieces (it is decoded whole once a piece fails)."""
    decode = msgspec.json.Decoder(dict[str, Any]).decode
    with pytest.raises((msgspec.DecodeError, UnicodeDecodeError)) as at_once:
        decode(data)
    with pytest.raises((msgspec.DecodeError, UnicodeDecodeError)) as in_pieces:
        pieces.decode_in_pieces(data, decode)
    assert (type(in_pieces.value), str(in_pieces.value)) == (type(at_once.value), str(at_once.value))


def test_a_value_of_many_strings_is_decoded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past DECODE_STRINGS strings, stepping over each costs more than the value's decode: it is decoded whole."""
    monkeypatch.setattr(pieces, "DECODE_STRINGS", 10)
    event = make_event(text="x" * 40, items=[str(n) for n in range(20)])
    data = encode(event)
    calls = decoded_strings(monkeypatch)
    assert pieces.decode_in_pieces(data, decode_event) == event
    assert not [call for call in calls if b"x" * 40 in call] and calls  # looked at, then decoded whole


def test_a_small_value_is_decoded_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "DECODE_AT_ONCE_BYTES", 1 << 20)
    calls = decoded_strings(monkeypatch)
    event = make_event(text="x" * 40)
    assert pieces.decode_in_pieces(encode(event), decode_event) == event
    assert calls == []

