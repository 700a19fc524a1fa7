"""HTTP/1.1 requests written byte for byte: header values that are not UTF-8, which aiohttp's client will not
send (it drops what it cannot encode), reach the server exactly as a hostile or broken sender writes them."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import msgspec

Header = tuple[str | bytes, str | bytes]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = msgspec.json.decode(self.body)
        assert isinstance(value, dict), self.body
        return value


class RawClient:
    """One keep-alive connection to host:port, opened again whenever the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        if self._conn is not None:
            writer, self._conn = self._conn[1], None
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def post(self, path: str, body: bytes, headers: list[Header]) -> Answer:
        """POST `body` with `headers` (written as given; Host and Content-Length are added)."""
        return await self.request("POST", path, body, headers)

    async def request(self, method: str, path: str, body: bytes, headers: list[Header]) -> Answer:
        head = method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: bridge.example.com\r\n"
        head += b"".join(_bytes(name) + b": " + _bytes(value) + b"\r\n" for name, value in headers)
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        writer.write(head + body)
        with contextlib.suppress(ConnectionError):  # the server answered (e.g. 400 to a bad header) and closed
            await writer.drain()
        try:
            answer, keep = await read_answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise
        if not keep:
            await self.close()
        return answer


async def read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """One answer read from `reader`, and whether the connection stays open after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = await reader.readexactly(int(length)) if length is not None else await reader.read()
    keep = length is not None and headers.get("connection", "").lower() != "close"
    return Answer(status, headers, body), keep
