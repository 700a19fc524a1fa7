"""Reading an HTTP answer's body under a cap: a vendor's answer, a look-up, a provider's download, an SNS
signing certificate. One reader for all, as `content.read(n)` gives what has arrived so far, not the body; a send's
answer, which aiohttp hands over still encoded, goes through the same reader with a decoder (`read_decoding`)."""

from __future__ import annotations

import io
import zlib

import aiohttp
import brotli

from bridge.errors import BridgeError, quoted
from bridge.offload import INFLATING, in_parser

READ_CHUNK = 65536


async def read_capped(response: aiohttp.ClientResponse, limit: int,
                      inflater: _Inflater | None = None) -> tuple[bytes, bool]:
    """The answer's body, to its end or its first `limit` bytes (decompressed as they arrive, so an encoded
    body that inflates to gigabytes costs `limit`), and whether it went on past `limit` (then cut there).
    Unlike `content.read(limit)`, which gives what has arrived so far, an answer that comes in several pieces
    is read whole. At most `limit` bytes and the chunk being read are held: each chunk goes into one buffer
    (the last one cut to fit) and the buffer becomes the result without a copy. (The buffer's growth may reserve
    up to an eighth more than it holds, reserved, not written, and given back when it becomes the result.)
    With an `inflater` (`read_decoding`'s), each chunk is decoded by it first, to at most the room left and one
    byte, and the body is also cut once its encoded bytes pass ENCODED_FACTOR times `limit`."""
    buffer = io.BytesIO()
    async for piece in response.content.iter_chunked(READ_CHUNK):
        chunk = piece if inflater is None else await inflater.decode(piece, limit - buffer.tell() + 1)
        room = limit - buffer.tell()
        if len(chunk) > room:
            buffer.write(memoryview(chunk)[:room])
            return buffer.getvalue(), True
        buffer.write(chunk)
        del chunk, piece  # not held while the next one is read
        if inflater is not None and inflater.encoded > ENCODED_FACTOR * limit:
            return buffer.getvalue(), True
    if inflater is not None:
        inflater.finish()
    return buffer.getvalue(), False


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, to its end or its first `limit` bytes: `read_capped` without saying whether it was cut."""
    body, _cut = await read_capped(response, limit)
    return body


_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate", "br": "br"}
"""The content codings `read_decoding` reads, by name (`x-gzip` is gzip's old name), and the decoder each takes."""
ACCEPT_ENCODING = ", ".join(dict.fromkeys(_CODINGS.values()))
"""What a vendor is offered (`Accept-Encoding` on the delivery session's requests), `gzip, deflate, br`: the content
codings `read_decoding` reads, and no other. aiohttp's own offer grows with what is installed (`zstd` once
`backports.zstd` is), which a send, reading its answer itself, would then be offered and not read."""
_IDENTITY = frozenset({"", "identity"})
READ_CODINGS = frozenset({*_CODINGS, "identity"})
"""The content codings a send's answer may come in: those `read_decoding` decodes, and `identity`."""
ENCODED_FACTOR = 2
"""An encoded answer is read to at most this many times the cap on its decoded body: no coding a vendor uses makes
a body larger than it was (incompressible text grows by a few bytes per 16 KiB), so more is no answer (empty
blocks without end), and it is cut there."""


ON_LOOP_ENCODED = 64 * 1024
"""An encoded answer's bytes decoded on the event loop: an answer's first 64 KiB (a vendor's answer is a few KiB);
each chunk past them is decoded in the INFLATING thread. Decoding costs up to about 50 ns a byte for a body crafted
of small blocks each with a header of its own (ten thousand dynamic deflate blocks in 512 KiB that inflate to
nothing took 25 ms at once), against well under a millisecond for an ordinary 256 KiB: 64 KiB is 3 ms at most."""
MEMBERS = 64
"""At most this many gzip members (or deflate streams) one after another in one answer: each costs a decoder of its
own and a copy of the rest of its chunk, so 26,000 empty 20-byte members in 512 KiB held the event loop 40 ms,
against a fraction of a millisecond for a body of one. A vendor's answer is one member; more are refused."""


class UndecodableBody(BridgeError, ValueError):
    """An answer's body is in a content coding ticketbridge does not read, or does not decode as its coding
    says."""


class _Inflater:
    """One body's decoder (gzip, deflate or br), giving at most what it is asked for: a body that inflates to
    gigabytes is inflated only as far as the reader's cap. gzip members one after another are read as one body,
    as aiohttp reads them; a deflate body without its zlib header is read as raw deflate, as aiohttp reads it."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._brotli = brotli.Decompressor() if coding == "br" else None
        self._wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
        self._zlib: zlib._Decompress | None = None
        self._members = 0
        self.encoded = 0
        """The body's encoded bytes given to `decode` so far."""

    async def decode(self, data: bytes, most: int) -> bytes:
        """`inflate(data, most)`, on the event loop for the body's first ON_LOOP_ENCODED encoded bytes, in the
        INFLATING thread for each chunk past them; a body that does not decode raises UndecodableBody."""
        self.encoded += len(data)
        try:
            if self.encoded <= ON_LOOP_ENCODED:
                return self.inflate(data, most)
            return await in_parser(self.inflate, data, most, pool=INFLATING)
        except (zlib.error, brotli.error) as exc:
            raise UndecodableBody(f"it does not decode as {self.coding}: {exc}") from None

    def inflate(self, data: bytes, most: int) -> bytes:
        """Up to `most` bytes (at least 1) of what `data`, the body's next bytes, inflates to, with what came
        before; the input behind anything past `most` is dropped (the reader stops there). Raises zlib.error or
        brotli.error, or UndecodableBody past MEMBERS members."""
        if self._brotli is not None:
            out = self._brotli.process(data, output_buffer_limit=most)
            parts, left = [out], most - len(out)
            while left > 0 and not self._brotli.can_accept_more_data() and out:
                out = self._brotli.process(b"", output_buffer_limit=left)
                parts.append(out)
                left -= len(out)
            return b"".join(parts)
        parts, left = [], most
        while data and left > 0:
            if self._zlib is None or self._zlib.eof:  # the first member, or the next one after a member's end
                self._members += 1
                if self._members > MEMBERS:
                    raise UndecodableBody(f"its {self.coding} body holds more than {MEMBERS} members (streams one "
                                          "after another), which no vendor's answer is made of: read no further")
                raw = self.coding == "deflate" and self._zlib is None and data[0] & 0xF != 8
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else self._wbits)
            out = self._zlib.decompress(data, left)
            parts.append(out)
            left -= len(out)
            data = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
        return b"".join(parts)

    def finish(self) -> None:
        """At the body's end: UndecodableBody unless its stream has ended (its last member, for gzip) or it was
        empty."""
        if self._brotli is not None:
            finished = bool(self._brotli.is_finished())
        else:
            finished = self._zlib is not None and bool(self._zlib.eof)
        if self.encoded and not finished:
            raise UndecodableBody(f"its {self.coding} stream ends before it is complete")


def body_coding(response: aiohttp.ClientResponse) -> str | None:
    """The content coding an answer's body is in (`Content-Encoding`, all its values, lower-cased), None when it is
    sent as it is (no coding, or `identity`)."""
    values = response.headers.getall("Content-Encoding", ())
    if not values:  # the usual answer: one look-up
        return None
    codings = [c.strip().lower() for value in values for c in value.split(",")]
    codings = [c for c in codings if c not in _IDENTITY]
    return ", ".join(codings) or None


async def read_decoding(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """`read_capped` for an answer aiohttp hands over as it came (asked for with `auto_decompress=False`): its body
    decoded here as its Content-Encoding says (gzip, deflate or br: what ACCEPT_ENCODING offers), only as far as
    `limit` decoded bytes (a body that inflates to a gigabyte costs `limit`), and its encoded bytes read to at most
    ENCODED_FACTOR times `limit`, those past its first ON_LOOP_ENCODED decoded off the event loop. Raises
    UndecodableBody when the body is in another coding (zstd, one made up, several stacked) or does not decode as
    its coding says (a corrupt or unfinished stream); an empty body is empty whatever its coding."""
    coding = body_coding(response)
    if coding is None:
        return await read_capped(response, limit)
    if (known := _CODINGS.get(coding)) is not None:
        return await read_capped(response, limit, _Inflater(known))
    async for _chunk in response.content.iter_chunked(READ_CHUNK):
        raise UndecodableBody(f"its Content-Encoding is {quoted(coding)}, which ticketbridge does not read (it "
                              f"offers {ACCEPT_ENCODING})")
    return b"", False
