"""bridge/bodies.py: an answer's body read to its end under a cap, holding at most the cap and one chunk."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest

from bridge.bodies import read_bounded, read_capped


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
