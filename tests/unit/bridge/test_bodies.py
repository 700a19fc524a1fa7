"""bridge/bodies.py: an answer's body read to its end under a cap, holding at most the cap and one chunk."""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import brotli
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import bridge.bodies
from bridge.bodies import (
    ACCEPT_ENCODING,
    ENCODED_FACTOR,
    MEMBERS,
    ON_LOOP_ENCODED,
    UndecodableBody,
    read_bounded,
    read_capped,
    read_decoding,
)
from tests.allocations import peak_of


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
    (body, cut), peak = await peak_of(lambda: read_capped(response, limit))
    assert cut and len(body) == limit
    assert body[:chunk] == b"A" * chunk and body[-1:] == bytes([65 + (limit - 1) // chunk])
    assert peak <= limit + chunk + margin + 16 * 1024, f"held {peak / (1 << 20):.1f} MiB"


async def test_the_bounded_reader_reads_an_answer_of_exactly_its_limit_whole() -> None:
    """An answer of exactly `limit` bytes, or shorter, is read whole and not called cut."""
    exact = await read_capped(cast(aiohttp.ClientResponse, BigChunks(1024, 4)), 4096)
    short = await read_capped(cast(aiohttp.ClientResponse, BigChunks(1024, 3)), 4096)
    assert (len(exact[0]), exact[1], len(short[0]), short[1]) == (4096, False, 3072, False)
    assert await read_bounded(cast(aiohttp.ClientResponse, BigChunks(1024, 9)), 4096) == exact[0]


class Encoded:
    """An answer handed over as it came (aiohttp's `auto_decompress=False`): `body` in chunks of `size` bytes, with
    the Content-Encoding header(s) `codings`."""

    def __init__(self, body: bytes, *codings: str, size: int = 65536) -> None:
        self.content = self
        self.headers = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"),
                                                      *(("Content-Encoding", c) for c in codings)]))
        self.body, self.size = body, size
        self.given = 0

    async def iter_chunked(self, _n: int) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            self.given += len(self.body[start:start + self.size])
            yield self.body[start:start + self.size]


def response(body: bytes, *codings: str, size: int = 65536) -> aiohttp.ClientResponse:
    return cast(aiohttp.ClientResponse, Encoded(body, *codings, size=size))


ANSWER = b'[{"status": "success", "ticket_id": "713516551148"}]' * 50


def _zlib(body: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(body) + packer.flush()


ENCODED = {
    "gzip": _zlib(ANSWER, 31), "x-gzip": _zlib(ANSWER, 31), "deflate": _zlib(ANSWER, 15),
    "br": brotli.compress(ANSWER), "identity": ANSWER,
}


@pytest.mark.parametrize("size", [1, 7, 65536])
@pytest.mark.parametrize("coding", [*ENCODED, "GZip", " gzip , identity"])
async def test_an_answer_in_a_coding_offered_is_decoded_however_it_arrives(coding: str, size: int) -> None:
    """An answer in each coding ACCEPT_ENCODING offers (`x-gzip` is gzip; `identity` is none; names in any case,
    `identity` beside another ignored) is read whole, whatever pieces it arrives in, and is not called cut."""
    encoded = ENCODED[coding.strip().lower().split(" ")[0].rstrip(",")]
    assert await read_decoding(response(encoded, coding, size=size), 1 << 20) == (ANSWER, False)


def test_what_is_offered_is_what_is_read() -> None:
    """Every coding offered to a vendor (Accept-Encoding) is one the sender's reader decodes."""
    assert ACCEPT_ENCODING == "gzip, deflate, br"
    assert {c.strip() for c in ACCEPT_ENCODING.split(",")} <= set(ENCODED)


async def test_gzip_members_one_after_another_are_one_body_and_raw_deflate_is_read() -> None:
    """A gzip body of several members (as `cat a.gz b.gz` makes) is their bodies joined, as aiohttp reads it; a
    deflate body without its zlib header (as some servers send) is read as raw deflate, as aiohttp reads it."""
    half = len(ANSWER) // 2
    members = _zlib(ANSWER[:half], 31) + _zlib(ANSWER[half:], 31)
    assert await read_decoding(response(members, "gzip", size=5), 1 << 20) == (ANSWER, False)
    assert await read_decoding(response(_zlib(ANSWER, -15), "deflate"), 1 << 20) == (ANSWER, False)


@pytest.mark.parametrize(("body", "codings", "said"), [
    (b"(\xb5/\xfd\x00Xa\x00\x00{}", ("zstd",), "its Content-Encoding is 'zstd', which ticketbridge does not read "
                                               "(it offers gzip, deflate, br)"),
    (b"{}", ("x-foo",), "its Content-Encoding is 'x-foo'"),
    (b"{}", ("gzip", "br"), "its Content-Encoding is 'gzip, br'"),
    (b"{}", ("gzip, gzip",), "its Content-Encoding is 'gzip, gzip'"),
    (b"{}", ("x-" + "\udce9" * 100,), "its Content-Encoding is 'x-" + "\\udce9" * 58 + "'…"),
    (b"not gzip at all", ("gzip",), "it does not decode as gzip: Error -3 while decompressing data: incorrect "
                                    "header check"),
    (b"garbage!", ("br",), "it does not decode as br: brotli: decoder failed"),
    (_zlib(ANSWER, 31)[:-30], ("gzip",), "its gzip stream ends before it is complete"),
], ids=["zstd", "made-up", "stacked", "gzip-twice", "not-utf-8", "corrupt-gzip", "corrupt-br", "unfinished"])
async def test_an_answer_in_a_coding_not_read_or_that_does_not_decode_is_undecodable(
        body: bytes, codings: tuple[str, ...], said: str) -> None:
    """A body in a coding the reader does not decode (zstd, one made up, several stacked), or that does not decode as
    its coding says (corrupt, or its stream unfinished), raises UndecodableBody saying which and why: the coding
    named as sent, cut and written out where it is not ASCII; never the body read as though it were not encoded."""
    with pytest.raises(UndecodableBody) as raised:
        await read_decoding(response(body, *codings), 1 << 20)
    assert str(raised.value).startswith(said), str(raised.value)


@pytest.mark.parametrize("coding", ["zstd", "x-foo", "gzip", "br"])
async def test_an_empty_body_is_empty_whatever_its_coding(coding: str) -> None:
    """An answer without a body (a 204, say) is an empty body, whatever coding its header names."""
    assert await read_decoding(response(b"", coding), 1 << 20) == (b"", False)


async def test_a_gigabyte_of_gzip_is_inflated_only_to_the_cap() -> None:
    """A gzip body that inflates to a gigabyte of zeros (1,024 members of a megabyte each: a megabyte on the wire,
    made in a millisecond) is inflated to the cap and no further: the body is the cap's zeros, called cut, after
    reading one chunk of it, holding about the cap (measured in bytes allocated)."""
    member = _zlib(bytes(1 << 20), 31)
    bomb = response(member * 1024, "gzip")
    limit = 256 * 1024
    (body, cut), peak = await peak_of(lambda: read_decoding(bomb, limit))
    assert (body, cut) == (bytes(limit), True)
    assert cast(Encoded, bomb).given == 65536
    assert peak < 3 * limit, f"held {peak / 1024:.0f} KiB"


async def test_an_encoded_body_that_inflates_to_nothing_is_read_to_twice_the_cap() -> None:
    """A gzip body of empty blocks without end (each five bytes, inflating to nothing) is read to ENCODED_FACTOR
    times the cap and called cut there, not read for as long as the vendor sends it."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    blocks = packer.compress(b"x") + packer.flush(zlib.Z_FULL_FLUSH) + b"\x00\x00\x00\xff\xff" * 20_000
    endless = response(blocks, "gzip", size=1024)
    assert await read_decoding(endless, 4096) == (b"x", True)
    assert cast(Encoded, endless).given == ENCODED_FACTOR * 4096 + 1024


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_an_answer_of_more_members_than_any_vendor_sends_is_undecodable(coding: str) -> None:
    """Members (or deflate streams) one after another are read up to MEMBERS, and a body of more is refused, naming
    the count, rather than decoded member by member: 26,000 empty 20-byte gzip members fit the 512 KiB read, each a
    decoder and a copy of the rest of its chunk, which held the event loop 40 ms."""
    wbits = 31 if coding == "gzip" else 15
    most = _zlib(b"{}", wbits) * MEMBERS
    assert await read_decoding(response(most, coding), 1 << 20) == (b"{}" * MEMBERS, False)
    many = _zlib(b"", wbits) * (ENCODED_FACTOR * (256 * 1024) // len(_zlib(b"", wbits)))
    with pytest.raises(UndecodableBody) as raised:
        await read_decoding(response(many, coding), 256 * 1024)
    assert str(raised.value) == (f"its {coding} body holds more than {MEMBERS} members (streams one after another), "
                                 "which no vendor's answer is made of: read no further")


async def test_an_encoded_answer_past_its_first_64_kib_is_decoded_off_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An encoded answer's first ON_LOOP_ENCODED bytes are decoded on the event loop, and each chunk after them in a
    thread of its own: a body crafted of small blocks, each with its own header, costs up to about 50 ns a byte to
    decode (25 ms for 512 KiB at once), which the loop would otherwise be held for."""
    threads: list[int] = []
    inflate = bridge.bodies._Inflater.inflate

    def spied(self: bridge.bodies._Inflater, data: bytes, most: int) -> bytes:
        threads.append(threading.get_ident())
        return inflate(self, data, most)

    monkeypatch.setattr(bridge.bodies._Inflater, "inflate", spied)
    loop = threading.get_ident()
    small = response(_zlib(ANSWER, 31), "gzip", size=7)
    assert await read_decoding(small, 1 << 20) == (ANSWER, False)
    assert set(threads) == {loop}
    threads.clear()
    text = random.Random(0).randbytes(512 * 1024)  # which gzip leaves about as long
    encoded = _zlib(text, 31)
    assert len(encoded) > 4 * ON_LOOP_ENCODED
    assert await read_decoding(response(encoded, "gzip", size=ON_LOOP_ENCODED // 4), 1 << 20) == (text, False)
    assert threads[:4] == [loop] * 4
    assert loop not in threads[4:] and threads[4:]
