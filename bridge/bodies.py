"""Reading an HTTP answer's body under a cap: a vendor's answer, a look-up, a provider's download, an SNS
signing certificate. One reader for all, as `content.read(n)` gives what has arrived so far, not the body."""

from __future__ import annotations

import io

import aiohttp

READ_CHUNK = 65536


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The answer's body, to its end or its first `limit` bytes (decompressed as they arrive, so an encoded
    body that inflates to gigabytes costs `limit`), and whether it went on past `limit` (then cut there).
    Unlike `content.read(limit)`, which gives what has arrived so far, an answer that comes in several pieces
    is read whole. At most `limit` bytes and the chunk being read are held: each chunk goes into one buffer
    (the last one cut to fit) and the buffer becomes the result without a copy. (The buffer's growth may reserve
    up to an eighth more than it holds, reserved, not written, and given back when it becomes the result.)"""
    buffer = io.BytesIO()
    async for chunk in response.content.iter_chunked(READ_CHUNK):
        room = limit - buffer.tell()
        if len(chunk) > room:
            buffer.write(memoryview(chunk)[:room])
            return buffer.getvalue(), True
        buffer.write(chunk)
        del chunk  # not held while the next one is read
    return buffer.getvalue(), False


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, to its end or its first `limit` bytes: `read_capped` without saying whether it was cut."""
    body, _cut = await read_capped(response, limit)
    return body
