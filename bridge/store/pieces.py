"""A heavy value's JSON encoded a piece at a time, for the stores' heavy accepts and replays.

msgspec encodes a value in one call into C, which holds the GIL throughout, about 1 ms per MiB: a worker thread
encoding a large mail's event at once (its text kept two or three times over) keeps the event loop from running
for as long, 50-70 ms for a 20 MiB mail. `json_chunks` encodes each long string of a value a slice at a time:
between two slices the interpreter may hand the GIL to the loop, which so waits at most a slice (a few tenths of a
millisecond) past its switch interval. The chunks are bytes, so that `joined` (bytes.join, which lets go of the GIL
while it copies past 1 MiB of bytes objects) makes the whole value without holding it either.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import msgspec

PIECE_CHARS = 256 * 1024
"""How much of a long string is encoded in one call (json_chunks): a few tenths of a millisecond holding the GIL."""
PIECE_DEPTH = 8
"""How deep in a value its long strings are looked for (a mail's text is one or two levels down: the payload's
`text`, the provider's own field of it; a delivery's body's field, one)."""
_encode_piece = msgspec.json.Encoder().encode


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
