"""A heavy value's JSON encoded a piece at a time, for the stores' heavy accepts and replays.

msgspec encodes a value in one call into C, which holds the GIL throughout, about 1 ms per MiB: a worker thread
encoding a large mail's event at once (its text kept two or three times over) keeps the event loop from running
for as long, 50-70 ms for a 20 MiB mail. `json_chunks` encodes each long string of a value a slice at a time:
between two slices the interpreter may hand the GIL to the loop, which so waits at most a slice (a few tenths of a
millisecond) past its switch interval. The chunks are bytes, so that `joined` (bytes.join, which lets go of the GIL
while it copies past 1 MiB of bytes objects) makes the whole value without holding it either.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

PIECE_CHARS = 256 * 1024
"""How much of a long string is encoded in one call (json_chunks): a few tenths of a millisecond holding the GIL."""
PIECE_DEPTH = 8
"""How deep in a value its long strings are looked for (a mail's text is one or two levels down: the payload's
`text`, the provider's own field of it; a delivery's body's field, one)."""
_encode_piece = msgspec.json.Encoder().encode
_decode_str = msgspec.json.Decoder(str).decode
T = TypeVar("T")


def json_chunks(value: Any, encode: Callable[[Any], bytes | bytearray]) -> list[bytes] | None:
    """`value` as `encode` encodes it, byte for byte, in chunks: each string of it longer than PIECE_CHARS (within
    PIECE_DEPTH of its top) encoded a slice at a time, the rest by `encode` at once, each long string standing in it
    as a marker no text holds (a random token), between whose quotes the string's pieces go. None when `value` holds
    no long string (or a marker is not written as the string it is, which no value a store is given does): the
    caller encodes it at once. Text that is not UTF-8 raises UnicodeEncodeError from its piece as from the whole."""
    found: list[str] = []
    mark = secrets.token_hex(16)
    skeleton = _swapped(value, found, mark, PIECE_DEPTH)
    if not found:
        return None
    encoded = encode(skeleton)
    markers = [f'"{mark}{n}"'.encode() for n in range(len(found))]
    places = sorted((encoded.find(marker), n) for n, marker in enumerate(markers))
    if places[0][0] < 0:
        return None
    whole = memoryview(encoded)
    chunks: list[bytes] = []
    at = 0
    for where, n in places:
        chunks.append(bytes(whole[at:where + 1]))  # up to the marker's opening quote
        text = found[n]
        for start in range(0, len(text), PIECE_CHARS):
            chunks.append(_encode_piece(text[start:start + PIECE_CHARS])[1:-1])  # without its quotes
        at = where + len(markers[n]) - 1  # from its closing quote
    chunks.append(bytes(whole[at:]))
    return chunks


def joined(chunks: list[bytes]) -> bytes:
    """`chunks` as one bytes object, copied without the GIL held (bytes.join lets go of it past 1 MiB when every
    item is a bytes object): on a worker thread, the loop runs meanwhile."""
    return b"".join(chunks)


def json_in_pieces(value: Any, encode: Callable[[Any], bytes]) -> bytes:
    """`value` as `encode` encodes it, its long strings a piece at a time (json_chunks), joined."""
    chunks = json_chunks(value, encode)
    return encode(value) if chunks is None else joined(chunks)


def _swapped(value: Any, found: list[str], mark: str, depth: int) -> Any:
    """`value` with each string longer than PIECE_CHARS, `depth` levels down at most (dicts', lists' and structs'
    values), replaced by `mark` and its index in `found`, where it is added; the containers holding none are
    `value`'s own, not copies."""
    kind = type(value)
    if kind is str:
        if len(value) <= PIECE_CHARS:
            return value
        found.append(value)
        return f"{mark}{len(found) - 1}"
    if depth == 0:
        return value
    if kind is dict:
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            if (swapped := _swapped(item, found, mark, depth - 1)) is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = swapped
        return value if changed is None else changed
    if kind is list:
        items: list[Any] | None = None
        for n, item in enumerate(value):
            if (swapped := _swapped(item, found, mark, depth - 1)) is not item:
                if items is None:
                    items = list(value)
                items[n] = swapped
        return value if items is None else items
    if isinstance(value, msgspec.Struct):
        fields = {name: swapped for name in value.__struct_fields__
                  if (swapped := _swapped(item := getattr(value, name), found, mark, depth - 1)) is not item}
        return msgspec.structs.replace(value, **fields) if fields else value
    return value


DECODE_AT_ONCE_BYTES = 1 << 20
"""A stored value up to this long is decoded in one call (about 1 ms); a longer one by `decode_in_pieces`."""
PIECE_READ_BYTES = 256 * 1024
"""How much of a large stored value a store reads in one call when it reads it a piece at a time (SQLite's blob
I/O)."""
DECODE_STRINGS = 4096
"""The most strings `decode_in_pieces` looks through before it decodes the value whole instead: a large mail's event
holds a few hundred (its headers, addresses, texts); each costs a few microseconds to step over."""
_PROBE_BYTES = 1024
"""How much of a string a first look decodes: most end within it."""
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")


class _AtOnce(Exception):
    """`decode_in_pieces` cannot tell what the value holds: it is decoded whole."""


def decode_in_pieces(data: bytes, decode: Callable[[bytes], T]) -> T:
    """`decode(data)`, the same value (or the same error), with no one call holding the GIL for the whole of a long
    string: what a large mail's stored event holds (its text two or three times over: 60 MiB took 65 ms in one call).
    A value up to DECODE_AT_ONCE_BYTES, or of more than DECODE_STRINGS strings, is decoded at once. Otherwise each
    string longer than PIECE_CHARS bytes is decoded a piece at a time and stands in the rest as a marker (a random
    token), the rest decoded by `decode` in one call (a few kilobytes), and the strings then put back in place of
    their markers. Each string's end is found by decoding it: msgspec stops at its closing quote ("trailing
    characters"), so the steps' work is linear in `data`, whatever its strings escape."""
    if len(data) <= DECODE_AT_ONCE_BYTES:
        return decode(data)
    try:
        spans = _long_strings(data)
        if not spans:
            return decode(data)
        mark = secrets.token_hex(16)
        parts: list[bytes | memoryview] = []
        view = memoryview(data)
        at = 0
        for n, (start, end, _) in enumerate(spans):
            parts.append(view[at:start])
            parts.append(f'"{mark}{n}"'.encode())
            at = end
        parts.append(view[at:])
        skeleton = decode(b"".join(parts))
        texts = {f"{mark}{n}": text for n, (_, _, text) in enumerate(spans)}
        value = _restored(skeleton, texts)
        if texts:  # a marker not found where it went
            raise _AtOnce
        return value  # type: ignore[no-any-return]
    except (_AtOnce, msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return decode(data)


def _long_strings(data: bytes) -> list[tuple[int, int, str]]:
    """Each string of `data` (JSON) longer than PIECE_CHARS bytes: where it starts (its opening quote), where it
    ends (past its closing quote) and its text. Outside a string every quote opens one; each is stepped over by
    decoding it (`_string`). _AtOnce past DECODE_STRINGS strings."""
    spans: list[tuple[int, int, str]] = []
    at = 0
    for _ in range(DECODE_STRINGS):
        start = data.find(b'"', at)
        if start < 0:
            return spans
        end, text = _string(data, start)
        if text is not None:
            spans.append((start, end, text))
        at = end
    raise _AtOnce


def _string(data: bytes, start: int) -> tuple[int, str | None]:
    """The string whose opening quote is at `start`: where it ends (past its closing quote) and, when it is longer
    than PIECE_CHARS bytes, its text, decoded a piece at a time (each piece cut where no escape or character is
    split, `_cut`), else None."""
    view = memoryview(data)
    probe = view[start:start + _PROBE_BYTES]
    try:
        _decode_piece(probe)
    except msgspec.DecodeError as exc:
        end = _end(data, exc, start)
        if end is not None:
            return end, None
    else:  # its closing quote is the probe's last byte: a string no longer than the probe, shorter than a piece
        return start + len(probe), None
    pieces: list[str] = []
    at = start + 1
    while True:
        if at >= len(data):
            raise _AtOnce  # no closing quote
        cut = _cut(data, at, min(len(data), at + PIECE_CHARS))
        try:
            pieces.append(_decode_piece(b'"' + view[at:cut] + b'"'))
        except msgspec.DecodeError as exc:
            end = _end(data, exc, at - 1)
            if end is None:
                raise _AtOnce from None  # cut within an escape: none the encoder writes
            pieces.append(_decode_piece(b'"' + view[at:end]))  # up to its closing quote
            return end, "".join(pieces) if end - start > PIECE_CHARS else None
        at = cut


def _end(data: bytes, exc: msgspec.DecodeError, offset: int) -> int | None:
    """Where the string ends (past its closing quote) whose decoding, from `data`'s byte `offset` (its opening quote,
    or one put before a piece of it), stopped with `exc`: msgspec read past its closing quote ("trailing
    characters", which counts that character in, after any white space). None when the piece was cut off inside
    the string ("truncated"); _AtOnce for any other error."""
    message = str(exc)
    trailing = _TRAILING.search(message)
    if trailing is None:
        if message == "Input data was truncated":
            return None
        raise _AtOnce from None
    after = offset + int(trailing.group(1)) - 1
    return data.rfind(b'"', offset + 1, after) + 1


def _decode_piece(piece: bytes | memoryview) -> str:
    text = _decode_str(piece)
    if type(text) is not str:
        raise _AtOnce
    return text


def _cut(data: bytes, start: int, target: int) -> int:
    """Where a piece of the string that goes on from `start` (where no escape or character is split) may end: at
    `target`, or a few bytes before it, so that no escape (`\\n`, `\\u00e9`: at most 6 bytes, the first a
    backslash that does not end a run of escaped ones) nor any character's UTF-8 bytes are split. `target` itself at
    the data's end. The piece is never empty."""
    if target >= len(data):
        return target
    slash = data.rfind(b"\\", max(start, target - 5), target)
    if slash >= 0:
        run = start + len(data[start:slash + 1].rstrip(b"\\"))  # where its run of backslashes begins
        if (slash - run) % 2 == 0:  # it begins an escape
            if slash > start:
                return slash
            return slash + (6 if data[slash + 1:slash + 2] == b"u" else 2)
        # else it ends an escaped backslash, and no escape begins after it before `target`
    cut = target
    while cut > start and 0x80 <= data[cut] < 0xC0:  # a UTF-8 continuation byte: end before its character
        cut -= 1
    return cut if cut > start else target


def _restored(value: Any, texts: dict[str, str]) -> Any:
    """`value` with each string that is a key of `texts` (a marker) replaced by its text (and removed from `texts`),
    in dicts' keys and values, lists and structs; the containers holding none are `value`'s own."""
    kind = type(value)
    if kind is str:
        return texts.pop(value, value) if value in texts else value
    if kind is dict:
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new_key, new_item = _restored(key, texts), _restored(item, texts)
            changed = changed or new_key is not key or new_item is not item
            out[new_key] = new_item
        return out if changed else value
    if kind is list:
        items = [_restored(item, texts) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, msgspec.Struct):
        fields = {name: restored for name in value.__struct_fields__
                  if (restored := _restored(item := getattr(value, name), texts)) is not item}
        return msgspec.structs.replace(value, **fields) if fields else value
    return value
